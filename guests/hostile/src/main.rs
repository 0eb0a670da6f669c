//! Misbehaves on purpose, to test that limits hold and nothing else is affected.
//!
//! `alloc MIB` allocates (and touches) MIB mebibytes, printing each 16; `alloc` alone never
//! stops. `spin` loops forever without a host call. `recurse` overflows the stack. `flood MIB`
//! writes MIB mebibytes to stdout as fast as it can. `sock` calls WASI's `sock_recv` on stdin,
//! which wasmtime's WASI does not implement (and logs a warning about, on the host's side).
//! `files PATH [SPARE]` opens PATH again and again until the host refuses (each open holds one
//! of the sandbox's descriptors), closes SPARE of them again, prints how many it holds, and
//! keeps them forever.
//! `after PATH MODE...` waits until PATH exists, then does MODE: a test's cue.

use std::io::Write;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "after") && args.len() > 2 {
        let cue = std::path::PathBuf::from(&args[1]);
        while !cue.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        args.drain(..2);
    }
    let number = |i: usize| args.get(i).map(|n| n.parse::<usize>().expect("a number"));
    match args.first().map(String::as_str) {
        Some("alloc") => {
            let limit = number(1);
            let mut kept = Vec::new();
            while limit.is_none_or(|limit| kept.len() < limit) {
                kept.push(vec![1u8; 1 << 20]);
                if kept.len() % 16 == 0 {
                    println!("allocated {} MiB", kept.len());
                }
            }
            println!("done: {} MiB", kept.len());
        }
        Some("spin") => {
            println!("spinning");
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        Some("recurse") => {
            println!("recursing");
            println!("depth {}", recurse(0));
        }
        Some("flood") => {
            let chunk = vec![b'x'; 1 << 20];
            let mut out = std::io::stdout().lock();
            for _ in 0..number(1).unwrap_or(100) {
                out.write_all(&chunk).expect("stdout");
            }
        }
        Some("sock") => {
            let mut byte = 0u8;
            let buffer = [Iovec {
                buf: &mut byte,
                len: 1,
            }];
            let (mut received, mut flags) = (0usize, 0u16);
            // SAFETY: the buffer list and the out-parameters are live locals of the right types.
            let errno = unsafe { sock_recv(0, buffer.as_ptr(), 1, 0, &mut received, &mut flags) };
            eprintln!("sock_recv: errno {errno}");
        }
        Some("files") => {
            let path = args.get(1).expect("files PATH");
            let mut held = Vec::new();
            let error = loop {
                match std::fs::File::open(path) {
                    Ok(file) => held.push(file),
                    Err(error) => break error,
                }
            };
            held.truncate(held.len().saturating_sub(number(2).unwrap_or(0)));
            println!("holding {} files: {error}", held.len());
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        _ => eprintln!(
            "usage: hostile [after PATH] alloc [MIB] | spin | recurse | flood [MIB] | sock | files PATH [SPARE]"
        ),
    }
}

/// Recursion that keeps its state in wasm locals (not the shadow stack in linear memory), so
/// it exhausts the engine's call stack rather than running off the end of memory.
fn recurse(depth: u64) -> u64 {
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    std::hint::black_box(recurse(depth + 1)) + 1
}

/// WASI's `iovec`.
#[repr(C)]
struct Iovec {
    buf: *mut u8,
    len: usize,
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    /// WASI preview 1's `sock_recv(fd, ri_data, ri_data_len, ri_flags, ro_datalen, ro_flags)`.
    fn sock_recv(
        fd: u32,
        iovs: *const Iovec,
        iovs_len: usize,
        flags: u16,
        received: *mut usize,
        out_flags: *mut u16,
    ) -> u16;
}
