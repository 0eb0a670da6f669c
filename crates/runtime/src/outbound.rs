//! Where a guest's outgoing `wasi:http` requests may go: nowhere without the network grant,
//! and through a framework's [`Outbound`] policy where it has one (Spin's
//! `allowed_outbound_hosts`, and its requests to its own app).
//!
//! A request that may not go is refused by `outgoing-handler.handle` itself, with
//! `HTTP-request-denied`, as Spin refuses it: guests (and Spin's conformance suite) take
//! `handle`'s error for the denial, and treat a failure of the response to come as a broken
//! host. wasmtime-wasi-http asks its hooks only for the response's future, so the component
//! linker's `handle` checks [`HttpHooks::permits`] first (`crate::state::component_linker`).

use std::net::SocketAddr;

use http_body_util::BodyExt;
use wasmcell_workload::Network;
use wasmtime_wasi_http::WasiHttpHooks;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::types::HostOutgoingRequest;

/// A response to an outgoing request, and the future that drives its connection.
pub type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

/// A framework's policy for its guests' outgoing requests, as Spin's `OutboundHttpInterceptor`:
/// it sends a request (with [`send_out`], or in-process), or refuses it.
pub trait Outbound: Send + Sync {
    /// Whether a request to `uri` may be made at all, on `network`: asked when the guest calls
    /// `handle`, whose error a denial is. Says why not on the container's stderr.
    fn permits(&self, uri: &http::Uri, network: Network) -> bool;

    /// Sends or refuses `request`, which [`Outbound::permits`]; `network` is what the workload
    /// was granted.
    fn send(
        &self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        network: Network,
    ) -> ResponseFuture;
}

/// An instance's `wasi:http` hooks: outgoing requests go out only when the spec grants the
/// network, and through its framework's [`Outbound`] policy where it has one.
pub struct HttpHooks {
    network: Network,
    policy: Option<Box<dyn Outbound>>,
}

impl HttpHooks {
    /// The workload's network, which a framework's other outbound services (databases,
    /// brokers) follow too.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Requests go out as the workload's `network` allows.
    pub fn new(network: Network) -> HttpHooks {
        HttpHooks {
            network,
            policy: None,
        }
    }

    /// Requests go where `policy` lets them, on `network`.
    pub fn with_policy(network: Network, policy: Box<dyn Outbound>) -> HttpHooks {
        HttpHooks {
            network,
            policy: Some(policy),
        }
    }
}

impl HttpHooks {
    /// Whether a request to `uri` may be made (see [`Outbound::permits`]).
    pub fn permits(&self, uri: &http::Uri) -> bool {
        match &self.policy {
            Some(policy) => policy.permits(uri, self.network),
            None => self.network != Network::None,
        }
    }
}

/// The URI a request names, or `None` when its parts make none (wasmtime-wasi-http would refuse
/// it too). One without a scheme is checked as `https`, the scheme wasmtime-wasi-http's hooks
/// give it by default.
pub fn uri_of(request: &HostOutgoingRequest) -> Option<http::Uri> {
    let scheme = match &request.scheme {
        Some(Scheme::Http) => "http",
        Some(Scheme::Https) | None => "https",
        Some(Scheme::Other(other)) => other.as_str(),
    };
    let path = request.path_with_query.as_deref().unwrap_or("/");
    let uri = match request.authority.as_deref() {
        Some(authority) if !authority.is_empty() => http::Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build(),
        _ => http::Uri::builder().path_and_query(path).build(),
    };
    // `http` takes any digits for a port, and then names none: one that is no port
    // (`:99999`) would be checked as the scheme's default port.
    uri.ok()
        .filter(|uri| uri.authority().is_none_or(has_valid_port))
}

/// Whether what follows `authority`'s host is nothing or a port that fits in 16 bits.
pub fn has_valid_port(authority: &http::uri::Authority) -> bool {
    let text = authority.as_str();
    let Some(at) = text.rfind(authority.host()) else {
        return false;
    };
    match &text[at + authority.host().len()..] {
        "" => true,
        rest => rest
            .strip_prefix(':')
            .is_some_and(|port| port.parse::<u16>().is_ok()),
    }
}

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _io: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> ResponseFuture {
        if let Some(policy) = &self.policy {
            return policy.send(request, options, self.network);
        }
        if self.network == Network::None {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        send_out(request, options)
    }
}

/// Sends a request to the network.
pub fn send_out(
    request: http::Request<wasmtime_wasi_http::WasiBody>,
    options: Option<wasmtime_wasi_http::RequestOptions>,
) -> ResponseFuture {
    Box::new(async move {
        let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
        Ok((
            response.map(BodyExt::boxed_unsync),
            Box::new(io) as Box<dyn Future<Output = _> + Send>,
        ))
    })
}

/// The client address a request from the app itself comes from.
pub fn host_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The connection future of a response that has none (one served in-process).
pub fn no_io() -> Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> {
    Box::new(async { Ok(()) })
}
