//! `wasmcell-bench soak [N]`: N `ctr run --rm` cycles of hello, N `ctr run -d` + kill + delete
//! cycles of the sleeper, and N/5 pods through CRI 20 at a time; each for our shim and for
//! runc (busybox; pause + busybox for pods) in the same run. Before and after each phase,
//! what the containerd and its shims hold on the machine (see `Footprint`): every count but
//! containerd's own descriptors and memory must come back to where it was.

use anyhow::{Result, ensure};
use wasmcell_e2e::cri::Cri;
use wasmcell_e2e::linux_image::{BUSYBOX_IMAGE, busybox_image};
use wasmcell_e2e::soak::{pods, rate, run_kill_delete, run_rm, settled};
use wasmcell_e2e::{CRI_NAMESPACE, Footprint, build_image, guest};

const WASMTIME: Option<&str> = Some("io.containerd.wasmtime.v1");

/// One phase's rates, ours and runc's.
struct Row {
    what: &'static str,
    cycles: usize,
    ours: f64,
    runc: f64,
}

pub fn soak(n: usize) -> Result<()> {
    ensure!(n >= 5, "soak needs at least 5 cycles");
    let tmp = tempfile::tempdir()?;
    let containerd = crate::bench_containerd(tmp.path())?;
    let namespace = containerd.namespace().to_owned();
    let footprint = || Footprint::of(&containerd, &namespace);
    // Warm-up: the first run compiles into the cache and pages binaries in.
    run_rm(&containerd, WASMTIME, "bench.local/hello:latest", &[], 1)?;
    run_rm(&containerd, None, BUSYBOX_IMAGE, &[], 1)?;
    let start = settled(&footprint()?, footprint)?;
    let mut rows = Vec::new();

    let ours = run_rm(&containerd, WASMTIME, "bench.local/hello:latest", &[], n)?;
    let runc = run_rm(&containerd, None, BUSYBOX_IMAGE, &[], n)?;
    rows.push(Row {
        what: "ctr run --rm (hello / busybox echo)",
        cycles: n,
        ours: rate(n, ours),
        runc: rate(n, runc),
    });
    let sleeper = "bench.local/sleeper:latest";
    let ours = run_kill_delete(&containerd, WASMTIME, sleeper, &[], n)?;
    let runc = run_kill_delete(&containerd, None, BUSYBOX_IMAGE, &["/bin/sleep", "3600"], n)?;
    rows.push(Row {
        what: "ctr run -d, kill, delete (sleeper)",
        cycles: n,
        ours: rate(n, ours),
        runc: rate(n, runc),
    });
    let end = settled(&start, footprint)?;
    report("containerd", &start, &end);

    let cri = Cri::start()?;
    cri.containerd().import(&build_image(
        &guest("sleeper.wasm"),
        sleeper,
        tmp.path(),
        &[],
    )?)?;
    cri.containerd().import(&busybox_image(tmp.path())?)?;
    let cri_footprint = || Footprint::of(cri.containerd(), CRI_NAMESPACE);
    let busybox = (BUSYBOX_IMAGE, &["/bin/sleep", "3600"][..]);
    pods(&cri, "wasmtime", (sleeper, &[]), 1, 1)?;
    pods(&cri, "runc", busybox, 1, 1)?;
    let start = settled(&cri_footprint()?, cri_footprint)?;
    let count = (n / 5).max(1);
    let ours = pods(&cri, "wasmtime", (sleeper, &[]), count, 20)?;
    let runc = pods(&cri, "runc", busybox, count, 20)?;
    rows.push(Row {
        what: "pods through CRI, 20 at a time",
        cycles: count,
        ours: rate(count, ours),
        runc: rate(count, runc),
    });
    let end = settled(&start, cri_footprint)?;
    report("containerd with CRI", &start, &end);

    println!("\nsoak: cycles per second, one run, same containerd 1.7");
    println!(
        "| {:<40} | {:>7} | {:>11} | {:>11} | {:>8} |",
        "cycle", "cycles", "wasmcell/s", "runc/s", "ratio"
    );
    println!(
        "|{:-<42}|{:->9}|{:->13}|{:->13}|{:->10}|",
        "", "", "", "", ""
    );
    for row in rows {
        println!(
            "| {:<40} | {:>7} | {:>11.1} | {:>11.1} | {:>7.2}x |",
            row.what,
            row.cycles,
            row.ours,
            row.runc,
            row.ours / row.runc
        );
    }
    Ok(())
}

/// Prints what was held before and after: leaks are 0 (settled() failed otherwise).
fn report(what: &str, before: &Footprint, after: &Footprint) {
    println!(
        "\n{what}: left behind: none (shims {} -> {}, sandboxes {} -> {}, mounts {} -> {}, cgroups {} -> {}, netns {} -> {}, FIFOs {} -> {}, bundles {} -> {}, shim sockets {} -> {})",
        before.shims,
        after.shims,
        before.sandboxes,
        after.sandboxes,
        before.mounts,
        after.mounts,
        before.cgroups,
        after.cgroups,
        before.netns,
        after.netns,
        before.fifos,
        after.fifos,
        before.bundles,
        after.bundles,
        before.sockets,
        after.sockets
    );
    println!(
        "{what}'s own: open fds {} -> {}, RSS {} -> {} KiB",
        before.containerd_fds,
        after.containerd_fds,
        before.containerd_rss_kib,
        after.containerd_rss_kib
    );
}
