//! SpiderLightning apps: a core module (`app.wasm`) run as slight ran it, its `_start` (or a
//! library app's `on-server-init`) once, with WASI preview 1 and slight's interfaces over
//! wit-bindgen 0.2's ABI ([`wasmcell_runtime::core_abi`]): key-value, configs, an HTTP server and an HTTP
//! client, each only as the slightfile grants it ([`wasmcell_slight::SlightApp`]). A
//! capability the slightfile does not declare is refused with the interface's own error,
//! never a trap. Components under slight get the same capabilities as WASI interfaces
//! (`components`).
//!
//! An app that set up HTTP servers is served once its start returns, a fresh instance per
//! request calling the route's handler export, until it is asked to stop.

mod client;
mod components;
mod imports;
mod server;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use wasmcell_slight::{Configs, SlightApp, Store};
use wasmtime::{InstancePre, Linker};

use wasmcell_runtime::Exit;
use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::error::Error;
use wasmcell_runtime::http::HttpEngine;
use wasmcell_runtime::run::{Run, RunFuture};
use wasmcell_runtime::state::{
    ComponentState, ModuleState, component_linker as wasi_component_linker, module_linker,
};
use wasmcell_runtime::stdio::{self, Diagnostics};
use wasmcell_runtime::store::{Budget, new_store};
use wasmcell_runtime::wasi::wasi_builder;
use wasmcell_stores::{KeyValue, Places};
use wasmcell_workload::WorkloadSpec;

/// The store state of a slight app's module: WASI preview 1 and the instance's handles.
type SlightState = ModuleState<SlightInstance>;

/// The store state of a component under slight: WASI 0.2, `wasi:http`, and the app's grants.
pub type SlightComponentState = ComponentState<Arc<SlightHost>>;

/// A slight app ready to run: its module linked with slight's interfaces, on the HTTP
/// servers' pooling engine (`http`), whose threads also serve its requests.
pub struct Slight {
    pre: InstancePre<SlightState>,
    host: Arc<SlightHost>,
    http: Arc<HttpEngine>,
}

/// What every instance of one app shares: its grants, and the stores it opened.
pub struct SlightHost {
    app: SlightApp,
    /// The container's environment: `configs.envvars`' values.
    env: Vec<(String, String)>,
    /// Values the app set under `configs.envvars`, for the container's life.
    env_set: Mutex<BTreeMap<String, Vec<u8>>>,
    places: Places,
    /// Where `keyvalue.filesystem` keeps every store: one SQLite file.
    file_path: &'static str,
    files: OnceCell<Arc<KeyValue>>,
    /// `keyvalue.redis` connections, by address.
    redis: Mutex<BTreeMap<String, Arc<OnceCell<Arc<KeyValue>>>>>,
    /// wasmcell's lines for the container's stderr (a capability refused).
    diagnostics: Diagnostics,
    /// Whether requests may leave (the container's network).
    network: bool,
    /// The configs as one map, for components' `wasi:config` (later capabilities win).
    config: wasmtime_wasi_config::WasiConfigVariables,
}

/// `keyvalue-error`'s `connection-error`: a store that cannot be reached.
const KV_CONNECTION: u8 = 3;
/// `keyvalue-error`'s `unexpected-error`, what slight answered for a store the slightfile does
/// not declare.
const KV_UNDECLARED: u8 = 7;

/// An error for the guest: the case of the interface's error variant and its message.
pub(crate) struct Refusal(u8, String);

/// One instance's resources, by the handles the guest holds.
struct SlightInstance {
    host: Arc<SlightHost>,
    handles: Vec<Option<Handle>>,
    /// The servers `_start` set up, by server handle; `None` in a handler's instance, which
    /// may not start one.
    servers: Option<Vec<Option<server::Listening>>>,
}

/// A resource a handle stands for.
enum Handle {
    Store { name: String, store: Arc<KeyValue> },
    Configs { name: String },
    Router(server::Router),
    Server(usize),
}

impl Slight {
    /// What a slight app's module is linked with, for the message when it imports more.
    pub const PROVIDED: &str = "wasmcell links WASI preview 1 and slight's keyvalue, configs, http-server and http-client for SpiderLightning apps; its messaging, distributed_locking, sql and blob interfaces are not provided";

    /// WASI preview 1 with slight's interfaces.
    fn linker(engine: &wasmtime::Engine) -> Result<Linker<SlightState>, Error> {
        let mut linker = module_linker(engine)?;
        let add = |linker: &mut Linker<SlightState>| {
            imports::add_to_linker(linker)?;
            server::add_to_linker(linker)?;
            client::add_to_linker(linker)
        };
        add(&mut linker).map_err(Error::Engine)?;
        Ok(linker)
    }

    /// Loads `module` (`path` in messages) through the compile cache straight into the
    /// servers' pooling engine (its requests are instances too), checks its entry and links it
    /// for `app`; returns it with the cache entry it was loaded from, held in use.
    pub fn prepare(
        http: Arc<HttpEngine>,
        cache: &wasmcell_runtime::cache::CompileCache,
        module: &[u8],
        app: &SlightApp,
        spec: &WorkloadSpec,
        path: &str,
    ) -> Result<(Slight, wasmcell_runtime::cache::InUse), Error> {
        let (artifact, cached) =
            cache.load(http.engine(), wasmcell_oci::WasmKind::Module, module, path)?;
        let wasmcell_runtime::cache::Artifact::Module(module) = artifact else {
            unreachable!("the cache loads a module as a module");
        };
        if !["_start", ON_SERVER_INIT]
            .iter()
            .any(|name| module.get_export(name).is_some())
        {
            return Err(Error::EntryFunction {
                path: path.to_owned(),
                function: "_start".to_owned(),
                reason: "a SpiderLightning app exports `_start` (a command) or `on-server-init` (an HTTP app built as a library); this module exports neither".to_owned(),
            });
        }
        let linker = http.linkers().get(|| Slight::linker(http.engine()))?;
        let pre = linker.instantiate_pre(&module).map_err(|source| {
            wasmcell_runtime::link::link_error(&linker, &module, path, source, Slight::PROVIDED)
        })?;
        Ok((
            Slight {
                pre,
                host: Arc::new(SlightHost::new(app, spec)),
                http,
            },
            cached,
        ))
    }

    /// Runs `_start`; then serves the HTTP servers it set up, if any, until `controls` asks
    /// the app to stop (which also ends `_start` if it is still running: status 143).
    async fn run_app(&self, spec: &Arc<WorkloadSpec>, controls: &Controls) -> Result<Exit, Error> {
        let (engine, ticker) = (self.http.engine(), self.http.ticker());
        let mut wasi = wasi_builder(spec)?;
        stdio::attach(&mut wasi, &spec.stdio).await?;
        let clock = ticker.store_clock().map_err(|e| Error::Engine(e.into()))?;
        let state = ModuleState {
            wasi: wasi.build_p1(),
            budget: Budget::new(controls, clock),
            host: SlightInstance::new(self.host.clone(), true),
        };
        let mut store = new_store(engine, state, controls);
        let start = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            if let Ok(start) = instance.get_typed_func::<(), ()>(&mut store, "_start") {
                return start.call_async(&mut store, ()).await;
            }
            // A library module (slight's `#[on_server_init]` apps): its initializer, then
            // `on-server-init() -> expected<unit, string>`.
            initialize(&mut store, &instance).await?;
            let init = instance.get_typed_func::<(), i32>(&mut store, ON_SERVER_INIT)?;
            let ret = init.call_async(&mut store, ()).await?;
            let abi = wasmcell_runtime::core_abi::Abi::of_instance(&mut store, &instance)?;
            let area = abi.bytes(&store, ret, 12)?;
            if area[0] == 0 {
                return Ok(());
            }
            let word = |at: usize| i32::from_le_bytes(area[at..at + 4].try_into().unwrap());
            let why = abi.string(&store, word(4), word(8))?;
            Err(wasmtime::format_err!("{ON_SERVER_INIT} failed: {why}"))
        };
        let result = tokio::select! {
            result = start => result,
            () = controls.terminated() => return Ok(Exit::Code(128 + libc::SIGTERM)),
        };
        let exit = Exit::of(result, &store.data().budget.limiter);
        let servers: Vec<_> = store
            .data_mut()
            .host
            .servers
            .take()
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        drop(store);
        if exit != Exit::Code(0) || servers.is_empty() {
            // The app ends: what it was told on stderr is written before it does.
            self.host.diagnostics.flush(Duration::from_secs(1)).await;
            return Ok(exit);
        }
        let serving = server::Serving {
            engine: engine.clone(),
            ticker: ticker.clone(),
            threads: self.http.threads(),
            pre: self.pre.clone(),
            host: self.host.clone(),
            spec: spec.clone(),
            controls: controls.clone(),
        };
        serving.serve(servers).await
    }
}

impl Run for Slight {
    fn run<'a>(&'a self, spec: &'a Arc<WorkloadSpec>, controls: &'a Controls) -> RunFuture<'a> {
        Box::pin(self.run_app(spec, controls))
    }

    fn stops_gracefully(&self) -> bool {
        true
    }
}

/// The linker for components under slight: WASI, `wasi:http` and slight's capabilities
/// (`wasi:keyvalue`, `wasi:config`).
pub fn component_linker(
    engine: &wasmtime::Engine,
) -> Result<wasmtime::component::Linker<SlightComponentState>, Error> {
    let mut linker = wasi_component_linker(engine)?;
    components::add_to_linker(&mut linker).map_err(Error::Engine)?;
    Ok(linker)
}

/// The export a slight HTTP app built as a library (`#[on_server_init]`) is started by.
pub(crate) const ON_SERVER_INIT: &str = "on-server-init";

/// Runs a library module's `_initialize`, if it has one, as WASI reactors are started.
async fn initialize(
    store: &mut wasmtime::Store<SlightState>,
    instance: &wasmtime::Instance,
) -> wasmtime::Result<()> {
    match instance.get_typed_func::<(), ()>(&mut *store, "_initialize") {
        Ok(init) => init.call_async(&mut *store, ()).await,
        Err(_) => Ok(()),
    }
}

/// Where the app's relative store paths are: the rootfs, or the module's directory.
fn app_root(spec: &WorkloadSpec) -> &std::path::Path {
    match &spec.module {
        wasmcell_workload::ModuleSource::Rootfs { root, .. } => root,
        wasmcell_workload::ModuleSource::File(path) => match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        },
    }
}

impl SlightInstance {
    fn new(host: Arc<SlightHost>, main: bool) -> SlightInstance {
        SlightInstance {
            host,
            handles: Vec::new(),
            servers: main.then(Vec::new),
        }
    }

    fn insert(&mut self, handle: Handle) -> i32 {
        self.handles.push(Some(handle));
        (self.handles.len() - 1) as i32
    }

    fn get(&self, handle: i32) -> Option<&Handle> {
        self.handles.get(handle as usize)?.as_ref()
    }

    fn drop_handle(&mut self, handle: i32) {
        if let Some(slot) = self.handles.get_mut(handle as usize) {
            *slot = None;
        }
    }
}

impl SlightHost {
    /// What every instance of `app` (a module's or a component's) shares.
    pub fn new(app: &SlightApp, spec: &WorkloadSpec) -> SlightHost {
        // In a container, `/.slight` of its own filesystem (or a volume mounted there);
        // without one (`wasmcell run`), `.slight` beside the module.
        let file_path = match spec.preopens.iter().any(|p| p.guest == "/") {
            true => "/.slight/keyvalue.sqlite",
            false => ".slight/keyvalue.sqlite",
        };
        let mut config = wasmtime_wasi_config::WasiConfigVariables::new();
        for grant in &app.configs {
            match &grant.what {
                Configs::EnvVars => {
                    for (key, value) in &spec.env {
                        config.insert(key, value);
                    }
                }
                Configs::UserSecrets(secrets) => {
                    for (key, value) in secrets {
                        config.insert(key, String::from_utf8_lossy(value));
                    }
                }
            }
        }
        SlightHost {
            app: app.clone(),
            env: spec.env.clone(),
            env_set: Mutex::default(),
            places: Places::new(app_root(spec), &spec.preopens),
            file_path,
            files: OnceCell::new(),
            redis: Mutex::default(),
            diagnostics: Diagnostics::new(&spec.stdio.stderr),
            network: spec.network == wasmcell_workload::Network::Inherit,
            config,
        }
    }

    /// The store the app opens as `name`, connected on first use and shared after.
    async fn open_store(&self, name: &str) -> Result<Arc<KeyValue>, Refusal> {
        let Some(store) = self.app.store(name) else {
            return Err(self.refuse(
                KV_UNDECLARED,
                format!(
                    "no key-value store named {name:?} is declared in slightfile.toml: add a [[capability]] with resource = \"keyvalue.filesystem\" (or keyvalue.redis) and name = \"{name}\""
                ),
            ));
        };
        let opened = match store {
            Store::Filesystem => self
                .files
                .get_or_try_init(|| async {
                    KeyValue::open_sqlite(&self.places, self.file_path)
                        .await
                        .map(Arc::new)
                })
                .await
                .cloned(),
            Store::Redis { url } => {
                let cell = self
                    .redis
                    .lock()
                    .expect("redis lock")
                    .entry(url.clone())
                    .or_default()
                    .clone();
                cell.get_or_try_init(|| async {
                    KeyValue::open_redis(url, true).await.map(Arc::new)
                })
                .await
                .cloned()
            }
        };
        opened.map_err(|why| self.refuse(KV_CONNECTION, format!("key-value store {name:?}: {why}")))
    }

    /// Whether the app may open config source `name`.
    fn configs(&self, name: &str) -> Result<(), Refusal> {
        match self.app.configs(name) {
            Some(_) => Ok(()),
            None => Err(self.refuse(
                4,
                format!(
                    "no configs named {name:?} are declared in slightfile.toml: add a [[capability]] with resource = \"configs.envvars\" (or configs.usersecrets) and name = \"{name}\""
                ),
            )),
        }
    }

    fn config(&self, name: &str, key: &str) -> Result<Vec<u8>, Refusal> {
        const NOT_FOUND: u8 = 0;
        let value = match self.app.configs(name) {
            Some(Configs::EnvVars) => self
                .env_set
                .lock()
                .expect("env lock")
                .get(key)
                .cloned()
                .or_else(|| {
                    let var = self.env.iter().rev().find(|(k, _)| k == key);
                    var.map(|(_, v)| v.clone().into_bytes())
                }),
            Some(Configs::UserSecrets(secrets)) => secrets.get(key).cloned(),
            None => None,
        };
        value.ok_or_else(|| Refusal(NOT_FOUND, format!("no config {key:?} in {name:?}")))
    }

    fn set_config(&self, name: &str, key: &str, value: Vec<u8>) -> Result<(), Refusal> {
        const PERMISSION_DENIED: u8 = 2;
        match self.app.configs(name) {
            Some(Configs::EnvVars) => {
                self.env_set
                    .lock()
                    .expect("env lock")
                    .insert(key.to_owned(), value);
                Ok(())
            }
            _ => Err(Refusal(
                PERMISSION_DENIED,
                format!(
                    "{name:?} is configs.usersecrets, which are set in the slightfile (`slight secret`), not by the app"
                ),
            )),
        }
    }

    /// A refusal that is also reported on the container's stderr, where the user looks.
    fn refuse(&self, case: u8, message: String) -> Refusal {
        self.diagnostics.report(&message);
        Refusal(case, message)
    }
}

impl From<Refusal> for wasmcell_runtime::core_abi::Ret {
    fn from(Refusal(case, message): Refusal) -> wasmcell_runtime::core_abi::Ret {
        wasmcell_runtime::core_abi::Ret::Error(case, message)
    }
}

/// The calling instance's slight state (every instance of a module linked with slight's
/// functions has one).
fn instance<'a>(caller: &'a mut wasmtime::Caller<'_, SlightState>) -> &'a mut SlightInstance {
    &mut caller.data_mut().host
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcell_workload::{HttpServe, Limits, ModuleSource, NameFiles, Network, Stdio};

    const SLIGHTFILE: &str = r#"specversion = "0.2"
[[capability]]
resource = "keyvalue.filesystem"
name = "orders"
[[capability]]
resource = "configs.envvars"
name = "env"
[[capability]]
resource = "configs.usersecrets"
name = "secrets"
[[secret_settings]]
name = "token"
value = "TOKEN"
"#;

    /// The host of a slight app run from `dir` (`wasmcell run dir/app.wasm`), whose container
    /// has `env`; the secrets are encrypted with `SLIGHTKEY` from it.
    fn host(dir: &std::path::Path, env: &[(&str, &str)]) -> SlightHost {
        let key = "k3y";
        let text = SLIGHTFILE.replace("TOKEN", &wasmcell_slight::encrypt_secret(key, b"s3cret"));
        let file = wasmcell_slight::Slightfile::parse(&text, "slightfile.toml").unwrap();
        let lookup = |name: &str| (name == "SLIGHTKEY").then(|| key.to_owned());
        let app = SlightApp::resolve(&file, "slightfile.toml", &lookup).unwrap();
        let spec = WorkloadSpec {
            module: ModuleSource::File(dir.join("app.wasm")),
            function: None,
            args: vec![],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: "/".into(),
            preopens: vec![],
            stdio: Stdio::default(),
            limits: Limits::default(),
            network: Network::None,
            http: HttpServe::default(),
            names: NameFiles::default(),
            app: None,
        };
        SlightHost::new(&app, &spec)
    }

    #[tokio::test]
    async fn a_declared_filesystem_store_keeps_values_beside_the_module() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &[]);
        let store = host.open_store("orders").await.ok().unwrap();
        store.set("orders", "1", b"tea").await.unwrap();
        let again = host.open_store("orders").await.ok().unwrap();
        assert_eq!(
            again.get("orders", "1").await.unwrap().as_deref(),
            Some(&b"tea"[..])
        );
        assert!(dir.path().join(".slight/keyvalue.sqlite").exists());
    }

    #[tokio::test]
    async fn an_undeclared_store_is_slights_unexpected_error_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let Err(Refusal(case, message)) = host(dir.path(), &[]).open_store("other").await else {
            panic!("an undeclared store opened");
        };
        assert_eq!(case, KV_UNDECLARED);
        assert!(message.contains(r#"name = "other""#), "{message}");
    }

    #[test]
    fn envvars_configs_read_the_containers_environment_and_what_the_app_set() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &[("MODE", "a"), ("MODE", "b")]);
        assert!(host.configs("env").is_ok());
        // The last value wins, as in a shell.
        assert_eq!(host.config("env", "MODE").ok(), Some(b"b".to_vec()));
        host.set_config("env", "MODE", b"c".to_vec()).ok().unwrap();
        assert_eq!(host.config("env", "MODE").ok(), Some(b"c".to_vec()));
        let Err(Refusal(0, message)) = host.config("env", "MISSING") else {
            panic!("a missing config was found");
        };
        assert!(message.contains("MISSING"), "{message}");
    }

    #[test]
    fn user_secrets_are_read_decrypted_and_never_set_by_the_app() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &[]);
        assert_eq!(
            host.config("secrets", "token").ok(),
            Some(b"s3cret".to_vec())
        );
        let refused = host.set_config("secrets", "token", b"x".to_vec());
        assert!(matches!(refused, Err(Refusal(2, _))));
        assert_eq!(
            host.config("secrets", "token").ok(),
            Some(b"s3cret".to_vec())
        );
    }

    #[test]
    fn configs_the_slightfile_does_not_declare_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &[]);
        assert!(matches!(host.configs("vault"), Err(Refusal(4, _))));
    }
}
