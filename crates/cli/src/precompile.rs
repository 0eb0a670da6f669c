//! Compiling what an image holds ahead of its first run: `wasmcell pull` and `wasmcell build`
//! leave the optimised code of every Wasm binary in the image in the compile cache, so the
//! first `run` or `up` (or a shim on the same node, which shares the cache when both run as
//! root) starts warm.
//!
//! An image is hostile input: its files are walked inside the unpacked root (cap-std: no `..`,
//! no symlink followed out), only regular files are read (never a FIFO or a device), each at
//! most [`rootfs::MAX_MODULE_SIZE`], and at most [`MAX_BINARIES`] of [`MAX_ENTRIES`] entries
//! are compiled, each in the bounded compiling child.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use cap_std::fs::Dir;
use wasmcell_engine::{CompilePolicy, Compiler, error_chain};
use wasmcell_oci::{FileKind, ImageContents, rootfs};

/// The most Wasm binaries compiled from one image: an app has a handful of components.
const MAX_BINARIES: usize = 16;

/// The most directory entries looked at in one image.
const MAX_ENTRIES: usize = 20_000;

/// How deep directories are walked.
const MAX_DEPTH: usize = 16;

/// Compiles the Wasm binaries `image` (named `reference`) holds into the compile cache, saying
/// what it did on stdout. A binary that does not compile is reported and skipped: its run will
/// say why.
pub fn image(image: &ImageContents, reference: &str) -> Result<()> {
    let started = Instant::now();
    let unpacked = tempfile::Builder::new()
        .prefix("wasmcell-precompile-")
        .tempdir()
        .context("cannot create a directory to unpack the image in")?;
    image.unpack(unpacked.path())?;
    let root = Dir::open_ambient_dir(unpacked.path(), cap_std::ambient_authority())
        .with_context(|| format!("cannot open {}", unpacked.path().display()))?;
    let binaries = wasm_files(&root)?;
    if binaries.is_empty() {
        return Ok(());
    }
    let cache = crate::compile::open(None)?
        .compiling_in_own_child()
        .functions_of(&crate::compile::app_scope(reference));
    let compiler = Compiler::new(cache, CompilePolicy::Optimized)?;
    let mut compiled = 0;
    for path in &binaries {
        let shown = format!("/{}", path.display());
        let bytes = match rootfs::read_regular(&root, path, rootfs::MAX_MODULE_SIZE) {
            Ok(bytes) => bytes,
            Err(error) => {
                eprintln!("wasmcell: not compiling {shown}: {error}");
                continue;
            }
        };
        match compiler.precompile(&shown, bytes) {
            Ok(()) => compiled += 1,
            Err(error) => eprintln!("wasmcell: not compiling {shown}: {}", error_chain(&error)),
        }
    }
    println!(
        "compiled {compiled} Wasm binar{} for its first start ({:.1} s; --no-compile skips this)",
        if compiled == 1 { "y" } else { "ies" },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The regular files under `root` that start with Wasm's magic, in walk order, at most
/// [`MAX_BINARIES`] of them.
fn wasm_files(root: &Dir) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![(PathBuf::new(), 0usize)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = pending.pop() {
        let entries = if dir.as_os_str().is_empty() {
            root.entries()
        } else {
            root.read_dir(&dir)
        };
        let Ok(entries) = entries else { continue };
        for entry in entries {
            seen += 1;
            if seen > MAX_ENTRIES || found.len() >= MAX_BINARIES {
                return Ok(found);
            }
            let Ok(entry) = entry else { continue };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = dir.join(entry.file_name());
            if kind.is_dir() && depth < MAX_DEPTH {
                pending.push((path, depth + 1));
            } else if kind.is_file() && starts_as_wasm(root, &path) {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// Whether the regular file at `path` starts with Wasm's magic number (its first 8 bytes).
fn starts_as_wasm(root: &Dir, path: &Path) -> bool {
    let Ok((file, _)) = rootfs::open_regular(root, path, rootfs::MAX_MODULE_SIZE) else {
        return false;
    };
    let mut head = Vec::with_capacity(8);
    file.take(8).read_to_end(&mut head).is_ok()
        && matches!(FileKind::detect(&head), FileKind::Wasm(_))
}
