//! The wasmtime engine, its WASI linkers, and the two steps of running a workload:
//! [`Engine::prepare`] (everything that is not per instance) and [`Prepared::run`].

use std::sync::Arc;

use wasmcell_oci::WasmKind;
use wasmtime::component::ResourceTable;
use wasmtime::{ExternType, InstancePre, Linker};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::http::{self, HttpEngine, HttpHooks, Routes, Target};
use crate::slight::{Slight, SlightHost, SlightInstance};
use crate::spin::{self, SpinApp, host::SpinHost, spin1::Spin1Instance};
pub(crate) use wasmcell_runtime::binary::read_wasm;
use wasmcell_runtime::cache::{Artifact, CompileCache, InUse};
use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::epoch::Ticker;
use wasmcell_runtime::error::{Error, error_chain};
pub(crate) use wasmcell_runtime::link::{exported_functions, link_error};
use wasmcell_runtime::stdio;
pub(crate) use wasmcell_runtime::store::{
    Budget, HasBudget, Limiter, OnFirstUse, Overrun, new_store,
};
pub(crate) use wasmcell_runtime::wasi::{add_preopens, wasi_base, wasi_builder};
use wasmcell_wasmedge::{self as wasmedge, WasmEdge, WasmEdgeView};
use wasmcell_workload::{App, WorkloadSpec};

/// The exit status a trap is reported with: what a native process that aborts gets (128 + SIGABRT),
/// and what `wasmtime run` exits with on a trap.
const TRAP_STATUS: u32 = 134;

/// The exit status of a guest that exceeded its memory limit: what a process killed by the OOM
/// killer reports (128 + SIGKILL).
const OUT_OF_MEMORY_STATUS: u32 = 137;

/// The store state of a core module (WASI preview 1).
pub(crate) struct ModuleState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) budget: Budget,
    /// The sockets of a module built for WasmEdge's socket ABI.
    pub(crate) wasmedge: Option<Box<WasmEdge>>,
    /// The state of a framework's interfaces in this instance, for a framework's module.
    pub(crate) app: Option<ModuleApp>,
}

impl WasmEdgeView for ModuleState {
    fn wasmedge(&mut self) -> Option<&mut WasmEdge> {
        self.wasmedge.as_deref_mut()
    }

    fn wasi(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }
}

/// The state of a framework's interfaces in one instance of a core module.
pub(crate) enum ModuleApp {
    Slight(Box<SlightInstance>),
    Spin1(Box<Spin1Instance>),
}

/// The store state of a component (WASI 0.2, with `wasi:http`).
pub(crate) struct ComponentState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: HttpHooks,
    pub(crate) budget: Budget,
    /// A framework component's grants; `None` for a plain component.
    pub(crate) grants: Option<Grants>,
}

/// What a framework's component is granted, read only by that framework's interfaces.
#[derive(Clone)]
pub(crate) enum Grants {
    Spin(Arc<SpinHost>),
    Slight(Arc<SlightHost>),
}

impl HasBudget for ModuleState {
    fn budget(&mut self) -> &mut Budget {
        &mut self.budget
    }
}

impl HasBudget for ComponentState {
    fn budget(&mut self) -> &mut Budget {
        &mut self.budget
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

pub(crate) use wasmcell_runtime::config;

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

/// The linker for preview 1 modules.
pub(crate) fn module_linker(engine: &wasmtime::Engine) -> Result<Linker<ModuleState>, Error> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut ModuleState| &mut state.wasi)
        .map_err(Error::Engine)?;
    Ok(linker)
}

/// The linker for components: all of WASI 0.2 (Rust's std on wasm32-wasip2 imports
/// `wasi:cli/environment`, `exit` and `terminal-*` even in an HTTP handler) and `wasi:http`.
pub(crate) fn component_linker(
    engine: &wasmtime::Engine,
) -> Result<wasmtime::component::Linker<ComponentState>, Error> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(Error::Engine)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(Error::Engine)?;
    Ok(linker)
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
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
            return spin::compile(&self.engine, &self.cache, spec, app);
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

/// One per process that runs guests: the [`Compiler`], a linker per binary kind, the pooling
/// engine for HTTP servers, and the epoch clock.
pub struct Engine {
    compiler: Compiler,
    modules: OnFirstUse<Linker<ModuleState>>,
    components: OnFirstUse<wasmtime::component::Linker<ComponentState>>,
    /// The component linker with slight's capabilities, for components under slight.
    slight_components: OnFirstUse<wasmtime::component::Linker<ComponentState>>,
    http: OnFirstUse<HttpEngine>,
    ticker: Ticker,
    /// How many CPUs this process may use: its affinity and its cgroup's quota.
    cpus: usize,
}

impl Engine {
    /// Creates the engine; its epoch clock starts with the first guest run, and each linker
    /// and the HTTP engine with the first guest that needs it.
    pub fn new(cache: CompileCache) -> Result<Engine, Error> {
        let compiler = Compiler::new(cache)?;
        Ok(Engine {
            ticker: Ticker::new(&compiler.engine),
            compiler,
            modules: OnFirstUse::default(),
            components: OnFirstUse::default(),
            slight_components: OnFirstUse::default(),
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

    /// Does everything for `spec` that is not per instance: reads the binary (inside the rootfs,
    /// where it cannot escape it), compiles it through the cache, checks the entry function and
    /// links it. Blocking: compiling can take seconds on a cache miss.
    pub fn prepare(&self, spec: WorkloadSpec) -> Result<Prepared, Error> {
        let _release = ReleaseFreedMemory;
        if let Some(App::Spin(app)) = &spec.app {
            let http = self.http.get(|| HttpEngine::new(config(), self.cpus))?;
            let Compiler { engine, cache } = &self.compiler;
            let (app, cached) = spin::prepare(cache, &http, &spec, app)?;
            return Ok(Prepared {
                engine: engine.clone(),
                ticker: self.ticker.clone(),
                entry: Entry::Spin {
                    http,
                    app: Arc::new(app),
                },
                spec: Arc::new(spec),
                _cached: cached,
            });
        }
        let (path, bytes, kind) = read_wasm(&spec)?;
        let Compiler { engine, cache } = &self.compiler;
        let entry_err = |function: &str, reason: String| Error::EntryFunction {
            path: path.clone(),
            function: function.to_owned(),
            reason,
        };
        if let (Some(App::Slight(app)), WasmKind::Module) = (&spec.app, kind) {
            let http = self.http.get(|| HttpEngine::new(config(), self.cpus))?;
            let (slight, cached) = Slight::prepare(http, cache, &bytes, app, &spec, &path)?;
            return Ok(Prepared {
                engine: engine.clone(),
                ticker: self.ticker.clone(),
                entry: Entry::Slight(Arc::new(slight)),
                spec: Arc::new(spec),
                _cached: vec![cached],
            });
        }
        let (artifact, cached) = cache.load(engine, kind, &bytes, &path)?;
        let entry = match artifact {
            Artifact::Module(module) => {
                let function = spec.function.clone().unwrap_or_else(|| "_start".to_owned());
                match module.get_export(&function) {
                    Some(ExternType::Func(ty))
                        if ty.params().len() == 0 && ty.results().len() == 0 => {}
                    Some(ExternType::Func(ty)) => {
                        return Err(entry_err(
                            &function,
                            format!(
                                "its type is {ty}; an entry function takes no parameters and returns nothing"
                            ),
                        ));
                    }
                    _ if spec.function.is_none() => {
                        return Err(entry_err(
                            &function,
                            format!(
                                "the module has no `_start` (it is a library module); name the export to run as `{path}#FUNCTION`{}",
                                exported_functions(&module)
                            ),
                        ));
                    }
                    _ => {
                        return Err(entry_err(
                            &function,
                            format!(
                                "the module exports no such function{}",
                                exported_functions(&module)
                            ),
                        ));
                    }
                }
                let modules = self.modules.get(|| module_linker(engine))?;
                // A module built for WasmEdge's sockets gets them whatever the runtime name.
                let wasmedge = wasmedge::wanted_by(&module);
                let extended;
                let linker = if wasmedge {
                    extended = wasmedge::linker(&modules, &module).map_err(Error::Engine)?;
                    &extended
                } else {
                    &*modules
                };
                let pre = linker
                    .instantiate_pre(&module)
                    .map_err(|source| link_error(linker, &module, &path, source, PROVIDED))?;
                Command::Module {
                    pre,
                    function,
                    wasmedge,
                }
            }
            Artifact::Component(component) => {
                if let Some(function) = &spec.function {
                    return Err(entry_err(function, "a component runs `wasi:cli/run` or serves `wasi:http/incoming-handler`; `#function` entrypoints apply to core modules only".to_owned()));
                }
                // A component under slight gets slight's capabilities as WASI interfaces.
                let grants = match &spec.app {
                    Some(App::Slight(app)) => {
                        Some(Grants::Slight(Arc::new(SlightHost::new(app, &spec))))
                    }
                    _ => None,
                };
                if http::is_proxy(engine, &component) {
                    let http = self.http.get(|| HttpEngine::new(config(), self.cpus))?;
                    let pre = http.prepare(cached.path(), &path, grants.is_some())?;
                    let target = Arc::new(Target {
                        grants,
                        ..Target::of_spec(pre, &spec)?
                    });
                    return Ok(Prepared {
                        engine: engine.clone(),
                        ticker: self.ticker.clone(),
                        entry: Entry::Http {
                            http,
                            routes: Routes::One(target),
                        },
                        spec: Arc::new(spec),
                        _cached: vec![cached],
                    });
                }
                let linker = match grants {
                    Some(_) => self
                        .slight_components
                        .get(|| crate::slight::component_linker(engine))?,
                    None => self.components.get(|| component_linker(engine))?,
                };
                let pre = linker
                    .instantiate_pre(&component)
                    .and_then(CommandPre::new)
                    .map_err(|source| Error::Link {
                        path: path.clone(),
                        source,
                    })?;
                Command::Component { pre, grants }
            }
        };
        tracing::debug!(%path, %kind, "prepared");
        Ok(Prepared {
            engine: engine.clone(),
            ticker: self.ticker.clone(),
            entry: Entry::Command(entry),
            spec: Arc::new(spec),
            _cached: vec![cached],
        })
    }
}

/// What a core module is linked with, for the message when it imports something else.
pub(crate) const PROVIDED: &str = "wasmcell links WASI preview 1, WASI 0.2, wasi:http and WasmEdge's socket extension; WasmEdge plugins (wasi-nn, wasi-crypto, ...) are not available";

/// What a run does: one instance of a command, or a server.
enum Entry {
    Command(Command),
    /// A `wasi:http/proxy` component: served, an instance per request.
    Http {
        http: Arc<HttpEngine>,
        routes: Routes,
    },
    /// A Spin app: its HTTP routes served and its Redis channels followed.
    Spin {
        http: Arc<HttpEngine>,
        app: Arc<SpinApp>,
    },
    /// A SpiderLightning app: its `_start`, then the servers it set up.
    Slight(Arc<Slight>),
}

/// A guest that runs once, from its entry to its exit.
enum Command {
    Module {
        pre: InstancePre<ModuleState>,
        function: String,
        /// Whether the module is built for WasmEdge's sockets.
        wasmedge: bool,
    },
    Component {
        pre: CommandPre<ComponentState>,
        /// A slight app's grants.
        grants: Option<Grants>,
    },
}

/// A workload ready to run: compiled, linked and pre-instantiated. Each [`Prepared::run`] is a
/// fresh instance.
pub struct Prepared {
    engine: wasmtime::Engine,
    ticker: Ticker,
    entry: Entry,
    spec: Arc<WorkloadSpec>,
    /// The cache entries its code was loaded from, held in use for as long as it can run:
    /// evicting them would free no space while they are mapped.
    _cached: Vec<InUse>,
}

/// How a guest run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest returned or exited with this code.
    Code(i32),
    /// The guest trapped; the message (with its wasm backtrace) was also written to its stderr.
    Trapped(String),
    /// The guest failed without trapping: a host call refused to go on (such as `proc_exit`
    /// with a status WASI does not allow, 126 or more). Status 1, as `wasmtime run` exits;
    /// the message was also written to its stderr.
    Failed(String),
    /// The guest tried to hold more memory than it may (see [`Overrun`]).
    OutOfMemory(Overrun),
}

impl Exit {
    /// The process exit status this corresponds to, as `wasmtime run` exits: the code's low 8
    /// bits as on Linux, 134 (128 + SIGABRT) for a trap, 1 for a failure that is not one, 137
    /// for an overrun of the memory limit or of a table's size.
    pub fn status(&self) -> u32 {
        match self {
            Exit::Code(code) => (*code as u32) & 0xff,
            Exit::Trapped(_) => TRAP_STATUS,
            Exit::Failed(_) => 1,
            Exit::OutOfMemory(_) => OUT_OF_MEMORY_STATUS,
        }
    }

    pub(crate) fn of(result: wasmtime::Result<()>, limiter: &Limiter) -> Exit {
        match (result, limiter.overrun()) {
            (Ok(()), _) => Exit::Code(0),
            (Err(_), Some(overrun)) => Exit::OutOfMemory(overrun),
            (Err(error), None) => match error.downcast_ref::<I32Exit>() {
                Some(I32Exit(code)) => Exit::Code(*code),
                None if error.downcast_ref::<wasmtime::Trap>().is_some() => {
                    Exit::Trapped(format!("guest trapped: {error:?}"))
                }
                None => Exit::Failed(format!("guest failed: {error:#}")),
            },
        }
    }
}

impl Prepared {
    /// Runs one fresh instance to completion under `controls` (pause, live limits; see
    /// [`Prepared::controls`]). Dropping the returned future stops the guest at its next epoch
    /// tick or host call. Why a run failed or trapped is also written to the guest's stderr, where
    /// its user looks.
    pub async fn run(&self, controls: &Controls) -> Result<Exit, Error> {
        let exit = match &self.entry {
            // A server counts its own threads' CPU (see `wasmcell_runtime::usage`).
            Entry::Http { .. } => self.instantiate_and_run(controls).await,
            Entry::Command(_) | Entry::Spin { .. } | Entry::Slight(_) => {
                let meter = controls.meter();
                meter.metered(self.instantiate_and_run(controls)).await
            }
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
    /// SIGTERM): HTTP servers stop accepting and finish their requests; commands cannot handle
    /// signals, so they are stopped at once.
    pub fn stops_gracefully(&self) -> bool {
        matches!(
            self.entry,
            Entry::Http { .. } | Entry::Spin { .. } | Entry::Slight(_)
        )
    }

    async fn instantiate_and_run(&self, controls: &Controls) -> Result<Exit, Error> {
        let command = match &self.entry {
            Entry::Http { http, routes } => {
                return http::serve(http, routes, &self.spec, controls).await;
            }
            Entry::Spin { http, app } => return spin::run(http, app, &self.spec, controls).await,
            Entry::Slight(slight) => return slight.run(&self.spec, controls).await,
            Entry::Command(command) => command,
        };
        let mut wasi = wasi_builder(&self.spec)?;
        stdio::attach(&mut wasi, &self.spec.stdio).await?;
        let clock = self
            .ticker
            .store_clock()
            .map_err(|e| Error::Engine(e.into()))?;
        let budget = Budget::new(controls, clock);
        // Instantiation can fail like a run does (a start function traps, a data segment passes the
        // memory limit), so each kind runs as one fallible block whose failure becomes an `Exit`.
        Ok(match command {
            Command::Module {
                pre,
                function,
                wasmedge,
            } => {
                let state = ModuleState {
                    wasi: wasi.build_p1(),
                    budget,
                    wasmedge: wasmedge.then(|| Box::new(WasmEdge::new(&self.spec))),
                    app: None,
                };
                let mut store = new_store(&self.engine, state, controls);
                let result = async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    // A library module (WASI reactor) is initialised before its entry function.
                    if function != "_start"
                        && let Ok(init) =
                            instance.get_typed_func::<(), ()>(&mut store, "_initialize")
                    {
                        init.call_async(&mut store, ()).await?;
                    }
                    let entry = instance.get_typed_func::<(), ()>(&mut store, function)?;
                    entry.call_async(&mut store, ()).await
                }
                .await;
                Exit::of(result, &store.data().budget.limiter)
            }
            Command::Component { pre, grants } => {
                let state = ComponentState {
                    wasi: wasi.build(),
                    table: ResourceTable::new(),
                    http: WasiHttpCtx::new(),
                    hooks: HttpHooks::new(self.spec.network),
                    budget,
                    grants: grants.clone(),
                };
                let mut store = new_store(&self.engine, state, controls);
                let result = async {
                    let command = pre.instantiate_async(&mut store).await?;
                    command.wasi_cli_run().call_run(&mut store).await
                }
                .await;
                match result {
                    Ok(Ok(())) => Exit::Code(0),
                    Ok(Err(())) => Exit::Code(1),
                    Err(error) => Exit::of(Err(error), &store.data().budget.limiter),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcell_workload::Limits;

    const MIB: usize = 1 << 20;

    /// What a guest does: 8 memories grown to 48 MiB each, or a 40M-element table, end it as
    /// out of memory (137).
    #[test]
    fn a_module_growing_many_memories_or_a_big_table_ends_with_137() {
        let engine = wasmtime::Engine::default();
        let memories: String = (0..8)
            .map(|i| format!("(memory $m{i} 0)"))
            .collect::<Vec<_>>()
            .join(" ");
        let grow_all: String = (0..8)
            .map(|i| {
                format!("(if (i32.lt_s (memory.grow $m{i} (i32.const 768)) (i32.const 0)) (then unreachable))")
            })
            .collect::<Vec<_>>()
            .join(" ");
        let memories = format!(r#"(module {memories} (func (export "_start") {grow_all}))"#);
        let table = r#"(module (table $t 0 funcref)
            (func (export "_start")
              (if (i32.lt_s (table.grow $t (ref.null func) (i32.const 40000000)) (i32.const 0))
                (then unreachable))))"#;
        for (wat, limit, expected) in [
            (
                memories.as_str(),
                Some(64 * MIB),
                Overrun::MemoryLimit(64 * MIB as u64),
            ),
            (table, Some(64 * MIB), Overrun::MemoryLimit(64 * MIB as u64)),
            (table, None, Overrun::TableElements),
        ] {
            let module = wasmtime::Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
            let controls = Controls::new(&Limits {
                memory: limit.map(|m| m as u64),
                cpu: None,
            });
            let mut store = wasmtime::Store::new(&engine, Limiter::new(controls));
            store.limiter(|limiter| limiter);
            let result = wasmtime::Instance::new(&mut store, &module, &[]).and_then(|instance| {
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call(&mut store, ())
            });
            let exit = Exit::of(result, store.data());
            assert_eq!(exit, Exit::OutOfMemory(expected), "{wat}");
            assert_eq!(exit.status(), 137);
        }
    }
}
