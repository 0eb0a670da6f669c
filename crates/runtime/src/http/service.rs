//! `wasi:http/handler@0.3.0` components (WASI 0.3's `service` world) as request handlers: a
//! fresh instance per request, as for 0.2 proxies, its async `handle` called with the request
//! within the deadline and limits.
//!
//! A 0.3 handler returns its response before its body is written: the body streams from the
//! guest as the store's event loop runs, so the instance's task keeps the loop running
//! (`poll_no_interesting_tasks`) until the guest has nothing left to do, and ends then.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::{Request, Response};
use wasmtime::component::Accessor;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::bindings::{Service as Bound, ServicePre};

use super::proxy::{answered, failure_of};
use super::reuse::Workers;
use super::{Failure, Handler, HandlerFuture, Server, Start};
use crate::outbound::HttpHooks;
use crate::state::ComponentState;
use crate::stdio::Outputs;
use crate::store::new_store;

/// A `wasi:http/handler@0.3.0` component whose instances hold `host`, as [`super::Proxy`] is
/// for 0.2.
pub struct Service<H: Send + 'static> {
    /// The component, linked.
    pub pre: ServicePre<ComponentState<H>>,
    /// What its instances start from.
    pub start: Start,
    /// What each instance holds for its capability.
    pub host: H,
    /// Its instances serving several requests at once, where the spec asks for that
    /// (`instance_concurrency` past 1); a fresh instance per request otherwise.
    pub workers: Option<Workers<ComponentState<H>>>,
}

impl<H: Send + 'static> Service<H> {
    /// The component `pre`, whose instances start from `start` and hold `host`, served as
    /// `spec` asks.
    pub fn new(
        pre: ServicePre<ComponentState<H>>,
        start: Start,
        host: H,
        spec: &wasmcell_workload::WorkloadSpec,
    ) -> Service<H> {
        let shared = spec.http.instance_concurrency > 1;
        Service {
            workers: shared.then(|| Workers::new(pre.clone())),
            pre,
            start,
            host,
        }
    }
}

impl<H: Clone + Send + Sync + 'static> Handler for Service<H> {
    fn handle<'a>(
        &'a self,
        server: &'a Arc<Server>,
        outputs: &'a Arc<Outputs>,
        request: Request<wasmtime_wasi_http::WasiBody>,
        _peer: SocketAddr,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let state = || self.start.state(server, outputs, self.host.clone());
            match &self.workers {
                Some(workers) => workers.serve(server, state, request).await,
                None => run_service(server, &self.pre, state()?, request).await,
            }
        })
    }
}

/// What the handler answered: a response (its body still to stream) or its error code.
pub(super) type Answer = Result<Response<HyperOutgoingBody>, ErrorCode>;

/// Calls `handle` of `service` with `request` on the store's event loop: its answer, the
/// response's body left to stream as the loop runs on.
pub(super) async fn answer<H: Send + 'static>(
    accessor: &Accessor<ComponentState<H>>,
    service: &Bound,
    request: Request<wasmtime_wasi_http::WasiBody>,
) -> wasmtime::Result<Answer> {
    // The request's headers are filtered as the instance's own hooks would (those only add a
    // policy for outgoing requests); a hooks value of its own outlives the call.
    let mut hooks = HttpHooks::new(wasmcell_workload::Network::None);
    let request = with_scheme_and_authority(request);
    let (request, io) = wasmtime_wasi_http::p3::Request::from_http(&mut hooks, request);
    Ok(match service.handle(accessor, request).await? {
        Ok(response) => Ok(accessor.with(|mut store| response.into_http(&mut store, io))?),
        Err(code) => Err(code),
    })
}

/// `request` with the scheme it came by (`http`) and its `Host` as its authority, as a 0.2
/// proxy's incoming request has them: HTTP/1.1 sends only the path in the request line, and a
/// 0.3 handler reads `get-scheme` and `get-authority` from the request's URI (WASI's test suite
/// checks both are set). A `Host` that is no authority leaves the URI as it was.
fn with_scheme_and_authority<B>(mut request: Request<B>) -> Request<B> {
    if request.uri().scheme().is_some() {
        return request;
    }
    let authority = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|host| http::uri::Authority::try_from(host.as_bytes()).ok());
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = authority;
    if parts.authority.is_none() {
        return request;
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    request
}

/// Instantiates `pre` in a store of `state` and calls its `handle` with `request`, within the
/// spec's deadline; the instance runs on as its own task while the response body streams.
pub async fn run_service<H: Send + 'static>(
    server: &Server,
    pre: &ServicePre<ComponentState<H>>,
    state: ComponentState<H>,
    request: Request<wasmtime_wasi_http::WasiBody>,
) -> Result<Response<HyperOutgoingBody>, Failure> {
    let timeout = server.spec().http.timeout;
    let mut store = new_store(server.engine(), state, server.controls());
    let (sender, receiver) = tokio::sync::oneshot::channel::<Answer>();
    let pre = pre.clone();
    let task = tokio::spawn(async move {
        let result = async {
            let service = pre.instantiate_async(&mut store).await?;
            store
                .run_concurrent(async move |accessor| {
                    let _ = sender.send(answer(accessor, &service, request).await?);
                    // The body streams as the event loop runs: run it until the guest is done.
                    std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
                    wasmtime::Result::<()>::Ok(())
                })
                .await?
        }
        .await;
        failure_of(result, &store.data().budget)
    });
    answered(timeout, receiver, task).await
}

#[cfg(test)]
mod tests {
    use super::with_scheme_and_authority;

    fn uri(path: &str, host: Option<&str>) -> String {
        let mut request = hyper::Request::builder().uri(path);
        if let Some(host) = host {
            request = request.header(hyper::header::HOST, host);
        }
        with_scheme_and_authority(request.body(()).unwrap())
            .uri()
            .to_string()
    }

    #[test]
    fn a_request_gets_the_scheme_it_came_by_and_its_host_as_authority() {
        assert_eq!(
            uri("/whoami?x=1", Some("127.0.0.1:8080")),
            "http://127.0.0.1:8080/whoami?x=1"
        );
        assert_eq!(uri("/", Some("example.com")), "http://example.com/");
        // Without a Host, or with one that is no authority, the URI stays as it came.
        assert_eq!(uri("/a", None), "/a");
        assert_eq!(uri("/a", Some("bad host/x")), "/a");
        assert_eq!(
            uri("http://other:1/b", Some("example.com")),
            "http://other:1/b"
        );
    }
}
