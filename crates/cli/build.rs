//! Links `wasmcell` as a position-dependent executable.
//!
//! Every container runs two processes of this binary (the shim and its sandbox). As a PIE, each
//! process relocates ~100k pointers at exec: slower starts, and the relocated `.data.rel.ro`
//! and GOT pages (~1.5 MB) become private copies in every process. Linked at a fixed address,
//! those pages stay clean file pages shared by all processes on the node. ASLR still places the
//! stack, heap, mmaps and libraries at random; only the binary's own image is fixed, as it is
//! as it is for Debian's runc and containerd-shim-runc-v2.
//!
//! Also gives `--version` what it prints besides the crate's version: the wasmtime it links
//! (from the workspace's Cargo.lock) and the commit it was built from (`unknown` outside a
//! git checkout).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    println!(
        "cargo:rustc-env=WASMCELL_WASMTIME_VERSION={}",
        wasmtime_version()
    );
    println!("cargo:rustc-env=WASMCELL_COMMIT={}", commit());
}

/// The version of the `wasmtime` package in the workspace's lock file.
fn wasmtime_version() -> String {
    println!("cargo:rerun-if-changed=../../Cargo.lock");
    let lock = std::fs::read_to_string("../../Cargo.lock").unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasmtime\""
            && let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = "))
        {
            return version.trim_matches('"').to_owned();
        }
    }
    "unknown".to_owned()
}

/// The commit checked out, abbreviated; `unknown` when there is none (a source tarball).
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    // Built again when the checkout moves to another commit.
    // (Only paths that exist: cargo runs a script again at every build for one that does not.)
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for path in ["HEAD", "refs/heads", "packed-refs"] {
            let path = std::path::Path::new(&dir).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}
