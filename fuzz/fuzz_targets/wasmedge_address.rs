//! A WasmEdge socket address (`wasi_address`) as a guest lays it out in its memory: the
//! memory, the pointer and the port are all the guest's.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if input.len() < 8 {
        return;
    }
    let ptr = u32::from_le_bytes(input[0..4].try_into().expect("4 bytes"));
    let port = u32::from_le_bytes(input[4..8].try_into().expect("4 bytes"));
    let mut memory = input[8..].to_vec();
    let _ = wasmcell_engine::fuzzing::wasmedge_address(&mut memory, ptr, port);
});
