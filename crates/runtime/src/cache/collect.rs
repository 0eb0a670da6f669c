//! Collection: the cache's size bound (its default, and the sizes `WASMCELL_CACHE_MAX_SIZE`
//! and `wasmcell cache prune` are given in), listing entries by last use, and evicting the least
//! recently used ones not in use, under the cache-wide collection lock.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::entry::{checksum_of, flock, names};
use super::{CachedEntry, CompileCache};

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
/// optionally followed by `i` and/or `B` (`512M`, `2GiB`, `64kb`).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    size(text, false).ok_or_else(|| SizeError(text.to_owned()))
}

/// Parses a memory size as `docker run --memory` reads it: what [`parse_size`] takes, and also
/// a fraction (`1.5g`), a space before the unit (`1 g`) and `P`.
pub fn parse_memory_size(text: &str) -> Result<u64, SizeError> {
    size(text, true).ok_or_else(|| SizeError(text.to_owned()))
}

/// A number and a binary unit (see [`parse_size`]); with `docker`, Docker's wider forms.
fn size(text: &str, docker: bool) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let (number, unit) = lower.split_at(
        lower
            .find(|c: char| !(c.is_ascii_digit() || (docker && c == '.')))
            .unwrap_or(lower.len()),
    );
    let unit = match docker {
        true => unit.strip_prefix(' ').unwrap_or(unit),
        false => unit,
    };
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
        "p" if docker => 50,
        _ => return None,
    };
    if !number.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if !number.contains('.') {
        return number.parse::<u64>().ok()?.checked_mul(1 << shift);
    }
    let bytes = number.parse::<f64>().ok()? * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
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

impl CompileCache {
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
    pub(super) fn collect_after_write(&self) {
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
}

/// Evicts the entry at `entry` unless it is in use; true if it is gone (evicted now, or
/// already). The checksum goes first, under the exclusive lock: a process that opened the entry
/// meanwhile waits on its lock, then finds the entry gone and compiles it again.
pub(super) fn evict(entry: &Path) -> std::io::Result<bool> {
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
pub(super) fn collect_lock(dir: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("collect.lock"))
}
