//! The content-addressed cache of precompiled artifacts.
//!
//! Layout: `<dir>/wasmtime-<engine fingerprint>/<sha256 of the wasm>.cwasm`, each with a
//! `.cwasm.sha256` beside it (the artifact's own checksum, checked at every load). The fingerprint covers
//! the wasmtime version and every setting that changes generated code, so a different build or
//! configuration gets its own directory and never loads a foreign artifact. Artifacts are
//! written to a temporary file and renamed into place, so concurrent writers (two shims
//! preparing the same image) each produce a whole file and the last rename wins; readers never
//! see a partial one. Artifacts are loaded with `deserialize_file`, which maps the file, so every
//! process using a module shares its code pages.
//!
//! Collection: every cache hit records the entry's use as its checksum's mtime (one `futimens`,
//! no fsync; atime is unreliable under `relatime`/`noatime`). After a miss writes a new entry,
//! least recently used entries are evicted until the cache is within its bound
//! ([`DEFAULT_MAX_SIZE`], or `WASMCELL_CACHE_MAX_SIZE`); `wasmcell cache prune` does the same on
//! demand. An entry in use is never evicted: whoever loads an entry, or is about to (the shim
//! until its sandbox has loaded what it compiled), holds a shared `flock` on it ([`InUse`]), and
//! eviction takes an exclusive one without waiting and skips the entry when it cannot. Unlinking
//! an entry that a process has already mapped would be harmless to it (the mapping keeps the
//! inode, and entries are never written in place, only renamed over or unlinked), but it would
//! free no space until that process exits: so in use means kept. One collection runs at a time,
//! under `<dir>/collect.lock`.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmcell_oci::WasmKind;
use wasmtime::component::Component;

use crate::error::Error;
use crate::precompile::CompileBounds;

/// A compiled binary, either kind.
#[derive(Clone)]
pub enum Artifact {
    /// A core module.
    Module(wasmtime::Module),
    /// A component.
    Component(Component),
}

/// The compile cache directory, shared by the shims and the CLI.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    /// The binary whose compiling child ([`crate::precompile`]) compiles each miss, and its
    /// bounds; `None` compiles in this process.
    compiler: Option<(PathBuf, CompileBounds)>,
    /// The total size in bytes that collection after a miss brings the cache back within.
    max_size: u64,
}

/// The cache's size bound when `WASMCELL_CACHE_MAX_SIZE` sets none: 2 GiB. An artifact is a few
/// times its wasm (hello world 300 KB, a Spin app's component 10-30 MB), so this keeps the
/// artifacts of a node's hundred-odd distinct images, as wasmtime's own cache keeps 1 GiB
/// (`files-total-size-soft-limit`) of zstd-compressed ones; ours are stored uncompressed, to be
/// mapped. Evicting too eagerly only costs a recompile on the next start.
pub const DEFAULT_MAX_SIZE: u64 = 2 << 30;

/// The variable that sets the cache's size bound, such as `512M` or `2G`.
pub const MAX_SIZE_ENV: &str = "WASMCELL_CACHE_MAX_SIZE";

/// A size that is not one (see [`parse_size`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a size: give bytes, or a number with K, M, G or T (powers of 1024), such as 512M or 2G"
)]
pub struct SizeError(String);

/// Parses a size: bytes (`1048576`), or a whole number with a binary suffix `K`, `M`, `G` or `T`,
/// optionally followed by `i` and/or `B` (`512M`, `2GiB`, `64kb`), as `docker --memory` reads them.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let invalid = || SizeError(text.to_owned());
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = lower.split_at(
        lower
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(lower.len()),
    );
    let prefix = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let shift = match prefix {
        "" if unit != "ib" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(invalid()),
    };
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    number.checked_mul(1 << shift).ok_or_else(invalid)
}

/// One entry of the cache, as [`CompileCache::entries`] lists it.
#[derive(Debug, Clone)]
pub struct CachedEntry {
    /// The engine configuration's directory: `wasmtime-<fingerprint>`.
    pub engine: String,
    /// The sha256 (hex) of the wasm the entry is the compiled form of.
    pub module: String,
    /// The bytes it takes: the artifact and its checksum.
    pub size: u64,
    /// When it was last used (or written).
    pub last_used: SystemTime,
    path: PathBuf,
}

/// What to evict (see [`CompileCache::prune`]).
#[derive(Debug, Clone, Copy)]
pub struct Prune {
    /// Evict least recently used entries until the cache takes at most this many bytes (0 evicts
    /// every entry not in use).
    pub max_size: u64,
    /// Also evict every entry not used for this long.
    pub older_than: Option<Duration>,
}

/// What a [`CompileCache::prune`] did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// The entries evicted.
    pub evicted: Vec<CachedEntry>,
    /// Entries that would have been evicted but are in use (loaded by a running guest, or being
    /// prepared): kept.
    pub in_use: Vec<CachedEntry>,
    /// The bytes the cache's entries take afterwards.
    pub remaining: u64,
}

impl Pruned {
    /// The bytes freed.
    pub fn reclaimed(&self) -> u64 {
        self.evicted.iter().map(|e| e.size).sum()
    }
}

/// A cache entry held in use: a shared `flock` on the entry's file for as long as this lives,
/// which makes collection skip it. Whoever loads an entry holds one for as long as the loaded
/// artifact lives; the shim holds the one [`crate::Compiler::compile`] returns until its sandbox
/// has loaded the entry.
#[derive(Debug)]
pub struct InUse {
    path: PathBuf,
    file: File,
}

impl InUse {
    /// Holds the entry now at `path`; `None` when there is none, or when it was evicted while
    /// this waited for the lock (its file is then no longer the one at `path`).
    fn acquire(path: &Path) -> std::io::Result<Option<InUse>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        flock(&file, libc::LOCK_SH)?;
        Ok(names(path, &file)?.then(|| InUse {
            path: path.to_owned(),
            file,
        }))
    }

    /// The entry's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether `path` still names `file` (neither evicted nor replaced since it was opened).
fn names(path: &Path, file: &File) -> std::io::Result<bool> {
    let held = file.metadata()?;
    Ok(match std::fs::metadata(path) {
        Ok(now) => (now.dev(), now.ino()) == (held.dev(), held.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    })
}

impl CompileCache {
    /// A cache rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> CompileCache {
        CompileCache {
            dir: dir.into(),
            compiler: None,
            max_size: DEFAULT_MAX_SIZE,
        }
    }

    /// The same cache, brought back within `bytes` after each miss (see [`CompileCache::prune`]).
    pub fn max_size(self, bytes: u64) -> CompileCache {
        CompileCache {
            max_size: bytes,
            ..self
        }
    }

    /// The size bound `WASMCELL_CACHE_MAX_SIZE` sets, else [`DEFAULT_MAX_SIZE`].
    pub fn max_size_from_env() -> Result<u64, SizeError> {
        match std::env::var(MAX_SIZE_ENV) {
            Ok(text) => parse_size(&text),
            Err(std::env::VarError::NotPresent) => Ok(DEFAULT_MAX_SIZE),
            Err(std::env::VarError::NotUnicode(text)) => {
                Err(SizeError(text.to_string_lossy().into_owned()))
            }
        }
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The same cache, compiling each miss in a child started from `exe` (this program's own
    /// binary) within `bounds`: what a shim does with an image's module.
    pub fn compiling_in_child(self, exe: PathBuf, bounds: CompileBounds) -> CompileCache {
        CompileCache {
            compiler: Some((exe, bounds)),
            ..self
        }
    }

    /// The default location: `$WASMCELL_CACHE_DIR`, else `/var/lib/wasmcell/cache` for root,
    /// else `$XDG_CACHE_HOME/wasmcell` or `~/.cache/wasmcell`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("WASMCELL_CACHE_DIR") {
            return dir.into();
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return "/var/lib/wasmcell/cache".into();
        }
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("wasmcell")
    }

    /// Removes the compiled forms of the wasm whose sha256 is `module` (hex), for every engine
    /// configuration, except those in use: what `wasmcell rmi` does when no stored image has
    /// that wasm any more. Returns how many were removed.
    pub fn forget(&self, module: &str) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in self.entries()?.iter().filter(|e| e.module == module) {
            removed += usize::from(evict(&entry.path)?);
        }
        Ok(removed)
    }

    /// Every entry, least recently used first. Files that are not entries (lock and temporary
    /// files, anything foreign) are passed over.
    pub fn entries(&self) -> std::io::Result<Vec<CachedEntry>> {
        let mut found = Vec::new();
        let engines = match std::fs::read_dir(&self.dir) {
            Ok(engines) => engines,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e),
        };
        for engine in engines {
            let engine = engine?;
            if !engine.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(engine.path())? {
                let file = file?;
                let path = file.path();
                let Some(module) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".cwasm"))
                else {
                    continue;
                };
                let Ok(metadata) = std::fs::symlink_metadata(&path) else {
                    continue; // evicted meanwhile
                };
                if !metadata.is_file() {
                    continue;
                }
                // The checksum's mtime records the last use; without one, the entry's own.
                let checksum = std::fs::metadata(checksum_of(&path)).ok();
                found.push(CachedEntry {
                    engine: engine.file_name().to_string_lossy().into_owned(),
                    module: module.to_owned(),
                    size: metadata.len() + checksum.as_ref().map_or(0, |c| c.len()),
                    last_used: checksum
                        .as_ref()
                        .unwrap_or(&metadata)
                        .modified()
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    path,
                });
            }
        }
        found.sort_by_key(|e| e.last_used);
        Ok(found)
    }

    /// Evicts entries not in use, least recently used first, until the cache is within
    /// `prune.max_size`, and every entry not used for `prune.older_than`. Waits for a collection
    /// another process is running.
    pub fn prune(&self, prune: Prune) -> std::io::Result<Pruned> {
        std::fs::create_dir_all(&self.dir)?;
        let lock = collect_lock(&self.dir)?;
        flock(&lock, libc::LOCK_EX)?;
        self.collect(prune)
    }

    /// Brings the cache back within its bound after a miss wrote an entry, unless another
    /// process is collecting already. A failure is logged, not returned: the entry was written,
    /// and the next miss tries again.
    fn collect_after_write(&self) {
        let collected = collect_lock(&self.dir).and_then(|lock| {
            match flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
                Ok(()) => self.collect(Prune {
                    max_size: self.max_size,
                    older_than: None,
                }),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Pruned::default()),
                Err(e) => Err(e),
            }
        });
        match collected {
            Ok(pruned) if !pruned.evicted.is_empty() => tracing::debug!(
                evicted = pruned.evicted.len(),
                reclaimed = pruned.reclaimed(),
                remaining = pruned.remaining,
                "compile cache collected"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), "cannot collect the compile cache: {error}")
            }
        }
    }

    /// [`CompileCache::prune`], under the collection lock.
    fn collect(&self, prune: Prune) -> std::io::Result<Pruned> {
        let entries = self.entries()?;
        let mut pruned = Pruned {
            remaining: entries.iter().map(|e| e.size).sum(),
            ..Pruned::default()
        };
        let expired = |entry: &CachedEntry| {
            prune
                .older_than
                .is_some_and(|age| entry.last_used.elapsed().is_ok_and(|unused| unused >= age))
        };
        for entry in entries {
            if pruned.remaining <= prune.max_size && !expired(&entry) {
                // Least recently used first: the rest are newer still.
                break;
            }
            if evict(&entry.path)? {
                pruned.remaining -= entry.size;
                pruned.evicted.push(entry);
            } else {
                pruned.in_use.push(entry);
            }
        }
        Ok(pruned)
    }

    /// The directory holding this engine's artifacts.
    fn engine_dir(&self, engine: &wasmtime::Engine) -> PathBuf {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        // The hash covers the wasmtime version as well as the code-generation settings.
        self.dir.join(format!("wasmtime-{:016x}", hasher.finish()))
    }

    /// Where the artifact of `bytes` for `engine` lives.
    fn entry(&self, engine: &wasmtime::Engine, bytes: &[u8]) -> PathBuf {
        self.engine_dir(engine)
            .join(format!("{}.cwasm", hex::encode(Sha256::digest(bytes))))
    }

    /// Returns the compiled form of `bytes` and the entry it was loaded from (which another
    /// engine of the same configuration may load too), from the cache when present, compiling
    /// and storing it otherwise (see [`CompileCache::ensure`]). An entry wasmtime refuses
    /// despite its checksum (written by a foreign build into this directory) is discarded and
    /// rebuilt once.
    pub fn load(
        &self,
        engine: &wasmtime::Engine,
        kind: WasmKind,
        bytes: &[u8],
        path: &str,
    ) -> Result<(Artifact, InUse), Error> {
        let entry = self.ensure(engine, kind, bytes, path)?;
        let refused = match deserialize(engine, kind, entry.path()) {
            Ok(artifact) => return Ok((artifact, entry)),
            Err(error) => error,
        };
        let path_of_entry = entry.path.clone();
        drop(entry);
        discard(&path_of_entry, &refused);
        let entry = self.ensure(engine, kind, bytes, path)?;
        match deserialize(engine, kind, entry.path()) {
            Ok(artifact) => Ok((artifact, entry)),
            Err(source) => Err(Error::Compile {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Makes sure the cache holds a sound artifact of `bytes` and returns it held in use,
    /// without loading it: what a shim needs, whose sandbox does the loading. An entry that
    /// fails its checksum (corrupted, cut short, unverifiable) is discarded and rebuilt.
    /// Concurrent callers (shims starting the same image at once) compile once: the others
    /// wait on the entry's lock and then find what it wrote. A miss then brings the cache back
    /// within its bound.
    pub fn ensure(
        &self,
        engine: &wasmtime::Engine,
        kind: WasmKind,
        bytes: &[u8],
        path: &str,
    ) -> Result<InUse, Error> {
        let entry = self.entry(engine, bytes);
        if let Some(held) = hold_if_sound(&entry).map_err(cache_err(&entry))? {
            return Ok(held);
        }
        let written = self.compile_and_write(engine, kind, bytes, path, &entry)?;
        self.collect_after_write();
        Ok(written)
    }

    /// The miss half of [`CompileCache::ensure`]: under the entry's lock, compiles `bytes` and
    /// writes `entry`, unless another process did meanwhile.
    fn compile_and_write(
        &self,
        engine: &wasmtime::Engine,
        kind: WasmKind,
        bytes: &[u8],
        path: &str,
        entry: &Path,
    ) -> Result<InUse, Error> {
        let dir = entry
            .parent()
            .expect("entries live in the engine's directory");
        let cache_err = cache_err(entry);
        std::fs::create_dir_all(dir).map_err(&cache_err)?;
        let _lock = EntryLock::acquire(entry.with_extension("lock")).map_err(&cache_err)?;
        if let Some(held) = hold_if_sound(entry).map_err(&cache_err)? {
            return Ok(held);
        }
        tracing::debug!(entry = %entry.display(), "compile cache miss: compiling {path}");
        let compiled = match &self.compiler {
            None => match kind {
                WasmKind::Module => engine.precompile_module(bytes),
                WasmKind::Component => engine.precompile_component(bytes),
            },
            Some((exe, bounds)) => {
                crate::precompile::in_child(exe, *bounds, kind, bytes).map_err(wasmtime::Error::msg)
            }
        }
        .map_err(|source| Error::Compile {
            path: path.to_owned(),
            source,
        })?;
        // The checksum first, then the entry: an entry that exists always has its checksum.
        // The entry is held from before it is renamed into place, so that no collection can
        // evict it before this caller's sandbox has loaded it.
        let checksum = hex::encode(Sha256::digest(&compiled));
        let written = stage(dir, checksum.as_bytes())
            .and_then(|staged| persist(staged, &checksum_of(entry)))
            .and_then(|_| stage(dir, &compiled))
            .and_then(|staged| {
                let file = staged.as_file().try_clone()?;
                flock(&file, libc::LOCK_SH)?;
                persist(staged, entry)?;
                Ok(InUse {
                    path: entry.to_owned(),
                    file,
                })
            });
        written.map_err(|error| {
            // A full or failing disk: no checksum without its entry left behind.
            let _ = std::fs::remove_file(checksum_of(entry));
            cache_err(error)
        })
    }
}

/// The error for a failure to use the directory that holds `entry`.
fn cache_err(entry: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Cache {
        dir: entry
            .parent()
            .expect("entries live in the engine's directory")
            .to_owned(),
        source,
    }
}

/// The entry at `entry`, held in use, if it is there and matches its checksum (an unsound one
/// is discarded); records the use. Cheap: the entry is read once to check it, as before, and the
/// use costs one `futimens` of the checksum, never an fsync.
fn hold_if_sound(entry: &Path) -> std::io::Result<Option<InUse>> {
    let Some(held) = InUse::acquire(entry)? else {
        return Ok(None);
    };
    match verify(&held) {
        Ok(()) => {
            tracing::debug!(entry = %entry.display(), "compile cache hit");
            Ok(Some(held))
        }
        Err(error) => {
            drop(held);
            discard(entry, &error);
            Ok(None)
        }
    }
}

/// Removes an unusable entry (and its checksum) so that it gets rebuilt.
fn discard(entry: &Path, why: &wasmtime::Error) {
    tracing::warn!(entry = %entry.display(), "discarding unusable cache entry: {why:#}");
    let _ = std::fs::remove_file(entry);
    let _ = std::fs::remove_file(checksum_of(entry));
}

/// Checks an entry against the checksum written with it. wasmtime checks an artifact's header,
/// version and configuration, but would run flipped bits in its code: this catches those (and a
/// file cut short) for about 0.2 ms per 300 KB.
///
/// Also records the use, as the checksum's mtime (which [`CompileCache::entries`] reads as
/// the last use): not possible in a sandbox, whose view of the cache is read-only, but the shim
/// recorded that use when it made sure of the entry.
///
/// The entry is read through the held descriptor, from its start: what is checked is the file
/// held.
fn verify(held: &InUse) -> wasmtime::Result<()> {
    let mut checksum = File::open(checksum_of(&held.path))?;
    let mut expected = String::new();
    std::io::Read::read_to_string(&mut checksum, &mut expected)?;
    let mut bytes = vec![0; usize::try_from(held.file.metadata()?.len())?];
    std::os::unix::fs::FileExt::read_exact_at(&held.file, &mut bytes, 0)?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != expected.trim() {
        wasmtime::bail!("its checksum does not match: the file is corrupted");
    }
    let _ = checksum.set_modified(SystemTime::now());
    Ok(())
}

/// Where an entry's checksum lives: `<entry>.sha256`.
fn checksum_of(entry: &Path) -> PathBuf {
    entry.with_extension("cwasm.sha256")
}

/// Writes `bytes` to a temporary file in `dir`, readable by all (a sandbox running as the
/// container's user loads what the shim compiled), for [`persist`] to rename into place: so
/// readers never see a partial file.
fn stage(dir: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    Ok(tmp)
}

fn persist(staged: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    staged.persist(path).map(drop).map_err(|e| e.error)
}

/// Evicts the entry at `entry` unless it is in use; true if it is gone (evicted now, or
/// already). The checksum goes first, under the exclusive lock: a process that opened the entry
/// meanwhile waits on its lock, then finds the entry gone and compiles it again.
fn evict(entry: &Path) -> std::io::Result<bool> {
    let file = match File::open(entry) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) => return Err(e),
    }
    if !names(entry, &file)? {
        // Evicted, or replaced by a fresh entry, since it was listed: not ours to remove.
        return Ok(true);
    }
    for path in [checksum_of(entry), entry.to_owned()] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(true)
}

/// The cache-wide lock file one collection at a time holds. It is never removed: a lock file
/// removed while another process waits on it would let a third lock a new one.
fn collect_lock(dir: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("collect.lock"))
}

/// `flock(2)` with `operation` on `file`'s open file description; the lock is released when the
/// last descriptor of it is closed.
fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock only locks the open file description that `file` owns, which outlives
    // the call.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(file), operation) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// An exclusive `flock` on an entry's lock file while it is compiled and written.
///
/// On release the lock file is removed, after the entry exists: a process still waiting on the
/// removed file acquires it, re-checks and finds the entry; a later one finds the entry without
/// locking. So lock files do not accumulate, and a failed compile leaves none behind.
struct EntryLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl EntryLock {
    fn acquire(path: PathBuf) -> std::io::Result<EntryLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        flock(&file, libc::LOCK_EX)?;
        Ok(EntryLock { path, _file: file })
    }
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Maps the artifact at `entry`. The mapping keeps its inode, so an entry evicted or replaced
/// later (never written in place) does not change under a loaded module.
fn deserialize(
    engine: &wasmtime::Engine,
    kind: WasmKind,
    entry: &Path,
) -> wasmtime::Result<Artifact> {
    // SAFETY: `deserialize_file` trusts the file to be a wasmtime artifact. Entries in this cache
    // are only ever created by `precompile_*` of this same engine configuration (the directory is
    // keyed by its fingerprint) and renamed into place whole; wasmtime still checks the header,
    // version and configuration, and anything it rejects is discarded by the caller.
    Ok(match kind {
        WasmKind::Module => {
            Artifact::Module(unsafe { wasmtime::Module::deserialize_file(engine, entry)? })
        }
        WasmKind::Component => Artifact::Component(deserialize_component(engine, entry)?),
    })
}

/// A component from a cache entry, into any engine of the configuration the entry's
/// directory is keyed by (a server's pooling engine loads what the compiler wrote).
pub fn deserialize_component(
    engine: &wasmtime::Engine,
    entry: &Path,
) -> wasmtime::Result<Component> {
    // SAFETY: as in `deserialize`: entries are only ever written whole by this configuration's
    // `precompile_*`, and wasmtime checks the header, version and configuration.
    unsafe { Component::deserialize_file(engine, entry) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module() -> Vec<u8> {
        wat::parse_str(r#"(module (memory 1) (func (export "_start")))"#).unwrap()
    }

    /// Engines whose artifacts are incompatible: linear memories are laid out differently.
    fn engine(reservation: u64) -> wasmtime::Engine {
        let mut config = wasmtime::Config::new();
        config.memory_reservation(reservation);
        wasmtime::Engine::new(&config).unwrap()
    }

    /// Every file in the cache's engine directories (not the collection's lock beside them).
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .map(|d| d.unwrap().path())
            .filter(|d| d.is_dir())
            .flat_map(|d| std::fs::read_dir(d).unwrap())
            .map(|e| e.unwrap().path())
            .collect();
        found.sort();
        found
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        files(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect()
    }

    fn digest(path: &Path) -> String {
        hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
    }

    #[test]
    fn another_engine_configuration_gets_its_own_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path());
        let (big, small) = (engine(4 << 30), engine(1 << 20));
        assert_ne!(cache.engine_dir(&big), cache.engine_dir(&small));
        cache.load(&big, WasmKind::Module, &module(), "m").unwrap();
        cache
            .load(&small, WasmKind::Module, &module(), "m")
            .unwrap();
        assert_eq!(entries(dir.path()).len(), 2, "one entry per configuration");
    }

    #[test]
    fn a_foreign_corrupted_or_truncated_entry_is_discarded_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path());
        let (big, small) = (engine(4 << 30), engine(1 << 20));
        cache.load(&big, WasmKind::Module, &module(), "m").unwrap();
        cache
            .load(&small, WasmKind::Module, &module(), "m")
            .unwrap();
        let (big_entry, small_entry) =
            (cache.entry(&big, &module()), cache.entry(&small, &module()));
        let (big_digest, small_bytes) = (digest(&big_entry), std::fs::read(&small_entry).unwrap());
        // Damages the entry, loads it, and expects the load to have rebuilt the entry.
        let rebuilt_after = |what: &str, damage: &dyn Fn(&Path)| {
            damage(&big_entry);
            assert!(matches!(
                cache
                    .load(&big, WasmKind::Module, &module(), "m")
                    .unwrap()
                    .0,
                Artifact::Module(_)
            ));
            assert_eq!(
                digest(&big_entry),
                big_digest,
                "the {what} entry was not rebuilt"
            );
            assert!(checksum_of(&big_entry).exists());
        };
        // An incompatible configuration's artifact under this configuration's name.
        rebuilt_after("foreign", &|entry| {
            std::fs::write(entry, &small_bytes).unwrap()
        });
        // One flipped bit in the middle, where wasmtime's header checks do not look.
        rebuilt_after("corrupted", &|entry| {
            let mut bytes = std::fs::read(entry).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            std::fs::write(entry, &bytes).unwrap();
        });
        // No checksum: unverifiable.
        rebuilt_after("unverifiable", &|entry| {
            std::fs::remove_file(checksum_of(entry)).unwrap()
        });
        // A half-written file.
        rebuilt_after("truncated", &|entry| {
            let bytes = std::fs::read(entry).unwrap();
            std::fs::write(entry, &bytes[..bytes.len() / 2]).unwrap();
        });
    }

    #[test]
    fn a_hit_reuses_the_entry_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path());
        let engine = engine(4 << 30);
        cache
            .load(&engine, WasmKind::Module, &module(), "m")
            .unwrap();
        let [entry] = entries(dir.path()).try_into().unwrap();
        let written = std::fs::metadata(&entry).unwrap().modified().unwrap();
        cache
            .load(&engine, WasmKind::Module, &module(), "m")
            .unwrap();
        assert_eq!(
            files(dir.path()),
            [entry.clone(), checksum_of(&entry)],
            "no temporary or lock files left"
        );
        assert_eq!(
            std::fs::metadata(&entry).unwrap().modified().unwrap(),
            written
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "sandboxes running as other users must read it");
    }

    /// Distinct modules, each with its own entry.
    fn nth_module(n: usize) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module (func (export "_start")) (func (export "f{n}") (result i32) i32.const {n}))"#
        ))
        .unwrap()
    }

    /// Sets an entry's recorded last use to `seconds` after the epoch.
    fn last_used_at(entry: &Path, seconds: u64) {
        File::options()
            .write(true)
            .open(checksum_of(entry))
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
            .unwrap();
    }

    /// Loads module `n` and lets go of it (nothing holds its entry afterwards); returns its entry.
    fn use_module(cache: &CompileCache, engine: &wasmtime::Engine, n: usize) -> PathBuf {
        let (_, held) = cache
            .load(engine, WasmKind::Module, &nth_module(n), "m")
            .unwrap();
        held.path().to_owned()
    }

    fn modules_of(cache: &CompileCache) -> Vec<String> {
        cache
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.module)
            .collect()
    }

    #[test]
    fn sizes_parse_as_docker_reads_them() {
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("512M", 512 << 20),
            ("2G", 2 << 30),
            ("2GiB", 2 << 30),
            ("64kb", 64 << 10),
            (" 1t ", 1 << 40),
            ("10B", 10),
        ] {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text}");
        }
        for text in ["", "G", "1.5G", "-1", "2X", "2ib", "99999999999T"] {
            assert!(parse_size(text).is_err(), "{text} is not a size");
        }
    }

    #[test]
    fn collection_evicts_the_least_recently_used_first_and_a_hit_counts_as_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path()).max_size(u64::MAX);
        let engine = engine(4 << 30);
        let entries: Vec<PathBuf> = (0..3).map(|n| use_module(&cache, &engine, n)).collect();
        for (n, entry) in entries.iter().enumerate() {
            last_used_at(entry, 1000 + n as u64);
        }
        // A hit on the oldest makes it the newest.
        use_module(&cache, &engine, 0);
        let listed = cache.entries().unwrap();
        assert_eq!(
            listed.iter().map(|e| &e.path).collect::<Vec<_>>(),
            [&entries[1], &entries[2], &entries[0]],
            "least recently used first"
        );
        let two = listed[1].size + listed[2].size;
        let pruned = cache
            .prune(Prune {
                max_size: two,
                older_than: None,
            })
            .unwrap();
        assert_eq!(
            pruned.evicted.iter().map(|e| &e.path).collect::<Vec<_>>(),
            [&entries[1]]
        );
        assert_eq!(pruned.remaining, two);
        assert_eq!(pruned.reclaimed(), listed[0].size);
        assert!(!entries[1].exists() && !checksum_of(&entries[1]).exists());
        // Unused for longer than a day: all that is left.
        let pruned = cache
            .prune(Prune {
                max_size: u64::MAX,
                older_than: Some(Duration::from_secs(86400)),
            })
            .unwrap();
        assert_eq!(
            pruned.evicted.len(),
            1,
            "entry 2 only: entry 0 was just used"
        );
        assert_eq!(modules_of(&cache), [listed[2].module.clone()]);
    }

    #[test]
    fn a_miss_brings_the_cache_back_within_its_bound_keeping_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(4 << 30);
        let probe = CompileCache::new(dir.path());
        use_module(&probe, &engine, 0);
        let size = probe.entries().unwrap()[0].size;
        // Room for about two entries of this size.
        let cache = CompileCache::new(dir.path()).max_size(size * 5 / 2);
        for n in 1..6 {
            let entry = use_module(&cache, &engine, n);
            // Distinct recorded uses, oldest first, whatever the clock's resolution.
            last_used_at(&entry, 1000 + n as u64);
            let entries = cache.entries().unwrap();
            let total: u64 = entries.iter().map(|e| e.size).sum();
            assert!(total <= size * 5 / 2, "{total} bytes after module {n}");
            assert!(entries.iter().any(|e| e.path == entry), "module {n} kept");
        }
        assert_eq!(cache.entries().unwrap().len(), 2);
    }

    #[test]
    fn an_entry_in_use_is_never_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path());
        let engine = engine(4 << 30);
        let (artifact, held) = cache
            .load(&engine, WasmKind::Module, &nth_module(0), "m")
            .unwrap();
        let free = use_module(&cache, &engine, 1);
        // Another holder, not through this process's `InUse`: a shared flock from its own
        // descriptor, in another thread.
        let other = use_module(&cache, &engine, 2);
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn({
            let other = other.clone();
            move || {
                let file = File::open(&other).unwrap();
                flock(&file, libc::LOCK_SH).unwrap();
                locked_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            }
        });
        locked_rx.recv().unwrap();
        let all = Prune {
            max_size: 0,
            older_than: None,
        };
        let pruned = cache.prune(all).unwrap();
        assert_eq!(
            pruned.evicted.iter().map(|e| &e.path).collect::<Vec<_>>(),
            [&free]
        );
        let mut kept: Vec<&Path> = pruned.in_use.iter().map(|e| e.path.as_path()).collect();
        kept.sort();
        let mut expected = [held.path(), other.as_path()];
        expected.sort();
        assert_eq!(kept, expected);
        assert!(held.path().exists() && other.exists());
        assert_eq!(
            cache.forget(&modules_of(&cache)[0]).unwrap(),
            0,
            "rmi keeps it too"
        );
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        drop(held);
        // Let go of, but still loaded: evicting it is safe, the mapping keeps its inode.
        let pruned = cache.prune(all).unwrap();
        assert_eq!(pruned.evicted.len(), 2);
        assert_eq!(pruned.remaining, 0);
        let Artifact::Module(module) = artifact else {
            unreachable!()
        };
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let f0 = instance
            .get_typed_func::<(), i32>(&mut store, "f0")
            .unwrap();
        assert_eq!(f0.call(&mut store, ()).unwrap(), 0);
    }

    #[test]
    fn a_pruner_racing_writers_never_takes_an_entry_from_under_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path()).max_size(0);
        let engine = engine(4 << 30);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let pruner = scope.spawn(|| {
                // Until the writers are done, then once more.
                loop {
                    let done = stop.load(std::sync::atomic::Ordering::Relaxed);
                    cache
                        .prune(Prune {
                            max_size: 0,
                            older_than: None,
                        })
                        .unwrap();
                    if done {
                        break;
                    }
                }
            });
            let writers: Vec<_> = (0..2)
                .map(|writer| {
                    let (cache, engine) = (&cache, &engine);
                    scope.spawn(move || {
                        for round in 0..20 {
                            let n = (writer + round) % 4;
                            let (artifact, held) = cache
                                .load(engine, WasmKind::Module, &nth_module(n), "m")
                                .unwrap();
                            assert!(matches!(artifact, Artifact::Module(_)));
                            assert!(held.path().exists(), "evicted while held");
                            verify(&held).unwrap();
                        }
                    })
                })
                .collect();
            for writer in writers {
                writer.join().unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            pruner.join().unwrap();
        });
        assert!(
            cache.entries().unwrap().is_empty(),
            "nothing held, nothing kept"
        );
    }

    #[test]
    fn foreign_and_damaged_files_do_not_stop_a_prune() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path());
        let engine = engine(4 << 30);
        let entry = use_module(&cache, &engine, 0);
        let engine_dir = entry.parent().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "foreign").unwrap();
        std::fs::write(engine_dir.join("stray.tmp"), "foreign").unwrap();
        std::fs::create_dir(engine_dir.join("dir.cwasm")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", engine_dir.join("link.cwasm")).unwrap();
        std::fs::write(engine_dir.join("orphan.cwasm.sha256"), "00").unwrap();
        // An entry whose checksum is gone: listed, and evicted like any other.
        std::fs::write(engine_dir.join("unverifiable.cwasm"), "garbage").unwrap();
        assert_eq!(cache.entries().unwrap().len(), 2);
        let pruned = cache
            .prune(Prune {
                max_size: 0,
                older_than: None,
            })
            .unwrap();
        assert_eq!(pruned.evicted.len(), 2);
        for foreign in [
            dir.path().join("notes.txt"),
            engine_dir.join("stray.tmp"),
            engine_dir.join("dir.cwasm"),
            engine_dir.join("link.cwasm"),
        ] {
            assert!(
                foreign.symlink_metadata().is_ok(),
                "{} left alone",
                foreign.display()
            );
        }
        assert!(
            CompileCache::new(dir.path().join("missing"))
                .entries()
                .unwrap()
                .is_empty()
        );
    }
}
