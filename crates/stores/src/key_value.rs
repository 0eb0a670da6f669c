//! Key-value stores: a table in a SQLite file (Spin's default store) or a Redis server's keys,
//! behind one [`KeyValue`], with the atomic increment and compare-and-swap both offer. A
//! SQLite store is opened through [`crate::sqlite`], so it is hardened as a database is.

use wasmcell_spin::StoreConfig;

use crate::places::Places;
use crate::sqlite::{MAX_RESULT_BYTES, SqlError, Sqlite, open_sqlite};

/// An open key-value store.
pub enum KeyValue {
    /// A table in a SQLite file, as Spin's default store keeps it.
    Sqlite(Sqlite),
    /// A Redis server's keys.
    Redis(Redis),
}

/// A client for the Redis server at `url`, which comes from an image (a runtime config, a
/// trigger, a slightfile): TCP (`redis://`, `rediss://`) only. A `redis+unix://` address would
/// be a path the sandbox resolves, and a socket can be connected to through a read-only or
/// `nodev` mount: another container's grant, or a host socket bound into one.
pub fn redis_client(url: &str) -> Result<redis::Client, String> {
    let client = redis::Client::open(url).map_err(|e| format!("Redis address {url}: {e}"))?;
    match client.get_connection_info().addr {
        redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. } => Ok(client),
        _ => Err(format!(
            "Redis address {url}: only TCP addresses (redis://HOST:PORT, rediss://HOST:PORT) are served, not a Unix socket"
        )),
    }
}

/// Connects to the Redis server `client` names, giving up within seconds when it cannot be
/// reached: redis-rs's defaults retry for minutes (six attempts, waits growing to 60 s), long
/// past any request's deadline, so an unreachable server would look like a hung handler (a
/// 504 after a minute) instead of the error it is. Each attempt waits at most 5 s for the
/// connection, and one retry follows a second or two after a failure. The connection is made
/// again the same way when it is lost later.
pub async fn connect_redis(
    client: redis::Client,
) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(std::time::Duration::from_secs(5))
        .set_number_of_retries(1)
        .set_factor(2)
        .set_max_delay(2000);
    redis::aio::ConnectionManager::new_with_config(client, config).await
}

/// Keys read so far, and the bytes they hold, within [`MAX_RESULT_BYTES`].
#[derive(Default)]
struct KeysRead {
    keys: Vec<String>,
    bytes: usize,
}

impl KeysRead {
    fn push(&mut self, key: String) -> Result<(), String> {
        self.bytes += size_of::<String>() + key.len();
        if self.bytes > MAX_RESULT_BYTES {
            return Err(format!(
                "the store's keys take more than {MAX_RESULT_BYTES} bytes: more than one call can list"
            ));
        }
        self.keys.push(key);
        Ok(())
    }
}

/// A connection to a Redis server, and how a store's keys are named there.
pub struct Redis {
    manager: redis::aio::ConnectionManager,
    /// Whether a store's keys are `STORE:KEY` (slight's stores share one server that way) or
    /// the keys themselves (Spin's: a store is a whole server).
    prefixed: bool,
}

impl Redis {
    fn key(&self, store: &str, key: &str) -> String {
        match self.prefixed {
            true => format!("{store}:{key}"),
            false => key.to_owned(),
        }
    }
}

impl KeyValue {
    /// Opens the store `config` describes, its file found among `places`.
    pub async fn open(config: &StoreConfig, places: &Places) -> Result<KeyValue, String> {
        match config {
            StoreConfig::Sqlite { path } => KeyValue::open_sqlite(places, path).await,
            StoreConfig::Redis { url } => KeyValue::open_redis(url, false).await,
        }
    }

    /// Opens (creating it) the SQLite file at `path`, which holds any number of stores, as
    /// Spin's default store file does. In a read-only place the file must exist already, and
    /// hold the stores' table.
    pub async fn open_sqlite(places: &Places, path: &str) -> Result<KeyValue, String> {
        let sqlite = open_sqlite(places, path).await?;
        sqlite
            .run(|db| {
                db.execute_batch(
                    "CREATE TABLE IF NOT EXISTS spin_key_value (
                    store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                    PRIMARY KEY (store, key))",
                )
                .map_err(SqlError::from)
            })
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        Ok(KeyValue::Sqlite(sqlite))
    }

    /// Connects to the Redis server at `url`; `prefixed`: see [`Redis`].
    pub async fn open_redis(url: &str, prefixed: bool) -> Result<KeyValue, String> {
        let client = redis_client(url)?;
        let manager = connect_redis(client)
            .await
            .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?;
        Ok(KeyValue::Redis(Redis { manager, prefixed }))
    }

    /// The value of `key` in `store`, if it has one.
    pub async fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            KeyValue::Sqlite(db) => {
                let (store, key) = (store.to_owned(), key.to_owned());
                kv(db.run(move |db| Ok(sqlite_value(db, &store, &key)?)).await)
            }
            KeyValue::Redis(redis) => {
                redis_call(redis, redis::cmd("GET").arg(redis.key(store, key))).await
            }
        }
    }

    /// Sets `key` in `store` to `value`.
    pub async fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<(), String> {
        match self {
            KeyValue::Sqlite(db) => {
                let (store, key, value) = (store.to_owned(), key.to_owned(), value.to_owned());
                kv(db
                    .run(move |db| Ok(sqlite_set(db, &store, &key, &value)?))
                    .await)
            }
            KeyValue::Redis(redis) => {
                redis_call(
                    redis,
                    redis::cmd("SET").arg(redis.key(store, key)).arg(value),
                )
                .await
            }
        }
    }

    /// Removes `key` from `store`; removing a key that is not there is not an error.
    pub async fn delete(&self, store: &str, key: &str) -> Result<(), String> {
        match self {
            KeyValue::Sqlite(db) => {
                let (store, key) = (store.to_owned(), key.to_owned());
                kv(db
                    .run(move |db| {
                        db.execute(
                            "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2",
                            (store, key),
                        )?;
                        Ok(())
                    })
                    .await)
            }
            KeyValue::Redis(redis) => {
                redis_call::<i64>(redis, redis::cmd("DEL").arg(redis.key(store, key)))
                    .await
                    .map(drop)
            }
        }
    }

    /// Every key in `store`, read within [`MAX_RESULT_BYTES`] (a store the app filled with
    /// millions of keys would otherwise be read whole into host memory at each call): past
    /// it, an error saying so.
    pub async fn keys(&self, store: &str) -> Result<Vec<String>, String> {
        match self {
            KeyValue::Sqlite(db) => {
                let store = store.to_owned();
                kv(db
                    .run(move |db| {
                        let mut query = db.prepare(
                            "SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key",
                        )?;
                        let mut rows = query.query([store])?;
                        let mut keys = KeysRead::default();
                        while let Some(row) = rows.next()? {
                            if let Err(too_many) = keys.push(row.get(0)?) {
                                return Ok(Err(too_many));
                            }
                        }
                        Ok(Ok(keys.keys))
                    })
                    .await)?
            }
            KeyValue::Redis(redis) => {
                // The prefix is matched literally: glob characters in it are escaped.
                let prefix = redis.key(store, "");
                let escaped: String = prefix
                    .chars()
                    .flat_map(|c| match c {
                        '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
                        c => vec![c],
                    })
                    .collect();
                // SCAN, not KEYS: the server's reply comes in pages, read within the bound.
                let mut connection = redis.manager.clone();
                let mut cursor = 0u64;
                let mut keys = KeysRead::default();
                loop {
                    let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{escaped}*"))
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut connection)
                        .await
                        .map_err(|e| format!("Redis: {e}"))?;
                    for key in page {
                        if let Some(key) = key.strip_prefix(&prefix) {
                            keys.push(key.to_owned())?;
                        }
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                // SCAN may return a key more than once, and in no order.
                keys.keys.sort();
                keys.keys.dedup();
                Ok(keys.keys)
            }
        }
    }
}

impl KeyValue {
    /// Adds `delta` to the counter at `key` (0 when absent) and returns the new value, in one
    /// step: a SQLite transaction (the counter an 8-byte little-endian integer, as Spin keeps
    /// it), or Redis's INCRBY (a decimal string, as Redis keeps it).
    pub async fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64, String> {
        match self {
            KeyValue::Sqlite(db) => {
                let (store, key) = (store.to_owned(), key.to_owned());
                kv(db
                    .run(move |db| {
                        let tx = db.unchecked_transaction()?;
                        let old = sqlite_value(&tx, &store, &key)?;
                        let value = match old.as_deref() {
                            None => Ok(0),
                            Some(bytes) => bytes.try_into().map(i64::from_le_bytes),
                        };
                        let Ok(value) = value else {
                            return Ok(Err(format!("the value at {key} is not a counter")));
                        };
                        let Some(new) = value.checked_add(delta) else {
                            return Ok(Err(format!("the counter at {key} would overflow")));
                        };
                        sqlite_set(&tx, &store, &key, &new.to_le_bytes())?;
                        tx.commit()?;
                        Ok(Ok(new))
                    })
                    .await)
                .and_then(|r| r)
            }
            KeyValue::Redis(redis) => {
                let mut command = redis::cmd("INCRBY");
                command.arg(redis.key(store, key)).arg(delta);
                redis_call(redis, &mut command).await
            }
        }
    }

    /// Sets `key` to `value` if it still holds `expected` (`None`: absent), in one step;
    /// whether it did.
    pub async fn swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, String> {
        match self {
            KeyValue::Sqlite(db) => {
                let (store, key) = (store.to_owned(), key.to_owned());
                let (expected, value) = (expected.map(<[u8]>::to_vec), value.to_owned());
                kv(db
                    .run(move |db| {
                        let tx = db.unchecked_transaction()?;
                        if sqlite_value(&tx, &store, &key)? != expected {
                            return Ok(false);
                        }
                        sqlite_set(&tx, &store, &key, &value)?;
                        tx.commit()?;
                        Ok(true)
                    })
                    .await)
            }
            KeyValue::Redis(redis) => {
                // One script runs atomically on the server: compare, then set.
                const SWAP: &str = "local now = redis.call('GET', KEYS[1]) \
                    if (ARGV[1] == '1' and now == ARGV[2]) or (ARGV[1] == '0' and not now) then \
                    redis.call('SET', KEYS[1], ARGV[3]) return 1 end return 0";
                let mut command = redis::cmd("EVAL");
                command
                    .arg(SWAP)
                    .arg(1)
                    .arg(redis.key(store, key))
                    .arg(if expected.is_some() { "1" } else { "0" })
                    .arg(expected.unwrap_or_default())
                    .arg(value);
                redis_call::<i64>(redis, &mut command)
                    .await
                    .map(|done| done == 1)
            }
        }
    }
}

/// A key-value store's answer: its errors are messages for the guest.
fn kv<T>(result: Result<T, SqlError>) -> Result<T, String> {
    result.map_err(|e| e.to_string())
}

fn sqlite_value(
    db: &rusqlite::Connection,
    store: &str,
    key: &str,
) -> rusqlite::Result<Option<Vec<u8>>> {
    use rusqlite::OptionalExtension;
    db.query_row(
        "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
        (store, key),
        |row| row.get(0),
    )
    .optional()
}

fn sqlite_set(
    db: &rusqlite::Connection,
    store: &str,
    key: &str,
    value: &[u8],
) -> rusqlite::Result<()> {
    db.execute(
        "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
        (store, key, value),
    )
    .map(drop)
}

async fn redis_call<T: redis::FromRedisValue>(
    redis: &Redis,
    command: &mut redis::Cmd,
) -> Result<T, String> {
    let mut connection = redis.manager.clone();
    command
        .query_async(&mut connection)
        .await
        .map_err(|e| format!("Redis: {e}"))
}

#[cfg(test)]
mod tests {

    use wasmcell_workload::Access;

    use super::*;
    use crate::places::tests::preopen;

    /// Issue 24: an image's Redis address could name a socket in another container's grant.
    #[test]
    fn r24_a_redis_address_from_an_image_is_tcp_only() {
        assert!(redis_client("redis://127.0.0.1:6379").is_ok());
        for url in [
            "redis+unix:///proc/self/fd/7/redis.sock",
            "unix:///run/docker.sock",
        ] {
            let refused = redis_client(url).err().unwrap_or_default();
            assert!(refused.contains("not a Unix socket"), "{url}: {refused}");
        }
    }

    #[tokio::test]
    async fn a_sqlite_store_keeps_values_and_refuses_planted_links() {
        let dir = tempfile::tempdir().unwrap();
        let places = Places::new(dir.path(), &[]);
        let config = StoreConfig::Sqlite {
            path: ".spin/kv.db".into(),
        };
        let store = KeyValue::open(&config, &places).await.unwrap();
        store.set("default", "a", b"1").await.unwrap();
        store.set("default", "a", b"2").await.unwrap();
        assert_eq!(
            store.get("default", "a").await.unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(store.keys("default").await.unwrap(), ["a"]);
        store.delete("default", "a").await.unwrap();
        assert_eq!(store.get("default", "a").await.unwrap(), None);

        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("evil.db")).unwrap();
        let evil = StoreConfig::Sqlite {
            path: "evil.db".into(),
        };
        let Err(error) = KeyValue::open(&evil, &places).await else {
            panic!("a planted link was opened");
        };
        assert!(error.contains("symbolic link"), "{error}");
    }

    /// A store whose keys would take more than a result may hold is not read whole into host
    /// memory: listing it is an error saying so; one within the bound lists whole.
    #[tokio::test]
    async fn listing_a_store_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let places = Places::new(dir.path(), &[]);
        let config = StoreConfig::Sqlite {
            path: "kv.db".into(),
        };
        let store = KeyValue::open(&config, &places).await.unwrap();
        let long = "k".repeat(1 << 20);
        for i in 0..30 {
            store
                .set("big", &format!("{i:02}{long}"), b"")
                .await
                .unwrap();
        }
        assert_eq!(store.keys("big").await.unwrap().len(), 30);
        for i in 30..40 {
            store
                .set("big", &format!("{i:02}{long}"), b"")
                .await
                .unwrap();
        }
        let refused = store.keys("big").await.unwrap_err();
        assert!(refused.contains("more than one call can list"), "{refused}");
        assert!(store.keys("other").await.unwrap().is_empty());
    }

    /// Issue 24: stores were created and written in volumes mounted `ro`.
    #[tokio::test]
    async fn r24_a_store_in_a_read_only_mount_is_read_but_never_written_or_created() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        let config = StoreConfig::Sqlite {
            path: "/data/kv.db".into(),
        };
        let mounted = |access| Places::new(dir.path(), &[preopen(&volume, "/data", access)]);
        let writable = KeyValue::open(&config, &mounted(Access::ReadWrite))
            .await
            .unwrap();
        writable.set("default", "color", b"blue").await.unwrap();
        drop(writable);
        let before = std::fs::read(volume.join("kv.db")).unwrap();

        let read_only = KeyValue::open(&config, &mounted(Access::ReadOnly))
            .await
            .unwrap();
        assert_eq!(
            read_only.get("default", "color").await.unwrap(),
            Some(b"blue".to_vec())
        );
        let error = read_only.set("default", "color", b"red").await.unwrap_err();
        assert!(error.contains("/data is mounted read-only"), "{error}");
        assert_eq!(std::fs::read(volume.join("kv.db")).unwrap(), before);

        // A store that is not there is not made there.
        for path in ["/data/new.db", "/data/sub/new.db"] {
            let config = StoreConfig::Sqlite { path: path.into() };
            let Err(error) = KeyValue::open(&config, &mounted(Access::ReadOnly)).await else {
                panic!("{path} was opened in a read-only mount");
            };
            assert!(
                error.contains(path) && error.contains("/data is mounted read-only"),
                "{error}"
            );
        }
        let made: Vec<_> = std::fs::read_dir(&volume)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(made, ["kv.db"]);
    }
}
