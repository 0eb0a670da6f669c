//! Spin apps: a [`wasmcell_spin::App`] (resolved by the front end from `spin.toml`) prepared
//! into one instance-pre per component, served over HTTP by Spin's routes and fed by its Redis
//! channels.
//!
//! Every component runs on the pooling engine of [`HttpEngine`], with WASI, `wasi:http` and
//! Spin's interfaces ([`host`]); it sees its own environment and files, not the rootfs, and
//! reaches only the hosts, stores and databases its manifest entry grants.

pub(crate) mod host;
mod redis_trigger;
pub(crate) mod spin1;
mod spin3;

use std::path::Path;
use std::sync::Arc;

use wasmcell_oci::rootfs;
use wasmcell_spin::{App, HttpHandler, RouteMatch};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::engine::{ComponentState, Grants};
use crate::http::{self, Handler, HttpEngine, Target};
use host::SpinHost;
use wasmcell_runtime::cache::{CompileCache, InUse};
use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::error::Error;
use wasmcell_runtime::store::Budget;
use wasmcell_stores::{Opened, Places};
use wasmcell_workload::{ModuleSource, WorkloadSpec};

/// A Spin app ready to serve: its components linked, its routes known.
pub(crate) struct SpinApp {
    pub(crate) app: App,
    /// By the app's component index.
    components: Vec<Prepared>,
}

/// One component: what runs it for each of its triggers.
struct Prepared {
    /// Set when an HTTP trigger uses the component.
    http: Option<Arc<Target>>,
    /// Set when a Redis trigger uses the component.
    redis: Option<redis_trigger::RedisTriggerPre<ComponentState>>,
    /// Set when a command trigger runs the component.
    command: Option<wasmtime_wasi::p2::bindings::CommandPre<ComponentState>>,
    env: Vec<(String, String)>,
    preopens: WasiFilesystemCtx,
    host: Arc<SpinHost>,
}

/// Where a request goes.
pub(crate) enum Routed {
    /// To this component.
    Component(Arc<Target>),
    /// A fixed answer.
    Static(wasmcell_spin::StaticResponse),
    /// Nowhere: 404.
    NotFound,
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
pub(crate) fn compile(
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
    match wasmcell_oci::FileKind::detect(&bytes) {
        wasmcell_oci::FileKind::Wasm(kind @ wasmcell_oci::WasmKind::Component) => Ok((bytes, kind)),
        // Spin 1's modules run as core modules; Spin 2's are made components.
        wasmcell_oci::FileKind::Wasm(kind @ wasmcell_oci::WasmKind::Module)
            if spin1::is_spin1(&bytes) =>
        {
            Ok((bytes, kind))
        }
        wasmcell_oci::FileKind::Wasm(wasmcell_oci::WasmKind::Module) => componentize(&bytes)
            .map(|component| (component, wasmcell_oci::WasmKind::Component))
            .map_err(|why| {
                spin(format!(
                    "its source `{}` is a core module that cannot be made a component ({why}): Spin 2's SDKs built preview 1 modules that can, and Spin 1's export `handle-http-request`; rebuild it with a current Spin SDK",
                    component.source
                ))
            }),
        other => Err(spin(format!(
            "its source `{}` is {other}",
            component.source
        ))),
    }
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
pub(crate) fn prepare(
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
    let linker = http.spin_linker()?;
    let (mut components, mut cached) = (Vec::new(), Vec::new());
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
                let preopens = WasiCtxBuilder::new().build().filesystem().clone();
                let target = Target {
                    handler: Handler::Spin1(Arc::new(pre)),
                    env: component.environment.clone(),
                    args: Vec::new(),
                    preopens: preopens.clone(),
                    grants: Some(Grants::Spin(host.clone())),
                };
                components.push(Prepared {
                    http: served.contains(&index).then(|| Arc::new(target)),
                    redis: None,
                    command: None,
                    env: component.environment.clone(),
                    preopens,
                    host,
                });
                continue;
            }
        };
        let pre = linker.instantiate_pre(&loaded).map_err(|e| {
            let why = match missing_imports(&loaded, http.engine()) {
                missing if missing.is_empty() => wasmcell_runtime::error::error_chain(&Error::Engine(e)),
                missing => format!("it imports what wasmcell does not provide: {}", missing.join(", ")),
            };
            spin(format!(
                "cannot be linked: {why}. wasmcell provides WASI 0.2, wasi:http, fermyon:spin@2.0.0 key-value, variables, sqlite and redis, spin:sqlite@3.0.0, wasi:keyvalue@0.2.0-draft2 and wasi:config@0.2.0-draft-2024-09-27"
            ))
        })?;
        let mut files = WasiCtxBuilder::new();
        for (host, guest) in &component.mounts {
            files
                .preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| spin(format!("cannot open its files {}: {e}", host.display())))?;
        }
        let preopens = files.build().filesystem().clone();
        let http = if served.contains(&index) {
            let proxy = ProxyPre::new(pre.clone()).map_err(|_| {
                spin("has an HTTP trigger but does not export wasi:http/incoming-handler@0.2 (Spin 1's inbound-http is not supported)".to_owned())
            })?;
            Some(Arc::new(Target {
                handler: Handler::Proxy(proxy),
                env: component.environment.clone(),
                args: Vec::new(),
                preopens: preopens.clone(),
                grants: Some(Grants::Spin(host.clone())),
            }))
        } else {
            None
        };
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
            Some(redis_trigger::RedisTriggerPre::new(pre).map_err(|_| {
                spin(
                    "has a Redis trigger but does not export fermyon:spin/inbound-redis".to_owned(),
                )
            })?)
        } else {
            None
        };
        components.push(Prepared {
            http,
            redis,
            command,
            env: component.environment.clone(),
            preopens,
            host,
        });
    }
    Ok((
        SpinApp {
            app: app.clone(),
            components,
        },
        cached,
    ))
}

/// The imports of `component` the Spin linker does not provide, by name: WASI 0.2 (any patch
/// version, as the linker matches them) and `fermyon:spin@2.0.0`'s key-value, variables,
/// sqlite and redis. Instances of types alone need no definition. Used to explain a failed
/// link with the whole list, where wasmtime names the first.
fn missing_imports(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
) -> Vec<String> {
    use wasmtime::component::types::ComponentItem;
    const WASI: [&str; 7] = [
        "io",
        "clocks",
        "random",
        "filesystem",
        "sockets",
        "cli",
        "http",
    ];
    const SPIN: [&str; 4] = ["key-value", "variables", "sqlite", "redis"];
    let provided = |name: &str| {
        let (path, version) = name.split_once('@').unwrap_or((name, ""));
        let (package, interface) = path.split_once('/').unwrap_or((path, ""));
        match package.split_once(':') {
            Some(("wasi", "keyvalue")) => {
                ["store", "atomics", "batch"].contains(&interface) && version == "0.2.0-draft2"
            }
            Some(("wasi", "config")) => interface == "store" && version == "0.2.0-draft-2024-09-27",
            Some(("wasi", package)) => {
                WASI.contains(&package) && version.starts_with("0.2.") && !version.contains('-')
            }
            Some(("fermyon", "spin")) => SPIN.contains(&interface) && version == "2.0.0",
            Some(("spin", "sqlite")) => interface == "sqlite" && version == "3.0.0",
            _ => false,
        }
    };
    component
        .component_type()
        .imports(engine)
        .filter(|(_, item)| match &item.ty {
            ComponentItem::ComponentInstance(instance) => instance
                .exports(engine)
                .any(|(_, e)| !matches!(e.ty, ComponentItem::Type(_))),
            _ => true,
        })
        .filter(|(name, _)| !provided(name))
        .map(|(name, _)| name.to_owned())
        .collect()
}

impl SpinApp {
    /// Where a request for `path` goes from outside: public routes only.
    pub(crate) fn route(&self, path: &str) -> (Routed, Option<RouteMatch>) {
        let Some(matched) = self.app.router.route(path) else {
            return (Routed::NotFound, None);
        };
        let routed = self.trigger(matched.index);
        (routed, Some(matched))
    }

    fn trigger(&self, index: usize) -> Routed {
        match &self.app.http[index].handler {
            HttpHandler::Static(response) => Routed::Static(response.clone()),
            HttpHandler::Component(c) => match &self.components[*c].http {
                Some(target) => Routed::Component(target.clone()),
                None => Routed::NotFound,
            },
        }
    }

    /// The component a `http://ID.spin.internal` request reaches, private ones included.
    pub(crate) fn internal(&self, id: &str) -> Option<Arc<Target>> {
        let index = self.app.components.iter().position(|c| c.id == id)?;
        self.components[index].http.clone()
    }

    /// Whether the app has HTTP triggers to serve.
    pub(crate) fn serves_http(&self) -> bool {
        !self.app.http.is_empty()
    }

    /// Runs command component `index` once, to its exit.
    async fn run_command(
        &self,
        index: usize,
        http: &HttpEngine,
        spec: &WorkloadSpec,
        controls: &Controls,
    ) -> Result<crate::Exit, Error> {
        let prepared = &self.components[index];
        let Some(command) = &prepared.command else {
            return Err(Error::App(format!(
                "[component.{}] has no command to run",
                self.app.components[index].id
            )));
        };
        let mut wasi = prepared.host.wasi_base(spec.network);
        wasi.envs(&prepared.env)
            .args(&[self.app.components[index].id.as_str()]);
        wasmcell_runtime::stdio::attach(&mut wasi, &spec.stdio).await?;
        let mut wasi = wasi.build();
        *wasi.filesystem() = prepared.preopens.clone();
        let clock = http
            .ticker()
            .store_clock()
            .map_err(|e| Error::Engine(e.into()))?;
        let state = ComponentState {
            wasi,
            table: wasmtime::component::ResourceTable::new(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            hooks: http::HttpHooks::spin(spec.network, prepared.host.clone(), None),
            budget: Budget::new(controls, clock),
            grants: Some(Grants::Spin(prepared.host.clone())),
        };
        let mut store = crate::engine::new_store(http.engine(), state, controls);
        let result = async {
            let instance = command.instantiate_async(&mut store).await?;
            instance.wasi_cli_run().call_run(&mut store).await
        }
        .await;
        Ok(match result {
            Ok(Ok(())) => crate::Exit::Code(0),
            Ok(Err(())) => crate::Exit::Code(1),
            Err(error) => crate::Exit::of(Err(error), &store.data().budget.limiter),
        })
    }
}

/// Runs a Spin app: its command components first, each to completion (the first that fails
/// ends the app with its status), then its HTTP server and Redis listeners until terminated.
/// An app of commands alone ends with the last one's status.
pub(crate) async fn run(
    http: &HttpEngine,
    app: &Arc<SpinApp>,
    spec: &Arc<WorkloadSpec>,
    controls: &Controls,
) -> Result<crate::Exit, Error> {
    let mut last = crate::Exit::Code(0);
    for &index in &app.app.command {
        last = app.run_command(index, http, spec, controls).await?;
        if last != crate::Exit::Code(0) {
            return Ok(last);
        }
    }
    if !app.serves_http() && app.app.redis.is_empty() {
        return Ok(last);
    }
    if app.app.redis.is_empty() {
        return http::serve(http, &http::Routes::Spin(app.clone()), spec, controls).await;
    }
    if !app.serves_http() {
        redis_trigger::listen(app, http, spec, controls).await?;
        return Ok(crate::Exit::Code(0));
    }
    // A trigger that cannot subscribe ends the app at once, HTTP server and all: an app that
    // serves but never handles its messages would look healthy to its probes.
    let routes = http::Routes::Spin(app.clone());
    let (served, ()) = tokio::try_join!(
        http::serve(http, &routes, spec, controls),
        redis_trigger::listen(app, http, spec, controls)
    )?;
    Ok(served)
}

/// Sets the request headers Spin sets for a routed request (`spin-full-url`,
/// `spin-path-info`, ...), in place: names are static, values made once each.
pub(crate) fn set_headers(
    headers: &mut ::http::HeaderMap,
    matched: &RouteMatch,
    full_url: &str,
    client: std::net::SocketAddr,
) {
    use ::http::header::{HeaderName, HeaderValue};
    let value = |text: &str| HeaderValue::from_str(text).ok();
    let route = value(&matched.route);
    let fixed = [
        ("spin-full-url", value(full_url)),
        ("spin-path-info", value(&matched.path_info)),
        ("spin-matched-route", route.clone()),
        ("spin-raw-component-route", route),
        ("spin-component-route", value(&matched.component_route)),
        ("spin-base-path", Some(HeaderValue::from_static("/"))),
        ("spin-client-addr", value(&client.to_string())),
    ];
    for (name, value) in fixed {
        if let Some(value) = value {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    for (name, param) in &matched.params {
        let name = HeaderName::try_from(format!("spin-path-match-{name}"));
        if let (Ok(name), Some(param)) = (name, value(param)) {
            headers.insert(name, param);
        }
    }
}

/// What the Redis trigger needs of a component.
pub(crate) struct RedisComponent<'a> {
    pub(crate) redis: Option<&'a redis_trigger::RedisTriggerPre<ComponentState>>,
    pub(crate) env: &'a [(String, String)],
    pub(crate) preopens: &'a WasiFilesystemCtx,
    pub(crate) host: &'a Arc<SpinHost>,
}

impl SpinApp {
    pub(crate) fn component(&self, index: usize) -> RedisComponent<'_> {
        let prepared = &self.components[index];
        RedisComponent {
            redis: prepared.redis.as_ref(),
            env: &prepared.env,
            preopens: &prepared.preopens,
            host: &prepared.host,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers a request to `url` gets when it matches `route`.
    fn headers_for(route: &str, path: &str, url: &str) -> ::http::HeaderMap {
        let router = wasmcell_spin::Router::new([(route, 0)]).unwrap();
        let matched = router.route(path).expect("the route matches");
        let mut headers = ::http::HeaderMap::new();
        set_headers(
            &mut headers,
            &matched,
            url,
            "127.0.0.1:53152".parse().unwrap(),
        );
        headers
    }

    /// Spin's documented example (the HTTP trigger's "Additional request information"):
    /// `/users/...` requested as `/users/1/2`.
    #[test]
    fn a_wildcard_route_gets_spins_headers() {
        let url = "http://localhost:3000/users/1/2?sort=asc";
        let headers = headers_for("/users/...", "/users/1/2", url);
        for (name, value) in [
            ("spin-full-url", url),
            ("spin-path-info", "/1/2"),
            ("spin-matched-route", "/users/..."),
            ("spin-raw-component-route", "/users/..."),
            ("spin-component-route", "/users"),
            ("spin-base-path", "/"),
            ("spin-client-addr", "127.0.0.1:53152"),
        ] {
            assert_eq!(
                headers.get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{name}"
            );
        }
    }

    #[test]
    fn an_exact_route_has_an_empty_path_info() {
        let headers = headers_for("/cart", "/cart", "http://localhost:3000/cart");
        assert_eq!(headers["spin-path-info"], "");
        assert_eq!(headers["spin-component-route"], "/cart");
        assert_eq!(headers["spin-matched-route"], "/cart");
    }

    #[test]
    fn each_single_segment_wildcard_is_a_path_match_header() {
        let headers = headers_for(
            "/users/:id/posts/:post",
            "/users/42/posts/7",
            "http://localhost:3000/users/42/posts/7",
        );
        assert_eq!(headers["spin-path-match-id"], "42");
        assert_eq!(headers["spin-path-match-post"], "7");
        assert_eq!(headers["spin-matched-route"], "/users/:id/posts/:post");
    }

    /// A client's own `spin-*` header must not pass for the one the host sets.
    #[test]
    fn the_hosts_values_replace_a_clients() {
        let router = wasmcell_spin::Router::new([("/...", 0)]).unwrap();
        let matched = router.route("/a").unwrap();
        let mut headers = ::http::HeaderMap::new();
        headers.insert("spin-path-info", "/forged".parse().unwrap());
        headers.insert("spin-client-addr", "10.0.0.1:1".parse().unwrap());
        let client = "[::1]:8080".parse().unwrap();
        set_headers(&mut headers, &matched, "http://h/a", client);
        assert_eq!(headers.get_all("spin-path-info").iter().count(), 1);
        assert_eq!(headers["spin-path-info"], "/a");
        assert_eq!(headers["spin-client-addr"], "[::1]:8080");
    }
}
