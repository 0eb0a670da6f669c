//! An image archive (`wasmcell run app.tar`): the tar, its index, manifests and config, the
//! image selected from them, and its layers unpacked (at most 16 MiB here).
#![no_main]

use std::io::Write;

libfuzzer_sys::fuzz_target!(|archive: &[u8]| {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("image.tar");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(archive))
        .expect("write the archive");
    if let Ok(image) = wasmcell_oci::Archive::read(&path) {
        let _ = image.command();
        let _ = image.entry_module();
        let _ = image.unpack_at_most(&dir.path().join("rootfs"), 16 << 20);
    }
});
