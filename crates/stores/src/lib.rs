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
//! hardened ([`harden`](sqlite::harden)) to reach nothing but its own file, and each statement
//! runs on a blocking thread, interrupted when its caller stops waiting ([`Sqlite::run`]), with a
//! bounded result ([`MAX_RESULT_BYTES`]) and a bounded heap
//! ([`SQLITE_HEAP_LIMIT`](sqlite::SQLITE_HEAP_LIMIT)).
//!
//! `places.rs` finds store files, `sqlite.rs` opens and hardens SQLite databases, and
//! `key_value.rs` builds key-value stores on SQLite or Redis; each uses only those before it.
//! This file keeps [`Opened`] and the re-exports that make up the crate's API.

#![deny(missing_docs)]

mod key_value;
mod places;
mod sqlite;

use std::sync::Arc;

pub use key_value::{KeyValue, Redis, connect_redis, redis_client};
pub use places::Places;
pub use sqlite::{MAX_RESULT_BYTES, SqlError, Sqlite, open_database};

/// The stores and databases of one app, opened on first use and shared by its components.
#[derive(Default)]
pub struct Opened {
    /// Key-value stores by label.
    pub stores: std::collections::BTreeMap<String, Arc<tokio::sync::OnceCell<KeyValue>>>,
    /// SQLite databases by label.
    pub databases: std::collections::BTreeMap<String, Arc<tokio::sync::OnceCell<Sqlite>>>,
}
