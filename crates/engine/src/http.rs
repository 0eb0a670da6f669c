//! Serving `wasi:http/proxy` components: HTTP/1.1 on a TCP listener, one fresh instance per
//! request from an `InstancePre`.
//!
//! Servers get their own wasmtime engine with the pooling allocator: a request's instance
//! takes a preallocated slot (its memory image mapped copy-on-write) instead of fresh mappings,
//! which is most of what instantiation costs. Its configuration compiles the same code as the
//! [`crate::Compiler`]'s, so both share one cache entry. Everything that can go wrong in a
//! request (a trap, the memory limit, the deadline, a full pool) ends that request with a 5xx
//! and a line on the container's stderr; the server carries on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use wasmtime::Linker;
use wasmtime::component::{Component, ResourceTable};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpHooks, WasiHttpView};

use crate::engine::{
    Budget, ComponentState, Grants, ModuleState, OnFirstUse, add_preopens, new_store, wasi_base,
};
use crate::spin::host::SpinHost;
use crate::spin::{Routed, SpinApp};
use wasmcell_runtime::cache::deserialize_component;
use wasmcell_runtime::connections::Connections;
use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::epoch::Ticker;
use wasmcell_runtime::error::Error;
use wasmcell_runtime::stdio::{Diagnostics, Outputs};
use wasmcell_workload::{HttpServe, Network, WorkloadSpec};

/// How much of a slot's dirtied memory (and table) is reset in place rather than released, per
/// slot: the memory an idle server keeps for each slot it has used. A hello-world request
/// dirties well under this; a larger working set has its excess released as before.
const KEEP_RESIDENT: usize = 1 << 20;

/// The interface name whose export makes a component an HTTP server.
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2";

/// Whether `component` serves HTTP: it exports `wasi:http/incoming-handler` (any 0.2 version).
pub(crate) fn is_proxy(engine: &wasmtime::Engine, component: &Component) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name.starts_with(INCOMING_HANDLER))
}

/// The pooling engine and its linkers, created by the first server a process prepares.
pub(crate) struct HttpEngine {
    engine: wasmtime::Engine,
    linker: wasmtime::component::Linker<ComponentState>,
    /// WASI, `wasi:http` and Spin's interfaces: only Spin apps' components see the latter.
    spin_linker: OnFirstUse<wasmtime::component::Linker<ComponentState>>,
    /// WASI, `wasi:http` and slight's capabilities, for components under slight.
    slight_linker: OnFirstUse<wasmtime::component::Linker<ComponentState>>,
    /// WASI preview 1, for core modules.
    module_linker: OnFirstUse<Linker<ModuleState>>,
    ticker: Ticker,
    /// How many threads a server runs requests on (see [`HttpEngine::new`]).
    threads: usize,
}

impl HttpEngine {
    /// `cpus`: how many CPUs the process may use (see [`Engine::cpus`](crate::Engine::cpus)).
    pub(crate) fn new(mut config: wasmtime::Config, cpus: usize) -> Result<HttpEngine, Error> {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // Concurrent requests per server; past this, requests get 503. Each slot reserves
        // address space only (a 4 GiB memory reservation), not memory.
        pool.total_component_instances(1000)
            .total_core_instances(4000)
            .total_memories(2000)
            .total_tables(2000)
            .total_stacks(1000);
        // A finished request's slot is reset for the next one. By default wasmtime `madvise`s
        // the whole memory away: a TLB flush per request, and page faults as the next guest
        // touches its pages again. Where the kernel has `PAGEMAP_SCAN` (Linux 6.7), wasmtime
        // finds the pages the guest dirtied and copies their original contents back instead,
        // up to a bound per slot; memory past it is still `madvise`d. Measured: 25-30% less CPU
        // per request (docs/performance.md). Without the ioctl, keeping memory resident means
        // a `memset` of the whole bound, which measured slower than `madvise`, so the defaults
        // stay.
        //
        // An `madvise` also interrupts every other CPU running one of the process's threads to
        // flush its TLB, so with `madvise` resets a server runs requests on one thread (measured
        // on 2 cores: 11-14k requests/s on one thread, 8.8k on two). Resets in place flush
        // nothing, and then requests run on a thread per CPU the process may use.
        let threads = if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Yes)
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT);
            cpus
        } else {
            1
        };
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config).map_err(Error::Engine)?;
        let linker = crate::engine::component_linker(&engine)?;
        Ok(HttpEngine {
            ticker: Ticker::new(&engine),
            engine,
            linker,
            spin_linker: OnFirstUse::default(),
            slight_linker: OnFirstUse::default(),
            module_linker: OnFirstUse::default(),
            threads,
        })
    }

    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    pub(crate) fn ticker(&self) -> &Ticker {
        &self.ticker
    }

    /// How many threads a server runs requests on.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// WASI preview 1 for core modules on this engine (slight apps, Spin 1 components).
    pub(crate) fn module_linker(&self) -> Result<Arc<Linker<ModuleState>>, Error> {
        self.module_linker
            .get(|| crate::engine::module_linker(&self.engine))
    }

    /// The linker Spin components are linked with.
    pub(crate) fn spin_linker(
        &self,
    ) -> Result<Arc<wasmtime::component::Linker<ComponentState>>, Error> {
        self.spin_linker.get(|| {
            let mut linker = crate::engine::component_linker(&self.engine)?;
            crate::spin::host::add_to_linker(&mut linker).map_err(Error::Engine)?;
            Ok(linker)
        })
    }

    /// Loads a compiled proxy component from the cache entry and pre-instantiates it, with
    /// slight's capabilities if it runs under slight.
    pub(crate) fn prepare(
        &self,
        entry: &std::path::Path,
        path: &str,
        slight: bool,
    ) -> Result<ProxyPre<ComponentState>, Error> {
        let link = |source| Error::Link {
            path: path.to_owned(),
            source,
        };
        let component =
            deserialize_component(&self.engine, entry).map_err(|source| Error::Compile {
                path: path.to_owned(),
                source,
            })?;
        let slight_linker;
        let linker = match slight {
            true => {
                slight_linker = self
                    .slight_linker
                    .get(|| crate::slight::component_linker(&self.engine))?;
                &*slight_linker
            }
            false => &self.linker,
        };
        let pre = linker.instantiate_pre(&component).map_err(link)?;
        ProxyPre::new(pre).map_err(link)
    }
}

/// Opens the `/proc/self/pagemap` handle that wasmtime keeps for the life of the process
/// ([`HttpEngine::new`] resets slots with it). A process that will take a non-root uid must
/// call this first: the change makes it non-dumpable, and its `/proc/self` files then belong
/// to root. Call it without `CAP_SYS_ADMIN` in effect, so the handle never shows physical page
/// frames.
pub fn open_pagemap() {
    wasmtime::PoolingAllocationConfig::is_pagemap_scan_available();
}

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
    server: std::sync::Weak<Server>,
    outputs: Arc<Outputs>,
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

type ResponseFuture = Box<
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
fn send_out(
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
fn spin_request(
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
fn host_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn no_io() -> Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> {
    Box::new(async { Ok(()) })
}

/// What every request of one server shares.
pub(crate) struct Server {
    engine: wasmtime::Engine,
    ticker: Ticker,
    routes: Routes,
    spec: Arc<WorkloadSpec>,
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
    fn route<B>(
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
    fn internal(&self, id: &str) -> Option<Arc<Target>> {
        match &self.routes {
            Routes::Spin(app) => app.internal(id),
            Routes::One(_) => None,
        }
    }
}

fn static_response(response: &wasmcell_spin::StaticResponse) -> Response<HyperOutgoingBody> {
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

fn single_threaded_runtime() -> std::io::Result<tokio::runtime::Runtime> {
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
async fn serve_here(
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
async fn handle(
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
    fn status(&self) -> (StatusCode, String) {
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

async fn run_handler(
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

fn plain(status: StatusCode, text: String) -> Response<HyperOutgoingBody> {
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

#[cfg(test)]
mod tests {
    use std::hash::{DefaultHasher, Hash, Hasher};

    use super::*;

    fn compatibility(engine: &wasmtime::Engine) -> u64 {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.finish()
    }

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
        let host = Arc::new(crate::spin::host::tests::spin_host(
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
        let sent = Box::into_pin(spin_request(host.clone(), None, network, request, None)).await;
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

    #[test]
    fn servers_load_the_artifacts_the_compiler_caches() {
        // The shim compiles without knowing whether a component is a server; its sandbox loads
        // the entry into the pooling engine, so the two must agree on what the code is.
        let compiler = wasmtime::Engine::new(&crate::engine::config()).unwrap();
        let http = HttpEngine::new(crate::engine::config(), 2).unwrap();
        assert_eq!(compatibility(&compiler), compatibility(&http.engine));
    }
}
