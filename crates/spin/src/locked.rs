//! Spin's locked app: a manifest resolved into JSON whose components and files are content
//! referred to by digest, as Spin's registry format carries it (`spin registry push`; the
//! layers themselves are `wasmcell_oci::spin`'s). [`lock`] makes one from an app's directory;
//! [`unlock`] writes one's content into a directory and reads it back as a version 2 manifest,
//! so that an app from a registry runs through exactly the same path as a `spin.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Digest as _;
use wasmcell_oci::rootfs;

use crate::MANIFEST;
use crate::app::{MAX_STAGED_BYTES, component_files, open_dir};
use crate::manifest::{ComponentDecl, ComponentRef, HttpHandlerDecl, Manifest, SourceDecl};

/// Where [`unlock`] writes a locked app's content, in the app's directory.
pub const UNLOCKED_DIR: &str = ".wasmcell-spin";
/// Content this small is inlined in the locked app rather than made a layer, as Spin does
/// (some registries refuse tiny blobs).
const INLINE_MAX: usize = 128;
/// The host requirement Spin records for apps that call their own components over HTTP, which
/// wasmcell provides.
const SERVICE_CHAINING: &str = "local_service_chaining";

#[derive(Debug, Serialize, Deserialize)]
struct LockedApp {
    spin_lock_version: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    must_understand: Vec<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    host_requirements: Map<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    variables: BTreeMap<String, LockedVariable>,
    triggers: Vec<LockedTrigger>,
    components: Vec<LockedComponent>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LockedVariable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// None: the variable is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    secret: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct LockedTrigger {
    id: String,
    trigger_type: String,
    trigger_config: Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct LockedComponent {
    id: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    metadata: Map<String, Value>,
    source: LockedSource,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    files: Vec<ContentPath>,
    /// The component's variables (templates over the app's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    config: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    dependencies: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    host_requirements: Map<String, Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LockedSource {
    content_type: String,
    #[serde(flatten)]
    content: ContentRef,
}

#[derive(Debug, Serialize, Deserialize)]
struct ContentPath {
    #[serde(flatten)]
    content: ContentRef,
    /// Where the component sees it, relative to `/`.
    path: String,
}

/// Content by digest, inline (base64), or (before it is packaged) by URL.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ContentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
}

/// What a piece of a locked app's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    /// A component's Wasm.
    Wasm,
    /// A file a component reads.
    Data,
}

/// A locked app and the content it refers to by digest.
#[derive(Debug)]
pub struct Locked {
    /// The locked app, JSON.
    pub json: Vec<u8>,
    /// Its content, each piece once, in the order the app names it.
    pub content: Vec<(ContentKind, Vec<u8>)>,
}

/// Locks the app whose `spin.toml` is at the root of `dir`: every component (declared or
/// inline) with its Wasm and files as content, variables and templates kept as they are
/// (they are resolved where the app runs).
pub fn lock(dir: &Path) -> Result<Locked, String> {
    let root = open_dir(dir, "the app's directory")?;
    let text = rootfs::read_config(&root, Path::new(MANIFEST))
        .map_err(|e| format!("cannot read {MANIFEST}: {e}"))?;
    let manifest = Manifest::parse(&text, MANIFEST).map_err(|e| e.to_string())?;
    let mut locker = Locker {
        root,
        declared: &manifest.components,
        components: Vec::new(),
        content: Vec::new(),
    };
    let mut triggers = Vec::new();
    for (n, trigger) in manifest.http.iter().enumerate() {
        let id = format!("http-{n}");
        let route = match &trigger.route {
            Some(route) => json!(route),
            None => json!({ "private": true }),
        };
        let config = match &trigger.handler {
            HttpHandlerDecl::Component(reference) => {
                json!({ "route": route, "component": locker.component(reference, &id)? })
            }
            HttpHandlerDecl::Static(response) => {
                json!({ "route": route, "static_response": response })
            }
        };
        triggers.push(locked_trigger(id, "http", config));
    }
    for (n, trigger) in manifest.redis.iter().enumerate() {
        let id = format!("redis-{n}");
        let mut config = json!({
            "channel": trigger.channel,
            "component": locker.component(&trigger.component, &id)?,
        });
        if let Some(address) = &trigger.address {
            config["address"] = json!(address);
        }
        triggers.push(locked_trigger(id, "redis", config));
    }
    for (n, component) in manifest.command.iter().enumerate() {
        let id = format!("command-{n}");
        let config = json!({ "component": locker.component(component, &id)? });
        triggers.push(locked_trigger(id, "command", config));
    }
    // Spin locks every declared component, used by a trigger or not.
    for id in manifest.components.keys() {
        locker.component(&ComponentRef::Id(id.clone()), id)?;
    }

    let mut metadata = Map::new();
    metadata.insert("name".to_owned(), json!(manifest.name));
    if let Some(version) = &manifest.version {
        metadata.insert("version".to_owned(), json!(version));
    }
    if let Some(address) = &manifest.redis_address {
        metadata.insert(
            "triggers".to_owned(),
            json!({ "redis": { "address": address } }),
        );
    }
    let variables = manifest
        .variables
        .iter()
        .map(|(name, v)| {
            let variable = LockedVariable {
                description: v.description.clone(),
                default: v.default.clone(),
                secret: v.secret,
            };
            (name.clone(), variable)
        })
        .collect();
    let app = LockedApp {
        spin_lock_version: 0,
        must_understand: Vec::new(),
        metadata,
        host_requirements: Map::new(),
        variables,
        triggers,
        components: locker.components,
    };
    let json = serde_json::to_vec_pretty(&app).map_err(|e| e.to_string())?;
    Ok(Locked {
        json,
        content: locker.content,
    })
}

fn locked_trigger(id: String, kind: &str, config: Value) -> LockedTrigger {
    LockedTrigger {
        id,
        trigger_type: kind.to_owned(),
        trigger_config: config,
    }
}

/// Locks components, each once, collecting their content.
struct Locker<'a> {
    root: cap_std::fs::Dir,
    declared: &'a BTreeMap<String, ComponentDecl>,
    components: Vec<LockedComponent>,
    content: Vec<(ContentKind, Vec<u8>)>,
}

impl Locker<'_> {
    /// The id of the referenced component, locked; `inline_id` names an inline one.
    fn component(&mut self, reference: &ComponentRef, inline_id: &str) -> Result<String, String> {
        let (id, decl) = match reference {
            ComponentRef::Id(id) => {
                let decl = self.declared.get(id).ok_or_else(|| {
                    format!("a trigger names component `{id}`, which has no [component.{id}]")
                })?;
                (id.clone(), decl)
            }
            ComponentRef::Inline(decl) => (inline_id.to_owned(), &**decl),
        };
        if !self.components.iter().any(|c| c.id == id) {
            let component = self.lock(&id, decl)?;
            self.components.push(component);
        }
        Ok(id)
    }

    fn lock(&mut self, id: &str, decl: &ComponentDecl) -> Result<LockedComponent, String> {
        let within = |what: String| format!("[component.{id}]: {what}");
        let SourceDecl::Path(source) = &decl.source else {
            return Err(within(
                "its source is a URL or a registry package: download it into the app's directory and name the file".to_owned(),
            ));
        };
        if decl.dependencies.is_some() {
            return Err(within(
                "component dependencies are not supported: compose the component first".to_owned(),
            ));
        }
        let wasm = rootfs::read_regular(&self.root, Path::new(source), rootfs::MAX_MODULE_SIZE)
            .map_err(|e| within(format!("cannot read its source `{source}`: {e}")))?;
        let source = LockedSource {
            content_type: "application/wasm".to_owned(),
            content: self.add(ContentKind::Wasm, wasm),
        };
        let mut files = Vec::new();
        for (path, seen_at) in component_files(&self.root, &decl.files, &decl.exclude_files)
            .map_err(|e| within(format!("files: {e}")))?
        {
            let bytes = rootfs::read_regular(&self.root, &path, MAX_STAGED_BYTES)
                .map_err(|e| within(format!("files: {}: {e}", path.display())))?;
            files.push(ContentPath {
                content: self.add(ContentKind::Data, bytes),
                path: seen_at.display().to_string(),
            });
        }
        let mut metadata = Map::new();
        let mut list = |key: &str, values: &[String]| {
            if !values.is_empty() {
                metadata.insert(key.to_owned(), json!(values));
            }
        };
        list("allowed_outbound_hosts", &decl.allowed_outbound_hosts);
        list("allowed_http_hosts", &decl.allowed_http_hosts);
        list("key_value_stores", &decl.key_value_stores);
        list("databases", &decl.sqlite_databases);
        list("ai_models", &decl.ai_models);
        if let Some(description) = &decl.description {
            metadata.insert("description".to_owned(), json!(description));
        }
        Ok(LockedComponent {
            id: id.to_owned(),
            metadata,
            source,
            env: decl.environment.clone(),
            files,
            config: decl.variables.clone(),
            dependencies: Map::new(),
            host_requirements: Map::new(),
        })
    }

    /// A reference to `bytes`: inline when small, else by digest, the bytes then kept (once)
    /// as content.
    fn add(&mut self, kind: ContentKind, bytes: Vec<u8>) -> ContentRef {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        if kind == ContentKind::Data && bytes.len() <= INLINE_MAX {
            return ContentRef {
                inline: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                digest: Some(digest),
                source: None,
            };
        }
        let known = |(_, b): &(ContentKind, Vec<u8>)| *b == bytes;
        if !self.content.iter().any(known) {
            self.content.push((kind, bytes));
        }
        ContentRef {
            digest: Some(digest),
            ..ContentRef::default()
        }
    }
}

/// Writes the content of the locked app `json` into [`UNLOCKED_DIR`] of `dir`, each piece
/// taken inline or from `content` by its digest, and returns the app as the version 2 manifest
/// of that directory. The locked app comes from an image, so nothing in it is trusted: paths
/// must stay inside their component's directory, and every piece must be in the image.
pub fn unlock(
    dir: &Path,
    json: &[u8],
    content: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<Manifest, String> {
    let app: LockedApp = serde_json::from_slice(json)
        .map_err(|e| format!("the image's locked Spin app is not valid: {e}"))?;
    for needed in &app.must_understand {
        if !matches!(
            needed.as_str(),
            "host_requirements" | "component_host_requirements"
        ) {
            return Err(format!(
                "the locked app requires `{needed}`, which this version of wasmcell does not understand"
            ));
        }
    }
    let requirements = app
        .components
        .iter()
        .flat_map(|c| c.host_requirements.keys())
        .chain(app.host_requirements.keys());
    for requirement in requirements {
        if requirement != SERVICE_CHAINING {
            return Err(format!(
                "the app requires the host feature `{requirement}`, which wasmcell does not provide"
            ));
        }
    }
    // Beneath the app's directory: a link there (the rootfs is the image's) leads nowhere else.
    let root = open_dir(dir, "the app's directory")?;
    let write = |relative: &Path, bytes: &[u8]| -> Result<(), String> {
        let path = Path::new(UNLOCKED_DIR).join(relative);
        if let Some(parent) = path.parent() {
            root.create_dir_all(parent)
                .map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        root.write(&path, bytes)
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut components = toml::Table::new();
    for (n, component) in app.components.iter().enumerate() {
        let within =
            |what: String| format!("component `{}` of the locked app: {what}", component.id);
        if !component.dependencies.is_empty() {
            return Err(within(
                "component dependencies are not supported: compose the component before pushing the app".to_owned(),
            ));
        }
        let wasm = fetch(&component.source.content, content).map_err(&within)?;
        let source = PathBuf::from("components").join(format!("{n}.wasm"));
        write(&source, &wasm).map_err(&within)?;
        let mut decl = toml::Table::new();
        decl.insert(
            "source".to_owned(),
            Path::new(UNLOCKED_DIR)
                .join(&source)
                .display()
                .to_string()
                .into(),
        );
        if !component.files.is_empty() {
            let files = PathBuf::from("files").join(n.to_string());
            for file in &component.files {
                let bytes = fetch(&file.content, content).map_err(&within)?;
                write(&files.join(inside(&file.path).map_err(&within)?), &bytes)
                    .map_err(&within)?;
            }
            let mut mount = toml::Table::new();
            mount.insert(
                "source".to_owned(),
                Path::new(UNLOCKED_DIR)
                    .join(&files)
                    .display()
                    .to_string()
                    .into(),
            );
            mount.insert("destination".to_owned(), "/".into());
            decl.insert("files".to_owned(), toml::Value::Array(vec![mount.into()]));
        }
        for (key, field) in [
            ("allowed_outbound_hosts", "allowed_outbound_hosts"),
            ("allowed_http_hosts", "allowed_http_hosts"),
            ("key_value_stores", "key_value_stores"),
            ("databases", "sqlite_databases"),
            ("ai_models", "ai_models"),
        ] {
            if let Some(value) = component.metadata.get(key).and_then(to_toml) {
                decl.insert(field.to_owned(), value);
            }
        }
        let strings = |map: &BTreeMap<String, String>| -> toml::Value {
            toml::Value::Table(
                map.iter()
                    .map(|(k, v)| (k.clone(), toml::Value::from(v.as_str())))
                    .collect(),
            )
        };
        decl.insert("environment".to_owned(), strings(&component.env));
        decl.insert("variables".to_owned(), strings(&component.config));
        components.insert(component.id.clone(), decl.into());
    }

    let mut triggers: BTreeMap<String, Vec<toml::Value>> = BTreeMap::new();
    for trigger in &app.triggers {
        let config = to_toml(&trigger.trigger_config)
            .filter(toml::Value::is_table)
            .ok_or_else(|| format!("trigger {}: its config is not a table", trigger.id))?;
        triggers
            .entry(trigger.trigger_type.clone())
            .or_default()
            .push(config);
    }
    let mut application = toml::Table::new();
    let name = app
        .metadata
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    application.insert(
        "name".to_owned(),
        name.unwrap_or_else(|| "app".to_owned()).into(),
    );
    if let Some(version) = app.metadata.get("version").and_then(Value::as_str) {
        application.insert("version".to_owned(), version.into());
    }
    // Indexing a `Value` (not the map) reads a missing key as null.
    let metadata = Value::Object(app.metadata);
    let redis_address = metadata["triggers"]["redis"]["address"]
        .as_str()
        .or_else(|| {
            let single = &metadata["trigger"];
            (single["type"] == "redis").then(|| single["address"].as_str())?
        });
    if let Some(address) = redis_address {
        let mut redis = toml::Table::new();
        redis.insert("address".to_owned(), address.into());
        let mut trigger = toml::Table::new();
        trigger.insert("redis".to_owned(), redis.into());
        application.insert("trigger".to_owned(), trigger.into());
    }
    let variables: toml::Table = app
        .variables
        .iter()
        .map(|(name, v)| {
            let mut decl = toml::Table::new();
            match &v.default {
                Some(default) => decl.insert("default".to_owned(), default.as_str().into()),
                None => decl.insert("required".to_owned(), true.into()),
            };
            decl.insert("secret".to_owned(), v.secret.into());
            (name.clone(), decl.into())
        })
        .collect();

    let mut manifest = toml::Table::new();
    manifest.insert("spin_manifest_version".to_owned(), 2.into());
    manifest.insert("application".to_owned(), application.into());
    manifest.insert("variables".to_owned(), variables.into());
    manifest.insert(
        "trigger".to_owned(),
        toml::Value::Table(
            triggers
                .into_iter()
                .map(|(kind, tables)| (kind, toml::Value::Array(tables)))
                .collect(),
        ),
    );
    manifest.insert("component".to_owned(), components.into());
    Manifest::from_v2_table(manifest).map_err(|e| format!("the image's locked Spin app: {e}"))
}

/// The bytes a content reference names: inline, or from the image by digest.
fn fetch(
    reference: &ContentRef,
    content: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    match reference {
        ContentRef {
            inline: Some(inline),
            ..
        } => base64::engine::general_purpose::STANDARD
            .decode(inline)
            .map_err(|e| format!("its inline content is not base64: {e}")),
        ContentRef {
            digest: Some(digest),
            ..
        } => content(digest).ok_or_else(|| format!("the image has no content {digest}")),
        ContentRef {
            source: Some(source),
            ..
        } => Err(format!(
            "it refers to {source}, which is not in the image: push the app with `spin registry push` or `wasmcell build --spin --format artifact`"
        )),
        _ => Err("a content reference names nothing".to_owned()),
    }
}

/// `path`, which must stay inside its directory: relative (a leading `/` is dropped), with no
/// `..`.
fn inside(path: &str) -> Result<PathBuf, String> {
    rootfs::beneath(Path::new(path))
        .filter(|relative| !relative.as_os_str().is_empty())
        .ok_or_else(|| format!("file path {path:?} leaves the component's files"))
}

/// A JSON value in TOML's data model; `null` (which TOML lacks) is left out.
fn to_toml(value: &Value) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(items.iter().filter_map(to_toml).collect()),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), to_toml(v)?)))
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::load::{RuntimeConfigSource, load_locked};

    const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "shop"
version = "1.2.0"
[application.trigger.redis]
address = "redis://{{ redis_host }}:6379"
[variables]
redis_host = { default = "127.0.0.1" }
token = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "web"
[[trigger.http]]
route = { private = true }
component = "internal"
[[trigger.http]]
route = "/health"
static_response = { body = "ok" }
[[trigger.redis]]
channel = "orders"
component = { source = "web.wasm" }
[component.web]
source = "web.wasm"
files = ["static/**/*", { source = "big", destination = "/data" }]
allowed_outbound_hosts = ["http://internal.spin.internal"]
key_value_stores = ["default"]
environment = { MODE = "prod" }
variables = { auth = "Bearer {{ token }}" }
[component.internal]
source = "internal.wasm"
"#;

    /// An app directory with APP's files.
    fn app_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join(MANIFEST), APP).unwrap();
        std::fs::write(root.join("web.wasm"), b"\0asm web").unwrap();
        std::fs::write(root.join("internal.wasm"), b"\0asm internal").unwrap();
        std::fs::create_dir_all(root.join("static/css")).unwrap();
        std::fs::write(root.join("static/index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(root.join("static/css/site.css"), "body{}").unwrap();
        std::fs::create_dir_all(root.join("big")).unwrap();
        std::fs::write(root.join("big/blob.bin"), vec![7u8; 4096]).unwrap();
        dir
    }

    fn by_digest(content: &[(ContentKind, Vec<u8>)]) -> HashMap<String, Vec<u8>> {
        content
            .iter()
            .map(|(_, b)| {
                (
                    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b))),
                    b.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn a_locked_app_runs_as_its_manifest_does() {
        let dir = app_dir();
        let locked = lock(dir.path()).unwrap();
        // Small files are inlined; the wasm and the large file are content, each once.
        let kinds: Vec<_> = locked.content.iter().map(|(k, b)| (*k, b.len())).collect();
        assert_eq!(
            kinds,
            [
                (ContentKind::Wasm, 8),
                (ContentKind::Data, 4096),
                (ContentKind::Wasm, 13)
            ]
        );
        let content = by_digest(&locked.content);

        let into = tempfile::tempdir().unwrap();
        let staging = into.path().join("staging");
        let env = |name: &str| (name == "SPIN_VARIABLE_TOKEN").then(|| "s3cret".to_owned());
        let app = load_locked(
            into.path(),
            &locked.json,
            &|d| content.get(d).cloned(),
            RuntimeConfigSource::Beside,
            &env,
            &staging,
        )
        .unwrap();
        assert_eq!(app.name, "shop");
        assert_eq!(app.router.route("/cart").map(|m| m.index), Some(0));
        assert_eq!(app.router.route("/health").map(|m| m.index), Some(2));
        assert_eq!(app.http[1].route, None, "private");
        assert_eq!(app.redis[0].address, "redis://127.0.0.1:6379");
        assert_eq!(app.redis[0].channel, "orders");
        let web = &app.components[0];
        assert_eq!(web.variables["auth"], "Bearer s3cret");
        assert_eq!(web.environment, [("MODE".to_owned(), "prod".to_owned())]);
        assert_eq!(web.key_value_stores, ["default"]);
        assert!(
            web.allowed_hosts
                .allows("http", "internal.spin.internal", 80)
        );
        let files = &web.mounts[0].0;
        assert_eq!(
            std::fs::read_to_string(files.join("static/index.html")).unwrap(),
            "<h1>hi</h1>"
        );
        assert_eq!(
            std::fs::read(files.join("data/blob.bin")).unwrap().len(),
            4096
        );
        let source = into.path().join(&web.source);
        assert_eq!(std::fs::read(source).unwrap(), b"\0asm web");

        // A required variable unset fails as it does for a manifest.
        let error = load_locked(
            into.path(),
            &locked.json,
            &|d| content.get(d).cloned(),
            RuntimeConfigSource::Beside,
            &|_| None,
            &staging,
        )
        .unwrap_err();
        assert!(error.contains("SPIN_VARIABLE_TOKEN"), "{error}");
    }

    #[test]
    fn a_locked_app_of_one_route_and_no_metadata_unlocks() {
        let json = serde_json::to_vec(&json!({
            "spin_lock_version": 1,
            "triggers": [{ "id": "t", "trigger_type": "http",
                           "trigger_config": { "route": "/...", "component": "c" } }],
            "components": [{ "id": "c",
                             "source": { "content_type": "application/wasm", "inline": "AGFzbQ==" } }],
        }))
        .unwrap();
        let into = tempfile::tempdir().unwrap();
        let manifest = unlock(into.path(), &json, &|_| None).unwrap();
        assert_eq!(manifest.name, "app");
        assert_eq!(manifest.http.len(), 1);
        assert_eq!(manifest.redis_address, None);
    }

    #[test]
    fn a_hostile_locked_app_is_refused_with_what_is_wrong() {
        let dir = app_dir();
        let locked = lock(dir.path()).unwrap();
        let content = by_digest(&locked.content);
        let mut app: Value = serde_json::from_slice(&locked.json).unwrap();
        let unlock_as = |app: &Value, content: &HashMap<String, Vec<u8>>| {
            let into = tempfile::tempdir().unwrap();
            let json = serde_json::to_vec(app).unwrap();
            let result = unlock(into.path(), &json, &|d| content.get(d).cloned());
            (result.map(|_| ()), into)
        };

        let mut escaping = app.clone();
        escaping["components"][0]["files"][0]["path"] = json!("../../etc/passwd");
        let (result, into) = unlock_as(&escaping, &content);
        assert!(result.unwrap_err().contains("leaves the component's files"));
        assert!(!into.path().join("etc").exists());

        let (result, _) = unlock_as(&app, &HashMap::new());
        assert!(
            result
                .unwrap_err()
                .contains("the image has no content sha256:")
        );

        app["must_understand"] = json!(["time_travel"]);
        let (result, _) = unlock_as(&app, &content);
        assert!(result.unwrap_err().contains("`time_travel`"));

        let (result, _) = unlock_as(&json!({"triggers": []}), &content);
        assert!(result.unwrap_err().contains("not valid"));
    }

    #[test]
    fn a_component_id_that_is_a_path_is_refused() {
        let dir = app_dir();
        let locked = lock(dir.path()).unwrap();
        let content = by_digest(&locked.content);
        let mut app: Value = serde_json::from_slice(&locked.json).unwrap();
        app["components"][1]["id"] = json!("../../escape");
        app["triggers"][1]["trigger_config"]["component"] = json!("../../escape");
        let into = tempfile::tempdir().unwrap();
        let error = load_locked(
            into.path(),
            &serde_json::to_vec(&app).unwrap(),
            &|d| content.get(d).cloned(),
            RuntimeConfigSource::Beside,
            &|_| Some("x".to_owned()),
            &into.path().join("staging"),
        )
        .unwrap_err();
        assert!(error.contains("letters, digits"), "{error}");
    }
}
