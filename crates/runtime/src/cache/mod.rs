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
//!
//! This file holds the cache itself ([`CompileCache`]): where entries live, and loading or
//! making sure of one. An entry's checksum, writing and locks are in `entry.rs`; the size bound
//! and eviction in `collect.rs`; the tests, which share their fixtures, in `tests.rs`.

mod collect;
mod entry;
#[cfg(test)]
mod tests;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmcell_oci::WasmKind;
use wasmtime::component::Component;

use crate::codegen::Codegen;
use crate::error::Error;
use crate::functions::FunctionCache;
use crate::precompile::CompileBounds;

pub use collect::{
    DEFAULT_MAX_SIZE, MAX_SIZE_ENV, Prune, Pruned, SizeError, parse_memory_size, parse_size,
};
pub use entry::InUse;
use entry::{EntryLock, checksum_of, discard, flock, hold_if_sound, persist, stage};

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
    /// The code a compiling child makes (an in-process compile makes the given engine's).
    codegen: Codegen,
    /// What a miss does.
    miss: Miss,
    /// The function cache a miss's optimised compile reuses and fills, if any.
    functions: Option<FunctionCache>,
}

/// What [`CompileCache::ensure`] does when the cache has no sound entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Compiles it (the default).
    Compile,
    /// Fails with [`Error::NotCached`] at once: to ask whether code is there.
    Refuse,
    /// Waits up to this long for another process (a sandbox's shim) to write it, then fails
    /// with [`Error::NotCached`].
    Await(Duration),
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

impl CompileCache {
    /// A cache rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> CompileCache {
        CompileCache {
            dir: dir.into(),
            compiler: None,
            max_size: DEFAULT_MAX_SIZE,
            codegen: Codegen::Optimized,
            miss: Miss::Compile,
            functions: None,
        }
    }

    /// The same cache, its compiling child's optimised compiles reusing the functions earlier
    /// compiles of the app named `scope` made (see [`FunctionCache`]): for the CLI, which knows
    /// which app it compiles.
    pub fn functions_of(self, scope: &str) -> CompileCache {
        CompileCache {
            functions: Some(FunctionCache::new(&self.dir, scope)),
            ..self
        }
    }

    /// The same cache, its compiling child making `codegen`'s code: the engines given to
    /// [`CompileCache::ensure`] must then be of that configuration.
    pub fn codegen(self, codegen: Codegen) -> CompileCache {
        CompileCache { codegen, ..self }
    }

    /// The same cache, doing `miss` on a miss.
    pub fn on_miss(self, miss: Miss) -> CompileCache {
        CompileCache { miss, ..self }
    }

    /// The same cache, compiling each miss in a child of this program's own binary (within
    /// the bounds the environment sets, [`CompileBounds::from_env`]); in this process should
    /// the binary's path be unknown.
    pub fn compiling_in_own_child(self) -> CompileCache {
        match std::env::current_exe() {
            Ok(exe) => self.compiling_in_child(exe, CompileBounds::from_env()),
            Err(_) => self,
        }
    }

    /// The same cache, brought back within `bytes` after each miss (see [`CompileCache::prune`]).
    pub fn max_size(self, bytes: u64) -> CompileCache {
        CompileCache {
            max_size: bytes,
            ..self
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
        let not_cached = || Error::NotCached {
            path: path.to_owned(),
        };
        match self.miss {
            Miss::Compile => {}
            Miss::Refuse => return Err(not_cached()),
            Miss::Await(bound) => {
                let deadline = Instant::now() + bound;
                while Instant::now() < deadline {
                    std::thread::sleep(AWAIT_POLL);
                    if let Some(held) = hold_if_sound(&entry).map_err(cache_err(&entry))? {
                        return Ok(held);
                    }
                }
                return Err(not_cached());
            }
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
                let functions = self.functions.as_ref();
                let compiled =
                    crate::precompile::in_child(exe, *bounds, self.codegen, kind, bytes, functions);
                if let Some(functions) = functions {
                    functions.collect();
                }
                compiled.map_err(wasmtime::Error::msg)
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

/// How often [`Miss::Await`] looks for the entry: a rename into place is seen within this.
const AWAIT_POLL: Duration = Duration::from_millis(250);

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
