//! The server: HTTP/1.1 connections on each worker runtime, a request's route, and one fresh
//! instance per request within its deadline and limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use crate::engine::{Budget, ComponentState, Grants, add_preopens, new_store, wasi_base};
use crate::spin::{Routed, SpinApp};
use wasmcell_runtime::connections::Connections;
use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::epoch::Ticker;
use wasmcell_runtime::error::Error;
use wasmcell_runtime::stdio::{Diagnostics, Outputs};
use wasmcell_workload::{HttpServe, WorkloadSpec};

use super::*;

/// What every request of one server shares.
pub(crate) struct Server {
    engine: wasmtime::Engine,
    ticker: Ticker,
    routes: Routes,
    pub(super) spec: Arc<WorkloadSpec>,
    controls: Controls,
    /// Why a request failed, for the guest's stderr, never holding up a response.
    diagnostics: Diagnostics,
}

impl Server {
    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    pub(crate) fn ticker(&self) -> &Ticker {
        &self.ticker
    }

    pub(crate) fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    pub(crate) fn controls(&self) -> &Controls {
        &self.controls
    }
}

/// What answers a server's requests.
#[derive(Clone)]
pub(crate) enum Routes {
    /// One `wasi:http/proxy` component, for every path.
    One(Arc<Target>),
    /// A Spin app's components, by its routes.
    Spin(Arc<SpinApp>),
}

/// A component requests run, with what each of its instances starts from.
pub(crate) struct Target {
    pub(crate) handler: Handler,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) args: Vec<String>,
    /// Its preopened directories, opened once. They are `O_PATH` descriptors, which carry no
    /// offset or other state one request's guest could change for the next; opening them per
    /// request was a path walk through `/proc/self/fd` for each.
    pub(crate) preopens: WasiFilesystemCtx,
    /// Its framework's grants, for a Spin or slight app's component.
    pub(crate) grants: Option<Grants>,
}

/// What a request's instance is made from and called.
pub(crate) enum Handler {
    /// A `wasi:http/proxy` component's `incoming-handler`.
    Proxy(ProxyPre<ComponentState>),
    /// A Spin 1 module's `handle-http-request`.
    Spin1(Arc<crate::spin::spin1::Spin1Pre>),
}

impl Target {
    /// The one component of a plain server: the spec's args, env and preopens.
    pub(crate) fn of_spec(
        pre: ProxyPre<ComponentState>,
        spec: &WorkloadSpec,
    ) -> Result<Target, Error> {
        let mut preopens = WasiCtxBuilder::new();
        add_preopens(&mut preopens, spec)?;
        Ok(Target {
            handler: Handler::Proxy(pre),
            env: spec.env.clone(),
            args: spec.args.clone(),
            preopens: preopens.build().filesystem().clone(),
            grants: None,
        })
    }
}

impl Server {
    /// The component a request from outside goes to, with Spin's headers set on it; or the
    /// answer when it goes to none.
    pub(super) fn route<B>(
        &self,
        request: &mut http::Request<B>,
        client: SocketAddr,
    ) -> Result<Arc<Target>, Box<Response<HyperOutgoingBody>>> {
        let app = match &self.routes {
            Routes::One(target) => return Ok(target.clone()),
            Routes::Spin(app) => app,
        };
        let (routed, matched) = app.route(request.uri().path());
        match routed {
            Routed::NotFound => Err(Box::new(plain(
                StatusCode::NOT_FOUND,
                "Not Found\n".to_owned(),
            ))),
            Routed::Static(response) => Err(Box::new(static_response(&response))),
            Routed::Component(target) => {
                if let Some(matched) = matched {
                    let host = request
                        .headers()
                        .get(hyper::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                        .unwrap_or_else(|| self.spec.http.addr.to_string());
                    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                    let full_url = format!("http://{host}{path}");
                    crate::spin::set_headers(request.headers_mut(), &matched, &full_url, client);
                }
                Ok(target)
            }
        }
    }

    /// A Spin app's component by id, for `http://ID.spin.internal`.
    pub(super) fn internal(&self, id: &str) -> Option<Arc<Target>> {
        match &self.routes {
            Routes::Spin(app) => app.internal(id),
            Routes::One(_) => None,
        }
    }
}

pub(super) fn static_response(
    response: &wasmcell_spin::StaticResponse,
) -> Response<HyperOutgoingBody> {
    let body = response.body.clone().unwrap_or_default();
    let mut answer = plain(
        StatusCode::from_u16(response.status_code.unwrap_or(200)).unwrap_or(StatusCode::OK),
        body,
    );
    for (name, value) in &response.headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::try_from(name.as_str()),
            hyper::header::HeaderValue::try_from(value.as_str()),
        ) {
            answer.headers_mut().insert(name, value);
        }
    }
    answer
}

/// Serves until [`Controls::terminate`], then drains (see [`Connections::drain`]) and exits 0.
/// Dropping the future (SIGKILL) closes the listener and every connection at once.
///
/// The server runs on threads of its own, each with a single-threaded runtime: one, or one per
/// CPU where instance slots are reset without flushing TLBs ([`HttpEngine::new`]). The first
/// also accepts, and deals connections out in turn; a connection's requests then run on its
/// thread alone, woken by that thread's reactor. Measured on 2 cores: 12-28% less CPU per
/// request than one two-worker runtime, whose request tasks woke the other worker.
pub(crate) async fn serve(
    http: &HttpEngine,
    routes: &Routes,
    spec: &Arc<WorkloadSpec>,
    controls: &Controls,
) -> Result<crate::Exit, Error> {
    let server = Arc::new(Server {
        engine: http.engine.clone(),
        ticker: http.ticker.clone(),
        routes: routes.clone(),
        spec: spec.clone(),
        controls: controls.clone(),
        diagnostics: Diagnostics::new(&spec.stdio.stderr),
    });
    let (done, exit) = tokio::sync::oneshot::channel();
    // Dropped with this future: the server thread sees it and stops at once.
    let (_cancel, cancelled) = tokio::sync::oneshot::channel::<Infallible>();
    let workers = (1..http.threads)
        .map(|_| Worker::start(controls.clone()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::Engine(e.into()))?;
    let meter_of = server.controls.clone();
    std::thread::Builder::new()
        .name("wasmcell-http".into())
        .spawn(move || {
            let _counted = meter_of.meter().own_thread();
            let result = match single_threaded_runtime() {
                Ok(runtime) => runtime.block_on(async {
                    let mut runtimes = vec![tokio::runtime::Handle::current()];
                    runtimes.extend(workers.iter().map(|worker| worker.runtime.clone()));
                    tokio::select! {
                        exit = serve_here(server, runtimes) => exit,
                        // Killed: nobody waits for this status.
                        _ = cancelled => Ok(crate::Exit::Code(137)),
                    }
                }),
                Err(error) => Err(Error::Engine(error.into())),
            };
            // Stops the workers and drops the connections they still hold.
            drop(workers);
            let _ = done.send(result);
        })
        .map_err(|e| Error::Engine(e.into()))?;
    exit.await.unwrap_or_else(|_| {
        Err(Error::Engine(wasmtime::format_err!(
            "the HTTP server thread died"
        )))
    })
}

pub(super) fn single_threaded_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A thread running a single-threaded runtime that connections are spawned onto; it stops when
/// the `Worker` is dropped.
pub(crate) struct Worker {
    pub(crate) runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<Infallible>,
}

impl Worker {
    /// Starts the thread; its CPU counts as the server's (`controls`' usage).
    pub(crate) fn start(controls: Controls) -> std::io::Result<Worker> {
        let runtime = single_threaded_runtime()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<Infallible>();
        std::thread::Builder::new()
            .name("wasmcell-http".into())
            .spawn(move || {
                let _counted = controls.meter().own_thread();
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Worker {
            runtime: handle,
            _stop: stop,
        })
    }
}

/// Accepts on this thread and serves each connection on one of `runtimes`, in turn.
pub(super) async fn serve_here(
    server: Arc<Server>,
    runtimes: Vec<tokio::runtime::Handle>,
) -> Result<crate::Exit, Error> {
    let (spec, controls) = (&server.spec, &server.controls);
    let HttpServe { addr, .. } = spec.http;
    let listener = bind(addr).map_err(|source| Error::Listen { addr, source })?;
    // Opened on this thread's runtime, whose reactor drives them for every thread's requests
    // for as long as the server runs.
    let outputs = Arc::new(Outputs::open(&spec.stdio).await?);
    tracing::debug!(%addr, "serving HTTP");
    let mut connections = Connections::new(&spec.http, runtimes);
    loop {
        // Both steps may wait (for a connection, for room for it), and stop when terminated.
        let next = async {
            let accepted = listener.accept().await;
            let peer = accepted.as_ref().map_or(host_addr(), |(_, peer)| *peer);
            let (server, outputs) = (server.clone(), outputs.clone());
            let respond = move |request| handle(server.clone(), outputs.clone(), request, peer);
            connections
                .serve(accepted.map(|(stream, _)| stream), respond)
                .await;
        };
        tokio::select! {
            () = next => {}
            () = controls.terminated() => break,
        }
    }
    drop(listener);
    connections.drain().await;
    Ok(crate::Exit::Code(0))
}

/// A listener that rebinds at once after a restart (`SO_REUSEADDR`), as servers do.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// One request: a fresh instance, its handler, and the response it sets; or a 4xx/5xx that
/// says why there is none.
pub(super) async fn handle(
    server: Arc<Server>,
    outputs: Arc<Outputs>,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<HyperOutgoingBody> {
    let HttpServe {
        max_body, timeout, ..
    } = server.spec.http;
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body) {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max_body} bytes\n"),
        );
    }
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let target = match server.route(&mut request, peer) {
        Ok(target) => target,
        Err(answer) => return *answer,
    };
    let request = request.map(|body| {
        Limited::new(body, max_body as usize)
            .map_err(move |_| wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max_body)))
            .boxed_unsync()
    });
    match run_handler(&server, &target, &outputs, request, peer, timeout).await {
        Ok(response) => response,
        Err(failure) => {
            let (status, reason) = failure.status();
            server
                .diagnostics
                .report(&format!("{method} {uri}: {reason}"));
            plain(status, format!("{reason}\n"))
        }
    }
}

/// Why a request got no response from its handler.
pub(crate) enum Failure {
    /// No instance slot free: the server is at its concurrency limit.
    Busy,
    /// The handler ran past the request deadline.
    TimedOut(Duration),
    /// The handler exceeded its memory limit.
    OutOfMemory,
    /// The handler trapped, failed, or returned without setting a response.
    Failed(String),
}

impl Failure {
    pub(super) fn status(&self) -> (StatusCode, String) {
        match self {
            Failure::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is at its limit of concurrent requests".to_owned(),
            ),
            Failure::TimedOut(after) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("the handler did not respond within {after:?}"),
            ),
            Failure::OutOfMemory => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the handler exceeded its memory limit".to_owned(),
            ),
            Failure::Failed(why) => (StatusCode::INTERNAL_SERVER_ERROR, why.clone()),
        }
    }
}

pub(super) async fn run_handler(
    server: &Arc<Server>,
    target: &Target,
    outputs: &Arc<Outputs>,
    request: Request<wasmtime_wasi_http::WasiBody>,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<Response<HyperOutgoingBody>, Failure> {
    let pre = match (&target.handler, &target.grants) {
        (Handler::Proxy(pre), _) => pre.clone(),
        (Handler::Spin1(spin1), Some(Grants::Spin(host))) => {
            let component = (&**spin1, host, target.env.as_slice());
            return crate::spin::spin1::handle(server, outputs, component, request, peer, timeout)
                .await;
        }
        (Handler::Spin1(_), _) => {
            return Err(Failure::Failed(
                "a Spin 1 module outside a Spin app".to_owned(),
            ));
        }
    };
    let failed = |error: &dyn std::fmt::Display| Failure::Failed(error.to_string());
    let mut wasi = match &target.grants {
        Some(Grants::Spin(host)) => host.wasi_base(server.spec.network),
        _ => wasi_base(&server.spec),
    };
    wasi.args(&target.args).envs(&target.env);
    outputs.attach(&mut wasi);
    let mut wasi = wasi.build();
    *wasi.filesystem() = target.preopens.clone();
    let clock = server.ticker.store_clock().map_err(|e| failed(&e))?;
    let budget = Budget::new(&server.controls, clock);
    let hooks = match &target.grants {
        Some(Grants::Spin(host)) => {
            let chain = Chain {
                server: Arc::downgrade(server),
                outputs: outputs.clone(),
            };
            HttpHooks::spin(server.spec.network, host.clone(), Some(chain))
        }
        _ => HttpHooks::new(server.spec.network),
    };
    let state = ComponentState {
        wasi,
        table: ResourceTable::new(),
        http: WasiHttpCtx::new(),
        hooks,
        budget,
        grants: target.grants.clone(),
    };
    let mut store = new_store(&server.engine, state, &server.controls);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let view = store.data_mut();
    let request = view
        .http()
        .new_incoming_request(Scheme::Http, request)
        .map_err(|e| failed(&e))?;
    let out = view
        .http()
        .new_response_outparam(sender)
        .map_err(|e| failed(&e))?;
    // The handler runs on as its own task after it sets the response: it streams the body.
    let task = tokio::spawn(async move {
        let result = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, out)
                .await
        }
        .await;
        let budget = &store.data().budget;
        match result {
            Ok(()) => Ok(()),
            Err(_) if budget.limiter.exceeded() => Err(Failure::OutOfMemory),
            Err(error) if is_pool_exhausted(&error) => Err(Failure::Busy),
            Err(error) => Err(Failure::Failed(format!("the handler failed: {error:?}"))),
        }
    });
    // One deadline for a handler computing in wasm (it yields at every epoch tick, so the
    // timer fires and the abort lands at its next tick) and for one waiting in a host call.
    let Ok(response) = tokio::time::timeout(timeout, receiver).await else {
        task.abort();
        return Err(Failure::TimedOut(timeout));
    };
    match response {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Err(Failure::Failed(format!(
            "the handler answered with an error: {code:?}"
        ))),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(Failure::Failed(
                "the handler returned without setting a response".to_owned(),
            )),
            Ok(Err(failure)) => Err(failure),
            Err(join) => Err(Failure::Failed(format!(
                "the handler's task failed: {join}"
            ))),
        },
    }
}

pub(crate) fn is_pool_exhausted(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
    })
}

pub(super) fn plain(status: StatusCode, text: String) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(text))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
