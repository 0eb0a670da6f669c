//! Where a Spin or slight app's data lives: key-value stores (a SQLite file, or a Redis server) and
//! SQLite databases, each opened the first time a component asks for it and shared by every
//! request after.
//!
//! Store files are found as containers find them: a relative path is in the app's directory
//! (the rootfs), an absolute one in whichever granted directory holds it (a volume mounted
//! there keeps the data across containers). They are reached without following a symlink out
//! of that directory, and SQLite is then handed `/proc/self/fd/N/FILE` for the directory it
//! was opened as: a sandbox reaches nothing by host path (see `wasmcell_sandbox`). A store in a
//! read-only place (a volume mounted `ro`, a `--read-only` rootfs) is opened read-only, its
//! writes answered with an error naming the mount; one that does not exist there is refused
//! when first opened, as it cannot be created.
//!
//! SQLite is a guest-facing API: a component's SQL runs as written, so every connection is
//! hardened ([`harden`]) to reach nothing but its own file, and each statement runs on a
//! blocking thread, interrupted when its caller stops waiting ([`Sqlite::run`]), with a bounded
//! result ([`MAX_RESULT_BYTES`]) and a bounded heap ([`SQLITE_HEAP_LIMIT`]).

#![deny(missing_docs)]

use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::{Arc, Mutex, Once, PoisonError};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use wasmcell_spin::{DatabaseConfig, StoreConfig};

use wasmcell_workload::{Access, Preopen};

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

/// Where store files live: the app's directory, and the directories granted at absolute paths,
/// each with whether the container may write there.
pub struct Places {
    root: PathBuf,
    /// Where the container sees the app's directory, when it is mounted read-only (a
    /// `--read-only` rootfs).
    root_read_only: Option<String>,
    granted: Vec<Preopen>,
}

/// Where one store file is: the directory it is in, its path within that directory, and, when
/// the directory is mounted read-only, where the container sees that mount.
#[derive(Debug, PartialEq)]
struct Place {
    base: PathBuf,
    relative: PathBuf,
    read_only_mount: Option<String>,
}

impl Places {
    /// The places of an app whose directory is `root` (its rootfs), with the directories
    /// `preopens` grants it.
    pub fn new(root: &Path, preopens: &[Preopen]) -> Places {
        Places {
            root: root.to_owned(),
            root_read_only: preopens
                .iter()
                .find(|p| p.host == root && p.access == Access::ReadOnly)
                .map(|p| p.guest.clone()),
            granted: preopens.to_vec(),
        }
    }

    /// Where `path` is: relative paths are in the app's directory, absolute ones in the longest
    /// granted directory that holds them.
    fn locate(&self, path: &str) -> Result<Place, String> {
        let within = |base: &Path, rest: &Path, read_only_mount: Option<&String>| {
            if rest
                .components()
                .any(|c| !matches!(c, PathPart::Normal(_) | PathPart::CurDir))
            {
                return Err(format!("{path}: a store path may not use `..`"));
            }
            Ok(Place {
                base: base.to_owned(),
                relative: rest.to_owned(),
                read_only_mount: read_only_mount.cloned(),
            })
        };
        if !path.starts_with('/') {
            return within(&self.root, Path::new(path), self.root_read_only.as_ref());
        }
        let best = self
            .granted
            .iter()
            .filter_map(|p| Some((p, Path::new(path).strip_prefix(&p.guest).ok()?)))
            .max_by_key(|(p, _)| p.guest.len());
        match best {
            Some((p, rest)) => within(
                &p.host,
                rest,
                (p.access == Access::ReadOnly).then_some(&p.guest),
            ),
            None => Err(format!(
                "{path} is in no directory the container was given: mount a volume there"
            )),
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
        let manager = redis::aio::ConnectionManager::new(client)
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

    /// Every key in `store`.
    pub async fn keys(&self, store: &str) -> Result<Vec<String>, String> {
        match self {
            KeyValue::Sqlite(db) => {
                let store = store.to_owned();
                kv(db
                    .run(move |db| {
                        let mut query = db.prepare(
                            "SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key",
                        )?;
                        let keys = query.query_map([store], |row| row.get(0))?;
                        Ok(keys.collect::<rusqlite::Result<_>>()?)
                    })
                    .await)
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

/// The most bytes a statement's result may hold on the host (each value's slot and its text or
/// blob), and the longest text or blob SQLite makes (`SQLITE_LIMIT_LENGTH`). A result is built
/// in host memory, outside the guest's limit, before it is copied into the guest; twice the
/// largest key-value value, so a row or two of large blobs still fits.
pub const MAX_RESULT_BYTES: usize = 32 << 20;

/// The most heap SQLite takes in one process, over every connection of every app in it (page
/// caches, sorts, temporary tables, which `temp_store = MEMORY` keeps in memory): past it a
/// statement fails with "out of memory" instead of the sandbox being OOM-killed with all its
/// containers. Far above what the apps we know use (each cache is 2 MiB by default).
const SQLITE_HEAP_LIMIT: i64 = 512 << 20;

/// Why a statement on a SQLite connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The authorizer refused something the statement does.
    #[error("statement not allowed: {0}")]
    Refused(&'static str),
    /// The statement writes to a database in a read-only place.
    #[error("the database is read-only: {0}")]
    ReadOnly(Arc<str>),
    /// The result would hold more than [`MAX_RESULT_BYTES`].
    #[error("the result is larger than {MAX_RESULT_BYTES} bytes")]
    ResultTooLarge,
    /// SQLite's own error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task that ran the statement ended without an answer.
    #[error("the SQLite worker thread failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// An open SQLite file, shared by every request of an app. Statements run on a blocking
/// thread, one at a time; a caller that stops waiting (its request's deadline passed, or its
/// guest was killed) interrupts its statement, so nothing a guest asks SQLite to do outlives
/// the guest or holds a server thread.
pub struct Sqlite {
    open: Arc<tokio::sync::Mutex<Open>>,
    interrupt: Arc<rusqlite::InterruptHandle>,
    /// Why the authorizer refused the statement last prepared, for its error.
    refused: Arc<Mutex<Option<&'static str>>>,
    /// The read-only mount the file lies in, when it lies in one, said for its errors.
    read_only: Option<Arc<str>>,
}

/// A connection and the directory it was opened in, which SQLite reaches by name again for its
/// journal: declared after the connection, so it is closed after it.
struct Open {
    connection: rusqlite::Connection,
    _dir: Dir,
}

/// Interrupts the statement of a caller that stopped waiting for it, if it is still running.
struct InterruptIfRunning {
    running: Arc<Mutex<bool>>,
    handle: Arc<rusqlite::InterruptHandle>,
}

impl Drop for InterruptIfRunning {
    fn drop(&mut self) {
        // Held while interrupting: the worker cannot finish and hand the connection to the
        // next caller meanwhile, so the interrupt never lands on another caller's statement.
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if *running {
            self.handle.interrupt();
        }
    }
}

/// Marks the worker's statement finished when it returns or panics.
struct Finished(Arc<Mutex<bool>>);

impl Drop for Finished {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }
}

impl Sqlite {
    /// Runs `work` on the connection on a blocking thread, once the statements before it are
    /// done. Dropping the returned future interrupts `work`'s statement.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T, SqlError> + Send + 'static,
    ) -> Result<T, SqlError> {
        let open = self.open.clone().lock_owned().await;
        let running = Arc::new(Mutex::new(true));
        let _interrupt = InterruptIfRunning {
            running: running.clone(),
            handle: self.interrupt.clone(),
        };
        let refused = self.refused.clone();
        let read_only = self.read_only.clone();
        tokio::task::spawn_blocking(move || {
            // Dropped in reverse: marked finished, then the connection handed on.
            let open = open;
            let _finished = Finished(running);
            refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            work(&open.connection).map_err(|error| explain(error, &refused, read_only))
        })
        .await
        .map_err(SqlError::Worker)?
    }
}

/// SQLite's error for a refused statement, or a write to a read-only file, as ours, which say
/// why. Whatever the authorizer refused made the statement fail (as "not authorized", or "not
/// authorized to use function" as a plain error, depending on what it refused).
fn explain(
    error: SqlError,
    refused: &Mutex<Option<&'static str>>,
    read_only: Option<Arc<str>>,
) -> SqlError {
    let SqlError::Sqlite(sqlite) = &error else {
        return error;
    };
    if let Some(why) = refused
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return SqlError::Refused(why);
    }
    match (sqlite.sqlite_error_code(), read_only) {
        (Some(rusqlite::ErrorCode::ReadOnly), Some(place)) => SqlError::ReadOnly(place),
        _ => error,
    }
}

/// Why a connection that runs a guest's SQL refuses `action`, if it does: whatever would reach
/// a file other than the database itself (another database, an extension, a directory for
/// temporary files), or change what SQLite does for the whole process.
fn refusal(action: &AuthAction<'_>) -> Option<&'static str> {
    match action {
        // `VACUUM INTO 'file'` attaches its target too.
        AuthAction::Attach { .. } => Some(
            "ATTACH (and VACUUM INTO) would open another file: a component reaches only the databases it is granted",
        ),
        AuthAction::Detach { .. } => Some("DETACH: no other database can be attached"),
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Some("load_extension would load native code into the host")
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => pragma_refusal(&pragma_name.to_ascii_lowercase(), pragma_value.is_some()),
        _ => None,
    }
}

/// Why a connection refuses PRAGMA `name` (lowercase), set to a value or read (`set`).
fn pragma_refusal(name: &str, set: bool) -> Option<&'static str> {
    match name {
        "temp_store_directory" | "data_store_directory" => Some(
            "PRAGMA temp_store_directory and data_store_directory name host directories for every connection in the process",
        ),
        "temp_store" if set => Some(
            "PRAGMA temp_store: temporary data stays in memory, since a container may have no writable place for it",
        ),
        "mmap_size" if set => Some(
            "PRAGMA mmap_size: a mapped file truncated by another container would crash the host's process",
        ),
        "hard_heap_limit" | "soft_heap_limit" | "threads" if set => Some(
            "PRAGMA hard_heap_limit, soft_heap_limit and threads set SQLite's limits for the whole process",
        ),
        "busy_timeout" if set => Some(
            "PRAGMA busy_timeout: how long a statement waits for a lock is the host's to decide (5 s)",
        ),
        "writable_schema" | "trusted_schema" if set => Some(
            "PRAGMA writable_schema and trusted_schema would let a database's schema corrupt it or run functions it should not",
        ),
        _ => None,
    }
}

/// Makes `connection` fit to run a guest's SQL: temporary data in memory, no other database
/// attachable, no extension loadable, SQLite's defensive mode (no writable schema, no raw page
/// writes), schemas not trusted to call functions with side effects, values no longer than
/// [`MAX_RESULT_BYTES`], and the authorizer ([`refusal`]), which records why it refused in
/// `refused`. The host's own settings come first: the authorizer would refuse them.
fn harden(
    connection: &rusqlite::Connection,
    refused: Arc<Mutex<Option<&'static str>>>,
) -> rusqlite::Result<()> {
    use rusqlite::config::DbConfig;
    use rusqlite::limits::Limit;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    connection.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    connection.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_RESULT_BYTES as i32)?;
    connection.load_extension_disable()?;
    connection.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    connection.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    connection.authorizer(Some(move |context: AuthContext<'_>| {
        match refusal(&context.action) {
            None => Authorization::Allow,
            Some(why) => {
                *refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
                Authorization::Deny
            }
        }
    }));
    Ok(())
}

/// Opens a SQLite database (`DatabaseConfig`) for a component.
pub async fn open_database(config: &DatabaseConfig, places: &Places) -> Result<Sqlite, String> {
    open_sqlite(places, &config.path).await
}

/// Opens the SQLite file at `path`, hardened ([`harden`]): created (with its directory) where
/// the container may write; opened read-only in a read-only mount, where it must exist.
async fn open_sqlite(places: &Places, path: &str) -> Result<Sqlite, String> {
    let Place {
        base,
        relative,
        read_only_mount,
    } = places.locate(path)?;
    let name = relative
        .file_name()
        .ok_or_else(|| format!("{path} names no file"))?
        .to_owned();
    let parent = relative.parent().unwrap_or(Path::new("")).to_owned();
    let shown = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let error = |e: &dyn std::fmt::Display| format!("cannot open {shown}: {e}");
        let read_only = read_only_mount.as_ref().map(|mount| {
            Arc::<str>::from(format!("{mount} is mounted read-only"))
        });
        let absent = |_| match &read_only_mount {
            Some(mount) => error(&format!(
                "it does not exist, and cannot be created: {mount} is mounted read-only (mount a writable volume for it)"
            )),
            None => error(&"it does not exist"),
        };
        let base = Dir::open_ambient_dir(&base, ambient_authority()).map_err(|e| error(&e))?;
        let dir = if parent.as_os_str().is_empty() {
            base
        } else {
            if read_only_mount.is_none() {
                base.create_dir_all(&parent).map_err(|e| error(&e))?;
            }
            base.open_dir(&parent).map_err(absent)?
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
        let mut flags = rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
        if read_only.is_some() {
            dir.symlink_metadata(&name).map_err(absent)?;
            flags |= rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        } else {
            flags |= rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_CREATE;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        let file = format!("/proc/self/fd/{fd}/{name_str}");
        configure_sqlite();
        let connection =
            rusqlite::Connection::open_with_flags(&file, flags).map_err(|e| error(&e))?;
        let refused = Arc::new(Mutex::new(None));
        harden(&connection, refused.clone()).map_err(|e| error(&e))?;
        Ok(Sqlite {
            interrupt: Arc::new(connection.get_interrupt_handle()),
            open: Arc::new(tokio::sync::Mutex::new(Open {
                connection,
                _dir: dir,
            })),
            refused,
            read_only,
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// What SQLite is told once per process, before the first connection: to follow
/// `/proc/self/fd` links, and [`SQLITE_HEAP_LIMIT`].
///
/// SQLite makes a path absolute by reading every symbolic link in it, which would turn
/// `/proc/self/fd/N` into the directory's host path: a path a sandbox cannot reach (and whose
/// `readlink` its seccomp filter refuses). Its `lstat` is replaced by `stat` so that it sees
/// no link and hands the path to the kernel as given; the kernel resolves the descriptor.
/// Links inside the directory are not a way out: the directory was opened beneath its root,
/// and the file names SQLite uses were checked not to be links.
fn configure_sqlite() {
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
        // `sqlite3_hard_heap_limit64` only sets a number SQLite's allocator checks.
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
            rusqlite::ffi::sqlite3_hard_heap_limit64(SQLITE_HEAP_LIMIT);
        }
    });
}

/// The stores and databases of one app, opened on first use and shared by its components.
#[derive(Default)]
pub struct Opened {
    /// Key-value stores by label.
    pub stores: std::collections::BTreeMap<String, Arc<tokio::sync::OnceCell<KeyValue>>>,
    /// SQLite databases by label.
    pub databases: std::collections::BTreeMap<String, Arc<tokio::sync::OnceCell<Sqlite>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn preopen(host: &Path, guest: &str, access: Access) -> Preopen {
        Preopen {
            host: host.to_owned(),
            guest: guest.to_owned(),
            access,
        }
    }

    #[test]
    fn store_paths_are_found_where_a_container_sees_them() {
        let places = Places::new(
            Path::new("/rootfs"),
            &[
                preopen(Path::new("/rootfs"), "/", Access::ReadWrite),
                preopen(Path::new("/volumes/data"), "/data", Access::ReadWrite),
                preopen(Path::new("/volumes/conf"), "/conf", Access::ReadOnly),
            ],
        );
        let at = |p| {
            places.locate(p).map(|place| {
                (
                    place.base.display().to_string(),
                    place.relative.display().to_string(),
                    place.read_only_mount,
                )
            })
        };
        assert_eq!(
            at(".spin/kv.db").unwrap(),
            ("/rootfs".into(), ".spin/kv.db".into(), None)
        );
        assert_eq!(
            at("/data/kv.db").unwrap(),
            ("/volumes/data".into(), "kv.db".into(), None)
        );
        assert_eq!(
            at("/var/kv.db").unwrap(),
            ("/rootfs".into(), "var/kv.db".into(), None)
        );
        assert_eq!(
            at("/conf/kv.db").unwrap(),
            ("/volumes/conf".into(), "kv.db".into(), Some("/conf".into()))
        );
        assert!(at("../kv.db").unwrap_err().contains(".."));

        // A `--read-only` rootfs makes the app's directory read-only.
        let read_only = Places::new(
            Path::new("/rootfs"),
            &[preopen(Path::new("/rootfs"), "/", Access::ReadOnly)],
        );
        assert_eq!(
            read_only.locate(".spin/kv.db").unwrap().read_only_mount,
            Some("/".into())
        );
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

    /// A database `app.db` in a fresh directory, as a component's would be opened.
    async fn database(dir: &Path) -> Sqlite {
        let config = DatabaseConfig {
            path: "app.db".into(),
        };
        open_database(&config, &Places::new(dir, &[]))
            .await
            .unwrap()
    }

    async fn batch(db: &Sqlite, sql: &str) -> Result<(), SqlError> {
        let sql = sql.to_owned();
        db.run(move |db| Ok(db.execute_batch(&sql)?)).await
    }

    /// Issue 24: a component granted only its own database attached host files (creating them
    /// as root) and read other containers' stores.
    #[tokio::test]
    async fn r24_guest_sql_reaches_no_file_but_its_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let host = |name: &str| outside.join(name).display().to_string();
        let refused = [
            format!("ATTACH DATABASE '{}' AS x", host("attached.db")),
            format!("ATTACH '{}' AS x", host("attached.db")),
            format!("ATTACH 'file:{}?mode=rwc' AS x", host("uri.db")),
            format!("VACUUM INTO '{}'", host("copy.db")),
            "DETACH DATABASE temp".to_owned(),
            format!("SELECT load_extension('{}')", host("ext.so")),
            format!("PRAGMA temp_store_directory = '{}'", outside.display()),
            format!("PRAGMA data_store_directory = '{}'", outside.display()),
            "PRAGMA temp_store = FILE".to_owned(),
            "PRAGMA main.temp_store = 1".to_owned(),
            "PRAGMA mmap_size = 268435456".to_owned(),
            "PRAGMA hard_heap_limit = 0".to_owned(),
            "PRAGMA soft_heap_limit = 1".to_owned(),
            "PRAGMA threads = 8".to_owned(),
            "PRAGMA busy_timeout = 100000000".to_owned(),
            "PRAGMA writable_schema = ON".to_owned(),
            "PRAGMA trusted_schema = ON".to_owned(),
        ];
        for sql in refused {
            match batch(&db, &sql).await {
                Err(SqlError::Refused(why)) => assert!(!why.is_empty()),
                other => panic!("{sql}: {other:?}"),
            }
        }
        let left: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
        assert!(left.is_empty(), "files made outside: {left:?}");
        // The connection is still good for what is allowed.
        batch(&db, "CREATE TABLE t (x)").await.unwrap();
    }

    #[tokio::test]
    async fn the_sql_spin_apps_run_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        batch(
            &db,
            "PRAGMA foreign_keys = ON;
             PRAGMA journal_mode = WAL;
             PRAGMA user_version = 3;
             PRAGMA cache_size = -4000;
             CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS by_item ON orders (item);
             CREATE TEMP TABLE scratch (x);
             BEGIN;
             INSERT INTO orders (item) VALUES ('tea'), ('cake');
             SAVEPOINT one;
             INSERT INTO orders (item) VALUES ('none');
             ROLLBACK TO one;
             RELEASE one;
             COMMIT;
             UPDATE orders SET item = upper(item) WHERE id = 2;
             DELETE FROM orders WHERE item = 'nothing';
             ALTER TABLE orders ADD COLUMN note TEXT;",
        )
        .await
        .unwrap();
        let read = db
            .run(|db| {
                let items: String = db.query_row(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 3)
                     SELECT group_concat(item, ',') FROM (SELECT item FROM orders ORDER BY item)",
                    [],
                    |row| row.get(0),
                )?;
                let version: i64 = db.query_row("PRAGMA user_version", [], |row| row.get(0))?;
                let temp: i64 = db.query_row("PRAGMA temp_store", [], |row| row.get(0))?;
                let columns: i64 = db.query_row(
                    "SELECT count(*) FROM pragma_table_info('orders')",
                    [],
                    |row| row.get(0),
                )?;
                Ok((items, version, temp, columns))
            })
            .await
            .unwrap();
        // temp_store 2 is MEMORY.
        assert_eq!(read, ("CAKE,tea".to_owned(), 3, 2, 3));
    }

    /// Issue 24: a recursive CTE held a server thread until the end of time.
    #[tokio::test]
    async fn r24_a_statement_whose_caller_stops_waiting_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let endless = db.run(|db| {
            Ok(db.query_row(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)
                 SELECT count(*) FROM c",
                [],
                |row| row.get::<_, i64>(0),
            )?)
        });
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(200), endless).await;
        assert!(gave_up.is_err(), "{gave_up:?}");
        // The connection is free again: the statement ended, and the next one runs.
        let next = db.run(|db| Ok(db.query_row("SELECT 41 + 1", [], |row| row.get::<_, i64>(0))?));
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), next).await;
        assert_eq!(
            next.expect("the statement was not interrupted").unwrap(),
            42
        );
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
