//! Where a Spin or slight app's data lives: key-value stores (a SQLite file, or a Redis server) and
//! SQLite databases, each opened the first time a component asks for it and shared by every
//! request after.
//!
//! Store files are found as containers find them: a relative path is in the app's directory
//! (the rootfs), an absolute one in whichever granted directory holds it (a volume mounted
//! there keeps the data across containers). They are reached without following a symlink out
//! of that directory, and SQLite is then handed `/proc/self/fd/N/FILE` for the directory it
//! was opened as: a sandbox reaches nothing by host path (see `wasmcell_sandbox`).

use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::{Arc, Mutex, Once};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use wasmcell_spin::{DatabaseConfig, StoreConfig};

use crate::workload::Preopen;

/// An open key-value store.
pub(crate) enum KeyValue {
    /// A table in a SQLite file, as Spin's default store keeps it.
    Sqlite(Sqlite),
    /// A Redis server's keys.
    Redis(Redis),
}

/// A connection to a Redis server, and how a store's keys are named there.
pub(crate) struct Redis {
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

/// An open SQLite file and the directory it was opened in, which SQLite reaches by name again
/// for its journal, so it stays open as long as the connection.
pub(crate) struct Sqlite {
    connection: Mutex<rusqlite::Connection>,
    _dir: Dir,
}

/// Where store files live: the app's directory, and the directories granted at absolute paths.
pub(crate) struct Places {
    root: PathBuf,
    granted: Vec<(String, PathBuf)>,
}

impl Places {
    pub(crate) fn new(root: &Path, preopens: &[Preopen]) -> Places {
        Places {
            root: root.to_owned(),
            granted: preopens
                .iter()
                .map(|p| (p.guest.clone(), p.host.clone()))
                .collect(),
        }
    }

    /// The directory `path` is in, and the path within it: relative paths are in the app's
    /// directory, absolute ones in the longest granted directory that holds them.
    fn locate(&self, path: &str) -> Result<(PathBuf, PathBuf), String> {
        let within = |base: &Path, rest: &Path| -> Result<(PathBuf, PathBuf), String> {
            if rest
                .components()
                .any(|c| !matches!(c, PathPart::Normal(_) | PathPart::CurDir))
            {
                return Err(format!("{path}: a store path may not use `..`"));
            }
            Ok((base.to_owned(), rest.to_owned()))
        };
        if !path.starts_with('/') {
            return within(&self.root, Path::new(path));
        }
        let best = self
            .granted
            .iter()
            .filter_map(|(guest, host)| {
                let rest = Path::new(path).strip_prefix(guest).ok()?;
                Some((guest.len(), host, rest))
            })
            .max_by_key(|(len, _, _)| *len);
        match best {
            Some((_, host, rest)) => within(host, rest),
            None => Err(format!(
                "{path} is in no directory the container was given: mount a volume there"
            )),
        }
    }
}

impl KeyValue {
    pub(crate) async fn open(config: &StoreConfig, places: &Places) -> Result<KeyValue, String> {
        match config {
            StoreConfig::Sqlite { path } => KeyValue::open_sqlite(places, path).await,
            StoreConfig::Redis { url } => KeyValue::open_redis(url, false).await,
        }
    }

    /// Opens (creating it) the SQLite file at `path`, which holds any number of stores, as
    /// Spin's default store file does.
    pub(crate) async fn open_sqlite(places: &Places, path: &str) -> Result<KeyValue, String> {
        let sqlite = open_sqlite(places, path).await?;
        sqlite.run(|db| {
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS spin_key_value (
                    store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                    PRIMARY KEY (store, key))",
            )
        })?;
        Ok(KeyValue::Sqlite(sqlite))
    }

    /// Connects to the Redis server at `url`; `prefixed`: see [`Redis`].
    pub(crate) async fn open_redis(url: &str, prefixed: bool) -> Result<KeyValue, String> {
        let client = redis::Client::open(url).map_err(|e| format!("Redis address {url}: {e}"))?;
        let manager = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?;
        Ok(KeyValue::Redis(Redis { manager, prefixed }))
    }

    pub(crate) async fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            KeyValue::Sqlite(db) => db.run(|db| sqlite_value(db, store, key)),
            KeyValue::Redis(redis) => {
                redis_call(redis, redis::cmd("GET").arg(redis.key(store, key))).await
            }
        }
    }

    pub(crate) async fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<(), String> {
        match self {
            KeyValue::Sqlite(db) => db.run(|db| sqlite_set(db, store, key, value)),
            KeyValue::Redis(redis) => {
                redis_call(
                    redis,
                    redis::cmd("SET").arg(redis.key(store, key)).arg(value),
                )
                .await
            }
        }
    }

    pub(crate) async fn delete(&self, store: &str, key: &str) -> Result<(), String> {
        match self {
            KeyValue::Sqlite(db) => db
                .run(|db| {
                    db.execute(
                        "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2",
                        (store, key),
                    )
                })
                .map(drop),
            KeyValue::Redis(redis) => {
                redis_call::<i64>(redis, redis::cmd("DEL").arg(redis.key(store, key)))
                    .await
                    .map(drop)
            }
        }
    }

    pub(crate) async fn keys(&self, store: &str) -> Result<Vec<String>, String> {
        match self {
            KeyValue::Sqlite(db) => db.run(|db| {
                let mut query =
                    db.prepare("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")?;
                let keys = query.query_map([store], |row| row.get(0))?;
                keys.collect()
            }),
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
                let keys: Vec<String> =
                    redis_call(redis, redis::cmd("KEYS").arg(format!("{escaped}*"))).await?;
                Ok(keys
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
                    .collect())
            }
        }
    }
}

impl KeyValue {
    /// Adds `delta` to the counter at `key` (0 when absent) and returns the new value, in one
    /// step: a SQLite transaction (the counter an 8-byte little-endian integer, as Spin keeps
    /// it), or Redis's INCRBY (a decimal string, as Redis keeps it).
    pub(crate) async fn increment(
        &self,
        store: &str,
        key: &str,
        delta: i64,
    ) -> Result<i64, String> {
        match self {
            KeyValue::Sqlite(db) => db
                .run(|db| {
                    let tx = db.unchecked_transaction()?;
                    let old = sqlite_value(&tx, store, key)?;
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
                    sqlite_set(&tx, store, key, &new.to_le_bytes())?;
                    tx.commit()?;
                    Ok(Ok(new))
                })
                .and_then(|r| r),
            KeyValue::Redis(redis) => {
                let mut command = redis::cmd("INCRBY");
                command.arg(redis.key(store, key)).arg(delta);
                redis_call(redis, &mut command).await
            }
        }
    }

    /// Sets `key` to `value` if it still holds `expected` (`None`: absent), in one step;
    /// whether it did.
    pub(crate) async fn swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, String> {
        match self {
            KeyValue::Sqlite(db) => db.run(|db| {
                let tx = db.unchecked_transaction()?;
                if sqlite_value(&tx, store, key)?.as_deref() != expected {
                    return Ok(false);
                }
                sqlite_set(&tx, store, key, value)?;
                tx.commit()?;
                Ok(true)
            }),
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

impl Sqlite {
    /// Runs `f` on the connection. SQLite calls are short and local; they run on the request's
    /// thread.
    pub(crate) fn run<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        let connection = self.connection.lock().expect("SQLite connection lock");
        f(&connection).map_err(|e| e.to_string())
    }
}

/// Opens a SQLite database (`DatabaseConfig`) for a component.
pub(crate) async fn open_database(
    config: &DatabaseConfig,
    places: &Places,
) -> Result<Sqlite, String> {
    open_sqlite(places, &config.path).await
}

async fn open_sqlite(places: &Places, path: &str) -> Result<Sqlite, String> {
    let (base, relative) = places.locate(path)?;
    let name = relative
        .file_name()
        .ok_or_else(|| format!("{path} names no file"))?
        .to_owned();
    let parent = relative.parent().unwrap_or(Path::new("")).to_owned();
    let shown = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let error = |e: &dyn std::fmt::Display| format!("cannot open {shown}: {e}");
        let base = Dir::open_ambient_dir(&base, ambient_authority()).map_err(|e| error(&e))?;
        if !parent.as_os_str().is_empty() {
            base.create_dir_all(&parent).map_err(|e| error(&e))?;
        }
        let dir = if parent.as_os_str().is_empty() {
            base
        } else {
            base.open_dir(&parent).map_err(|e| error(&e))?
        };
        // SQLite opens these by name; none may be a link planted in an image.
        let name_str = name.to_string_lossy().into_owned();
        for file in ["", "-journal", "-wal", "-shm"].map(|s| format!("{name_str}{s}")) {
            if dir
                .symlink_metadata(&file)
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(error(&format!("{file} is a symbolic link")));
            }
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        let file = format!("/proc/self/fd/{fd}/{name_str}");
        follow_proc_links();
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let connection =
            rusqlite::Connection::open_with_flags(&file, flags).map_err(|e| error(&e))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| error(&e))?;
        Ok(Sqlite {
            connection: Mutex::new(connection),
            _dir: dir,
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// SQLite makes a path absolute by reading every symbolic link in it, which would turn
/// `/proc/self/fd/N` into the directory's host path: a path a sandbox cannot reach (and whose
/// `readlink` its seccomp filter refuses). Its `lstat` is replaced by `stat` so that it sees
/// no link and hands the path to the kernel as given; the kernel resolves the descriptor.
/// Links inside the directory are not a way out: the directory was opened beneath its root,
/// and the file names SQLite uses were checked not to be links.
fn follow_proc_links() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        unsafe extern "C" fn stat_following(
            path: *const libc::c_char,
            buf: *mut libc::stat,
        ) -> libc::c_int {
            // SAFETY: SQLite passes a NUL-terminated path and a stat buffer, as to lstat.
            unsafe { libc::stat(path, buf) }
        }
        // SAFETY: the default VFS lives for the process; `xSetSystemCall` swaps a function
        // pointer of the same signature before any connection is opened through this path.
        unsafe {
            let vfs = rusqlite::ffi::sqlite3_vfs_find(std::ptr::null());
            if let Some(set) = vfs.as_ref().and_then(|v| v.xSetSystemCall) {
                let replacement: rusqlite::ffi::sqlite3_syscall_ptr =
                    Some(std::mem::transmute::<
                        unsafe extern "C" fn(*const libc::c_char, *mut libc::stat) -> libc::c_int,
                        unsafe extern "C" fn(),
                    >(stat_following));
                set(vfs, c"lstat".as_ptr(), replacement);
            }
        }
    });
}

/// The stores and databases of one app, opened on first use and shared by its components.
#[derive(Default)]
pub(crate) struct Opened {
    pub(crate) stores: std::collections::BTreeMap<String, Arc<tokio::sync::OnceCell<KeyValue>>>,
    pub(crate) databases: std::collections::BTreeMap<String, Arc<tokio::sync::OnceCell<Sqlite>>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Access;

    #[test]
    fn store_paths_are_found_where_a_container_sees_them() {
        let places = Places::new(
            Path::new("/rootfs"),
            &[
                Preopen {
                    host: "/rootfs".into(),
                    guest: "/".into(),
                    access: Access::ReadWrite,
                },
                Preopen {
                    host: "/volumes/data".into(),
                    guest: "/data".into(),
                    access: Access::ReadWrite,
                },
            ],
        );
        let at = |p| {
            places
                .locate(p)
                .map(|(a, b)| (a.display().to_string(), b.display().to_string()))
        };
        assert_eq!(
            at(".spin/kv.db").unwrap(),
            ("/rootfs".into(), ".spin/kv.db".into())
        );
        assert_eq!(
            at("/data/kv.db").unwrap(),
            ("/volumes/data".into(), "kv.db".into())
        );
        assert_eq!(
            at("/var/kv.db").unwrap(),
            ("/rootfs".into(), "var/kv.db".into())
        );
        assert!(at("../kv.db").unwrap_err().contains(".."));
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
}
