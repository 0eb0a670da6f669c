//! Where a component's outgoing requests may go: Spin's `allowed_outbound_hosts`, `self`
//! requests routed in-process, and the network grant, as wasi:http's hooks.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime_wasi_http::WasiHttpHooks;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

use crate::spin::host::SpinHost;
use wasmcell_runtime::stdio::Outputs;
use wasmcell_workload::Network;

use super::*;

/// Outgoing `wasi:http` requests go out only when the spec grants the network, and from a Spin
/// component only to the hosts its manifest entry allows; its requests to the app itself
/// (`http://ID.spin.internal`, or a path alone with `self` allowed) are served in-process.
pub(crate) struct HttpHooks {
    network: Network,
    spin: Option<Arc<SpinHost>>,
    chain: Option<Chain>,
}

/// The server a Spin component's requests to its own app go to.
#[derive(Clone)]
pub(crate) struct Chain {
    pub(super) server: std::sync::Weak<Server>,
    pub(super) outputs: Arc<Outputs>,
}

impl HttpHooks {
    pub(crate) fn new(network: Network) -> HttpHooks {
        HttpHooks {
            network,
            spin: None,
            chain: None,
        }
    }

    /// The hooks of a Spin component's instance.
    pub(crate) fn spin(network: Network, host: Arc<SpinHost>, chain: Option<Chain>) -> HttpHooks {
        HttpHooks {
            network,
            spin: Some(host),
            chain,
        }
    }
}

pub(super) type ResponseFuture = Box<
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

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _io: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> ResponseFuture {
        if let Some(host) = &self.spin {
            return spin_request(
                host.clone(),
                self.chain.clone(),
                self.network,
                request,
                options,
            );
        }
        if self.network == Network::None {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        send_out(request, options)
    }
}

/// Sends a request to the network.
pub(super) fn send_out(
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

/// A Spin component's outbound request: to its own app, to an allowed host, or denied with a
/// line on stderr that says what to add to the manifest.
pub(super) fn spin_request(
    host: Arc<SpinHost>,
    chain: Option<Chain>,
    network: Network,
    mut request: http::Request<wasmtime_wasi_http::WasiBody>,
    options: Option<wasmtime_wasi_http::RequestOptions>,
) -> ResponseFuture {
    let uri = request.uri().clone();
    let authority = uri.authority().map(|a| a.host().to_ascii_lowercase());
    let internal = match authority.as_deref() {
        Some(name) => name.strip_suffix(".spin.internal").map(str::to_owned),
        None => None,
    };
    let to_self = matches!(authority.as_deref(), None | Some("self" | "self.alt"));
    if internal.is_some() || to_self {
        // As in Spin, another component needs its `http://ID.spin.internal` entry.
        let allowed = match (&internal, authority.as_deref()) {
            (Some(_), Some(name)) => host.allowed_hosts.allows("http", name, 80),
            _ => host.allowed_hosts.allows_self(),
        };
        let entry = match authority.as_deref() {
            Some(name) if internal.is_some() => format!("http://{name}"),
            _ => "self".to_owned(),
        };
        let Some(Chain { server, outputs }) = chain.filter(|_| allowed) else {
            return Box::new(async move {
                host.report_denied(&entry, &entry);
                Err(wasmtime_wasi_http::Error::HttpRequestDenied)
            });
        };
        return Box::new(async move {
            let server = server
                .upgrade()
                .ok_or(wasmtime_wasi_http::Error::HttpRequestDenied)?;
            let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let named = uri.authority().map_or("self", |a| a.as_str());
            if let Ok(named) = hyper::header::HeaderValue::from_str(named) {
                request
                    .headers_mut()
                    .entry(hyper::header::HOST)
                    .or_insert(named);
            }
            *request.uri_mut() = path.parse().map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
            let target = match internal {
                Some(id) => server.internal(&id).ok_or(ErrorCode::DestinationNotFound)?,
                None => match server.route(&mut request, host_addr()) {
                    Ok(target) => target,
                    Err(response) => return Ok((*response, no_io())),
                },
            };
            let timeout = server.spec.http.timeout;
            let response = run_handler(&server, &target, &outputs, request, host_addr(), timeout)
                .await
                .unwrap_or_else(|failure| {
                    let (status, reason) = failure.status();
                    plain(status, format!("{reason}\n"))
                });
            Ok((response, no_io()))
        });
    }
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let name = authority.unwrap_or_default();
    if network == Network::None || !host.allowed_hosts.allows(&scheme, &name, port) {
        return Box::new(async move {
            let target = format!("{scheme}://{name}:{port}");
            host.report_denied(&target, &target);
            Err(wasmtime_wasi_http::Error::HttpRequestDenied)
        });
    }
    send_out(request, options)
}

/// The client address a request from the app itself comes from.
pub(super) fn host_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub(super) fn no_io() -> Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> {
    Box::new(async { Ok(()) })
}
