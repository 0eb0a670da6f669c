//! The wasmtime engine and the two steps of running a workload: [`Engine::prepare`]
//! (everything that is not per instance, ending in the one choice of what the workload runs)
//! and [`Prepared::run`].

use std::sync::Arc;

use wasmcell_oci::WasmKind;
use wasmtime::ExternType;

use crate::command::{ComponentCommand, ModuleCommand};
use wasmcell_runtime::binary::read_wasm;
use wasmcell_runtime::cache::{Artifact, CompileCache, InUse, deserialize_component};
use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::epoch::Ticker;
use wasmcell_runtime::error::{Error, error_chain};
use wasmcell_runtime::exit::Exit;
use wasmcell_runtime::http::{
    AllPaths, Handler, HttpEngine, Linkers, Proxy, Served, Service, Start, is_proxy, is_service,
};
use wasmcell_runtime::link::{exported_functions, link_error};
use wasmcell_runtime::run::Run;
use wasmcell_runtime::state::{ComponentState, component_linker, module_linker};
use wasmcell_runtime::store::OnFirstUse;
use wasmcell_runtime::{config, stdio};
use wasmcell_slight_host::{Slight, SlightHost};
use wasmcell_wasmedge::{self as wasmedge, WasmEdgeState};
use wasmcell_workload::{App, WorkloadSpec};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

/// Hands the memory a step freed back to the kernel when the step returns, however it returns.
/// glibc keeps freed memory in the arena of the thread that used it for the life of the
/// process: after a compile, Cranelift's working set (megabytes); after any `create`, the module
/// and artifact read whole and the temporaries of checking and linking them, which measured
/// ~170 KiB per idle container (shim and sandbox together, `bench/run.sh density 50`).
struct ReleaseFreedMemory;

impl Drop for ReleaseFreedMemory {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free pages to the kernel; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// The wasmtime engine and the compile cache, without the means to run: what a process that
/// only compiles (the shim) holds. Its configuration is the one [`Engine`] runs with, so what
/// it compiles is what the runners load.
pub struct Compiler {
    engine: wasmtime::Engine,
    cache: CompileCache,
}

impl Compiler {
    /// Creates the wasmtime engine.
    pub fn new(cache: CompileCache) -> Result<Compiler, Error> {
        let engine = wasmtime::Engine::new(&config()).map_err(Error::Engine)?;
        Ok(Compiler { engine, cache })
    }

    /// Checks that `spec` names a wasm binary and compiles it into the cache unless it is there
    /// already, without loading or linking it: the shim's half of `create`, which fails it at
    /// once on a missing file, a non-wasm file or a malformed module. The sandbox loads the
    /// artifact and links it (reporting a missing import or entry function). Blocking:
    /// compiling can take seconds on a cache miss. Returns the entries held in use: keep them
    /// until the sandbox has loaded them, so that no cache collection evicts them meanwhile.
    pub fn compile(&self, spec: &WorkloadSpec) -> Result<Vec<InUse>, Error> {
        let _release = ReleaseFreedMemory;
        if let Some(App::Spin(app)) = &spec.app {
            return wasmcell_spin_host::compile(&self.engine, &self.cache, spec, app);
        }
        let (path, bytes, kind) = read_wasm(spec)?;
        Ok(vec![self.cache.ensure(
            &self.engine,
            kind,
            &bytes,
            &path,
        )?])
    }
}

/// One per process that runs guests: the [`Compiler`], the linkers made on its engine, the
/// pooling engine for HTTP servers, and the epoch clock.
pub struct Engine {
    compiler: Compiler,
    linkers: Linkers,
    http: OnFirstUse<HttpEngine>,
    ticker: Ticker,
    /// How many CPUs this process may use: its affinity and its cgroup's quota.
    cpus: usize,
}

/// What a core module is linked with, for the message when it imports something else.
const PROVIDED: &str = "wasmcell links WASI preview 1, WASI 0.2, wasi:http and WasmEdge's socket extension; WasmEdge plugins (wasi-nn, wasi-crypto, ...) are not available";

impl Engine {
    /// Creates the engine; its epoch clock starts with the first guest run, and each linker
    /// and the HTTP engine with the first guest that needs it.
    pub fn new(cache: CompileCache) -> Result<Engine, Error> {
        let compiler = Compiler::new(cache)?;
        Ok(Engine {
            ticker: Ticker::new(&compiler.engine),
            compiler,
            linkers: Linkers::default(),
            http: OnFirstUse::default(),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
        })
    }

    /// The same engine for a process that may use `cpus` CPUs, counted by the caller: a sandbox
    /// counts them before it pivots into its own root, where the C library and std can no
    /// longer read the cgroup's CPU quota and would count every CPU of the node.
    pub fn cpus(self, cpus: usize) -> Engine {
        Engine {
            cpus: cpus.max(1),
            ..self
        }
    }

    fn http(&self) -> Result<Arc<HttpEngine>, Error> {
        self.http.get(|| HttpEngine::new(config(), self.cpus))
    }

    /// Does everything for `spec` that is not per instance: reads the binary (inside the rootfs,
    /// where it cannot escape it), compiles it through the cache, checks the entry function and
    /// links it. Blocking: compiling can take seconds on a cache miss.
    ///
    /// The one place that chooses what a workload runs from its app kind and binary: a Spin
    /// app, a slight app's module, a component served or run (with slight's capabilities
    /// under slight), or a core module's entry function.
    pub fn prepare(&self, spec: WorkloadSpec) -> Result<Prepared, Error> {
        let _release = ReleaseFreedMemory;
        let Compiler { engine, cache } = &self.compiler;
        if let Some(App::Spin(app)) = &spec.app {
            let (app, cached) = wasmcell_spin_host::prepare(cache, &self.http()?, &spec, app)?;
            return Ok(Prepared::new(Box::new(app), spec, cached));
        }
        let (path, bytes, kind) = read_wasm(&spec)?;
        if let (Some(App::Slight(app)), WasmKind::Module) = (&spec.app, kind) {
            let (slight, cached) = Slight::prepare(self.http()?, cache, &bytes, app, &spec, &path)?;
            return Ok(Prepared::new(Box::new(slight), spec, vec![cached]));
        }
        let (artifact, cached) = cache.load(engine, kind, &bytes, &path)?;
        let run: Box<dyn Run> = match artifact {
            Artifact::Module(module) => Box::new(self.module_command(&spec, &module, &path)?),
            Artifact::Component(component) => {
                if let Some(function) = &spec.function {
                    return Err(Error::EntryFunction {
                        path: path.clone(),
                        function: function.to_owned(),
                        reason: "a component runs `wasi:cli/run` or serves `wasi:http/incoming-handler`; `#function` entrypoints apply to core modules only".to_owned(),
                    });
                }
                let entry = cached.path();
                match &spec.app {
                    // A component under slight gets slight's capabilities as WASI interfaces.
                    Some(App::Slight(app)) => {
                        let host = Arc::new(SlightHost::new(app, &spec));
                        let link = wasmcell_slight_host::component_linker;
                        self.component(&spec, &component, entry, &path, link, host)?
                    }
                    _ => self.component(&spec, &component, entry, &path, component_linker, ())?,
                }
            }
        };
        tracing::debug!(%path, %kind, "prepared");
        Ok(Prepared::new(run, spec, vec![cached]))
    }

    /// A core module's entry function (the spec's `#function`, or `_start`), checked and linked.
    fn module_command(
        &self,
        spec: &WorkloadSpec,
        module: &wasmtime::Module,
        path: &str,
    ) -> Result<ModuleCommand, Error> {
        let engine = &self.compiler.engine;
        let function = spec.function.clone().unwrap_or_else(|| "_start".to_owned());
        let entry_err = |reason: String| Error::EntryFunction {
            path: path.to_owned(),
            function: function.clone(),
            reason,
        };
        match module.get_export(&function) {
            Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {}
            Some(ExternType::Func(ty)) => {
                return Err(entry_err(format!(
                    "its type is {ty}; an entry function takes no parameters and returns nothing"
                )));
            }
            _ if spec.function.is_none() => {
                return Err(entry_err(format!(
                    "the module has no `_start` (it is a library module); name the export to run as `{path}#FUNCTION`{}",
                    exported_functions(module)
                )));
            }
            _ => {
                return Err(entry_err(format!(
                    "the module exports no such function{}",
                    exported_functions(module)
                )));
            }
        }
        let modules = self
            .linkers
            .get(|| module_linker::<Option<Box<wasmcell_wasmedge::WasmEdge>>>(engine))?;
        // A module built for WasmEdge's sockets gets them whatever the runtime name.
        let wasmedge = wasmedge::wanted_by(module);
        let extended;
        let linker = if wasmedge {
            extended =
                wasmedge::linker::<WasmEdgeState>(&modules, module).map_err(Error::Engine)?;
            &extended
        } else {
            &*modules
        };
        let pre = linker
            .instantiate_pre(module)
            .map_err(|source| link_error(linker, module, path, source, PROVIDED))?;
        Ok(ModuleCommand {
            engine: engine.clone(),
            ticker: self.ticker.clone(),
            pre,
            function,
            wasmedge,
        })
    }

    /// A component whose instances hold `host`, linked by `link`'s linker: served (an instance
    /// per request, on the pooling engine, loaded from the cache `entry`) when it exports
    /// `wasi:http/handler@0.3` or `wasi:http/incoming-handler@0.2`, run once through
    /// `wasi:cli/run` (0.3 or 0.2) otherwise.
    fn component<H: Clone + Send + Sync + 'static>(
        &self,
        spec: &WorkloadSpec,
        component: &wasmtime::component::Component,
        entry: &std::path::Path,
        path: &str,
        link: fn(
            &wasmtime::Engine,
        ) -> Result<wasmtime::component::Linker<ComponentState<H>>, Error>,
        host: H,
    ) -> Result<Box<dyn Run>, Error> {
        let engine = &self.compiler.engine;
        let link_err = |source| Error::Link {
            path: path.to_owned(),
            source,
        };
        let candidates = release_candidates(engine, component);
        if !candidates.is_empty() {
            return Err(Error::MissingImports {
                path: path.to_owned(),
                imports: candidates.join(", "),
                provided: COMPONENTS_PROVIDED,
            });
        }
        let service = is_service(engine, component);
        if service || is_proxy(engine, component) {
            let http = self.http()?;
            let linker = http.linkers().get(|| link(http.engine()))?;
            let component =
                deserialize_component(http.engine(), entry).map_err(|source| Error::Compile {
                    path: path.to_owned(),
                    source,
                })?;
            let pre = linker.instantiate_pre(&component).map_err(link_err)?;
            let start = Start::of_spec(spec)?;
            let handler: Arc<dyn Handler> = match service {
                true => Arc::new(Service::new(
                    ServicePre::new(pre).map_err(link_err)?,
                    start,
                    host,
                    spec,
                )),
                false => Arc::new(Proxy {
                    pre: ProxyPre::new(pre).map_err(link_err)?,
                    start,
                    host,
                }),
            };
            let routes = Arc::new(AllPaths(handler));
            return Ok(Box::new(Served { http, routes }));
        }
        let linker = self.linkers.get(|| link(engine))?;
        let command = ComponentCommand::new(engine, &self.ticker, &linker, component, path, host)?;
        Ok(Box::new(command))
    }
}

/// What a component is linked with, for the message when it imports a WASI release candidate.
const COMPONENTS_PROVIDED: &str = "wasmcell links WASI 0.2 (any 0.2.x) and WASI 0.3.0 (cli, clocks, filesystem, random, sockets, http); 0.3.0-rc-2026-03-15, which is 0.3.0; another WASI release candidate (@0.3.0-rc-...) is not supported: build the component against wasi@0.3.0";

/// The WASI 0.3 release candidates `component` imports (`wasi:cli/environment@0.3.0-rc-…`)
/// other than those that are 0.3.0 (renamed when the binary was read, see
/// [`wasmcell_runtime::binary::alias_release_candidates`]): wasmtime implements 0.3.0, and a
/// prerelease version never matches another. (0.2's drafts,
/// such as `wasi:config/store@0.2.0-rc.1`, are another matter: a capability may link them.)
fn release_candidates(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("wasi:") && name.contains("@0.3.0-rc"))
        .map(str::to_owned)
        .collect()
}

/// A workload ready to run: compiled, linked and pre-instantiated. Each [`Prepared::run`] is a
/// fresh instance.
pub struct Prepared {
    run: Box<dyn Run>,
    spec: Arc<WorkloadSpec>,
    /// The cache entries its code was loaded from, held in use for as long as it can run:
    /// evicting them would free no space while they are mapped.
    _cached: Vec<InUse>,
}

impl Prepared {
    fn new(run: Box<dyn Run>, spec: WorkloadSpec, cached: Vec<InUse>) -> Prepared {
        Prepared {
            run,
            spec: Arc::new(spec),
            _cached: cached,
        }
    }

    /// Runs one fresh instance to completion under `controls` (pause, live limits; see
    /// [`Prepared::controls`]). Dropping the returned future stops the guest at its next epoch
    /// tick or host call. Why a run failed or trapped is also written to the guest's stderr, where
    /// its user looks.
    pub async fn run(&self, controls: &Controls) -> Result<Exit, Error> {
        let exit = if self.run.meters_itself() {
            self.run.run(&self.spec, controls).await
        } else {
            let meter = controls.meter();
            meter.metered(self.run.run(&self.spec, controls)).await
        };
        let message = match &exit {
            Ok(Exit::Trapped(message) | Exit::Failed(message)) => message.clone(),
            Ok(Exit::OutOfMemory(overrun)) => format!("guest ended: {overrun}"),
            Ok(Exit::Code(_)) => return exit,
            Err(error) => format!("cannot start the guest: {}", error_chain(error)),
        };
        stdio::report(&self.spec.stdio.stderr, &message).await;
        exit
    }

    /// Fresh controls for a run of this workload, starting from its spec's limits.
    pub fn controls(&self) -> Controls {
        Controls::new(&self.spec.limits)
    }

    /// Whether the guest can end gracefully when asked ([`Controls::terminate`], sent for
    /// SIGTERM): servers stop accepting and finish their requests; commands cannot handle
    /// signals, so they are stopped at once.
    pub fn stops_gracefully(&self) -> bool {
        self.run.stops_gracefully()
    }
}
