//! The server: HTTP/1.1 connections on each worker runtime, a request's route, and what its
//! handler answers within the request's limits.

use std::any::Any;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::HttpEngine;
use crate::connections::Connections;
use crate::controls::Controls;
use crate::epoch::Ticker;
use crate::error::{Error, error_chain};
use crate::exit::Exit;
use crate::stdio::{Diagnostics, Outputs};
use crate::store::Budget;
use wasmcell_workload::{HttpServe, WorkloadSpec};

/// Where a server's requests go: one handler for every path ([`super::AllPaths`]), or a
/// framework's routes (Spin's).
pub trait Routes: Send + Sync + 'static {
    /// The handler of a request from `client` to a server of `spec` (the request's head, which
    /// the routes may add headers to), or the answer when no handler takes it (a 404, a static
    /// response).
    fn route(
        &self,
        spec: &WorkloadSpec,
        request: &mut http::request::Parts,
        client: SocketAddr,
    ) -> Result<Arc<dyn Handler>, Box<Response<HyperOutgoingBody>>>;

    /// The handler the app itself calls by `name` (Spin's `http://ID.spin.internal`): private
    /// handlers included. None by default.
    fn named(&self, name: &str) -> Option<Arc<dyn Handler>> {
        let _ = name;
        None
    }
}

/// What a handler's answer is awaited as.
pub type HandlerFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response<HyperOutgoingBody>, Failure>> + Send + 'a>>;

/// What runs one request: a fresh instance of a guest, called within the server's deadline
/// (the spec's `http.timeout`) and limits.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request` from `peer`; the guest's standard streams are `outputs`.
    fn handle<'a>(
        &'a self,
        server: &'a Arc<Server>,
        outputs: &'a Arc<Outputs>,
        request: Request<wasmtime_wasi_http::WasiBody>,
        peer: SocketAddr,
    ) -> HandlerFuture<'a>;
}

/// What every request of one server shares.
pub struct Server {
    engine: wasmtime::Engine,
    ticker: Ticker,
    routes: Arc<dyn Routes>,
    spec: Arc<WorkloadSpec>,
    controls: Controls,
    /// Why a request failed, for the guest's stderr, never holding up a response.
    diagnostics: Diagnostics,
    /// What its code was loaded from, after a [`TierUp`]: kept for as long as it serves.
    _kept: Option<Box<dyn Any + Send + Sync>>,
}

/// A server's engine and routes: what a [`TierUp`] replaces.
#[derive(Clone)]
pub struct Serving {
    /// The pooling engine its instances run on.
    pub http: Arc<HttpEngine>,
    /// Where its requests go.
    pub routes: Arc<dyn Routes>,
}

/// Makes the serving of the same workload on optimised code, and what must live as long as
/// it serves (the cache entries it was loaded from): called once, on a thread of its own, by a
/// server that started on baseline code (see [`crate::codegen`]). It may take seconds: it
/// compiles, or waits for the process that does.
pub type TierUp =
    Box<dyn FnOnce() -> Result<(Serving, Box<dyn Any + Send + Sync>), Error> + Send + 'static>;

/// The server requests go to, switched by a [`TierUp`]: each request takes the one current
/// when it arrives, and keeps it to its end (its store belongs to that server's engine).
type Current = Arc<RwLock<Arc<Server>>>;

impl Server {
    fn new(
        serving: Serving,
        spec: &Arc<WorkloadSpec>,
        controls: &Controls,
        diagnostics: &Diagnostics,
        kept: Option<Box<dyn Any + Send + Sync>>,
    ) -> Server {
        Server {
            engine: serving.http.engine.clone(),
            ticker: serving.http.ticker.clone(),
            routes: serving.routes,
            spec: spec.clone(),
            controls: controls.clone(),
            diagnostics: diagnostics.clone(),
            _kept: kept,
        }
    }

    /// The engine its instances run on.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// The epoch clock of that engine.
    pub fn ticker(&self) -> &Ticker {
        &self.ticker
    }

    /// The workload it serves.
    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// The workload's controls (pause, live limits), which every instance runs under.
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    /// Its routes.
    pub fn routes(&self) -> &dyn Routes {
        &*self.routes
    }

    /// A budget for one request's instance.
    pub fn budget(&self) -> Result<Budget, Failure> {
        let clock = self
            .ticker
            .store_clock()
            .map_err(|e| Failure::Failed(e.to_string()))?;
        Ok(Budget::new(&self.controls, clock))
    }
}

/// Serves `routes` until [`Controls::terminate`], then drains (see [`Connections::drain`]) and
/// exits 0. Dropping the future (SIGKILL) closes the listener and every connection at once.
///
/// The server runs on threads of its own, each with a single-threaded runtime: one, or one per
/// CPU where instance slots are reset without flushing TLBs ([`HttpEngine::new`]). The first
/// also accepts, and deals connections out in turn; a connection's requests then run on its
/// thread alone, woken by that thread's reactor. Measured on 2 cores: 12-28% less CPU per
/// request than one two-worker runtime, whose request tasks woke the other worker.
///
/// With a `tier_up`, the server starts on the baseline code it was given and switches to the
/// optimised code the tier-up makes, request by request: requests already running finish on
/// the code they started on. Should the tier-up fail, the server stays on its baseline code
/// and says why on the container's stderr.
pub async fn serve(
    serving: Serving,
    tier_up: Option<TierUp>,
    spec: &Arc<WorkloadSpec>,
    controls: &Controls,
) -> Result<Exit, Error> {
    let http = serving.http.clone();
    let diagnostics = Diagnostics::new(&spec.stdio.stderr);
    let first = Server::new(serving, spec, controls, &diagnostics, None);
    let spec = spec.clone();
    let current: Current = Arc::new(RwLock::new(Arc::new(first)));
    if let Some(tier_up) = tier_up {
        let (current, controls) = (current.clone(), controls.clone());
        // Diagnostics are written by a task of the runtime that serves.
        let runtime = tokio::runtime::Handle::current();
        let switch = move || match tier_up() {
            Ok((serving, kept)) => {
                let next = Server::new(serving, &spec, &controls, &diagnostics, Some(kept));
                *current.write().expect("current server lock") = Arc::new(next);
                tracing::info!("serving on optimised code");
            }
            Err(error) => {
                let _entered = runtime.enter();
                diagnostics.report(&format!(
                    "staying on baseline code: {}",
                    error_chain(&error)
                ));
            }
        };
        std::thread::Builder::new()
            .name("wasmcell-tier-up".into())
            .spawn(switch)
            .map_err(|e| Error::Engine(e.into()))?;
    }
    let (done, exit) = tokio::sync::oneshot::channel();
    // Dropped with this future: the server thread sees it and stops at once.
    let (_cancel, cancelled) = tokio::sync::oneshot::channel::<Infallible>();
    let workers = (1..http.threads)
        .map(|_| Worker::start(controls.clone()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::Engine(e.into()))?;
    let meter_of = controls.clone();
    std::thread::Builder::new()
        .name("wasmcell-http".into())
        .spawn(move || {
            let _counted = meter_of.meter().own_thread();
            let result = match single_threaded_runtime() {
                Ok(runtime) => runtime.block_on(async {
                    let mut runtimes = vec![tokio::runtime::Handle::current()];
                    runtimes.extend(workers.iter().map(|worker| worker.runtime.clone()));
                    tokio::select! {
                        exit = serve_here(current, runtimes) => exit,
                        // Killed: nobody waits for this status.
                        _ = cancelled => Ok(Exit::Code(137)),
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

fn single_threaded_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A thread running a single-threaded runtime that connections are spawned onto; it stops when
/// the `Worker` is dropped.
pub struct Worker {
    /// The runtime to spawn onto.
    pub runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<Infallible>,
}

impl Worker {
    /// Starts the thread; its CPU counts as the server's (`controls`' usage).
    pub fn start(controls: Controls) -> std::io::Result<Worker> {
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
async fn serve_here(
    current: Current,
    runtimes: Vec<tokio::runtime::Handle>,
) -> Result<Exit, Error> {
    // Not the server itself: what this loop keeps must not keep a replaced server's code.
    let (spec, controls) = {
        let first = current.read().expect("current server lock");
        (first.spec.clone(), first.controls.clone())
    };
    let (spec, controls) = (&spec, &controls);
    let HttpServe { addr, .. } = spec.http;
    let listener = bind(addr).map_err(|source| Error::Listen { addr, source })?;
    // Opened on this thread's runtime, whose reactor drives them for every thread's requests
    // for as long as the server runs.
    let outputs = Arc::new(Outputs::open(&spec.stdio).await?);
    // One line on the guest's stderr once it listens, so that `docker logs` and `kubectl logs`
    // show the server started, and where.
    let listening = listener.local_addr().unwrap_or(addr);
    crate::stdio::report(
        &spec.stdio.stderr,
        &format!("listening on http://{listening}"),
    )
    .await;
    let mut connections = Connections::new(&spec.http, runtimes);
    loop {
        // Both steps may wait (for a connection, for room for it), and stop when terminated.
        let next = async {
            let accepted = listener.accept().await;
            let peer = accepted
                .as_ref()
                .map_or(crate::outbound::host_addr(), |(_, peer)| *peer);
            let (current, outputs) = (current.clone(), outputs.clone());
            let respond = move |request| {
                let server = current.read().expect("current server lock").clone();
                handle(server, outputs.clone(), request, peer)
            };
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
    Ok(Exit::Code(0))
}

/// A listener that rebinds at once after a restart (`SO_REUSEADDR`), as servers do.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// One request: its route, and its handler's response; or a 4xx/5xx that says why there is
/// none.
async fn handle(
    server: Arc<Server>,
    outputs: Arc<Outputs>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<HyperOutgoingBody> {
    let max_body = server.spec.http.max_body;
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
    let (mut head, body) = request.into_parts();
    let (method, uri) = (head.method.clone(), head.uri.clone());
    let handler = match server.routes.route(&server.spec, &mut head, peer) {
        Ok(handler) => handler,
        Err(answer) => return *answer,
    };
    let body = Limited::new(body, max_body as usize)
        .map_err(move |_| wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max_body)))
        .boxed_unsync();
    let request = Request::from_parts(head, body);
    match handler.handle(&server, &outputs, request, peer).await {
        Ok(response) => response,
        Err(failure) => {
            let (_, reason) = failure.status();
            server
                .diagnostics
                .report(&format!("{method} {uri}: {reason}"));
            failure.response()
        }
    }
}

/// Why a request got no response from its handler.
#[derive(Debug, Clone)]
pub enum Failure {
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
    /// The status the client gets, and why.
    pub fn status(&self) -> (StatusCode, String) {
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

    /// The answer a client gets for it. A handler's failure is said without its details (a
    /// trap's message and wasm backtrace, a guest's panic): those are the app's internals,
    /// and go to the container's log, where [`Failure::status`] says them.
    pub fn response(&self) -> Response<HyperOutgoingBody> {
        let (status, reason) = match self {
            Failure::Failed(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the handler failed (the container's log says why)".to_owned(),
            ),
            other => other.status(),
        };
        plain(status, format!("{reason}\n"))
    }
}

/// Whether an instantiation failed for want of a free slot in the pool.
pub fn is_pool_exhausted(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
    })
}

/// A `text/plain` answer.
pub fn plain(status: StatusCode, text: String) -> Response<HyperOutgoingBody> {
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
