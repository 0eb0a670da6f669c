//! Links `wasmcell` as a position-dependent executable.
//!
//! Every container runs two processes of this binary (the shim and its sandbox). As a PIE, each
//! process relocates ~100k pointers at exec: slower starts, and the relocated `.data.rel.ro`
//! and GOT pages (~1.5 MB) become private copies in every process. Linked at a fixed address,
//! those pages stay clean file pages shared by all processes on the node. ASLR still places the
//! stack, heap, mmaps and libraries at random; only the binary's own image is fixed, as it is
//! as it is for Debian's runc and containerd-shim-runc-v2.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
