//! `slightfile.toml`, as SpiderLightning's last release (v0.5.1) reads it: `specversion` "0.1"
//! (a capability is `name = RESOURCE`) or "0.2" (`resource`, `name`, optional `configs`), and
//! `secret_settings` (values encrypted by `slight secret`). Unknown keys are errors: a misspelt
//! key would otherwise be silently ignored.
//!
//! Errors name the file, the line and what is wrong, on one line: containerd shows them as
//! they are.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// Why a slightfile cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct SlightfileError {
    /// The file's name as the user knows it (e.g. `/slightfile.toml`).
    pub file: String,
    /// The line the problem is on, if it is on one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// A slightfile, capabilities in the 0.2 shape whichever version it was written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slightfile {
    /// `[[capability]]`, in file order.
    pub capabilities: Vec<Capability>,
    /// `[[secret_settings]]`: name -> value as `slight secret` encrypted it.
    pub secrets: BTreeMap<String, String>,
}

/// One `[[capability]]`: a resource under a name the app opens it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// What it is.
    pub resource: Resource,
    /// The name the app opens it by.
    pub name: CapabilityName,
    /// `[capability.configs]`: the backend's settings (e.g. `REDIS_ADDRESS`).
    pub configs: BTreeMap<String, String>,
    /// The line of its `[[capability]]` header, for messages.
    pub line: usize,
}

/// The name an app opens a capability by.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CapabilityName {
    /// `"*"` (and every 0.1 capability): whatever name the app asks for.
    Any,
    /// This name only.
    Named(String),
}

impl CapabilityName {
    /// Whether an app opening `name` gets this capability.
    pub fn admits(&self, name: &str) -> bool {
        match self {
            CapabilityName::Any => true,
            CapabilityName::Named(own) => own == name,
        }
    }
}

impl fmt::Display for CapabilityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapabilityName::Any => f.write_str("*"),
            CapabilityName::Named(name) => f.write_str(name),
        }
    }
}

/// Every resource SpiderLightning named, under its 0.2 name (0.1 aliases are read into these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Resource {
    KeyValueFilesystem,
    KeyValueRedis,
    KeyValueAzblob,
    KeyValueAwsDynamoDb,
    KeyValueDapr,
    MessagingFilesystem,
    MessagingMosquitto,
    MessagingNats,
    MessagingAzsbus,
    MessagingKafka,
    Http,
    HttpClient,
    ConfigsEnvVars,
    ConfigsUserSecrets,
    ConfigsAzapp,
    DistributedLockingEtcd,
    SqlPostgres,
    BlobstoreAzblob,
    BlobstoreAwsS3,
}

/// Each resource's name, and the older names it was known by.
const NAMES: &[(Resource, &str, &[&str])] = &[
    (
        Resource::KeyValueFilesystem,
        "keyvalue.filesystem",
        &["kv.filesystem"],
    ),
    (Resource::KeyValueRedis, "keyvalue.redis", &["kv.redis"]),
    (Resource::KeyValueAzblob, "keyvalue.azblob", &["kv.azblob"]),
    (
        Resource::KeyValueAwsDynamoDb,
        "keyvalue.awsdynamodb",
        &["kv.awsdynamodb"],
    ),
    (Resource::KeyValueDapr, "keyvalue.dapr", &[]),
    (
        Resource::MessagingFilesystem,
        "messaging.filesystem",
        &["mq.filesystem"],
    ),
    (Resource::MessagingMosquitto, "messaging.mosquitto", &[]),
    (Resource::MessagingNats, "messaging.nats", &[]),
    (
        Resource::MessagingAzsbus,
        "messaging.azsbus",
        &["mq.azsbus"],
    ),
    (
        Resource::MessagingKafka,
        "messaging.confluent_apache_kafka",
        &[],
    ),
    (Resource::Http, "http", &[]),
    (Resource::HttpClient, "http-client", &[]),
    (Resource::ConfigsEnvVars, "configs.envvars", &[]),
    (Resource::ConfigsUserSecrets, "configs.usersecrets", &[]),
    (Resource::ConfigsAzapp, "configs.azapp", &[]),
    (
        Resource::DistributedLockingEtcd,
        "distributed_locking.etcd",
        &["lockd.etcd"],
    ),
    (Resource::SqlPostgres, "sql.postgres", &[]),
    (Resource::BlobstoreAzblob, "blobstore.azblob", &[]),
    (Resource::BlobstoreAwsS3, "blobstore.aws_s3", &[]),
];

impl Resource {
    fn parse(name: &str) -> Option<Resource> {
        NAMES
            .iter()
            .find(|(_, own, old)| *own == name || old.contains(&name))
            .map(|(resource, _, _)| *resource)
    }

    /// Its 0.2 name.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(resource, _, _)| *resource == self)
            .map(|(_, name, _)| *name)
            .unwrap_or("?")
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    specversion: String,
    #[serde(default)]
    capability: Vec<toml::Spanned<RawCapability>>,
    #[serde(default)]
    secret_settings: Vec<RawSecret>,
    /// Where secrets come from; only the slightfile's own are provided.
    secret_store: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapability {
    resource: Option<String>,
    name: String,
    configs: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    name: String,
    value: String,
}

impl Slightfile {
    /// Parses `text`, the slightfile `file` (its name for messages).
    pub fn parse(text: &str, file: &str) -> Result<Slightfile, SlightfileError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let error = |line: Option<usize>, message: String| SlightfileError {
            file: file.to_owned(),
            line,
            message,
        };
        let raw: Raw = toml::from_str(text).map_err(|e: toml::de::Error| {
            error(
                e.span().map(|span| line_of(span.start)),
                e.message().trim().to_owned(),
            )
        })?;
        let v1 = match raw.specversion.as_str() {
            "0.1" => true,
            "0.2" => false,
            other => {
                return Err(error(
                    None,
                    format!(
                        "specversion {other:?} is not one SpiderLightning defined: use \"0.2\" (or \"0.1\")"
                    ),
                ));
            }
        };
        if let Some(store) = raw.secret_store.filter(|s| s != "configs.usersecrets") {
            return Err(error(
                None,
                format!(
                    "secret_store {store:?} is not provided by wasmcell: secrets come from the slightfile's own [[secret_settings]] (configs.usersecrets)"
                ),
            ));
        }
        let mut capabilities = Vec::new();
        for spanned in raw.capability {
            let line = line_of(spanned.span().start);
            let raw = spanned.into_inner();
            let at = |message: String| error(Some(line), message);
            let (resource, name) = match (v1, raw.resource) {
                (true, None) => (raw.name, CapabilityName::Any),
                (false, Some(resource)) => {
                    let name = match raw.name.as_str() {
                        "*" => CapabilityName::Any,
                        "" => return Err(at("a capability's `name` may not be empty".to_owned())),
                        _ => CapabilityName::Named(raw.name),
                    };
                    (resource, name)
                }
                (true, Some(_)) => {
                    return Err(at(
                        "specversion 0.1 capabilities are `name = RESOURCE` only; with `resource` and `name`, use specversion \"0.2\"".to_owned(),
                    ));
                }
                (false, None) => {
                    return Err(at(
                        "a specversion 0.2 capability needs `resource` (e.g. \"keyvalue.filesystem\") and `name`".to_owned(),
                    ));
                }
            };
            let resource = Resource::parse(&resource).ok_or_else(|| {
                at(format!(
                    "unknown resource {resource:?}: SpiderLightning's resources are {}",
                    NAMES
                        .iter()
                        .map(|(_, name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            capabilities.push(Capability {
                resource,
                name,
                configs: raw.configs.unwrap_or_default(),
                line,
            });
        }
        for (i, a) in capabilities.iter().enumerate() {
            let same = capabilities[..i]
                .iter()
                .find(|b| b.name == a.name && family(b.resource) == family(a.resource));
            if let (Some(b), CapabilityName::Named(name)) = (same, &a.name) {
                return Err(error(
                    Some(a.line),
                    format!(
                        "a {} capability named {name:?} is declared twice (also on line {})",
                        family(a.resource),
                        b.line
                    ),
                ));
            }
        }
        Ok(Slightfile {
            capabilities,
            secrets: raw
                .secret_settings
                .into_iter()
                .map(|s| (s.name, s.value))
                .collect(),
        })
    }
}

/// The interface a resource is opened through: two capabilities of one family may not share a
/// name, which is how the app tells them apart.
fn family(resource: Resource) -> &'static str {
    resource.name().split('.').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_versions_and_their_aliases() {
        let v2 = Slightfile::parse(
            r#"specversion = "0.2"

[[capability]]
resource = "keyvalue.redis"
name = "cache"
    [capability.configs]
    REDIS_ADDRESS = "redis://127.0.0.1:6379"

[[capability]]
resource = "configs.envvars"
name = "*"

[[secret_settings]]
name = "token"
value = "abc"
"#,
            "slightfile.toml",
        )
        .unwrap();
        assert_eq!(v2.capabilities.len(), 2);
        assert_eq!(v2.capabilities[0].resource, Resource::KeyValueRedis);
        assert_eq!(
            v2.capabilities[0].name,
            CapabilityName::Named("cache".into())
        );
        assert_eq!(v2.capabilities[0].line, 3);
        assert_eq!(
            v2.capabilities[0].configs["REDIS_ADDRESS"],
            "redis://127.0.0.1:6379"
        );
        assert_eq!(v2.capabilities[1].name, CapabilityName::Any);
        assert_eq!(v2.secrets["token"], "abc");

        let v1 = Slightfile::parse(
            "specversion = \"0.1\"\n[[capability]]\nname = \"kv.filesystem\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(v1.capabilities[0].resource, Resource::KeyValueFilesystem);
        assert_eq!(v1.capabilities[0].name, CapabilityName::Any);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            (
                "specversion = \"0.2\"\n[[capability]]\nresource = \"keyvalue.nosuch\"\nname = \"a\"\n",
                "f line 2: unknown resource \"keyvalue.nosuch\"",
            ),
            (
                "specversion = \"0.2\"\n\n[[capability]]\nresource = \"http\"\nnaem = \"a\"\n",
                "f line 5: unknown field `naem`",
            ),
            ("specversion = \"0.3\"\n", "f: specversion \"0.3\""),
            (
                "specversion = \"0.2\"\n[[capability]]\nname = \"kv.filesystem\"\n",
                "f line 2: a specversion 0.2 capability needs `resource`",
            ),
            (
                "specversion = \"0.2\"\n[[capability]]\nresource = \"keyvalue.filesystem\"\nname = \"a\"\n[[capability]]\nresource = \"keyvalue.redis\"\nname = \"a\"\n",
                "f line 5: a keyvalue capability named \"a\" is declared twice (also on line 2)",
            ),
            ("specversion = 0.2\n", "f line 1: invalid type"),
        ];
        for (text, expected) in cases {
            let error = Slightfile::parse(text, "f").unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error:?} for {text:?}");
        }
    }
}
