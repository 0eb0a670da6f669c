//! The wasmtime engine and the two steps of running a workload: [`Engine::prepare`]
//! (everything that is not per instance, ending in the one choice of what the workload runs)
//! and [`Prepared::run`].

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use wasmcell_oci::WasmKind;
use wasmtime::ExternType;

use crate::command::{ComponentCommand, ModuleCommand};
use wasmcell_runtime::binary::read_wasm;
use wasmcell_runtime::cache::{Artifact, CompileCache, InUse, Miss, deserialize_component};
use wasmcell_runtime::codegen::{Codegen, CompilePolicy};
use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::epoch::Ticker;
use wasmcell_runtime::error::{Error, error_chain};
use wasmcell_runtime::exit::Exit;
use wasmcell_runtime::http::{
    AllPaths, Handler, HttpEngine, Linkers, Proxy, Service, Start, is_proxy, is_service,
};
use wasmcell_runtime::link::{exported_functions, link_error};
use wasmcell_runtime::run::{Run, Served};
use wasmcell_runtime::state::{ComponentState, component_linker, module_linker};
use wasmcell_runtime::stdio;
use wasmcell_runtime::store::OnFirstUse;
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

/// One code generator's wasmtime engine, and the cache its misses compile through.
#[derive(Clone)]
struct Target {
    engine: wasmtime::Engine,
    cache: CompileCache,
}

impl Target {
    fn new(codegen: Codegen, cache: &CompileCache) -> Result<Target, Error> {
        let engine = wasmtime::Engine::new(&codegen.config()).map_err(Error::Engine)?;
        Ok(Target {
            engine,
            cache: cache.clone().codegen(codegen),
        })
    }

    /// The same, doing `miss` on a cache miss.
    fn on_miss(&self, miss: Miss) -> Target {
        Target {
            engine: self.engine.clone(),
            cache: self.cache.clone().on_miss(miss),
        }
    }

    /// Makes sure the cache holds the code of `spec`'s binaries (see [`Compiler::compile`]).
    fn compile(&self, spec: &WorkloadSpec) -> Result<Vec<InUse>, Error> {
        if let Some(App::Spin(app)) = &spec.app {
            return wasmcell_spin_host::compile(&self.engine, &self.cache, spec, app);
        }
        let (path, bytes, kind) = read_entry(spec)?;
        Ok(vec![self.cache.ensure(
            &self.engine,
            kind,
            &bytes,
            &path,
        )?])
    }
}

/// Whether `spec` serves HTTP, told before anything is compiled: a Spin app with HTTP
/// triggers, or a component exporting an HTTP handler. Only servers start on baseline code
/// when tiered: a server's first request is what a cold start delays, and its new requests can
/// move to the optimised code once it is ready. A command runs once, to its end, all of it on
/// the code it started with: it waits for the optimised code.
fn serves_http(spec: &WorkloadSpec) -> Result<bool, Error> {
    if let Some(App::Spin(app)) = &spec.app {
        return Ok(!app.http.is_empty());
    }
    let (_, bytes, kind) = read_entry(spec)?;
    Ok(kind == WasmKind::Component && wasmcell_runtime::binary::serves_http(&bytes))
}

/// Logs why a workload runs on optimised code where baseline code was asked for.
fn not_baseline(error: &Error) {
    tracing::info!(
        "the baseline compiler cannot compile it ({}); using optimised code",
        error_chain(error)
    );
}

/// Compiles `spec`'s optimised code into the cache on a thread of its own, after a tiered
/// start on baseline code, for its server to switch to. A failure leaves the workload on
/// baseline code and is logged.
fn compile_in_background(target: Target, spec: WorkloadSpec) {
    let compile = move || {
        let _release = ReleaseFreedMemory;
        if let Err(error) = target.compile(&spec) {
            tracing::warn!("cannot compile optimised code: {}", error_chain(&error));
        }
    };
    let spawned = std::thread::Builder::new()
        .name("wasmcell-optimize".into())
        .spawn(compile);
    if let Err(error) = spawned {
        tracing::warn!("cannot compile optimised code: {error}");
    }
}

/// The wasmtime engines and the compile cache, without the means to run: what a process that
/// only compiles (the shim) holds. Their configurations are the ones [`Engine`] runs with, so
/// what it compiles is what the runners load.
pub struct Compiler {
    policy: CompilePolicy,
    cache: CompileCache,
    optimized: Target,
    baseline: OnFirstUse<Target>,
}

impl Compiler {
    /// Creates the wasmtime engine of optimised code; that of baseline code is made when first
    /// needed.
    pub fn new(cache: CompileCache, policy: CompilePolicy) -> Result<Compiler, Error> {
        Ok(Compiler {
            policy,
            optimized: Target::new(Codegen::Optimized, &cache)?,
            baseline: OnFirstUse::default(),
            cache,
        })
    }

    /// Compiles `bytes` (the binary at `path`) to optimised code into the cache unless it is
    /// there: ahead of a first run (`wasmcell pull`, `build`), when nobody waits for it.
    pub fn precompile(&self, path: &str, bytes: Vec<u8>) -> Result<(), Error> {
        let _release = ReleaseFreedMemory;
        let (bytes, kind) = wasmcell_runtime::binary::checked(path, bytes)?;
        let target = &self.optimized;
        target
            .cache
            .ensure(&target.engine, kind, &bytes, path)
            .map(drop)
    }

    /// When it compiles what.
    pub fn policy(&self) -> CompilePolicy {
        self.policy
    }

    fn baseline(&self) -> Result<Arc<Target>, Error> {
        self.baseline
            .get(|| Target::new(Codegen::Baseline, &self.cache))
    }

    /// Baseline code of `spec`; or, where Winch cannot compile it (it lacks a proposal the
    /// module uses, such as tail calls or exceptions), its optimised code. Says which.
    fn compile_baseline(&self, spec: &WorkloadSpec) -> Result<(Vec<InUse>, Codegen), Error> {
        match self.baseline()?.compile(spec) {
            Err(error @ Error::Compile { .. }) => {
                not_baseline(&error);
                Ok((self.optimized.compile(spec)?, Codegen::Optimized))
            }
            compiled => compiled.map(|held| (held, Codegen::Baseline)),
        }
    }

    /// Checks that `spec` names a wasm binary and compiles it into the cache unless it is there
    /// already, without loading or linking it: the shim's half of `create`, which fails it at
    /// once on a missing file, a non-wasm file or a malformed module. The sandbox loads the
    /// artifact and links it (reporting a missing import or entry function). Blocking:
    /// compiling can take seconds on a cache miss. Returns the entries held in use: keep them
    /// until the sandbox has loaded them, so that no cache collection evicts them meanwhile.
    ///
    /// Tiered, a miss compiles baseline code, and the optimised code in the background, which
    /// the sandbox's server waits for and switches to ([`Engine::compiled_elsewhere`]).
    pub fn compile(&self, spec: &WorkloadSpec) -> Result<Vec<InUse>, Error> {
        let _release = ReleaseFreedMemory;
        match self.policy {
            CompilePolicy::Optimized => self.optimized.compile(spec),
            CompilePolicy::Baseline => self.compile_baseline(spec).map(|(held, _)| held),
            CompilePolicy::Tiered => match self.optimized.on_miss(Miss::Refuse).compile(spec) {
                Err(Error::NotCached { .. }) if serves_http(spec)? => {
                    let (held, codegen) = self.compile_baseline(spec)?;
                    if codegen == Codegen::Baseline {
                        compile_in_background(self.optimized.clone(), spec.clone());
                    }
                    Ok(held)
                }
                Err(Error::NotCached { .. }) => self.optimized.compile(spec),
                cached => cached,
            },
        }
    }
}

/// How long a sandbox's server on baseline code waits for its shim to write the optimised
/// code: past the longest a compile may take (`CompileBounds`' default wall-clock bound).
const AWAIT_OPTIMIZED: Duration = Duration::from_secs(30 * 60);

/// One per process that runs guests: the code of each tier ([`Tier`]), made as the compile
/// policy asks.
pub struct Engine {
    policy: CompilePolicy,
    cache: CompileCache,
    /// The wasmtime engine of optimised code, made (and its configuration checked) by
    /// [`Engine::new`]; its tier is made around it with the first guest.
    optimized_target: Target,
    optimized: OnFirstUse<Tier>,
    baseline: OnFirstUse<Tier>,
    /// How many CPUs this process may use: its affinity and its cgroup's quota.
    cpus: usize,
    /// Another process (the sandbox's shim) compiles this one's misses of optimised code.
    compiled_elsewhere: bool,
}

/// Everything that runs one code generator's code: its engine and cache, the linkers made on
/// the engine, the pooling engine for HTTP servers, and the epoch clock.
struct Tier {
    codegen: Codegen,
    target: Target,
    linkers: Linkers,
    http: OnFirstUse<HttpEngine>,
    ticker: Ticker,
    cpus: usize,
}

/// What a core module is linked with, for the message when it imports something else.
const PROVIDED: &str = "wasmcell links WASI preview 1, WASI 0.2, wasi:http and WasmEdge's socket extension; WasmEdge plugins (wasi-nn, wasi-crypto, ...) are not available";

impl Engine {
    /// An engine compiling and running as `policy` says; each tier's wasmtime engine, linkers
    /// and HTTP engine are made with the first guest that needs them.
    pub fn new(cache: CompileCache, policy: CompilePolicy) -> Result<Engine, Error> {
        Ok(Engine {
            policy,
            optimized_target: Target::new(Codegen::Optimized, &cache)?,
            cache,
            optimized: OnFirstUse::default(),
            baseline: OnFirstUse::default(),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            compiled_elsewhere: false,
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

    /// The same engine for a process whose optimised code another process compiles: a
    /// sandbox, whose shim compiles what it runs. A server that starts on baseline code then
    /// waits for the shim's optimised code to appear in the cache instead of compiling it.
    pub fn compiled_elsewhere(self) -> Engine {
        Engine {
            compiled_elsewhere: true,
            ..self
        }
    }

    fn tier(&self, codegen: Codegen) -> Result<Arc<Tier>, Error> {
        let make = || {
            let target = match codegen {
                Codegen::Optimized => self.optimized_target.clone(),
                Codegen::Baseline => Target::new(codegen, &self.cache)?,
            };
            Ok(Tier {
                codegen,
                ticker: Ticker::new(&target.engine),
                target,
                linkers: Linkers::default(),
                http: OnFirstUse::default(),
                cpus: self.cpus,
            })
        };
        match codegen {
            Codegen::Optimized => self.optimized.get(make),
            Codegen::Baseline => self.baseline.get(make),
        }
    }

    /// Does everything for `spec` that is not per instance (see [`Tier::prepare`]), with the
    /// code the compile policy asks for. Tiered, a server whose optimised code is not in the
    /// cache starts on baseline code, and switches to the optimised code when it is ready
    /// (compiled here in the background, or by the shim); a command waits for the optimised
    /// code. Blocking: compiling can take seconds on a cache miss.
    pub fn prepare(&self, spec: WorkloadSpec) -> Result<Prepared, Error> {
        let _release = ReleaseFreedMemory;
        match self.policy {
            CompilePolicy::Optimized => self.tier(Codegen::Optimized)?.prepare(spec, Miss::Compile),
            CompilePolicy::Baseline => self.prepare_baseline(spec).map(|(prepared, _)| prepared),
            CompilePolicy::Tiered => self.prepare_tiered(spec),
        }
    }

    /// `spec` prepared on baseline code; or, where Winch cannot compile it, on optimised code.
    /// Says which.
    fn prepare_baseline(&self, spec: WorkloadSpec) -> Result<(Prepared, Codegen), Error> {
        match self
            .tier(Codegen::Baseline)?
            .prepare(spec.clone(), Miss::Compile)
        {
            Err(error @ Error::Compile { .. }) => {
                not_baseline(&error);
                let optimized = self.tier(Codegen::Optimized)?;
                Ok((optimized.prepare(spec, Miss::Compile)?, Codegen::Optimized))
            }
            prepared => prepared.map(|prepared| (prepared, Codegen::Baseline)),
        }
    }

    fn prepare_tiered(&self, spec: WorkloadSpec) -> Result<Prepared, Error> {
        let optimized = self.tier(Codegen::Optimized)?;
        match optimized.prepare(spec.clone(), Miss::Refuse) {
            Err(Error::NotCached { .. }) if serves_http(&spec)? => {}
            Err(Error::NotCached { .. }) => return optimized.prepare(spec, Miss::Compile),
            prepared => return prepared,
        }
        let (prepared, codegen) = self.prepare_baseline(spec.clone())?;
        if codegen == Codegen::Optimized {
            return Ok(prepared);
        }
        let miss = match self.compiled_elsewhere {
            true => Miss::Await(AWAIT_OPTIMIZED),
            false => Miss::Compile,
        };
        if prepared.run.serving().is_some() {
            let tier_up = move || {
                let _release = ReleaseFreedMemory;
                let next = optimized.prepare(spec, miss)?;
                let serving = next
                    .run
                    .serving()
                    .ok_or_else(|| Error::App("its optimised code serves nothing".to_owned()))?;
                Ok((serving, Box::new(next) as Box<dyn Any + Send + Sync>))
            };
            prepared.run.tier_up(Box::new(tier_up));
        }
        Ok(prepared)
    }
}

impl Tier {
    fn http(&self) -> Result<Arc<HttpEngine>, Error> {
        self.http
            .get(|| HttpEngine::new(self.codegen.config(), self.cpus))
    }

    /// Does everything for `spec` that is not per instance: reads the binary (inside the rootfs,
    /// where it cannot escape it), compiles it through the cache, checks the entry function and
    /// links it. Blocking: compiling can take seconds on a cache miss.
    ///
    /// The one place that chooses what a workload runs from its app kind and binary: a Spin
    /// app, a slight app's module, a component served or run (with slight's capabilities
    /// under slight), or a core module's entry function.
    ///
    /// `miss`: what a miss in the compile cache does.
    fn prepare(&self, spec: WorkloadSpec, miss: Miss) -> Result<Prepared, Error> {
        let engine = &self.target.engine;
        let cache = &self.target.cache.clone().on_miss(miss);
        if let Some(App::Spin(app)) = &spec.app {
            let (app, cached) = wasmcell_spin_host::prepare(cache, &self.http()?, &spec, app)?;
            return Ok(Prepared::new(Box::new(app), spec, cached));
        }
        let (path, bytes, kind) = read_entry(&spec)?;
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
        let engine = &self.target.engine;
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
        let engine = &self.target.engine;
        let link_err = |source| Error::Link {
            path: path.to_owned(),
            source,
        };
        if let Some(import) = spin_import(engine, component)
            && spec.app.is_none()
        {
            return Err(Error::OtherApp {
                path: path.to_owned(),
                what: format!("a Spin component (it imports {import})"),
                fix: RUN_AS_SPIN,
            });
        }
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
            return Ok(Box::new(Served::new(http, routes)));
        }
        let linker = self.linkers.get(|| link(engine))?;
        let command = ComponentCommand::new(engine, &self.ticker, &linker, component, path, host)?;
        Ok(Box::new(command))
    }
}

/// What a component is linked with, for the message when it imports a WASI release candidate.
const COMPONENTS_PROVIDED: &str = "wasmcell links WASI 0.2 (any 0.2.x) and WASI 0.3.0 (cli, clocks, filesystem, random, sockets, http); 0.3.0-rc-2026-03-15, which is 0.3.0; another WASI release candidate (@0.3.0-rc-...) is not supported: build the component against wasi@0.3.0";

/// The entry binary of `spec` ([`read_wasm`]); a Spin app's manifest given to a plain runtime
/// (a Spin image under the wasmtime runtime names `/spin.toml` as its entrypoint) is said to
/// be one, with what runs it.
fn read_entry(spec: &WorkloadSpec) -> Result<(String, Vec<u8>, WasmKind), Error> {
    read_wasm(spec).map_err(|error| match error {
        Error::NotWasm { path, .. } if spec.app.is_none() && path.ends_with(SPIN_MANIFEST) => {
            Error::OtherApp {
                path,
                what: "a Spin app's manifest".to_owned(),
                fix: RUN_AS_SPIN,
            }
        }
        error => error,
    })
}

/// The file a Spin app image's entrypoint names.
const SPIN_MANIFEST: &str = "spin.toml";

/// What runs a Spin app or component, for one given to a plain runtime.
const RUN_AS_SPIN: &str = "run it as a Spin app, with its spin.toml: `wasmcell up`, or under containerd with runtime io.containerd.spin.v2 (RuntimeClass spin)";

/// The names of what `component` imports.
fn imports(engine: &wasmtime::Engine, component: &wasmtime::component::Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// The first of Spin's own interfaces (`fermyon:spin/...`, `spin:...`) `component` imports:
/// only a Spin app's runtime provides them.
fn spin_import(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Option<String> {
    imports(engine, component)
        .into_iter()
        .find(|name| name.starts_with("fermyon:spin") || name.starts_with("spin:"))
}

/// The WASI 0.3 release candidates `component` imports (`wasi:cli/environment@0.3.0-rc-…`)
/// other than those that are 0.3.0 (renamed when the binary was read, see
/// [`wasmcell_runtime::binary::alias_release_candidates`]): wasmtime implements 0.3.0, and a
/// prerelease version never matches another. (0.2's drafts,
/// such as `wasi:config/store@0.2.0-rc.1`, are another matter: a capability may link them.)
fn release_candidates(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Vec<String> {
    let mut names = imports(engine, component);
    names.retain(|name| name.starts_with("wasi:") && name.contains("@0.3.0-rc"));
    names
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
