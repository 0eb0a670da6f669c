//! The cache's tests: loading and rebuilding entries, and collection, which share their
//! fixtures (engines, modules, a look at the files on disk).

use std::fs::File;
use std::time::Duration;

use super::entry::verify;
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
    let (big_entry, small_entry) = (cache.entry(&big, &module()), cache.entry(&small, &module()));
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
