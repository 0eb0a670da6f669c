//! The function cache, beside the compile cache: Cranelift's incremental compilation cache (optimised code per function,
//! keyed by a hash of the function's body and the compiler's settings), so an app rebuilt with
//! its interpreter unchanged (a one-line change to a Python or JS app) recompiles only what
//! changed.
//!
//! Its values are machine code that later compiles take as they are: whoever can write an
//! entry chooses code another module will run. A compile that an image made hostile (an
//! exploited compiler) must therefore reach no entry another app will use. So:
//! - each cache has a **scope**, the app it serves (the manifest's directory, the file's path, the
//!   image's repository), hashed into the directory name: a build of one app never reads what
//!   another app's compile wrote. The shims have no such identity for an image and keep no
//!   function cache;
//! - the compiling child reaches it only through a socket to its parent ([`serve`]), never a
//!   file: lookups and insertions are bounded in size and number, and written by the parent.
//!
//! On disk: `<cache>/functions/<scope>/<sha256 of the key>`, each file the value, written to a
//! temporary file and renamed into place. A scope is kept within [`SCOPE_BOUND`] (its least
//! recently written entries removed first), and the whole within [`TOTAL_BOUND`] (least
//! recently used scopes removed first).

use std::borrow::Cow;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// The largest key a child may send: Cranelift's keys are hashes, tens of bytes.
const MAX_KEY: u32 = 1024;

/// The largest value: one function's compiled code and its metadata.
const MAX_VALUE: u32 = 64 << 20;

/// The most one compile may write into its scope.
const MAX_WRITTEN: u64 = 1 << 30;

/// The most one scope keeps: a 37 MB Python component's functions take ~150 MiB.
pub const SCOPE_BOUND: u64 = 512 << 20;

/// The most all scopes together keep.
pub const TOTAL_BOUND: u64 = 2 << 30;

/// A lookup's answer when there is no entry.
const MISSING: u32 = u32::MAX;

/// One app's function cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCache {
    dir: PathBuf,
}

impl FunctionCache {
    /// The function cache of the app named `scope` in the compile cache at `cache`.
    pub fn new(cache: &Path, scope: &str) -> FunctionCache {
        let name = hex::encode(&Sha256::digest(scope.as_bytes())[..16]);
        FunctionCache {
            dir: cache.join("functions").join(name),
        }
    }

    /// Where its entries live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, key: &[u8]) -> PathBuf {
        self.dir.join(hex::encode(Sha256::digest(key)))
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let file = std::fs::File::open(self.entry(key)).ok()?;
        let mut value = Vec::new();
        file.take(u64::from(MAX_VALUE) + 1)
            .read_to_end(&mut value)
            .ok()?;
        (value.len() <= MAX_VALUE as usize).then_some(value)
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut staged = tempfile::NamedTempFile::new_in(&self.dir)?;
        staged.write_all(value)?;
        staged.persist(self.entry(key)).map_err(|e| e.error)?;
        Ok(())
    }

    /// Brings this scope within [`SCOPE_BOUND`] and all scopes within [`TOTAL_BOUND`].
    pub fn collect(&self) {
        let oldest_first = |dir: &Path| -> Vec<(PathBuf, u64, std::time::SystemTime)> {
            let mut found: Vec<_> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let metadata = entry.metadata().ok()?;
                    let size = if metadata.is_dir() {
                        size_of_dir(&entry.path())
                    } else {
                        metadata.len()
                    };
                    Some((entry.path(), size, metadata.modified().ok()?))
                })
                .collect();
            found.sort_by_key(|(_, _, modified)| *modified);
            found
        };
        let trim = |entries: Vec<(PathBuf, u64, std::time::SystemTime)>, bound: u64| {
            let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
            for (path, size, _) in entries {
                if total <= bound {
                    break;
                }
                let removed = match path.is_dir() {
                    true => std::fs::remove_dir_all(&path),
                    false => std::fs::remove_file(&path),
                };
                if removed.is_ok() {
                    total -= size;
                }
            }
        };
        trim(oldest_first(&self.dir), SCOPE_BOUND);
        if let Some(all) = self.dir.parent() {
            trim(oldest_first(all), TOTAL_BOUND);
        }
    }
}

fn size_of_dir(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

fn read_u32(stream: &mut impl Read) -> std::io::Result<u32> {
    let mut bytes = [0; 4];
    stream.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

/// Reads `len` bytes, refusing more than `most`.
fn read_bytes(stream: &mut impl Read, len: u32, most: u32) -> std::io::Result<Vec<u8>> {
    if len > most {
        return Err(std::io::Error::other("oversized"));
    }
    let mut bytes = vec![0; len as usize];
    stream.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Serves a compiling child's lookups (`G`, key) and insertions (`I`, key, value) on
/// `stream` until the child closes it; ends at the first request out of bounds (the child is
/// not to be trusted), after which its lookups fail and it compiles everything itself.
pub(crate) fn serve(cache: &FunctionCache, mut stream: UnixStream) {
    let mut written = 0u64;
    let mut serve_one = || -> std::io::Result<()> {
        let mut tag = [0u8];
        stream.read_exact(&mut tag)?;
        let len = read_u32(&mut stream)?;
        let key = read_bytes(&mut stream, len, MAX_KEY)?;
        match tag[0] {
            b'G' => match cache.get(&key) {
                Some(value) => {
                    stream.write_all(&(value.len() as u32).to_le_bytes())?;
                    stream.write_all(&value)
                }
                None => stream.write_all(&MISSING.to_le_bytes()),
            },
            b'I' => {
                let len = read_u32(&mut stream)?;
                let value = read_bytes(&mut stream, len, MAX_VALUE)?;
                written += u64::from(len);
                if written > MAX_WRITTEN {
                    return Err(std::io::Error::other("wrote too much"));
                }
                // A full disk costs the cache an entry, not the compile.
                let _ = cache.insert(&key, &value);
                Ok(())
            }
            _ => Err(std::io::Error::other("unknown request")),
        }
    };
    while serve_one().is_ok() {}
}

/// The compiling child's side: a Cranelift cache store that asks its parent over `stream`.
#[derive(Debug)]
pub(crate) struct Remote(Mutex<UnixStream>);

impl Remote {
    pub(crate) fn new(stream: UnixStream) -> Remote {
        Remote(Mutex::new(stream))
    }
}

impl wasmtime::CacheStore for Remote {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let mut stream = self.0.lock().ok()?;
        let len = u32::try_from(key.len()).ok()?;
        stream.write_all(b"G").ok()?;
        stream.write_all(&len.to_le_bytes()).ok()?;
        stream.write_all(key).ok()?;
        let len = read_u32(&mut *stream).ok()?;
        if len == MISSING {
            return None;
        }
        read_bytes(&mut *stream, len, MAX_VALUE)
            .ok()
            .map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let Ok(mut stream) = self.0.lock() else {
            return false;
        };
        let (Ok(key_len), Ok(value_len)) = (u32::try_from(key.len()), u32::try_from(value.len()))
        else {
            return false;
        };
        stream.write_all(b"I").is_ok()
            && stream.write_all(&key_len.to_le_bytes()).is_ok()
            && stream.write_all(key).is_ok()
            && stream.write_all(&value_len.to_le_bytes()).is_ok()
            && stream.write_all(&value).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::CacheStore;

    #[test]
    fn a_child_reads_what_an_earlier_child_of_the_same_scope_wrote_and_nothing_of_another() {
        let tmp = tempfile::tempdir().unwrap();
        let app = FunctionCache::new(tmp.path(), "/home/me/app");
        let other = FunctionCache::new(tmp.path(), "registry.example/evil");
        let through = |cache: &FunctionCache, talk: &dyn Fn(&Remote)| {
            let (ours, theirs) = UnixStream::pair().unwrap();
            std::thread::scope(|scope| {
                scope.spawn(|| serve(cache, ours));
                talk(&Remote::new(theirs));
            });
        };
        through(&other, &|remote| {
            assert!(remote.insert(b"key", b"poisoned".to_vec()));
        });
        through(&app, &|remote| {
            assert_eq!(remote.get(b"key"), None, "another scope's entry");
            assert!(remote.insert(b"key", b"code".to_vec()));
            assert_eq!(remote.get(b"key").as_deref(), Some(&b"code"[..]));
        });
        through(&app, &|remote| {
            assert_eq!(remote.get(b"key").as_deref(), Some(&b"code"[..]));
        });
    }

    #[test]
    fn a_request_out_of_bounds_ends_the_service_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = FunctionCache::new(tmp.path(), "app");
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let served = std::thread::spawn({
            let cache = cache.clone();
            move || serve(&cache, ours)
        });
        // A key of 4 GiB announced: refused before anything is read or allocated.
        theirs.write_all(b"I").unwrap();
        theirs.write_all(&u32::MAX.to_le_bytes()).unwrap();
        served.join().unwrap();
        assert!(!cache.dir().exists());
        // And the child's next lookup fails rather than hangs.
        assert_eq!(Remote::new(theirs).get(b"key"), None);
    }
}
