//! What a file is (Wasm module, component, or why not), and the `path#function` entrypoint
//! syntax of image Entrypoints and `wasmcell run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let kind = wasmcell_oci::FileKind::detect(bytes);
    let _ = kind.to_string();
    if let Ok(text) = std::str::from_utf8(bytes) {
        let entry = wasmcell_oci::Entrypoint::parse(text);
        let _ = (entry.path, entry.function);
    }
});
