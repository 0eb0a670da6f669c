//! A cache entry's life on disk: its checksum, written beside it and checked at every load;
//! how it is written (staged in a temporary file, then renamed into place whole); and the
//! `flock`s that guard it: [`InUse`], the shared lock of whoever loads an entry, which
//! collection respects, and [`EntryLock`], which makes concurrent misses compile once.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// A cache entry held in use: a shared `flock` on the entry's file for as long as this lives,
/// which makes collection skip it. Whoever loads an entry holds one for as long as the loaded
/// artifact lives; the shim holds the one [`crate::Compiler::compile`] returns until its sandbox
/// has loaded the entry.
#[derive(Debug)]
pub struct InUse {
    pub(super) path: PathBuf,
    pub(super) file: File,
}

impl InUse {
    /// Holds the entry now at `path`; `None` when there is none, or when it was evicted while
    /// this waited for the lock (its file is then no longer the one at `path`).
    pub(super) fn acquire(path: &Path) -> std::io::Result<Option<InUse>> {
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
pub(super) fn names(path: &Path, file: &File) -> std::io::Result<bool> {
    let held = file.metadata()?;
    Ok(match std::fs::metadata(path) {
        Ok(now) => (now.dev(), now.ino()) == (held.dev(), held.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    })
}

/// The entry at `entry`, held in use, if it is there and matches its checksum (an unsound one
/// is discarded); records the use. Cheap: the entry is read once to check it, as before, and the
/// use costs one `futimens` of the checksum, never an fsync.
pub(super) fn hold_if_sound(entry: &Path) -> std::io::Result<Option<InUse>> {
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
pub(super) fn discard(entry: &Path, why: &wasmtime::Error) {
    tracing::warn!(entry = %entry.display(), "discarding unusable cache entry: {why:#}");
    let _ = std::fs::remove_file(entry);
    let _ = std::fs::remove_file(checksum_of(entry));
}

/// Checks an entry against the checksum written with it. wasmtime checks an artifact's header,
/// version and configuration, but would run flipped bits in its code: this catches those (and a
/// file cut short) for about 0.2 ms per 300 KB.
///
/// Also records the use, as the checksum's mtime (which
/// [`CompileCache::entries`](super::CompileCache::entries) reads as the last use): not possible
/// in a sandbox, whose view of the cache is read-only, but the shim recorded that use when it
/// made sure of the entry.
///
/// The entry is read through the held descriptor, from its start: what is checked is the file
/// held.
pub(super) fn verify(held: &InUse) -> wasmtime::Result<()> {
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
pub(super) fn checksum_of(entry: &Path) -> PathBuf {
    entry.with_extension("cwasm.sha256")
}

/// Writes `bytes` to a temporary file in `dir`, readable by all (a sandbox running as the
/// container's user loads what the shim compiled), for [`persist`] to rename into place: so
/// readers never see a partial file.
pub(super) fn stage(dir: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    Ok(tmp)
}

pub(super) fn persist(staged: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    staged.persist(path).map(drop).map_err(|e| e.error)
}

/// `flock(2)` with `operation` on `file`'s open file description; the lock is released when the
/// last descriptor of it is closed.
pub(super) fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
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
pub(super) struct EntryLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl EntryLock {
    pub(super) fn acquire(path: PathBuf) -> std::io::Result<EntryLock> {
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
