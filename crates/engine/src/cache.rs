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

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmcell_oci::WasmKind;
use wasmtime::component::Component;

use crate::error::Error;
use crate::precompile::CompileBounds;

/// A compiled binary, either kind.
#[derive(Clone)]
pub(crate) enum Artifact {
    Module(wasmtime::Module),
    Component(Component),
}

/// The compile cache directory, shared by the shims and the CLI.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    /// The binary whose compiling child ([`crate::precompile`]) compiles each miss, and its
    /// bounds; `None` compiles in this process.
    compiler: Option<(PathBuf, CompileBounds)>,
}

impl CompileCache {
    /// A cache rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> CompileCache {
        CompileCache {
            dir: dir.into(),
            compiler: None,
        }
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
    /// configuration: what `wasmcell rmi` does when no stored image has that wasm any more.
    /// Returns how many were removed.
    pub fn forget(&self, module: &str) -> std::io::Result<usize> {
        let mut removed = 0;
        let Ok(engines) = std::fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        for engine in engines {
            let engine = engine?.path();
            let entry = engine.join(format!("{module}.cwasm"));
            if entry.is_file() {
                std::fs::remove_file(&entry)?;
                let _ = std::fs::remove_file(checksum_of(&entry));
                removed += 1;
            }
        }
        Ok(removed)
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
    pub(crate) fn load(
        &self,
        engine: &wasmtime::Engine,
        kind: WasmKind,
        bytes: &[u8],
        path: &str,
    ) -> Result<(Artifact, PathBuf), Error> {
        let entry = self.ensure(engine, kind, bytes, path)?;
        let refused = match deserialize(engine, kind, &entry) {
            Ok(artifact) => return Ok((artifact, entry)),
            Err(error) => error,
        };
        discard(&entry, &refused);
        let entry = self.ensure(engine, kind, bytes, path)?;
        match deserialize(engine, kind, &entry) {
            Ok(artifact) => Ok((artifact, entry)),
            Err(source) => Err(Error::Compile {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Makes sure the cache holds a sound artifact of `bytes` and returns its path, without
    /// loading it: what a shim needs, whose sandbox does the loading. An entry that fails its
    /// checksum (corrupted, cut short, unverifiable) is discarded and rebuilt. Concurrent
    /// callers (shims starting the same image at once) compile once: the others wait on the
    /// entry's lock and then find what it wrote.
    pub(crate) fn ensure(
        &self,
        engine: &wasmtime::Engine,
        kind: WasmKind,
        bytes: &[u8],
        path: &str,
    ) -> Result<PathBuf, Error> {
        let entry = self.entry(engine, bytes);
        if sound(&entry) {
            return Ok(entry);
        }
        let dir = entry
            .parent()
            .expect("entries live in the engine's directory")
            .to_owned();
        let cache_err = |source| Error::Cache {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(cache_err)?;
        let _lock = EntryLock::acquire(entry.with_extension("lock")).map_err(cache_err)?;
        if sound(&entry) {
            return Ok(entry);
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
        let checksum = hex::encode(Sha256::digest(&compiled));
        write_atomically(&dir, &checksum_of(&entry), checksum.as_bytes()).map_err(cache_err)?;
        if let Err(error) = write_atomically(&dir, &entry, &compiled) {
            // A full or failing disk: no checksum without its entry left behind.
            let _ = std::fs::remove_file(checksum_of(&entry));
            return Err(cache_err(error));
        }
        Ok(entry)
    }
}

/// Whether `entry` is there and matches its checksum; an unsound one is discarded.
fn sound(entry: &Path) -> bool {
    if !entry.exists() {
        return false;
    }
    match verify(entry) {
        Ok(()) => {
            tracing::debug!(entry = %entry.display(), "compile cache hit");
            true
        }
        Err(error) => {
            discard(entry, &error);
            false
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
fn verify(entry: &Path) -> wasmtime::Result<()> {
    let expected = std::fs::read_to_string(checksum_of(entry))?;
    let actual = hex::encode(Sha256::digest(std::fs::read(entry)?));
    if actual != expected.trim() {
        wasmtime::bail!("its checksum does not match: the file is corrupted");
    }
    Ok(())
}

/// Where an entry's checksum lives: `<entry>.sha256`.
fn checksum_of(entry: &Path) -> PathBuf {
    entry.with_extension("cwasm.sha256")
}

/// Writes `bytes` to `path` through a temporary file renamed into place, readable by all (a
/// sandbox running as the container's user loads what the shim compiled).
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    tmp.persist(path).map_err(|e| e.error)?;
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
        // SAFETY: flock only locks the open file description that `file` owns; the lock is
        // released when `file` is closed.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EntryLock { path, _file: file })
    }
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

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
pub(crate) fn deserialize_component(
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

    /// Every file in the cache's engine directories.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
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
}
