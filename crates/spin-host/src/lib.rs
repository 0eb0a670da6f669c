//! Spin apps on the kernel: a [`wasmcell_spin::App`] (resolved by the front end from
//! `spin.toml`) prepared into one instance-pre per component, served over HTTP by Spin's routes
//! and fed by its Redis channels. Spin's factors in one crate: its host interfaces (`host`,
//! `spin3`), where requests go (`routes`) and where a component's own requests may go
//! (`outbound`), Spin 1's modules (`spin1`) and the Redis trigger (`redis_trigger`).
//!
//! Every component runs on the kernel's pooling engine ([`HttpEngine`]), in a
//! `SpinState`, with WASI, `wasi:http` and Spin's interfaces; it sees its own environment and
//! files, not the rootfs, and reaches only the hosts, stores and databases its manifest entry
//! grants.
#![deny(missing_docs)]

mod host;
mod imports;
mod outbound;
mod redis_trigger;
mod routes;
mod spin1;

use std::path::Path;
use std::sync::Arc;

use wasmcell_oci::rootfs;
use wasmcell_spin::{App, HttpHandler};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use host::{SpinHost, SpinState};
use outbound::{Chain, SpinOutbound};
use routes::SpinRoutes;
use wasmcell_runtime::Exit;
use wasmcell_runtime::cache::{CompileCache, InUse};
use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::error::Error;
use wasmcell_runtime::http::{
    Handler, HandlerFuture, HttpEngine, Server, Serving, Start, TierUp, run_proxy, run_service,
    serve,
};
use wasmcell_runtime::outbound::HttpHooks;
use wasmcell_runtime::run::{Run, RunFuture, Tiers};
use wasmcell_runtime::state::{ComponentState, component_linker};
use wasmcell_runtime::stdio::Outputs;
use wasmcell_runtime::store::{Budget, new_store};
use wasmcell_stores::{Opened, Places};
use wasmcell_workload::{ModuleSource, Network, WorkloadSpec};

/// A Spin app ready to run: its components linked, its routes known, on the servers' pooling
/// engine.
pub struct SpinApp {
    app: Arc<App>,
    /// The engine its Redis trigger's and commands' instances run on.
    http: Arc<HttpEngine>,
    /// Its HTTP routes on `http` (moved to optimised code by a tier-up).
    tiers: Tiers,
    /// By the app's component index.
    components: Vec<Prepared>,
}

/// One component: what runs it for each of its non-HTTP triggers, and what its instances
/// start from.
struct Prepared {
    /// Set when a Redis trigger uses the component.
    redis: Option<redis_trigger::RedisExport>,
    /// Set when a command trigger runs the component.
    command: Option<wasmtime_wasi::p2::bindings::CommandPre<SpinState>>,
    start: Start,
    host: Arc<SpinHost>,
}

/// A Spin component's HTTP handler, as its HTTP trigger calls it.
struct SpinComponent {
    pre: HttpExport,
    start: Start,
    host: Arc<SpinHost>,
}

/// What a Spin component serves HTTP with: Spin 2's and 3's `wasi:http/incoming-handler@0.2`,
/// or Spin 4's `wasi:http/handler@0.3.0` (a fresh instance per request, as for 0.2).
enum HttpExport {
    Proxy(ProxyPre<SpinState>),
    Service(ServicePre<SpinState>),
}

impl Handler for SpinComponent {
    fn handle<'a>(
        &'a self,
        server: &'a Arc<Server>,
        outputs: &'a Arc<Outputs>,
        request: hyper::Request<wasmtime_wasi_http::WasiBody>,
        _peer: std::net::SocketAddr,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let chain = Chain {
                server: Arc::downgrade(server),
                outputs: outputs.clone(),
            };
            let base = self.host.wasi_base(server.spec().network);
            let wasi = self.start.wasi(base, self.host.outputs(outputs));
            let state = spin_state(
                &self.host,
                wasi,
                server.spec().network,
                server.budget()?,
                Some(chain),
            );
            match &self.pre {
                HttpExport::Proxy(pre) => run_proxy(server, pre, state, request).await,
                HttpExport::Service(pre) => run_service(server, pre, state, request).await,
            }
        })
    }
}

/// A Spin component instance's state: `wasi`, and `host`'s grants and outbound policy.
fn spin_state(
    host: &Arc<SpinHost>,
    wasi: wasmtime_wasi::WasiCtx,
    network: Network,
    budget: Budget,
    chain: Option<Chain>,
) -> SpinState {
    let policy = SpinOutbound {
        host: host.clone(),
        chain,
    };
    let hooks = HttpHooks::with_policy(network, Box::new(policy));
    ComponentState::new(wasi, hooks, budget, host.clone())
}

/// The linker Spin components are linked with: WASI, `wasi:http` and Spin's interfaces.
fn spin_linker(engine: &wasmtime::Engine) -> Result<wasmtime::component::Linker<SpinState>, Error> {
    let mut linker = component_linker(engine)?;
    host::add_to_linker(&mut linker).map_err(Error::Engine)?;
    Ok(linker)
}

/// The app's directory: the spec's root.
fn app_dir(spec: &WorkloadSpec) -> Result<&std::path::Path, Error> {
    match &spec.module {
        ModuleSource::Rootfs { root, .. } => Ok(root),
        ModuleSource::File(_) => Err(Error::App(
            "a Spin app is read from its directory, not from a single file".to_owned(),
        )),
    }
}

/// Reads and compiles every component of `app` into the cache (the shim's half of `create`);
/// returns their entries, held in use.
pub fn compile(
    engine: &wasmtime::Engine,
    cache: &CompileCache,
    spec: &WorkloadSpec,
    app: &App,
) -> Result<Vec<InUse>, Error> {
    app.components
        .iter()
        .map(|component| {
            let (bytes, kind) = read_component(spec, component)?;
            cache.ensure(engine, kind, &bytes, &component.source)
        })
        .collect()
}

fn read_component(
    spec: &WorkloadSpec,
    component: &wasmcell_spin::Component,
) -> Result<(Vec<u8>, wasmcell_oci::WasmKind), Error> {
    let (root, path) = (app_dir(spec)?, component.source.trim_start_matches('/'));
    let spin = |what: String| Error::App(format!("[component.{}] {what}", component.id));
    let bytes = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())
        .map_err(rootfs::ReadError::from)
        .and_then(|dir| rootfs::read_regular(&dir, Path::new(path), rootfs::MAX_MODULE_SIZE))
        .map_err(|e| {
            spin(format!(
                "cannot read its source `{}` in the app's directory: {e}",
                component.source
            ))
        })?;
    let (mut bytes, kind) = match wasmcell_oci::FileKind::detect(&bytes) {
        wasmcell_oci::FileKind::Wasm(kind @ wasmcell_oci::WasmKind::Component) => (bytes, kind),
        // Spin 1's modules run as core modules; Spin 2's are made components.
        wasmcell_oci::FileKind::Wasm(kind @ wasmcell_oci::WasmKind::Module)
            if spin1::is_spin1(&bytes) =>
        {
            return Ok((bytes, kind));
        }
        wasmcell_oci::FileKind::Wasm(wasmcell_oci::WasmKind::Module) => componentize(&bytes)
            .map(|component| (component, wasmcell_oci::WasmKind::Component))
            .map_err(|why| {
                spin(format!(
                    "its source `{}` is a core module that cannot be made a component ({why}): Spin 2's SDKs built preview 1 modules that can, and Spin 1's export `handle-http-request`; rebuild it with a current Spin SDK",
                    component.source
                ))
            })?,
        other => {
            return Err(spin(format!(
                "its source `{}` is {other}",
                component.source
            )));
        }
    };
    // Spin 4's SDKs import WASI 0.3 twice, as `@0.3.0` and as the release candidate that is it.
    wasmcell_runtime::binary::alias_release_candidates(&mut bytes);
    // Checked before compiling, which takes seconds for a large component.
    let unprovided = imports::unprovided(&bytes);
    if !unprovided.is_empty() {
        return Err(spin(format!(
            "imports what wasmcell does not provide: {}. {}",
            unprovided.join(", "),
            imports::PROVIDED
        )));
    }
    Ok((bytes, kind))
}

/// A core module as Spin 2's SDKs built them for WASI preview 1 (`wasm32-wasi`), made the
/// component Spin makes of it when it loads it: the component type the SDK embedded in the
/// module, with WASI's preview 1 adapter (the reactor: a handler, not a command) in front of
/// its preview 1 imports. Deterministic, so the compile cache finds it again.
fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    use wasi_preview1_component_adapter_provider::{
        WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    };
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(module)
        .and_then(|encoder| {
            encoder.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|mut encoder| encoder.encode())
        .map_err(|e| format!("{e:#}"))
}

/// Loads, links and pre-instantiates every component of the spec's app; returns it with the
/// cache entries it was loaded from, held in use.
pub fn prepare(
    cache: &CompileCache,
    http: &Arc<HttpEngine>,
    spec: &WorkloadSpec,
    app: &App,
) -> Result<(SpinApp, Vec<InUse>), Error> {
    let root = app_dir(spec)?;
    let places = Arc::new(Places::new(root, &spec.preopens));
    let diagnostics = wasmcell_runtime::stdio::Diagnostics::new(&spec.stdio.stderr);
    let opened = Opened {
        stores: app
            .key_value_stores
            .keys()
            .map(|label| (label.clone(), Default::default()))
            .collect(),
        databases: app
            .sqlite_databases
            .keys()
            .map(|label| (label.clone(), Default::default()))
            .collect(),
    };
    let served: Vec<usize> = app
        .http
        .iter()
        .filter_map(|t| match t.handler {
            HttpHandler::Component(index) => Some(index),
            HttpHandler::Static(_) => None,
        })
        .collect();
    let linker = http.linkers().get(|| spin_linker(http.engine()))?;
    let (mut components, mut cached) = (Vec::new(), Vec::new());
    let mut handlers: Vec<Option<Arc<dyn Handler>>> = Vec::new();
    for (index, component) in app.components.iter().enumerate() {
        let spin = |what: String| Error::App(format!("[component.{}] {what}", component.id));
        let (bytes, kind) = read_component(spec, component)?;
        // Straight into the servers' engine: the entry the shim compiled, loaded once.
        let (artifact, entry) = cache.load(http.engine(), kind, &bytes, &component.source)?;
        cached.push(entry);
        let host = Arc::new(SpinHost::new(
            component,
            app,
            &opened,
            places.clone(),
            diagnostics.clone(),
        ));
        let loaded = match artifact {
            wasmcell_runtime::cache::Artifact::Component(loaded) => loaded,
            wasmcell_runtime::cache::Artifact::Module(module) => {
                let triggered =
                    app.command.contains(&index) || app.redis.iter().any(|t| t.component == index);
                if triggered {
                    return Err(spin(
                        "is a Spin 1 module, which Spin runs under HTTP triggers only".to_owned(),
                    ));
                }
                let pre =
                    spin1::Spin1Pre::new(http, &module, component.mounts.clone()).map_err(spin)?;
                let start = Start {
                    env: component.environment.clone(),
                    args: Vec::new(),
                    preopens: WasiCtxBuilder::new().build().filesystem().clone(),
                };
                let handler = spin1::Spin1Handler {
                    pre,
                    host: host.clone(),
                    env: component.environment.clone(),
                };
                handlers.push(
                    served
                        .contains(&index)
                        .then(|| Arc::new(handler) as Arc<dyn Handler>),
                );
                components.push(Prepared {
                    redis: None,
                    command: None,
                    start,
                    host,
                });
                continue;
            }
        };
        let pre = linker.instantiate_pre(&loaded).map_err(|e| {
            let why = wasmcell_runtime::error::error_chain(&Error::Engine(e));
            spin(format!("cannot be linked: {why}. {}", imports::PROVIDED))
        })?;
        let mut files = WasiCtxBuilder::new();
        for (host, guest) in &component.mounts {
            files
                .preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| spin(format!("cannot open its files {}: {e}", host.display())))?;
        }
        let start = Start {
            env: component.environment.clone(),
            args: Vec::new(),
            preopens: files.build().filesystem().clone(),
        };
        let handler: Option<Arc<dyn Handler>> = if served.contains(&index) {
            let export = if wasmcell_runtime::http::is_service(http.engine(), &loaded) {
                ServicePre::new(pre.clone()).map(HttpExport::Service)
            } else {
                ProxyPre::new(pre.clone()).map(HttpExport::Proxy)
            };
            let export = export.map_err(|_| {
                spin("has an HTTP trigger but exports neither wasi:http/incoming-handler@0.2 nor wasi:http/handler@0.3.0 (Spin 1's inbound-http is not supported)".to_owned())
            })?;
            Some(Arc::new(SpinComponent {
                pre: export,
                start: start.clone(),
                host: host.clone(),
            }))
        } else {
            None
        };
        handlers.push(handler);
        let command = if app.command.contains(&index) {
            Some(
                wasmtime_wasi::p2::bindings::CommandPre::new(pre.clone()).map_err(|_| {
                    spin("has a command trigger but does not export wasi:cli/run".to_owned())
                })?,
            )
        } else {
            None
        };
        let redis = if app.redis.iter().any(|t| t.component == index) {
            Some(redis_trigger::RedisExport::new(pre).ok_or_else(|| {
                spin(
                    "has a Redis trigger but exports neither fermyon:spin/inbound-redis nor spin:redis/inbound-redis@3.0.0".to_owned(),
                )
            })?)
        } else {
            None
        };
        components.push(Prepared {
            redis,
            command,
            start,
            host,
        });
    }
    let app = Arc::new(app.clone());
    let routes = Arc::new(SpinRoutes {
        app: app.clone(),
        handlers,
    });
    Ok((
        SpinApp {
            app,
            http: http.clone(),
            tiers: Tiers::new(Serving {
                http: http.clone(),
                routes,
            }),
            components,
        },
        cached,
    ))
}

impl SpinApp {
    /// Whether the app has HTTP triggers to serve.
    fn serves_http(&self) -> bool {
        !self.app.http.is_empty()
    }

    /// Runs command component `index` once, to its exit.
    async fn run_command(
        &self,
        index: usize,
        spec: &WorkloadSpec,
        controls: &Controls,
    ) -> Result<Exit, Error> {
        let prepared = &self.components[index];
        let Some(command) = &prepared.command else {
            return Err(Error::App(format!(
                "[component.{}] has no command to run",
                self.app.components[index].id
            )));
        };
        let mut wasi = prepared.host.wasi_base(spec.network);
        wasi.envs(&prepared.start.env)
            .args(&[self.app.components[index].id.as_str()]);
        let mut stdio = spec.stdio.clone();
        if prepared.host.silenced {
            stdio.stdout = wasmcell_workload::Output::Null;
            stdio.stderr = wasmcell_workload::Output::Null;
        }
        let outputs = wasmcell_runtime::stdio::attach(&mut wasi, &stdio).await?;
        let mut wasi = wasi.build();
        *wasi.filesystem() = prepared.start.preopens.clone();
        let clock = self
            .http
            .ticker()
            .store_clock()
            .map_err(|e| Error::Engine(e.into()))?;
        let budget = Budget::new(controls, clock);
        let state = spin_state(&prepared.host, wasi, spec.network, budget, None);
        let mut store = new_store(self.http.engine(), state, controls);
        let result = async {
            let instance = command.instantiate_async(&mut store).await?;
            instance.wasi_cli_run().call_run(&mut store).await
        }
        .await;
        let exit = Exit::of_run(result, &store.data().budget.limiter);
        drop(store);
        outputs.written().await;
        Ok(exit)
    }

    /// Runs the app: its command components first, each to completion (the first that fails
    /// ends the app with its status), then its HTTP server and Redis listeners until
    /// terminated. An app of commands alone ends with the last one's status.
    async fn run_app(&self, spec: &Arc<WorkloadSpec>, controls: &Controls) -> Result<Exit, Error> {
        let mut last = Exit::Code(0);
        for &index in &self.app.command {
            last = self.run_command(index, spec, controls).await?;
            if last != Exit::Code(0) {
                return Ok(last);
            }
        }
        if !self.serves_http() && self.app.redis.is_empty() {
            return Ok(last);
        }
        let (serving, tier_up) = self.tiers.for_run();
        if self.app.redis.is_empty() {
            return serve(serving, tier_up, spec, controls).await;
        }
        if !self.serves_http() {
            redis_trigger::listen(self, spec, controls).await?;
            return Ok(Exit::Code(0));
        }
        // A trigger that cannot subscribe ends the app at once, HTTP server and all: an app that
        // serves but never handles its messages would look healthy to its probes.
        let (served, ()) = tokio::try_join!(
            serve(serving, tier_up, spec, controls),
            redis_trigger::listen(self, spec, controls)
        )?;
        Ok(served)
    }
}

impl Run for SpinApp {
    fn run<'a>(&'a self, spec: &'a Arc<WorkloadSpec>, controls: &'a Controls) -> RunFuture<'a> {
        Box::pin(self.run_app(spec, controls))
    }

    fn stops_gracefully(&self) -> bool {
        true
    }

    fn serving(&self) -> Option<Serving> {
        self.serves_http().then(|| self.tiers.serving())
    }

    /// Only its HTTP server switches: its commands have run by then, and its Redis trigger
    /// stays on the code it started on.
    fn tier_up(&self, tier_up: TierUp) {
        self.tiers.set_tier_up(tier_up);
    }
}

/// What the Redis trigger needs of a component.
struct RedisComponent<'a> {
    redis: Option<&'a redis_trigger::RedisExport>,
    start: &'a Start,
    host: &'a Arc<SpinHost>,
}

impl SpinApp {
    fn component(&self, index: usize) -> RedisComponent<'_> {
        let prepared = &self.components[index];
        RedisComponent {
            redis: prepared.redis.as_ref(),
            start: &prepared.start,
            host: &prepared.host,
        }
    }
}
