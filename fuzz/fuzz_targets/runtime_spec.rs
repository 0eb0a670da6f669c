//! An OCI runtime spec (`config.json`), as containerd hands it to the shim, translated into
//! what the engine and the sandbox run.
#![no_main]

libfuzzer_sys::fuzz_target!(|config: &[u8]| {
    wasmcell_shim::fuzzing::translate(config);
});
