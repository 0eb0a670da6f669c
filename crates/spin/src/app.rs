//! A Spin app resolved for running: every template rendered, every reference checked, every
//! grant spelled out. This is what travels to the engine (inside the workload spec); the
//! engine then only instantiates.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use wasmcell_oci::rootfs::{self, beneath};

use crate::LOCAL_STATE;
use crate::manifest::{
    ComponentDecl, ComponentRef, FileDecl, HttpHandlerDecl, Manifest, SourceDecl, StaticResponse,
};
use crate::outbound::AllowedHosts;
use crate::routes::Router;
use crate::runtime_config::{DatabaseConfig, RuntimeConfig, StoreConfig};
use crate::variables;

/// A resolved app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// Its name.
    pub name: String,
    /// Its components; triggers refer to them by index.
    pub components: Vec<Component>,
    /// Its HTTP triggers, in manifest order.
    pub http: Vec<HttpTrigger>,
    /// The routes of its public HTTP triggers (indexes into `http`).
    pub router: Router,
    /// Its Redis triggers.
    pub redis: Vec<RedisTrigger>,
    /// Components run to completion (command triggers).
    pub command: Vec<usize>,
    /// The key-value stores its components may open, by label.
    pub key_value_stores: BTreeMap<String, StoreConfig>,
    /// The SQLite databases its components may open, by label.
    pub sqlite_databases: BTreeMap<String, DatabaseConfig>,
}

/// A component, with what it is granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Its id (the `[component.ID]` key).
    pub id: String,
    /// Its Wasm file, relative to the app's directory.
    pub source: String,
    /// What it may read: see [`stage_files`].
    pub files: Vec<FileDecl>,
    /// Patterns of files left out.
    pub exclude_files: Vec<String>,
    /// Read-only directories it sees (after [`stage_files`]): host path, path in its view.
    pub mounts: Vec<(PathBuf, String)>,
    /// Its environment, exactly.
    pub environment: Vec<(String, String)>,
    /// Its variables, resolved.
    pub variables: BTreeMap<String, String>,
    /// Where its outbound requests may go.
    pub allowed_hosts: AllowedHosts,
    /// The key-value stores it may open.
    pub key_value_stores: Vec<String>,
    /// The SQLite databases it may open.
    pub sqlite_databases: Vec<String>,
    /// The LLM models it may use (`ai_models`).
    #[serde(default)]
    pub ai_models: Vec<String>,
    /// Whether its stdout and stderr are discarded: `wasmcell up --follow` named other
    /// components (wasmcell's own lines about it still show).
    #[serde(default)]
    pub silenced: bool,
}

/// An HTTP trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpTrigger {
    /// Its route; `None` for a private endpoint (reachable only from the app).
    pub route: Option<String>,
    /// What answers it.
    pub handler: HttpHandler,
}

/// What answers an HTTP trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpHandler {
    /// A component, by index.
    Component(usize),
    /// A fixed answer.
    Static(StaticResponse),
}

/// A Redis trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisTrigger {
    /// The server, `redis://host[:port]`.
    pub address: String,
    /// The channel subscribed to.
    pub channel: String,
    /// The component handling each message, by index.
    pub component: usize,
}

/// The settings an app is resolved with.
pub struct Resolve<'a> {
    /// The app's environment, for `SPIN_VARIABLE_*`.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Its stores and databases.
    pub runtime_config: RuntimeConfig,
}

impl App {
    /// Moves the stores and databases kept in the app's local state directory (`.spin/` in its
    /// directory: the default ones, and those a runtime config gives no path) into `dir`, as
    /// `spin up --state-dir` does. Paths a runtime config names elsewhere stay.
    pub fn move_local_state(&mut self, dir: &str) {
        let prefix = format!("{LOCAL_STATE}/");
        let moved = |path: &mut String| {
            if let Some(rest) = path.strip_prefix(&prefix) {
                *path = format!("{}/{rest}", dir.trim_end_matches('/'));
            }
        };
        for store in self.key_value_stores.values_mut() {
            if let StoreConfig::Sqlite { path } = store {
                moved(path);
            }
        }
        for database in self.sqlite_databases.values_mut() {
            moved(&mut database.path);
        }
    }

    /// Resolves `manifest`: variables, templates, component references, routes, stores.
    pub fn resolve(manifest: Manifest, settings: Resolve<'_>) -> Result<App, String> {
        let values = variables::resolve(&manifest.variables, settings.env)?;
        let mut resolver = Resolver {
            values: &values,
            runtime_config: &settings.runtime_config,
            components: Vec::new(),
            ids: BTreeMap::new(),
            declared: &manifest.components,
        };
        let mut http = Vec::new();
        for (n, trigger) in manifest.http.iter().enumerate() {
            let handler = match &trigger.handler {
                HttpHandlerDecl::Component(reference) => {
                    HttpHandler::Component(resolver.component(reference, &format!("http-{n}"))?)
                }
                HttpHandlerDecl::Static(response) => HttpHandler::Static(response.clone()),
            };
            http.push(HttpTrigger {
                route: trigger.route.clone(),
                handler,
            });
        }
        let router = Router::new(
            http.iter()
                .enumerate()
                .filter_map(|(i, t)| Some((t.route.as_deref()?, i))),
        )
        .map_err(|e| e.to_string())?;
        let mut redis = Vec::new();
        for (n, trigger) in manifest.redis.iter().enumerate() {
            let address = trigger
                .address
                .as_ref()
                .or(manifest.redis_address.as_ref())
                .ok_or_else(|| {
                    format!(
                        "[[trigger.redis]] for channel {}: no `address`, and no [application.trigger.redis] address",
                        trigger.channel
                    )
                })?;
            redis.push(RedisTrigger {
                address: variables::render(address, &values)?,
                channel: variables::render(&trigger.channel, &values)?,
                component: resolver.component(&trigger.component, &format!("redis-{n}"))?,
            });
        }
        let command = manifest
            .command
            .iter()
            .enumerate()
            .map(|(n, c)| resolver.component(c, &format!("command-{n}")))
            .collect::<Result<Vec<_>, _>>()?;
        if http.is_empty() && redis.is_empty() && command.is_empty() {
            return Err(
                "the app has no triggers: add a [[trigger.http]] (or redis, command)".to_owned(),
            );
        }
        let components = resolver.components;
        let used = |label: &String, kind: fn(&Component) -> &Vec<String>| {
            components.iter().any(|c| kind(c).contains(label))
        };
        let key_value_stores = settings
            .runtime_config
            .key_value_stores
            .into_iter()
            .filter(|(label, _)| used(label, |c| &c.key_value_stores))
            .collect();
        let sqlite_databases = settings
            .runtime_config
            .sqlite_databases
            .into_iter()
            .filter(|(label, _)| used(label, |c| &c.sqlite_databases))
            .collect();
        Ok(App {
            name: manifest.name,
            components,
            http,
            router,
            redis,
            command,
            key_value_stores,
            sqlite_databases,
        })
    }

    /// The component files (each component's `source`), relative to the app's directory.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.components.iter().map(|c| c.source.as_str())
    }

    /// The host paths the app reaches (its components' mounts), for a sandbox to be handed
    /// them as descriptors, which then rewrites them in place.
    pub fn host_paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        self.components
            .iter_mut()
            .flat_map(|c| c.mounts.iter_mut().map(|(host, _)| host))
    }
}

/// Resolves trigger references into components, each once.
struct Resolver<'a> {
    values: &'a BTreeMap<String, String>,
    runtime_config: &'a RuntimeConfig,
    components: Vec<Component>,
    ids: BTreeMap<String, usize>,
    declared: &'a BTreeMap<String, ComponentDecl>,
}

impl Resolver<'_> {
    /// The index of the referenced component; `inline_id` names an inline one.
    fn component(&mut self, reference: &ComponentRef, inline_id: &str) -> Result<usize, String> {
        let (id, decl) = match reference {
            ComponentRef::Id(id) => {
                if let Some(index) = self.ids.get(id) {
                    return Ok(*index);
                }
                let decl = self.declared.get(id).ok_or_else(|| {
                    format!("a trigger names component `{id}`, which has no [component.{id}]")
                })?;
                (id.clone(), decl)
            }
            ComponentRef::Inline(decl) => (inline_id.to_owned(), &**decl),
        };
        let component = self.resolve(&id, decl)?;
        self.components.push(component);
        let index = self.components.len() - 1;
        self.ids.insert(id, index);
        Ok(index)
    }

    fn resolve(&self, id: &str, decl: &ComponentDecl) -> Result<Component, String> {
        let within = |what: String| format!("[component.{id}]: {what}");
        // Ids name directories (its staged files): letters, digits, `-` and `_` only.
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if id.is_empty() || !id.chars().all(plain) {
            return Err(within(
                "a component id is made of letters, digits, `-` and `_`".to_owned(),
            ));
        }
        let source = match &decl.source {
            SourceDecl::Path(path) if !path.is_empty() => path.clone(),
            SourceDecl::Path(_) => return Err(within("`source` names no file".to_owned())),
            SourceDecl::Url { url, .. } => {
                return Err(within(format!(
                    "its source is a URL ({url}), which Spin fetches when the app is built; build the app (`spin build`, or `wasmcell build --spin`) so the image holds the file"
                )));
            }
            SourceDecl::Registry { package, .. } => {
                return Err(within(format!(
                    "its source is a registry package ({package}), which Spin fetches when the app is built; build the app so the image holds the file"
                )));
            }
        };
        if decl.dependencies.is_some() {
            return Err(within(
                "component dependencies are not supported: compose the component before packaging it".to_owned(),
            ));
        }
        let render = |template: &String| variables::render(template, self.values).map_err(&within);
        let variables = decl
            .variables
            .iter()
            .map(|(name, template)| Ok((name.clone(), render(template)?)))
            .collect::<Result<_, String>>()?;
        let outbound = decl
            .allowed_outbound_hosts
            .iter()
            .map(render)
            .collect::<Result<Vec<_>, _>>()?;
        let allowed_hosts = AllowedHosts::parse(&outbound, &decl.allowed_http_hosts)
            .map_err(|invalid| within(invalid.to_string()))?;
        for label in &decl.key_value_stores {
            if !self.runtime_config.key_value_stores.contains_key(label) {
                return Err(within(format!(
                    "key-value store `{label}` is not defined: only `default` is built in; define others in the runtime config ([key_value_store.{label}])"
                )));
            }
        }
        for label in &decl.sqlite_databases {
            if !self.runtime_config.sqlite_databases.contains_key(label) {
                return Err(within(format!(
                    "SQLite database `{label}` is not defined: only `default` is built in; define others in the runtime config ([sqlite_database.{label}])"
                )));
            }
        }
        Ok(Component {
            id: id.to_owned(),
            source,
            files: decl.files.clone(),
            exclude_files: decl.exclude_files.clone(),
            mounts: Vec::new(),
            environment: decl
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            variables,
            allowed_hosts,
            key_value_stores: decl.key_value_stores.clone(),
            sqlite_databases: decl.sqlite_databases.clone(),
            ai_models: decl.ai_models.clone(),
            silenced: false,
        })
    }
}

/// The most bytes of component files staged (copied) for one app, all its components
/// together: 1 GiB. Each copy is the node's disk, and an image chooses what its manifest
/// grants: a huge file, or the same one granted to many components, is refused rather than
/// allowed to fill the disk.
pub const MAX_STAGED_BYTES: u64 = 1 << 30;

/// The most component files staged for one app, all its components together, and (four times
/// as many) the most directory entries looked through to find them.
pub const MAX_STAGED_FILES: usize = 100_000;

/// Copies each component's `files` from the app's directory `root` into `staging/<id>/`, at
/// the paths the component then sees them, read-only, under `/`: glob matches at their relative
/// paths, `{ source, destination }` mounts at their destination. The manifest comes from an
/// image, so every path in it is hostile: each is read beneath `root` and written beneath the
/// component's staging directory (a symlink, `..` or an absolute name cannot reach outside
/// either, whoever runs this), only regular files are copied, and at most [`MAX_STAGED_BYTES`]
/// and [`MAX_STAGED_FILES`] of them. The component sees no file the manifest does not name.
pub fn stage_files(app: &mut App, root: &Path, staging: &Path) -> Result<(), String> {
    let root_dir = open_dir(root, "the app's directory")?;
    let mut budget = Budget {
        bytes: MAX_STAGED_BYTES,
        files: MAX_STAGED_FILES,
    };
    for component in &mut app.components {
        if component.files.is_empty() {
            continue;
        }
        let target = staging.join(&component.id);
        let error = |what: String| format!("[component.{}] files: {what}", component.id);
        std::fs::create_dir_all(&target)
            .map_err(|e| error(format!("cannot create {}: {e}", target.display())))?;
        let into = open_dir(&target, "the component's files").map_err(&error)?;
        for (path, destination) in
            component_files(&root_dir, &component.files, &component.exclude_files)
                .map_err(&error)?
        {
            copy_within(&root_dir, &path, &into, &destination, &mut budget).map_err(&error)?;
        }
        component.mounts = vec![(target, "/".to_owned())];
    }
    Ok(())
}

/// What is left of an app's staging limits.
struct Budget {
    bytes: u64,
    files: usize,
}

/// The files `files` grants, each as (its path in the app's directory `root`, its path in the
/// component's view, relative to `/`), without those `exclude_files` matches. Paths are as
/// Spin reads them, except that none may leave its root: a leading `/` is the root (Spin
/// trims it from destinations: `//x` is `/x`), and `..` is refused.
pub(crate) fn component_files(
    root: &Dir,
    files: &[FileDecl],
    exclude_files: &[String],
) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    let excluded = exclude_files
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| format!("exclude_files {p:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let kept = |path: &Path| !excluded.iter().any(|e| e.matches_path(path));
    let mut granted = Vec::new();
    for file in files {
        match file {
            FileDecl::Pattern(pattern) => {
                for path in pattern_files(root, pattern)?
                    .into_iter()
                    .filter(|p| kept(p))
                {
                    granted.push((path.clone(), path));
                }
            }
            FileDecl::Mount {
                source,
                destination,
            } => {
                if !destination.starts_with('/') {
                    return Err(format!(
                        "destination {destination:?} must be an absolute path"
                    ));
                }
                let into = beneath(Path::new(destination)).ok_or_else(|| {
                    format!(
                        "destination {destination:?} leads out of the component's files: `..` is refused"
                    )
                })?;
                let from = beneath(Path::new(source)).ok_or_else(|| {
                    format!("source {source:?} leads out of the app's directory: `..` is refused")
                })?;
                let metadata = root
                    .metadata(here(&from))
                    .map_err(|e| format!("source {source:?} in the app's directory: {e}"))?;
                if metadata.is_dir() {
                    for path in walk_within(root, &from)?.into_iter().filter(|p| kept(p)) {
                        let rest = path.strip_prefix(&from).unwrap_or(&path).to_owned();
                        granted.push((path, into.join(rest)));
                    }
                } else if into.as_os_str().is_empty() || destination.ends_with('/') {
                    return Err(format!("destination {destination:?} names no file"));
                } else {
                    granted.push((from, into));
                }
            }
        }
    }
    if granted.len() > MAX_STAGED_FILES {
        return Err(format!(
            "they grant {} files, more than the {MAX_STAGED_FILES} wasmcell copies for one app",
            granted.len()
        ));
    }
    Ok(granted)
}

/// Opens `dir` (`what` it is, for the message) as the root every path beneath it is resolved in.
pub(crate) fn open_dir(dir: &Path, what: &str) -> Result<Dir, String> {
    Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .map_err(|e| format!("cannot open {what} {}: {e}", dir.display()))
}

/// `path` as cap-std names it: `.` for the root itself.
fn here(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

/// The files a `files` pattern names, as Spin finds them: a path that exists is that file, or
/// every file under that directory; otherwise a glob pattern, relative to the app's directory,
/// whose `*` does not cross a `/`.
fn pattern_files(root: &Dir, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let relative = beneath(Path::new(pattern)).ok_or_else(|| {
        format!("file pattern {pattern:?} leads out of the app's directory: `..` is refused")
    })?;
    if relative.as_os_str().is_empty() {
        return Err(format!(
            "file pattern {pattern:?} names the app's directory itself: use a glob such as \"./**/*\", or a {{ source, destination }} mount"
        ));
    }
    let is_glob = |part: &str| part.contains(['*', '?', '[']);
    match root.metadata(&relative) {
        Ok(m) if m.is_dir() => return walk_within(root, &relative),
        // Whatever it is: copying refuses what is not a regular file, naming it.
        Ok(_) => return Ok(vec![relative]),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound || !is_glob(pattern) => {
            return Err(format!(
                "{pattern:?} is not a file in the app's directory ({e}), nor a glob pattern"
            ));
        }
        Err(_) => {}
    }
    let text = relative.to_string_lossy();
    let compiled = glob::Pattern::new(&text).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
    // Walk from the pattern's literal directories rather than the whole app.
    let start: PathBuf = relative
        .components()
        .take_while(|c| !is_glob(&c.as_os_str().to_string_lossy()))
        .collect();
    let candidates = match root.metadata(here(&start)) {
        Ok(m) if m.is_dir() => walk_within(root, &start)?,
        _ => Vec::new(),
    };
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    let matched: Vec<PathBuf> = candidates
        .into_iter()
        .filter(|p| compiled.matches_path_with(p, options))
        .collect();
    if matched.is_empty() {
        return Err(format!(
            "{pattern:?} matches no file in the app's directory"
        ));
    }
    Ok(matched)
}

/// Every file under directory `dir` of `root` (relative to `root`), including links to files
/// that stay inside `root`. Links to directories are not followed (no loops), links out of
/// `root` are left out, and so are devices, FIFOs and sockets, which are never an app's files
/// (Spin, too, copies only what is a file).
fn walk_within(root: &Dir, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let mut seen = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = root
            .read_dir(here(&dir))
            .map_err(|e| format!("{}: {e}", here(&dir).display()))?;
        for entry in entries {
            seen += 1;
            if seen > 4 * MAX_STAGED_FILES {
                return Err(format!(
                    "{} holds more than {} entries, more than wasmcell looks through for one app",
                    here(&dir).display(),
                    4 * MAX_STAGED_FILES
                ));
            }
            let entry = entry.map_err(|e| e.to_string())?;
            let path = dir.join(entry.file_name());
            let kind = entry.file_type().map_err(|e| e.to_string())?;
            let file = kind.is_file()
                || (kind.is_symlink() && root.metadata(&path).is_ok_and(|m| m.is_file()));
            if kind.is_dir() {
                pending.push(path);
            } else if file {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Copies regular file `path` of `root` to `to` beneath `into`, creating its directories,
/// within what is left of `budget`.
fn copy_within(
    root: &Dir,
    path: &Path,
    into: &Dir,
    to: &Path,
    budget: &mut Budget,
) -> Result<(), String> {
    let shown = path.display();
    let too_much = || {
        format!(
            "`{shown}`: the app's component files come to more than {} MiB, the most wasmcell copies for one app",
            MAX_STAGED_BYTES >> 20
        )
    };
    if budget.files == 0 {
        return Err(format!(
            "`{shown}`: more than {MAX_STAGED_FILES} files, the most wasmcell copies for one app"
        ));
    }
    let (file, size) = rootfs::open_regular(root, path, MAX_STAGED_BYTES)
        .map_err(|e| format!("`{shown}`: {e}"))?;
    if size > budget.bytes {
        return Err(too_much());
    }
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        into.create_dir_all(parent)
            .map_err(|e| format!("`{shown}` to {}: {e}", to.display()))?;
    }
    let mut out = into
        .create(to)
        .map_err(|e| format!("`{shown}` to {}: {e}", to.display()))?;
    let copied = std::io::copy(&mut file.take(budget.bytes + 1), &mut out)
        .map_err(|e| format!("`{shown}`: {e}"))?;
    if copied > budget.bytes {
        return Err(too_much());
    }
    budget.bytes -= copied;
    budget.files -= 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(manifest: &str, env: &[(&str, &str)]) -> Result<App, String> {
        let manifest = Manifest::parse(manifest, "spin.toml").map_err(|e| e.to_string())?;
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        App::resolve(
            manifest,
            Resolve {
                env: &|name| env.get(name).cloned(),
                runtime_config: RuntimeConfig::default(),
            },
        )
    }

    #[test]
    fn the_local_state_moves_to_a_state_dir_and_named_paths_stay() {
        let manifest = Manifest::parse(
            "spin_manifest_version = 2\n[application]\nname = \"s\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = \"web.wasm\"\nkey_value_stores = [\"default\", \"cache\", \"kept\"]\nsqlite_databases = [\"default\"]\n",
            "spin.toml",
        )
        .unwrap();
        let runtime_config = RuntimeConfig::parse(
            "[key_value_store.cache]\ntype = \"spin\"\n[key_value_store.kept]\ntype = \"spin\"\npath = \"data/kept.db\"\n",
            "runtime-config.toml",
        )
        .unwrap();
        let mut app = App::resolve(
            manifest,
            Resolve {
                env: &|_| None,
                runtime_config,
            },
        )
        .unwrap();
        app.move_local_state("/var/lib/app/");
        let path = |label: &str| match &app.key_value_stores[label] {
            StoreConfig::Sqlite { path } => path.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(path("default"), "/var/lib/app/sqlite_key_value.db");
        assert_eq!(path("cache"), "/var/lib/app/cache.db");
        assert_eq!(path("kept"), "data/kept.db");
        assert_eq!(
            app.sqlite_databases["default"].path,
            "/var/lib/app/sqlite_db.db"
        );
    }

    const SHOP: &str = r#"
spin_manifest_version = 2
[application]
name = "shop"
[variables]
api_host = { default = "api.example.com" }
greeting = { default = "hello" }
[[trigger.http]]
route = "/..."
component = "web"
[[trigger.http]]
route = "/cart/..."
component = "web"
[[trigger.http]]
route = { private = true }
component = "internal"
[component.web]
source = "web.wasm"
allowed_outbound_hosts = ["https://{{ api_host }}", "http://internal.spin.internal"]
key_value_stores = ["default"]
environment = { MODE = "prod" }
variables = { message = "{{ greeting }}, world" }
[component.internal]
source = "internal.wasm"
"#;

    #[test]
    fn an_app_resolves_its_components_once_and_its_grants() {
        let app = app(SHOP, &[("SPIN_VARIABLE_GREETING", "hi")]).unwrap();
        assert_eq!(app.components.len(), 2, "web is shared by two routes");
        let web = &app.components[0];
        assert_eq!(web.variables["message"], "hi, world");
        assert!(web.allowed_hosts.allows("https", "api.example.com", 443));
        assert!(
            web.allowed_hosts
                .allows("http", "internal.spin.internal", 80)
        );
        assert_eq!(web.environment, [("MODE".to_owned(), "prod".to_owned())]);
        assert_eq!(app.router.route("/cart/x").map(|m| m.index), Some(1));
        assert_eq!(app.http[2].route, None);
        assert!(app.key_value_stores.contains_key("default"));
        assert!(
            app.sqlite_databases.is_empty(),
            "no component uses a database"
        );
        assert_eq!(
            app.sources().collect::<Vec<_>>(),
            ["web.wasm", "internal.wasm"]
        );
    }

    #[test]
    fn bad_apps_are_refused_naming_what_to_fix() {
        for (change, expected) in [
            (
                ("route = \"/cart/...\"", "route = \"/...\""),
                "route /... is claimed by two triggers",
            ),
            (
                ("component = \"internal\"", "component = \"nope\""),
                "component `nope`, which has no [component.nope]",
            ),
            (
                ("[\"default\"]", "[\"cache\"]"),
                "key-value store `cache` is not defined",
            ),
            (("{{ api_host }}", "{{ api }}"), "variable `api`"),
            (
                (
                    "source = \"internal.wasm\"",
                    "source = { url = \"https://x/y.wasm\", digest = \"sha256:0\" }",
                ),
                "is a URL",
            ),
        ] {
            let manifest = SHOP.replace(change.0, change.1);
            let error = app(&manifest, &[]).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        let required = SHOP.replace(
            "greeting = { default = \"hello\" }",
            "greeting = { required = true }",
        );
        assert!(
            app(&required, &[])
                .unwrap_err()
                .contains("SPIN_VARIABLE_GREETING")
        );
    }

    #[test]
    fn files_are_copied_from_within_the_app_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("app");
        std::fs::create_dir_all(root.join("static/css")).unwrap();
        std::fs::write(root.join("static/index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(root.join("static/css/site.css"), "body{}").unwrap();
        std::fs::write(root.join("static/secret.key"), "k").unwrap();
        std::fs::create_dir_all(root.join("assets")).unwrap();
        std::fs::write(root.join("assets/logo.txt"), "logo").unwrap();
        std::fs::write(dir.path().join("outside"), "host file").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("static/escape")).unwrap();
        let manifest = SHOP.replace(
            "source = \"web.wasm\"",
            "source = \"web.wasm\"\nfiles = [\"static/**/*\", { source = \"assets\", destination = \"/pics\" }]\nexclude_files = [\"**/*.key\"]",
        );
        let mut app = app(&manifest, &[]).unwrap();
        let staging = dir.path().join("staging");
        stage_files(&mut app, &root, &staging).unwrap();
        let web = &app.components[0];
        assert_eq!(web.mounts, [(staging.join("web"), "/".to_owned())]);
        let files = staging.join("web/static");
        assert_eq!(
            std::fs::read_to_string(files.join("index.html")).unwrap(),
            "<h1>hi</h1>"
        );
        assert!(files.join("css/site.css").exists());
        assert!(!files.join("secret.key").exists(), "excluded");
        assert!(
            !files.join("escape").exists(),
            "a symlink out of the app is not followed"
        );
        assert!(staging.join("web/pics/logo.txt").exists());

        let missing = SHOP.replace(
            "source = \"web.wasm\"",
            "source = \"web.wasm\"\nfiles = [\"nothing/*\"]",
        );
        let mut app = self::app(&missing, &[]).unwrap();
        let error = stage_files(&mut app, &root, &staging).unwrap_err();
        assert!(error.contains("matches no file"), "{error}");
    }

    /// An app directory `app` in a temp dir with a component `web` whose `files` are `files`.
    fn staged(files: &str) -> (tempfile::TempDir, PathBuf, Result<App, String>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("app");
        std::fs::create_dir_all(root.join("static/css")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::write(root.join("b.txt"), "b").unwrap();
        std::fs::write(root.join("payload.txt"), "pwned").unwrap();
        std::fs::write(root.join("static/css/site.css"), "body{}").unwrap();
        let manifest = SHOP.replace(
            "source = \"web.wasm\"",
            &format!("source = \"web.wasm\"\nfiles = {files}"),
        );
        let mut app = app(&manifest, &[]).unwrap();
        let staging = dir.path().join("staging");
        let result = stage_files(&mut app, &root, &staging).map(|()| app);
        (dir, staging, result)
    }

    /// Issue 24: a destination from an image wrote the image's file anywhere on the host.
    #[test]
    fn a_destination_climbing_out_of_the_files_is_refused_and_nothing_is_written_outside() {
        let climb = "/../../../../../../../../../../../..";
        let target = tempfile::tempdir().unwrap();
        let aimed = target.path().join("pwned");
        let destination = format!("{climb}{}", aimed.display());
        let (_dir, _, result) = staged(&format!(
            "[{{ source = \"payload.txt\", destination = \"{destination}\" }}]"
        ));
        let error = result.unwrap_err();
        assert_eq!(
            error,
            format!(
                "[component.web] files: destination \"{destination}\" leads out of the component's files: `..` is refused"
            )
        );
        assert!(!aimed.exists(), "written on the host");
        // Inside a directory mount too, and in a source.
        for files in [
            "[{ source = \"static\", destination = \"/x/../../y\" }]".to_owned(),
            "[{ source = \"../app/payload.txt\", destination = \"/p\" }]".to_owned(),
            "[\"static/../../*\"]".to_owned(),
        ] {
            let (_dir, _, result) = staged(&files);
            let error = result.unwrap_err();
            assert!(error.contains("`..` is refused"), "{files}: {error}");
        }
    }

    /// Issue 24: `//tmp/pwned` joined onto the staging directory was `/tmp/pwned` on the host.
    #[test]
    fn a_destination_with_leading_slashes_stays_in_the_components_files() {
        let target = tempfile::tempdir().unwrap();
        let aimed = target.path().join("pwned");
        let (_dir, staging, result) = staged(&format!(
            "[{{ source = \"payload.txt\", destination = \"/{}\" }}]",
            aimed.display()
        ));
        result.unwrap();
        assert!(!aimed.exists(), "written on the host");
        // As Spin places it: the leading `/`s trimmed, so the component sees `//x` at `/x`.
        let inside = staging.join("web").join(aimed.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read_to_string(inside).unwrap(), "pwned");
    }

    /// Issue 24: `files = ["index.html", "*.txt"]` matched nothing at the app's top level.
    #[test]
    fn top_level_files_globs_and_directories_are_staged_as_spin_stages_them() {
        let (_dir, staging, result) = staged("[\"index.html\", \"*.txt\", \"static\"]");
        result.unwrap();
        let web = staging.join("web");
        assert_eq!(
            std::fs::read_to_string(web.join("index.html")).unwrap(),
            "<h1>home</h1>"
        );
        for file in ["a.txt", "b.txt", "payload.txt", "static/css/site.css"] {
            assert!(web.join(file).is_file(), "{file} not staged");
        }
        let (_dir, _, result) = staged("[\"nope.html\"]");
        let error = result.unwrap_err();
        assert!(
            error.contains("\"nope.html\" is not a file in the app's directory"),
            "{error}"
        );
    }

    #[test]
    fn a_fifo_source_is_refused_naming_it_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("app");
        std::fs::create_dir_all(&root).unwrap();
        let fifo = std::ffi::CString::new(root.join("feed").into_os_string().into_encoded_bytes())
            .unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        for files in [
            "[{ source = \"feed\", destination = \"/feed\" }]",
            "[\"feed\"]",
        ] {
            let manifest = SHOP.replace(
                "source = \"web.wasm\"",
                &format!("source = \"web.wasm\"\nfiles = {files}"),
            );
            let mut app = app(&manifest, &[]).unwrap();
            let error = stage_files(&mut app, &root, &dir.path().join("staging")).unwrap_err();
            assert_eq!(
                error,
                "[component.web] files: `feed`: it is a FIFO, not a regular file: only regular files are read from an image"
            );
        }
    }

    #[test]
    fn staged_files_are_bounded_in_size_and_number() {
        let dir = tempfile::tempdir().unwrap();
        let (from, into) = (dir.path().join("from"), dir.path().join("into"));
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(&into).unwrap();
        // Sparse: as large as it says, without the disk.
        let huge = std::fs::File::create(from.join("huge.bin")).unwrap();
        huge.set_len(MAX_STAGED_BYTES + 1).unwrap();
        std::fs::write(from.join("small.bin"), [7u8; 10]).unwrap();
        let (from, into) = (
            open_dir(&from, "from").unwrap(),
            open_dir(&into, "into").unwrap(),
        );
        let mut budget = Budget {
            bytes: MAX_STAGED_BYTES,
            files: MAX_STAGED_FILES,
        };
        let error = copy_within(
            &from,
            Path::new("huge.bin"),
            &into,
            Path::new("h"),
            &mut budget,
        )
        .unwrap_err();
        assert!(
            error.starts_with("`huge.bin`: it is larger than 1024 MiB"),
            "{error}"
        );
        assert!(!into.exists("h"));
        // What is left of the app's budget bounds the next file, and the number of files.
        let mut budget = Budget { bytes: 9, files: 2 };
        let copy = |budget: &mut Budget| {
            copy_within(&from, Path::new("small.bin"), &into, Path::new("s"), budget)
        };
        let error = copy(&mut budget).unwrap_err();
        assert_eq!(
            error,
            "`small.bin`: the app's component files come to more than 1024 MiB, the most wasmcell copies for one app"
        );
        let mut budget = Budget {
            bytes: 100,
            files: 1,
        };
        copy(&mut budget).unwrap();
        let error = copy(&mut budget).unwrap_err();
        assert!(error.contains("more than 100000 files"), "{error}");
    }
}
