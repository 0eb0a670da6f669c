//! `wasmcell-bench registry [N]`: push and pull of a 5 MB and a 50 MB wasm image through a
//! local registry (Debian's docker-registry), `wasmcell push`/`pull` against `skopeo copy` of
//! the same OCI archive, medians of N runs, one run of the benchmark.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use wasmcell_e2e::{Registry, build_image, guest};

use crate::{ms, stats, timed};

/// `hello.wasm` grown to about `size` bytes with a custom section of incompressible bytes (from
/// `seed`), so the image is that big and still a valid module. Every push sends new content:
/// skopeo remembers where it pushed a blob and mounts it from there instead of uploading.
fn padded_wasm(size: usize, seed: u64, dir: &Path) -> Result<std::path::PathBuf> {
    let mut wasm = std::fs::read(guest("hello.wasm"))?;
    let name = b"bench-padding";
    let payload_len = size.saturating_sub(wasm.len());
    let mut section = Vec::with_capacity(payload_len + 16);
    leb128(name.len() as u64, &mut section);
    section.extend_from_slice(name);
    // xorshift: reproducible, incompressible.
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    section.extend((0..payload_len).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    wasm.push(0); // a custom section
    leb128(section.len() as u64, &mut wasm);
    wasm.extend_from_slice(&section);
    let path = dir.join(format!("padded-{}mb-{seed}.wasm", size >> 20));
    std::fs::write(&path, wasm)?;
    Ok(path)
}

fn leb128(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub fn registry(n: usize) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let registry = Registry::start()?;
    let wasmcell = wasmcell_e2e::wasmcell();
    let mut rows = Vec::new();
    for mb in [5, 50] {
        let mut samples: [Vec<Duration>; 4] = Default::default();
        for i in 0..n {
            let image = |seed: u64| -> Result<std::path::PathBuf> {
                let wasm = padded_wasm(mb << 20, seed, tmp.path())?;
                build_image(
                    &wasm,
                    &format!("bench.local/padded:{mb}-{seed}"),
                    tmp.path(),
                    &[],
                )
            };
            let (archive, skopeo_archive) = (image(2 * i as u64)?, image(2 * i as u64 + 1)?);
            // A fresh repository and store every run: nothing is already there.
            let ours = format!("{}/wasmcell-{mb}-{i}:latest", registry.addr);
            let theirs = format!("{}/skopeo-{mb}-{i}:latest", registry.addr);
            let store = tmp.path().join(format!("store-{mb}-{i}"));
            samples[0].push(timed(
                Command::new(&wasmcell).arg("push").arg(&archive).arg(&ours),
            )?);
            samples[1].push(timed(
                Command::new(&wasmcell)
                    .env("WASMCELL_STORE", &store)
                    .args(["pull", &ours]),
            )?);
            samples[2].push(timed(Command::new("skopeo").args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &format!("oci-archive:{}", skopeo_archive.display()),
                &format!("docker://{theirs}"),
            ]))?);
            samples[3].push(timed(Command::new("skopeo").args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{theirs}"),
                &format!(
                    "oci:{}:latest",
                    tmp.path().join(format!("skopeo-{mb}-{i}")).display()
                ),
            ]))?);
        }
        let [push, pull, skopeo_push, skopeo_pull] = samples;
        rows.push((format!("{mb} MB push"), stats(push), stats(skopeo_push)));
        rows.push((format!("{mb} MB pull"), stats(pull), stats(skopeo_pull)));
    }
    println!(
        "\npush and pull through a local registry (docker-registry 2.8), median of {n}, one run"
    );
    println!(
        "| {:<12} | {:>16} | {:>16} | {:>8} |",
        "what", "wasmcell", "skopeo copy", "ratio"
    );
    println!("|{:-<14}|{:->18}|{:->18}|{:->10}|", "", "", "", "");
    for (what, ours, skopeo) in rows {
        println!(
            "| {what:<12} | {:>16} | {:>16} | {:>7.2}x |",
            ms(ours.median),
            ms(skopeo.median),
            ours.median.as_secs_f64() / skopeo.median.as_secs_f64()
        );
    }
    Ok(())
}
