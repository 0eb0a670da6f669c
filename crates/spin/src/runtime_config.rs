//! `runtime-config.toml`: where an app's key-value stores and SQLite databases live.
//!
//! ```toml
//! [key_value_store.default]      # the store `default` (a SQLite file unless said otherwise)
//! type = "spin"
//! path = "/data/kv.db"
//! [key_value_store.cache]
//! type = "redis"
//! url = "redis://redis:6379"
//! [sqlite_database.default]
//! type = "spin"
//! path = "/data/app.db"
//! ```
//!
//! Paths are as the app sees its directory: relative ones are in the app's directory (the
//! container's `/` under a shim), absolute ones are container paths, so a volume mounted there
//! keeps them. Without a runtime config, the store and the database named `default` are
//! `.spin/sqlite_key_value.db` and `.spin/sqlite_db.db` in the app's directory, as `spin up`
//! keeps them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::LOCAL_STATE;

/// Where a key-value store's data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreConfig {
    /// A SQLite file.
    Sqlite {
        /// Its path (see the module docs).
        path: String,
    },
    /// A Redis server.
    Redis {
        /// `redis://host[:port][/db]`.
        url: String,
    },
}

/// Where a SQLite database lives: its file (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseConfig {
    /// Its path.
    pub path: String,
}

/// A runtime config's stores and databases, by label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// Key-value stores.
    pub key_value_stores: BTreeMap<String, StoreConfig>,
    /// SQLite databases.
    pub sqlite_databases: BTreeMap<String, DatabaseConfig>,
}

impl Default for RuntimeConfig {
    /// The `default` store and database, in `.spin/` in the app's directory.
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            key_value_stores: BTreeMap::from([(
                "default".to_owned(),
                StoreConfig::Sqlite {
                    path: format!("{LOCAL_STATE}/sqlite_key_value.db"),
                },
            )]),
            sqlite_databases: BTreeMap::from([(
                "default".to_owned(),
                DatabaseConfig {
                    path: format!("{LOCAL_STATE}/sqlite_db.db"),
                },
            )]),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key_value_store: BTreeMap<String, Backend>,
    #[serde(default)]
    sqlite_database: BTreeMap<String, Backend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Backend {
    #[serde(rename = "type")]
    kind: String,
    path: Option<String>,
    url: Option<String>,
}

impl RuntimeConfig {
    /// Reads `text`, the runtime config `file` (its name for messages), over the defaults.
    pub fn parse(text: &str, file: &str) -> Result<RuntimeConfig, String> {
        let parsed: File = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| format!(" line {}", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default();
            format!("{file}{line}: {}", e.message().trim())
        })?;
        let mut config = RuntimeConfig::default();
        for (label, backend) in parsed.key_value_store {
            let store = match (backend.kind.as_str(), backend.path, backend.url) {
                ("spin", Some(path), None) => StoreConfig::Sqlite { path },
                ("spin", None, None) => StoreConfig::Sqlite {
                    path: format!("{LOCAL_STATE}/{label}.db"),
                },
                ("redis", None, Some(url)) => StoreConfig::Redis { url },
                ("spin" | "redis", _, _) => {
                    return Err(format!(
                        "{file}: [key_value_store.{label}]: type \"spin\" takes `path`, type \"redis\" takes `url`"
                    ));
                }
                (other, _, _) => {
                    return Err(format!(
                        "{file}: [key_value_store.{label}]: type \"{other}\" is not provided by wasmcell; use \"spin\" (SQLite) or \"redis\""
                    ));
                }
            };
            config.key_value_stores.insert(label, store);
        }
        for (label, backend) in parsed.sqlite_database {
            let database = match (backend.kind.as_str(), backend.path, backend.url) {
                ("spin", path, None) => DatabaseConfig {
                    path: path.unwrap_or_else(|| format!("{LOCAL_STATE}/{label}.db")),
                },
                (other, _, _) => {
                    return Err(format!(
                        "{file}: [sqlite_database.{label}]: type \"{other}\" is not provided by wasmcell; use \"spin\" with a `path`"
                    ));
                }
            };
            config.sqlite_databases.insert(label, database);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_databases_over_the_defaults() {
        let config = RuntimeConfig::parse(
            "[key_value_store.cache]\ntype = \"redis\"\nurl = \"redis://r:6379\"\n[key_value_store.default]\ntype = \"spin\"\npath = \"/data/kv.db\"\n[sqlite_database.reports]\ntype = \"spin\"\n",
            "runtime-config.toml",
        )
        .unwrap();
        assert_eq!(
            config.key_value_stores["cache"],
            StoreConfig::Redis {
                url: "redis://r:6379".into()
            }
        );
        assert_eq!(
            config.key_value_stores["default"],
            StoreConfig::Sqlite {
                path: "/data/kv.db".into()
            }
        );
        assert_eq!(
            config.sqlite_databases["default"].path,
            ".spin/sqlite_db.db"
        );
        assert_eq!(config.sqlite_databases["reports"].path, ".spin/reports.db");
    }

    #[test]
    fn what_is_not_provided_is_named() {
        let e = RuntimeConfig::parse("[key_value_store.x]\ntype = \"azure_cosmos\"\n", "rc.toml")
            .unwrap_err();
        assert!(e.contains("type \"azure_cosmos\" is not provided"), "{e}");
        let e =
            RuntimeConfig::parse("[llm_compute]\ntype = \"remote_http\"\n", "rc.toml").unwrap_err();
        assert!(
            e.starts_with("rc.toml line 1: unknown field `llm_compute`"),
            "{e}"
        );
    }
}
