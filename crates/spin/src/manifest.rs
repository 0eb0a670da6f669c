//! `spin.toml`, as written: version 2 (`spin_manifest_version = 2`) and version 1
//! (`spin_manifest_version = "1"`, or `spin_version = "1"`), both read into the version 2
//! shape. Unknown fields are errors (a misspelt key would otherwise be silently ignored), apart
//! from the tables Spin itself ignores at run time (`build`, `tool`).
//!
//! Errors name the file, the line and what is wrong, on one line: containerd shows them as
//! they are.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct ManifestError {
    /// The manifest's name as the user knows it (e.g. `/spin.toml`).
    pub file: String,
    /// The line the problem is on, if it is on one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// A manifest, in the version 2 shape whichever version it was written in.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The application's name.
    pub name: String,
    /// Its version, if given.
    pub version: Option<String>,
    /// `[variables]`: the application's variables.
    pub variables: BTreeMap<String, VariableDecl>,
    /// The HTTP triggers, in manifest order.
    pub http: Vec<HttpTriggerDecl>,
    /// The Redis triggers, in manifest order.
    pub redis: Vec<RedisTriggerDecl>,
    /// The command triggers (components run to completion).
    pub command: Vec<ComponentRef>,
    /// `[application.trigger.redis] address`: where Redis triggers without one subscribe.
    pub redis_address: Option<String>,
    /// The components by id.
    pub components: BTreeMap<String, ComponentDecl>,
}

/// A declared application variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    /// The value when none is supplied.
    pub default: Option<String>,
    /// Whether a value must be supplied.
    #[serde(default)]
    pub required: bool,
    /// Whether the value is sensitive (never printed).
    #[serde(default)]
    pub secret: bool,
    /// What it is for.
    pub description: Option<String>,
}

/// A `[[trigger.http]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTriggerDecl {
    /// The route (a path pattern), or `None` for a private endpoint.
    pub route: Option<String>,
    /// What answers it.
    pub handler: HttpHandlerDecl,
}

/// What answers an HTTP route.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpHandlerDecl {
    /// A component.
    Component(ComponentRef),
    /// `static_response`: a fixed answer.
    Static(StaticResponse),
}

/// A fixed HTTP answer (`static_response`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticResponse {
    /// The status code (default 200).
    pub status_code: Option<u16>,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A text body.
    pub body: Option<String>,
}

/// A `[[trigger.redis]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisTriggerDecl {
    /// The channel (may hold `{{ variable }}` templates).
    pub channel: String,
    /// The server, if not the application's (may hold templates).
    pub address: Option<String>,
    /// The component that handles each message.
    pub component: ComponentRef,
}

/// A trigger's component: by id, or written inline.
#[derive(Debug, Clone, PartialEq)]
pub enum ComponentRef {
    /// A key of `[component]`.
    Id(String),
    /// An inline component table.
    Inline(Box<ComponentDecl>),
}

/// A `[component.ID]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDecl {
    /// The Wasm file.
    pub source: SourceDecl,
    /// What it is.
    pub description: Option<String>,
    /// Files the component may read: glob patterns, or `{ source, destination }` mounts.
    #[serde(default)]
    pub files: Vec<FileDecl>,
    /// Patterns `files` matches that are left out.
    #[serde(default)]
    pub exclude_files: Vec<String>,
    /// Where outbound requests may go (may hold templates).
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Version 1's HTTP-only list of hosts.
    #[serde(default)]
    pub allowed_http_hosts: Vec<String>,
    /// Key-value stores it may open.
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    /// SQLite databases it may open.
    #[serde(default)]
    pub sqlite_databases: Vec<String>,
    /// LLM models it may use (not provided by wasmcell).
    #[serde(default)]
    pub ai_models: Vec<String>,
    /// Its environment variables.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Its variables: templates over the application's.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Component dependencies (composition; not supported).
    pub dependencies: Option<toml::Table>,
    /// Whether dependencies get the component's grants (meaningless without dependencies).
    pub dependencies_inherit_configuration: Option<bool>,
    /// `spin build`'s settings: ignored at run time.
    pub build: Option<toml::Table>,
    /// Tools' settings: ignored.
    pub tool: Option<toml::Table>,
}

/// A component's `source`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SourceDecl {
    /// A file, relative to the manifest.
    Path(String),
    /// A file to download: resolved when the app is built, not when it runs.
    Url {
        /// Where.
        url: String,
        /// Its `sha256:` digest.
        digest: String,
    },
    /// A package in a registry: resolved when the app is built.
    Registry {
        /// The registry.
        registry: Option<String>,
        /// The package.
        package: String,
        /// Its version.
        version: String,
    },
}

impl Default for SourceDecl {
    fn default() -> SourceDecl {
        SourceDecl::Path(String::new())
    }
}

/// A `files` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum FileDecl {
    /// A path or glob, relative to the manifest; matches appear at the same relative paths.
    Pattern(String),
    /// A file or directory made available at `destination`.
    Mount {
        /// Relative to the manifest.
        source: String,
        /// An absolute path in the component's view.
        destination: String,
    },
}

impl Manifest {
    /// Parses `text`, the manifest `file` (its name for messages).
    pub fn parse(text: &str, file: &str) -> Result<Manifest, ManifestError> {
        let error = |line: Option<usize>, message: String| ManifestError {
            file: file.to_owned(),
            line,
            message,
        };
        let de = |e: toml::de::Error| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            error(line, e.message().trim().to_owned())
        };
        #[derive(Deserialize)]
        struct Version {
            spin_manifest_version: Option<toml::Value>,
            spin_version: Option<toml::Value>,
        }
        let version: Version = toml::from_str(text).map_err(de)?;
        let version = match (&version.spin_manifest_version, &version.spin_version) {
            (Some(toml::Value::Integer(2)), None) => 2,
            (Some(toml::Value::String(v)), None) | (None, Some(toml::Value::String(v)))
                if v == "1" =>
            {
                1
            }
            (None, None) => {
                return Err(error(
                    None,
                    "no `spin_manifest_version`: a Spin manifest starts with `spin_manifest_version = 2`".to_owned(),
                ));
            }
            (Some(other), _) | (None, Some(other)) => {
                return Err(error(
                    None,
                    format!(
                        "manifest version {other} is not one wasmcell knows: use `spin_manifest_version = 2` (or \"1\")"
                    ),
                ));
            }
        };
        let manifest = match version {
            2 => toml::from_str::<V2>(text).map_err(de)?.into_manifest(),
            _ => toml::from_str::<V1>(text).map_err(de)?.into_manifest(),
        };
        manifest.map_err(|message| error(None, message))
    }
}

impl Manifest {
    /// A version 2 manifest already in TOML's data model (a locked app rewritten as one).
    pub(crate) fn from_v2_table(table: toml::Table) -> Result<Manifest, String> {
        toml::Value::Table(table)
            .try_into::<V2>()
            .map_err(|e| e.message().trim().to_owned())?
            .into_manifest()
    }
}

/// Version 2, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V2 {
    #[serde(rename = "spin_manifest_version")]
    _version: toml::Value,
    application: ApplicationV2,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    trigger: BTreeMap<String, Vec<toml::Table>>,
    #[serde(default)]
    component: BTreeMap<String, ComponentDecl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationV2 {
    name: String,
    version: Option<String>,
    #[serde(rename = "description")]
    _description: Option<String>,
    #[serde(default, rename = "authors")]
    _authors: Vec<String>,
    #[serde(default)]
    trigger: BTreeMap<String, toml::Table>,
    #[serde(rename = "tool")]
    _tool: Option<toml::Table>,
}

/// One `[[trigger.http]]` table, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTriggerV2 {
    route: RouteV2,
    component: Option<ComponentRefV2>,
    static_response: Option<StaticResponse>,
    executor: Option<toml::Table>,
    #[serde(rename = "id")]
    _id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RouteV2 {
    Path(String),
    Private { private: bool },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ComponentRefV2 {
    Id(String),
    Inline(Box<ComponentDecl>),
}

impl From<ComponentRefV2> for ComponentRef {
    fn from(reference: ComponentRefV2) -> ComponentRef {
        match reference {
            ComponentRefV2::Id(id) => ComponentRef::Id(id),
            ComponentRefV2::Inline(decl) => ComponentRef::Inline(decl),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisTriggerV2 {
    channel: String,
    address: Option<String>,
    component: ComponentRefV2,
    #[serde(rename = "id")]
    _id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandTriggerV2 {
    component: ComponentRefV2,
    #[serde(rename = "id")]
    _id: Option<String>,
}

/// Deserializes one trigger table, naming the trigger in the message when it does not fit.
fn trigger<T: serde::de::DeserializeOwned>(kind: &str, table: toml::Table) -> Result<T, String> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| format!("[[trigger.{kind}]]: {}", e.message().trim()))
}

/// Rejects what an HTTP trigger's `executor` asks for other than Spin's own.
fn check_executor(executor: Option<&toml::Table>, route: &str) -> Result<(), String> {
    let kind = executor
        .and_then(|e| e.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("spin");
    match kind {
        "spin" => Ok(()),
        other => Err(format!(
            "route {route}: executor `{other}` is not supported; wasmcell runs components that export wasi:http/incoming-handler (executor `spin`)"
        )),
    }
}

impl V2 {
    fn into_manifest(self) -> Result<Manifest, String> {
        let mut manifest = Manifest {
            name: self.application.name,
            version: self.application.version,
            variables: self.variables,
            http: Vec::new(),
            redis: Vec::new(),
            command: Vec::new(),
            redis_address: None,
            components: self.component,
        };
        for (kind, settings) in self.application.trigger {
            match kind.as_str() {
                "redis" => {
                    let address = settings.get("address").and_then(|a| a.as_str());
                    manifest.redis_address = address.map(str::to_owned);
                }
                // Spin 1's base path: Spin 3 dropped it, and only "/" is meaningful with it.
                "http" => {}
                other => return Err(format!("[application.trigger.{other}] is not supported")),
            }
        }
        for (kind, tables) in self.trigger {
            for table in tables {
                match kind.as_str() {
                    "http" => {
                        let t: HttpTriggerV2 = trigger("http", table)?;
                        let route = match t.route {
                            RouteV2::Path(path) => Some(path),
                            RouteV2::Private { private: true } => None,
                            RouteV2::Private { private: false } => {
                                return Err("[[trigger.http]]: `route = { private = false }` names no route: give a path".to_owned());
                            }
                        };
                        let shown = route.clone().unwrap_or_else(|| "(private)".to_owned());
                        check_executor(t.executor.as_ref(), &shown)?;
                        let handler = match (t.component, t.static_response) {
                            (Some(component), None) => HttpHandlerDecl::Component(component.into()),
                            (None, Some(response)) => HttpHandlerDecl::Static(response),
                            _ => {
                                return Err(format!(
                                    "[[trigger.http]] route {shown}: give either `component` or `static_response`"
                                ));
                            }
                        };
                        manifest.http.push(HttpTriggerDecl { route, handler });
                    }
                    "redis" => {
                        let t: RedisTriggerV2 = trigger("redis", table)?;
                        manifest.redis.push(RedisTriggerDecl {
                            channel: t.channel,
                            address: t.address,
                            component: t.component.into(),
                        });
                    }
                    "command" => {
                        let t: CommandTriggerV2 = trigger("command", table)?;
                        manifest.command.push(t.component.into());
                    }
                    other => {
                        return Err(format!(
                            "[[trigger.{other}]]: the `{other}` trigger is not supported by wasmcell; it runs http, redis and command triggers"
                        ));
                    }
                }
            }
        }
        Ok(manifest)
    }
}

/// Version 1, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V1 {
    #[serde(rename = "spin_manifest_version")]
    _version: Option<toml::Value>,
    #[serde(rename = "spin_version")]
    _spin_version: Option<toml::Value>,
    name: String,
    version: Option<String>,
    #[serde(rename = "description")]
    _description: Option<String>,
    #[serde(default, rename = "authors")]
    _authors: Vec<String>,
    trigger: TriggerV1,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    component: Vec<ComponentV1>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerV1 {
    #[serde(rename = "type")]
    kind: String,
    base: Option<String>,
    address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentV1 {
    id: String,
    source: SourceDecl,
    description: Option<String>,
    #[serde(default)]
    files: Vec<FileDecl>,
    #[serde(default)]
    exclude_files: Vec<String>,
    #[serde(default)]
    allowed_http_hosts: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    trigger: Option<toml::Table>,
    build: Option<toml::Table>,
}

impl V1 {
    fn into_manifest(self) -> Result<Manifest, String> {
        let mut manifest = Manifest {
            name: self.name,
            version: self.version,
            variables: self.variables,
            http: Vec::new(),
            redis: Vec::new(),
            command: Vec::new(),
            redis_address: None,
            components: BTreeMap::new(),
        };
        let base = self.trigger.base.unwrap_or_else(|| "/".to_owned());
        match self.trigger.kind.as_str() {
            "http" => {}
            "redis" => manifest.redis_address = self.trigger.address,
            other => {
                return Err(format!(
                    "trigger type `{other}` is not supported by wasmcell; it runs http and redis apps"
                ));
            }
        }
        for c in self.component {
            let id = c.id.clone();
            let settings = c.trigger.unwrap_or_default();
            match self.trigger.kind.as_str() {
                "http" => {
                    let route =
                        settings
                            .get("route")
                            .and_then(|r| r.as_str())
                            .ok_or_else(|| {
                                format!("component {id}: its [component.trigger] has no `route`")
                            })?;
                    check_executor(settings.get("executor").and_then(|e| e.as_table()), route)?;
                    manifest.http.push(HttpTriggerDecl {
                        route: Some(join_route(&base, route)),
                        handler: HttpHandlerDecl::Component(ComponentRef::Id(id.clone())),
                    });
                }
                _ => {
                    let channel = settings
                        .get("channel")
                        .and_then(|r| r.as_str())
                        .ok_or_else(|| {
                            format!("component {id}: its [component.trigger] has no `channel`")
                        })?;
                    manifest.redis.push(RedisTriggerDecl {
                        channel: channel.to_owned(),
                        address: None,
                        component: ComponentRef::Id(id.clone()),
                    });
                }
            }
            let decl = ComponentDecl {
                source: c.source,
                description: c.description,
                files: c.files,
                exclude_files: c.exclude_files,
                allowed_outbound_hosts: c.allowed_outbound_hosts,
                allowed_http_hosts: c.allowed_http_hosts,
                key_value_stores: c.key_value_stores,
                sqlite_databases: c.sqlite_databases,
                ai_models: c.ai_models,
                environment: c.environment,
                variables: c.config,
                build: c.build,
                ..ComponentDecl::default()
            };
            if manifest.components.insert(id.clone(), decl).is_some() {
                return Err(format!("component id `{id}` is used twice"));
            }
        }
        Ok(manifest)
    }
}

/// A version 1 route under the trigger's base path.
fn join_route(base: &str, route: &str) -> String {
    let base = base.trim_end_matches('/');
    if route == "/" && !base.is_empty() {
        return base.to_owned();
    }
    format!("{base}{route}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_APP: &str = r#"
spin_manifest_version = 2

[application]
name = "shop"
version = "1.2.3"
[application.trigger.redis]
address = "redis://localhost:6379"

[variables]
greeting = { default = "hello" }
token = { required = true, secret = true }

[[trigger.http]]
route = "/..."
component = "web"

[[trigger.http]]
route = { private = true }
component = "internal"

[[trigger.http]]
route = "/health"
static_response = { status_code = 200, body = "ok" }

[[trigger.redis]]
channel = "orders"
component = { source = "orders.wasm" }

[component.web]
source = "web.wasm"
files = ["static/**/*", { source = "assets", destination = "/assets" }]
allowed_outbound_hosts = ["https://{{ api_host }}", "http://self"]
key_value_stores = ["default"]
environment = { MODE = "prod" }
[component.web.variables]
greeting = "{{ greeting }}, world"
[component.web.build]
command = "cargo build"

[component.internal]
source = { url = "https://example.com/x.wasm", digest = "sha256:00" }
"#;

    #[test]
    fn version_2_reads_every_table() {
        let m = Manifest::parse(V2_APP, "spin.toml").unwrap();
        assert_eq!(
            (m.name.as_str(), m.version.as_deref()),
            ("shop", Some("1.2.3"))
        );
        assert_eq!(m.redis_address.as_deref(), Some("redis://localhost:6379"));
        assert!(m.variables["token"].required && m.variables["token"].secret);
        assert_eq!(m.http.len(), 3);
        assert_eq!(m.http[0].route.as_deref(), Some("/..."));
        assert_eq!(m.http[1].route, None);
        assert!(matches!(m.http[2].handler, HttpHandlerDecl::Static(_)));
        assert!(matches!(m.redis[0].component, ComponentRef::Inline(_)));
        let web = &m.components["web"];
        assert_eq!(web.source, SourceDecl::Path("web.wasm".into()));
        assert_eq!(web.files.len(), 2);
        assert_eq!(web.variables["greeting"], "{{ greeting }}, world");
        assert!(matches!(
            m.components["internal"].source,
            SourceDecl::Url { .. }
        ));
    }

    #[test]
    fn version_1_becomes_version_2() {
        let v1 = r#"
spin_manifest_version = "1"
name = "old"
trigger = { type = "http", base = "/api" }
[[component]]
id = "hello"
source = "hello.wasm"
allowed_http_hosts = ["example.com"]
[component.trigger]
route = "/hello/..."
[component.config]
message = "hi"
"#;
        let m = Manifest::parse(v1, "spin.toml").unwrap();
        assert_eq!(m.http[0].route.as_deref(), Some("/api/hello/..."));
        assert_eq!(m.components["hello"].variables["message"], "hi");
        assert_eq!(m.components["hello"].allowed_http_hosts, ["example.com"]);
        let v1 = v1.replace("spin_manifest_version", "spin_version");
        assert!(Manifest::parse(&v1, "spin.toml").is_ok());
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let typo = V2_APP.replace("key_value_stores", "key_value_store");
        let e = Manifest::parse(&typo, "/spin.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/spin.toml line 34: unknown field `key_value_store`"),
            "{e}"
        );

        let broken = "spin_manifest_version = 2\n[application\nname = \"x\"\n";
        let e = Manifest::parse(broken, "spin.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("spin.toml line 2:"), "{e}");

        let e = Manifest::parse("spin_manifest_version = 3\n", "spin.toml").unwrap_err();
        assert!(
            e.to_string().contains("manifest version 3 is not one"),
            "{e}"
        );
        let e = Manifest::parse("[application]\nname = \"x\"\n", "spin.toml").unwrap_err();
        assert!(e.to_string().contains("no `spin_manifest_version`"), "{e}");

        let mqtt = "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.mqtt]]\ncomponent = \"c\"\n";
        let e = Manifest::parse(mqtt, "spin.toml").unwrap_err().to_string();
        assert!(e.contains("the `mqtt` trigger is not supported"), "{e}");

        let wagi = "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\nexecutor = { type = \"wagi\" }\n";
        let e = Manifest::parse(wagi, "spin.toml").unwrap_err().to_string();
        assert!(e.contains("executor `wagi` is not supported"), "{e}");
    }
}
