//! A slightfile resolved into what the app is granted: which stores and config sources it may
//! open under which names, and whether it may serve HTTP or send requests. Everything that can
//! be wrong with the file is found here, at create, naming the line; a capability wasmcell does
//! not provide (the cloud ones) is refused the same way rather than failing at the first call.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::slightfile::{CapabilityName, Resource, Slightfile, SlightfileError};

/// The environment variable holding the key `slight secret` encrypted the slightfile's
/// `[[secret_settings]]` with (SpiderLightning kept it in `$TMPDIR/.slightkey`): read from the
/// container's environment, never the host's.
pub const SECRETS_KEY: &str = "SLIGHTKEY";

/// What a SpiderLightning app is granted: plain data for the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlightApp {
    /// Key-value stores, by the names the app opens them by.
    pub stores: Vec<Grant<Store>>,
    /// Config sources, by the names the app opens them by.
    pub configs: Vec<Grant<Configs>>,
    /// `http`: the app may serve HTTP (`server::serve`).
    pub http_server: bool,
    /// `http-client`: the app may send HTTP requests.
    pub http_client: bool,
}

/// A capability the app opens by `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant<T> {
    /// The name (or any name) it is opened by.
    pub name: CapabilityName,
    /// What opening it gives.
    pub what: T,
}

/// Where a key-value store keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Store {
    /// `keyvalue.filesystem`: a file in the container's own filesystem (a volume mounted there
    /// keeps it), never the host's.
    Filesystem,
    /// `keyvalue.redis`: a Redis server, keys prefixed with the store's name as slight did.
    Redis {
        /// `REDIS_ADDRESS`.
        url: String,
    },
}

/// Where config values come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Configs {
    /// `configs.envvars`: the container's environment (and values the app sets, kept in
    /// memory for the container's life).
    EnvVars,
    /// `configs.usersecrets`: the slightfile's secrets, decrypted.
    UserSecrets(BTreeMap<String, Vec<u8>>),
}

impl SlightApp {
    /// Resolves `file` (named `name` in messages), reading the container's environment through
    /// `env`.
    pub fn resolve(
        file: &Slightfile,
        name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SlightApp, SlightfileError> {
        let mut app = SlightApp {
            stores: Vec::new(),
            configs: Vec::new(),
            http_server: false,
            http_client: false,
        };
        for capability in &file.capabilities {
            let at = |message: String| SlightfileError {
                file: name.to_owned(),
                line: Some(capability.line),
                message: format!(
                    "{} {:?}: {message}",
                    capability.resource,
                    capability.name.to_string()
                ),
            };
            if let Some((key, _)) = capability
                .configs
                .iter()
                .find(|(_, value)| value.contains("${azapp."))
            {
                return Err(at(format!(
                    "configs.{key} refers to Azure App Configuration (${{azapp.…}}), which wasmcell does not provide: write the value itself"
                )));
            }
            let grant = |what| Grant {
                name: capability.name.clone(),
                what,
            };
            match capability.resource {
                Resource::KeyValueFilesystem => app.stores.push(grant(Store::Filesystem)),
                Resource::KeyValueRedis => {
                    let url = capability.configs.get("REDIS_ADDRESS").ok_or_else(|| {
                        at("needs the server's address: add `[capability.configs]` with REDIS_ADDRESS = \"redis://HOST:6379\"".to_owned())
                    })?;
                    app.stores.push(grant(Store::Redis { url: url.clone() }));
                }
                Resource::ConfigsEnvVars => app.configs.push(Grant {
                    name: capability.name.clone(),
                    what: Configs::EnvVars,
                }),
                Resource::ConfigsUserSecrets => {
                    let secrets = decrypt(&file.secrets, env).map_err(at)?;
                    app.configs.push(Grant {
                        name: capability.name.clone(),
                        what: Configs::UserSecrets(secrets),
                    });
                }
                Resource::Http => app.http_server = true,
                Resource::HttpClient => app.http_client = true,
                other => {
                    return Err(at(format!(
                        "{other} is not provided by wasmcell (it runs keyvalue.filesystem, keyvalue.redis, configs.envvars, configs.usersecrets, http and http-client); remove it or run the app where the service is"
                    )));
                }
            }
        }
        Ok(app)
    }

    /// The store an app opening `name` gets: one declared under that name, else one declared
    /// for any name.
    pub fn store(&self, name: &str) -> Option<&Store> {
        find(&self.stores, name)
    }

    /// The config source an app opening `name` gets, found as [`SlightApp::store`] finds stores.
    pub fn configs(&self, name: &str) -> Option<&Configs> {
        find(&self.configs, name)
    }
}

fn find<'a, T>(grants: &'a [Grant<T>], name: &str) -> Option<&'a T> {
    let named = grants
        .iter()
        .find(|g| g.name == CapabilityName::Named(name.to_owned()));
    named
        .or_else(|| grants.iter().find(|g| g.name.admits(name)))
        .map(|g| &g.what)
}

/// The slightfile's secrets decrypted with the container's [`SECRETS_KEY`].
fn decrypt(
    secrets: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    if secrets.is_empty() {
        return Ok(BTreeMap::new());
    }
    let key = env(SECRETS_KEY).ok_or_else(|| {
        format!(
            "the slightfile has [[secret_settings]] but the container has no {SECRETS_KEY}, the key they were encrypted with: pass it as an environment variable (e.g. `-e {SECRETS_KEY}=...`)"
        )
    })?;
    let crypt = short_crypt::ShortCrypt::new(key);
    secrets
        .iter()
        .map(|(name, value)| {
            crypt
                .decrypt_url_component(value)
                .map(|plain| (name.clone(), plain))
                .map_err(|why| {
                    format!(
                        "secret {name:?} does not decrypt with the container's {SECRETS_KEY} ({why}): is it the key `slight secret` used?"
                    )
                })
        })
        .collect()
}

/// Encrypts `value` as `slight secret` does, for a slightfile's `[[secret_settings]]`.
pub fn encrypt_secret(key: &str, value: &[u8]) -> String {
    short_crypt::ShortCrypt::new(key).encrypt_to_url_component(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, env: &[(&str, &str)]) -> Result<SlightApp, String> {
        let file = Slightfile::parse(text, "slightfile.toml").map_err(|e| e.to_string())?;
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        SlightApp::resolve(&file, "slightfile.toml", &lookup).map_err(|e| e.to_string())
    }

    #[test]
    fn grants_what_the_file_declares_by_name() {
        let app = resolve(
            r#"specversion = "0.2"
[[capability]]
resource = "keyvalue.filesystem"
name = "*"
[[capability]]
resource = "keyvalue.redis"
name = "cache"
    [capability.configs]
    REDIS_ADDRESS = "redis://127.0.0.1:6379"
[[capability]]
resource = "configs.envvars"
name = "env"
[[capability]]
resource = "http"
name = "api"
"#,
            &[],
        )
        .unwrap();
        assert_eq!(
            app.store("cache"),
            Some(&Store::Redis {
                url: "redis://127.0.0.1:6379".into()
            })
        );
        assert_eq!(app.store("anything"), Some(&Store::Filesystem));
        assert_eq!(app.configs("env"), Some(&Configs::EnvVars));
        assert_eq!(app.configs("other"), None);
        assert!(app.http_server && !app.http_client);
    }

    #[test]
    fn secrets_decrypt_with_the_containers_key_only() {
        let token = encrypt_secret("k3y", b"s3cret");
        let text = format!(
            "specversion = \"0.2\"\n[[capability]]\nresource = \"configs.usersecrets\"\nname = \"secrets\"\n[[secret_settings]]\nname = \"token\"\nvalue = \"{token}\"\n"
        );
        let app = resolve(&text, &[("SLIGHTKEY", "k3y")]).unwrap();
        let Some(Configs::UserSecrets(secrets)) = app.configs("secrets") else {
            panic!("{app:?}");
        };
        assert_eq!(secrets["token"], b"s3cret");
        let missing = resolve(&text, &[]).unwrap_err();
        assert!(missing.contains("has no SLIGHTKEY"), "{missing}");
        let wrong = resolve(&text, &[("SLIGHTKEY", "other")]).unwrap_err();
        assert!(wrong.contains("does not decrypt"), "{wrong}");
    }

    #[test]
    fn what_is_not_provided_fails_naming_the_line() {
        let cases = [
            (
                "specversion = \"0.2\"\n[[capability]]\nresource = \"blobstore.azblob\"\nname = \"b\"\n",
                "slightfile.toml line 2: blobstore.azblob \"b\": blobstore.azblob is not provided",
            ),
            (
                "specversion = \"0.2\"\n[[capability]]\nresource = \"keyvalue.redis\"\nname = \"r\"\n",
                "slightfile.toml line 2: keyvalue.redis \"r\": needs the server's address",
            ),
            (
                "specversion = \"0.2\"\n[[capability]]\nresource = \"keyvalue.redis\"\nname = \"r\"\n[capability.configs]\nREDIS_ADDRESS = \"${azapp.redis}\"\n",
                "slightfile.toml line 2: keyvalue.redis \"r\": configs.REDIS_ADDRESS refers to Azure",
            ),
        ];
        for (text, expected) in cases {
            let error = resolve(text, &[]).unwrap_err();
            assert!(error.starts_with(expected), "{error:?}");
        }
    }
}
