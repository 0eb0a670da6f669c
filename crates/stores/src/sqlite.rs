//! SQLite databases a component's own SQL runs on: opening a file found among [`Places`]
//! (beneath its directory, never through a planted link), hardening each connection so it
//! reaches nothing but that file ([`harden`]), and running statements on a blocking thread,
//! interrupted when their caller stops waiting, with bounded results and heap.

use std::path::Path;
use std::sync::{Arc, Mutex, Once, PoisonError};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use wasmcell_spin::DatabaseConfig;

use crate::places::{Place, Places};

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
    /// Runs `statements` (one or more, separated by `;`) as one batch, under the same
    /// hardening as a guest's: what `spin up --sqlite` runs before the app starts.
    pub async fn execute_batch(&self, statements: String) -> Result<(), SqlError> {
        self.run(move |connection| Ok(connection.execute_batch(&statements)?))
            .await
    }

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
pub(crate) async fn open_sqlite(places: &Places, path: &str) -> Result<Sqlite, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
