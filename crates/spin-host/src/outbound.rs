//! Where a Spin component's outgoing requests may go: the hosts its `allowed_outbound_hosts`
//! grants, and its own app (`http://ID.spin.internal`, or a path alone with `self` allowed),
//! served in-process as Spin serves them. Anything else is denied before connecting, with a
//! line on the container's stderr that says what to add to the manifest.

use std::sync::{Arc, Weak};

use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

use crate::host::SpinHost;
use wasmcell_runtime::http::Server;
use wasmcell_runtime::outbound::{Outbound, ResponseFuture, host_addr, no_io, send_out};
use wasmcell_runtime::stdio::Outputs;
use wasmcell_workload::Network;

/// A Spin component's outbound policy (Spin's `OutboundHttpInterceptor`).
pub(crate) struct SpinOutbound {
    pub(crate) host: Arc<SpinHost>,
    /// The server its requests to its own app go to; `None` outside a request (a command, a
    /// Redis message), where there is none.
    pub(crate) chain: Option<Chain>,
}

/// The server a Spin component's requests to its own app go to.
#[derive(Clone)]
pub(crate) struct Chain {
    pub(crate) server: Weak<Server>,
    pub(crate) outputs: Arc<Outputs>,
}

/// Where a request of a Spin component goes.
enum Route {
    /// To another component of its app (`http://ID.spin.internal`), or to the app itself (a
    /// path alone, or `self`): served in-process.
    App { component: Option<String> },
    /// Out to the network.
    Out,
    /// Nowhere: `entry` is what `allowed_outbound_hosts` would need to hold.
    Denied { entry: String },
}

impl SpinOutbound {
    /// Where a request to `uri` goes, as the component's grants and `network` decide.
    fn route(&self, uri: &http::Uri, network: Network) -> Route {
        let authority = uri.authority().map(|a| a.host().to_ascii_lowercase());
        let internal = match authority.as_deref() {
            Some(name) => name.strip_suffix(".spin.internal").map(str::to_owned),
            None => None,
        };
        let to_self = matches!(authority.as_deref(), None | Some("self" | "self.alt"));
        if internal.is_some() || to_self {
            // As in Spin, another component needs its `http://ID.spin.internal` entry.
            let allowed = match (&internal, authority.as_deref()) {
                (Some(_), Some(name)) => self.host.allowed_hosts.allows("http", name, 80),
                _ => self.host.allowed_hosts.allows_self(),
            };
            return match authority.as_deref() {
                _ if allowed && self.chain.is_some() => Route::App {
                    component: internal,
                },
                Some(name) if internal.is_some() => Route::Denied {
                    entry: format!("http://{name}"),
                },
                _ => Route::Denied {
                    entry: "self".to_owned(),
                },
            };
        }
        let scheme = uri.scheme_str().unwrap_or("http");
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let name = authority.unwrap_or_default();
        if network == Network::None || !self.host.allowed_hosts.allows(scheme, &name, port) {
            return Route::Denied {
                entry: format!("{scheme}://{name}:{port}"),
            };
        }
        Route::Out
    }
}

impl Outbound for SpinOutbound {
    fn permits(&self, uri: &http::Uri, network: Network) -> bool {
        match self.route(uri, network) {
            Route::Denied { entry } => {
                self.host.report_denied(&entry, &entry);
                false
            }
            Route::App { .. } | Route::Out => true,
        }
    }

    fn send(
        &self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        network: Network,
    ) -> ResponseFuture {
        let uri = request.uri().clone();
        let component = match self.route(&uri, network) {
            Route::Out => return send_out(request, options),
            // A 0.2 request was checked (`permits`, which says why on stderr) before it was
            // sent; a 0.3 request (`wasi:http/client.send`) is checked only here.
            Route::Denied { entry } => {
                self.host.report_denied(&entry, &entry);
                return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
            }
            Route::App { component } => component,
        };
        let Some(Chain { server, outputs }) = self.chain.clone() else {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        Box::new(async move {
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
            let (mut head, body) = request.into_parts();
            let handler = match component {
                Some(id) => server
                    .routes()
                    .named(&id)
                    .ok_or(ErrorCode::DestinationNotFound)?,
                None => match server.routes().route(server.spec(), &mut head, host_addr()) {
                    Ok(handler) => handler,
                    Err(response) => return Ok((*response, no_io())),
                },
            };
            let request = http::Request::from_parts(head, body);
            let response = handler
                .handle(&server, &outputs, request, host_addr())
                .await
                .unwrap_or_else(|failure| failure.response());
            Ok((response, no_io()))
        })
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use wasmcell_runtime::outbound::HttpHooks;
    use wasmcell_workload::Network;
    use wasmtime_wasi_http::WasiHttpHooks;

    use super::*;

    /// A Spin component's outbound request to `uri` from a host granted `allowed`, on
    /// `network`; its complaints go to the file `diagnostics`.
    async fn send_from_spin(
        allowed: &[&str],
        network: Network,
        uri: &str,
        diagnostics: &std::path::Path,
    ) -> Result<http::StatusCode, wasmtime_wasi_http::Error> {
        let output = wasmcell_workload::Output::File(diagnostics.to_owned());
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(crate::host::tests::spin_host(
            dir.path(),
            allowed,
            &[],
            &[],
            &output,
        ));
        let body = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let request = http::Request::get(uri).body(body).unwrap();
        let policy = SpinOutbound {
            host: host.clone(),
            chain: None,
        };
        let mut hooks = HttpHooks::with_policy(network, Box::new(policy));
        // As `handle` does: the policy first, then the request.
        let sent = match hooks.permits(request.uri()) {
            true => Box::into_pin(hooks.send_request(request, None, no_io())).await,
            false => Err(wasmtime_wasi_http::Error::HttpRequestDenied),
        };
        host.diagnostics_flushed().await;
        sent.map(|(response, _io)| response.status())
    }

    #[tokio::test]
    async fn a_spin_component_reaches_only_the_hosts_it_was_granted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let _ = stream.read(&mut request).await.unwrap();
            let reply = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
            stream.write_all(reply).await.unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        let granted = format!("http://127.0.0.1:{port}");
        let uri = format!("{granted}/");
        let sent = send_from_spin(&[&granted], Network::Inherit, &uri, &log).await;
        assert_eq!(sent.unwrap(), http::StatusCode::NO_CONTENT);
        server.await.unwrap();
        assert!(!log.exists(), "an allowed request was reported");
    }

    #[tokio::test]
    async fn a_spin_components_request_to_another_host_is_denied_before_connecting() {
        // The name resolves nowhere: a lookup would fail otherwise than with a denial.
        for (uri, entry) in [
            ("http://denied.invalid/path", "http://denied.invalid:80"),
            ("https://denied.invalid/", "https://denied.invalid:443"),
            // Another component of the app, and the app itself, need their own entries.
            ("http://other.spin.internal/", "http://other.spin.internal"),
            ("/local", "self"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("stderr");
            let sent = send_from_spin(&["http://127.0.0.1:1"], Network::Inherit, uri, &log).await;
            assert!(
                matches!(sent, Err(wasmtime_wasi_http::Error::HttpRequestDenied)),
                "{uri}: {sent:?}"
            );
            let reported = std::fs::read_to_string(&log).unwrap();
            let advice = format!("add \"{entry}\" to allowed_outbound_hosts in [component.web]");
            assert!(reported.contains(&advice), "{uri}: {reported}");
        }
    }

    #[tokio::test]
    async fn a_granted_host_is_denied_when_the_workload_has_no_network() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        let sent = send_from_spin(
            &["http://127.0.0.1:1"],
            Network::None,
            "http://127.0.0.1:1/",
            &log,
        )
        .await;
        assert!(matches!(
            sent,
            Err(wasmtime_wasi_http::Error::HttpRequestDenied)
        ));
    }
}
