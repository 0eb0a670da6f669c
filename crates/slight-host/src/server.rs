//! slight's `http-server` interface and the servers it sets up: `router::new` and its
//! `get`/`put`/`post`/`delete` build a route table naming handler exports; `server::serve`
//! listens (in the container's network) and keeps the table. Once `_start` returns, each
//! request that matches a route gets a fresh instance and its handler export, called with the
//! request laid out as wit-bindgen 0.2 lays out a `request` record.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use wasmtime::{Caller, Extern, InstancePre, Linker, ValType};

use super::{Handle, SlightHost, SlightInstance, instance};
use crate::SlightState;
use wasmcell_runtime::Exit;
use wasmcell_runtime::connections::Connections;
use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::core_abi::{Abi, HttpRequest, METHODS, Ret};
use wasmcell_runtime::define_import as define;
use wasmcell_runtime::epoch::Ticker;
use wasmcell_runtime::error::Error;
use wasmcell_runtime::state::ModuleState;
use wasmcell_runtime::stdio::Outputs;
use wasmcell_runtime::store::{Budget, new_store};
use wasmcell_runtime::wasi::wasi_builder;
use wasmcell_workload::WorkloadSpec;

type Host<'a> = Caller<'a, SlightState>;

/// `http-error`'s cases, by tag.
const HTTP_ERRORS: [&str; 5] = [
    "invalid-url",
    "timeout-error",
    "protocol-error",
    "status-error",
    "unexpected-error",
];
const STATUS_ERROR: u8 = 3;
const UNEXPECTED: u8 = 4;

/// A route table being built.
#[derive(Clone, Default)]
pub(super) struct Router {
    base: String,
    routes: Vec<Route>,
}

#[derive(Clone)]
pub(super) struct Route {
    method: Method,
    /// `/`-separated segments; `:name` matches one segment and names it, a last `*` matches
    /// the rest.
    path: Vec<String>,
    /// The handler's export: the name the app gave with `_` as `-`, as slight calls it.
    handler: String,
}

impl Router {
    /// Adds `route` (below the router's base) for `method`, handled by the export `handler`.
    fn add(&mut self, method: Method, route: &str, handler: &str) {
        let path = format!("{}/{}", self.base, route.trim_start_matches('/'));
        self.routes.push(Route {
            method,
            path: path
                .trim_start_matches('/')
                .split('/')
                .map(str::to_owned)
                .collect(),
            handler: handler.replace('_', "-"),
        });
    }
}

impl Route {
    /// The route's parameters if it matches `path`.
    fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut params = Vec::new();
        let mut parts = path.trim_start_matches('/').split('/');
        for segment in &self.path {
            if segment == "*" {
                return Some(params);
            }
            let part = parts.next()?;
            match segment.strip_prefix(':') {
                Some(name) if !part.is_empty() => params.push((name.to_owned(), part.to_owned())),
                Some(_) => return None,
                None if segment == part => {}
                None => return None,
            }
        }
        parts.next().is_none().then_some(params)
    }
}

/// A server `_start` set up: listening, served once `_start` returns.
pub(super) struct Listening {
    listener: tokio::net::TcpListener,
    routes: Arc<Vec<Route>>,
}

pub(super) fn add_to_linker(linker: &mut Linker<SlightState>) -> wasmtime::Result<()> {
    const MODULE: &str = "http-server";
    define!(linker, MODULE, "router::new", new_router, ret);
    define!(
        linker,
        MODULE,
        "router::new-with-base",
        new_router_with_base,
        base,
        len,
        ret
    );
    define!(
        linker,
        MODULE,
        "router::get",
        add_route::<0>,
        router,
        route,
        route_len,
        handler,
        handler_len,
        ret
    );
    define!(
        linker,
        MODULE,
        "router::post",
        add_route::<1>,
        router,
        route,
        route_len,
        handler,
        handler_len,
        ret
    );
    define!(
        linker,
        MODULE,
        "router::put",
        add_route::<2>,
        router,
        route,
        route_len,
        handler,
        handler_len,
        ret
    );
    define!(
        linker,
        MODULE,
        "router::delete",
        add_route::<3>,
        router,
        route,
        route_len,
        handler,
        handler_len,
        ret
    );
    define!(
        linker,
        MODULE,
        "server::serve",
        serve,
        address,
        len,
        router,
        ret
    );
    define!(linker, MODULE, "server::stop", stop, server, ret);
    Ok(())
}

async fn new_router(caller: &mut Host<'_>, ret: i32) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let handle = instance(caller).insert(Handle::Router(Router::default()));
    abi.ret(caller, ret, Ret::Handle(handle)).await
}

async fn new_router_with_base(
    caller: &mut Host<'_>,
    base: i32,
    len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let base = abi.string(&*caller, base, len)?;
    let router = Router {
        base: base.trim_end_matches('/').to_owned(),
        routes: Vec::new(),
    };
    let handle = instance(caller).insert(Handle::Router(router));
    abi.ret(caller, ret, Ret::Handle(handle)).await
}

fn router(caller: &mut Host<'_>, handle: i32) -> wasmtime::Result<Router> {
    match instance(caller).get(handle) {
        Some(Handle::Router(router)) => Ok(router.clone()),
        _ => wasmtime::bail!("http-server: handle {handle} is not a router"),
    }
}

/// `router::get` (and the others, by `METHOD`'s case): a new router with the route added, as
/// slight returns one.
async fn add_route<const METHOD: usize>(
    caller: &mut Host<'_>,
    handle: i32,
    route: i32,
    route_len: i32,
    handler: i32,
    handler_len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let mut router = router(caller, handle)?;
    let route = abi.string(&*caller, route, route_len)?;
    let handler = abi.string(&*caller, handler, handler_len)?;
    router.add(METHODS[METHOD].clone(), &route, &handler);
    let handle = instance(caller).insert(Handle::Router(router));
    abi.ret(caller, ret, Ret::Handle(handle)).await
}

async fn serve(
    caller: &mut Host<'_>,
    address: i32,
    len: i32,
    handle: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let address = abi.string(&*caller, address, len)?;
    let router = router(caller, handle)?;
    let result = match listen(caller, &address, router).await {
        Ok(server) => Ret::Handle(instance(caller).insert(Handle::Server(server))),
        Err(why) => {
            instance(caller).host.diagnostics.report(&why);
            Ret::Error(UNEXPECTED, why)
        }
    };
    abi.ret(caller, ret, result).await
}

/// Checks that the app may serve `router` and that its handlers are exported, and listens;
/// the new server's index.
async fn listen(caller: &mut Host<'_>, address: &str, router: Router) -> Result<usize, String> {
    let slight = instance(caller);
    if !slight.host.app.http_server {
        return Err("server::serve: slightfile.toml declares no `http` capability: add a [[capability]] with resource = \"http\"".to_owned());
    }
    if slight.servers.is_none() {
        return Err(
            "server::serve: a server is started by the app's main, not by a handler".to_owned(),
        );
    }
    let addr = match env_addr(&slight.host) {
        Some(addr) => addr,
        None => resolve(address).await?,
    };
    for route in &router.routes {
        let handler = &route.handler;
        let shaped = match caller.get_export(handler) {
            Some(Extern::Func(func)) => {
                let ty = func.ty(&*caller);
                ty.params().len() == 10
                    && ty.params().all(|p| matches!(p, ValType::I32))
                    && ty.results().len() == 1
            }
            _ => false,
        };
        if !shaped {
            return Err(format!(
                "server::serve: route {} /{} names handler {handler:?}, which the module does not export as an HTTP handler (a function of a request returning a response, as slight's register_handler makes one)",
                route.method,
                route.path.join("/")
            ));
        }
    }
    let listener = wasmcell_runtime::http::bind(addr)
        .map_err(|e| format!("server::serve: cannot listen on {addr}: {e}"))?;
    tracing::debug!(%addr, routes = router.routes.len(), "slight app listening");
    let servers = instance(caller).servers.get_or_insert_default();
    servers.push(Some(Listening {
        listener,
        routes: Arc::new(router.routes),
    }));
    Ok(servers.len() - 1)
}

/// `WASMCELL_HTTP_ADDR` in the container's environment: where the app listens whatever
/// address it asks for (slight apps hard-code theirs).
fn env_addr(host: &SlightHost) -> Option<SocketAddr> {
    let value = host
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "WASMCELL_HTTP_ADDR")?;
    value.1.parse().ok()
}

async fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(address)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            format!("server::serve: {address:?} is not an address to listen on (e.g. 0.0.0.0:3000)")
        })
}

async fn stop(caller: &mut Host<'_>, handle: i32, ret: i32) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let slight = instance(caller);
    let Some(&Handle::Server(index)) = slight.get(handle) else {
        wasmtime::bail!("http-server: handle {handle} is not a server");
    };
    if let Some(server) = slight.servers.as_mut().and_then(|s| s.get_mut(index)) {
        *server = None;
    }
    abi.ret(caller, ret, Ret::Unit).await
}

/// Everything a request's instance is made from.
pub(super) struct Serving {
    pub(super) engine: wasmtime::Engine,
    pub(super) ticker: Ticker,
    /// How many threads serve requests (see `HttpEngine::new`).
    pub(super) threads: usize,
    pub(super) pre: InstancePre<SlightState>,
    pub(super) host: Arc<SlightHost>,
    pub(super) spec: Arc<WorkloadSpec>,
    pub(super) controls: Controls,
}

impl Serving {
    /// Serves `servers` until the app is asked to stop, then drains (bounded) and exits 0.
    pub(super) async fn serve(self, servers: Vec<Listening>) -> Result<Exit, Error> {
        let serving = Arc::new(self);
        let outputs = Arc::new(Outputs::open(&serving.spec.stdio).await?);
        // Connections are dealt to worker threads of this server's own in turn, never to the
        // caller's runtime: dropping the workers (when the app ends or is killed) ends every
        // request still in flight, so none outlives its container and its grants (whose
        // descriptor numbers the next container may be given).
        let workers = (0..serving.threads.max(1))
            .map(|_| wasmcell_runtime::http::Worker::start(serving.controls.clone()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| Error::Engine(e.into()))?;
        let runtimes = workers
            .iter()
            .map(|worker| worker.runtime.clone())
            .collect();
        let mut connections = Connections::new(&serving.spec.http, runtimes);
        loop {
            // Both steps may wait (for a connection, for room for it), and stop when terminated.
            let next = async {
                let accepts = servers.iter().map(|s| Box::pin(s.listener.accept()));
                let (accepted, index, _) = futures_util::future::select_all(accepts).await;
                let routes = servers[index].routes.clone();
                let (serving, outputs) = (serving.clone(), outputs.clone());
                let respond = move |request| {
                    let (serving, outputs, routes) =
                        (serving.clone(), outputs.clone(), routes.clone());
                    async move { serving.respond(&routes, &outputs, request).await }
                };
                connections
                    .serve(accepted.map(|(stream, _)| stream), respond)
                    .await;
            };
            tokio::select! {
                () = next => {}
                () = serving.controls.terminated() => break,
            }
        }
        drop(servers);
        connections.drain().await;
        drop(workers);
        Ok(Exit::Code(0))
    }

    async fn respond(
        &self,
        routes: &[Route],
        outputs: &Outputs,
        request: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let matched = routes
            .iter()
            .filter(|route| route.method == parts.method)
            .find_map(|route| Some((route, route.matches(path)?)));
        let Some((route, params)) = matched else {
            return match routes.iter().any(|route| route.matches(path).is_some()) {
                true => plain(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed\n".to_owned(),
                ),
                false => plain(StatusCode::NOT_FOUND, "not found\n".to_owned()),
            };
        };
        let limits = self.spec.http;
        let max_body = usize::try_from(limits.max_body).unwrap_or(usize::MAX);
        let Ok(body) = Limited::new(body, max_body).collect().await else {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {} bytes\n", limits.max_body),
            );
        };
        let request = HttpRequest {
            method: METHODS
                .iter()
                .position(|m| *m == parts.method)
                .unwrap_or_default() as i32,
            uri: parts.uri.to_string(),
            headers: wasmcell_runtime::core_abi::header_pairs(&parts.headers),
            params,
            client_addr: None,
            body: body.to_bytes(),
        };
        let shown = format!("{} {}", parts.method, path);
        let called =
            tokio::time::timeout(limits.timeout, self.call(&route.handler, request, outputs));
        let failed = |why: String| {
            self.host
                .diagnostics
                .report(&format!("{shown}: the handler failed: {why}"));
            plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n"))
        };
        match called.await {
            Err(_) => {
                self.host.diagnostics.report(&format!(
                    "{shown}: the handler did not answer within {} s",
                    limits.timeout.as_secs()
                ));
                plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the handler did not answer in time\n".to_owned(),
                )
            }
            Ok(Err(trap)) => failed(format!("{trap:?}")),
            Ok(Ok(Err(error))) => failed(format!("it returned {error}")),
            Ok(Ok(Ok(response))) => match response.into_http() {
                Ok(response) => response,
                Err(why) => failed(why),
            },
        }
    }

    /// A fresh instance's `handler` export, called with `request`.
    async fn call(
        &self,
        handler: &str,
        request: HttpRequest,
        outputs: &Outputs,
    ) -> wasmtime::Result<Result<wasmcell_runtime::core_abi::Response, String>> {
        let mut wasi = wasi_builder(&self.spec).map_err(|e| wasmtime::format_err!("{e}"))?;
        outputs.attach(&mut wasi);
        let state = ModuleState {
            wasi: wasi.build_p1(),
            budget: Budget::new(&self.controls, self.ticker.store_clock()?),
            host: SlightInstance::new(self.host.clone(), false),
        };
        let mut store = new_store(&self.engine, state, &self.controls);
        let instance = self.pre.instantiate_async(&mut store).await?;
        super::initialize(&mut store, &instance).await?;
        let abi = Abi::of_instance(&mut store, &instance)?;
        let args = abi.request(&mut store, &request).await?;
        let func = instance
            .get_func(&mut store, handler)
            .ok_or_else(|| wasmtime::format_err!("the module exports no `{handler}`"))?;
        let mut ret = [wasmtime::Val::I32(0)];
        func.call_async(&mut store, &args, &mut ret).await?;
        let ret = ret[0].unwrap_i32();
        // `expected<response, http-error>`: the response at +4, or the error's case at +4 and
        // its string (or `status-error`'s status) at +8.
        let area = abi.bytes(&store, ret, 16)?;
        let word = |at: usize| i32::from_le_bytes(area[at..at + 4].try_into().unwrap());
        if area[0] == 0 {
            return Ok(Ok(abi.response(&store, ret + 4)?));
        }
        Ok(Err(match area[4] {
            STATUS_ERROR => format!("status-error({})", u16::from_le_bytes([area[8], area[9]])),
            case => format!(
                "{}: {}",
                HTTP_ERRORS.get(case as usize).unwrap_or(&"error"),
                String::from_utf8_lossy(&abi.bytes(&store, word(8), word(12))?)
            ),
        }))
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route a guest adds with `router::get` to a router made with `base` (`router::new`
    /// is the base "").
    fn route(base: &str, route: &str) -> Route {
        let mut router = Router {
            base: base.trim_end_matches('/').to_owned(),
            routes: Vec::new(),
        };
        router.add(Method::GET, route, "handle_hello");
        router.routes.remove(0)
    }

    #[test]
    fn routes_match_segments_parameters_and_a_wildcard() {
        let route = |path| route("", path);
        assert_eq!(route("/hello").matches("/hello"), Some(vec![]));
        assert_eq!(route("/hello").matches("/hello/x"), None);
        assert_eq!(route("/hello").matches("/hellooo"), None);
        assert_eq!(route("/hello").matches("/"), None);
        assert_eq!(
            route("/kv/:key").matches("/kv/color"),
            Some(vec![("key".to_owned(), "color".to_owned())])
        );
        assert_eq!(route("/kv/:key").matches("/kv/"), None);
        assert_eq!(route("/kv/:key").matches("/kv/color/more"), None);
        assert_eq!(route("/files/*").matches("/files/a/b"), Some(vec![]));
        assert_eq!(route("/").matches("/"), Some(vec![]));
    }

    #[test]
    fn a_handler_is_called_by_its_export_name() {
        assert_eq!(route("", "/hello").handler, "handle-hello");
    }

    #[test]
    fn routes_are_below_the_routers_base() {
        let under = route("/api/", "/items/:n");
        assert_eq!(
            under.matches("/api/items/3"),
            Some(vec![("n".to_owned(), "3".to_owned())])
        );
        assert_eq!(under.matches("/items/3"), None);
    }
}
