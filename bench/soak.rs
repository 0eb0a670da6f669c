//! `wasmcell-bench soak [N]`: N `ctr run --rm` cycles of hello, N `ctr run -d` + kill + delete
//! cycles of the sleeper, N `ctr task exec` into a running container counting the lines lost,
//! and N/5 pods through CRI 20 at a time; each for our shim and for runc (busybox; pause +
//! busybox for pods) in the same run. Then one pod of 10 HTTP servers, loaded alone and while
//! an 11th container of the pod misbehaves (`soak-pod [SECONDS]` runs only that, `soak-exec
//! [N]` only the execs). Before and after each phase,
//! what the containerd and its shims hold on the machine (see `Footprint`): every count but
//! containerd's own descriptors and memory must come back to where it was.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use wasmcell_e2e::cri::Cri;
use wasmcell_e2e::linux_image::{BUSYBOX_IMAGE, busybox_image};
use wasmcell_e2e::soak::{pods, rate, run_kill_delete, run_rm, settled};
use wasmcell_e2e::{CRI_NAMESPACE, Containerd, Footprint, build_image, free_port, guest, wait_for};

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
    execs(&containerd, n)?;
    misbehaving_pod(&containerd, 10, 10)?;
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

/// `wasmcell-bench soak-exec [N]`: only the exec cycles, on a containerd of their own.
pub fn soak_exec(n: usize) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    execs(&crate::bench_containerd(tmp.path())?, n)
}

/// `wasmcell-bench soak-pod [SECONDS]`: only the misbehaving pod, SECONDS per round.
pub fn soak_pod(seconds: u64) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    misbehaving_pod(&crate::bench_containerd(tmp.path())?, 10, seconds)
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

/// What `exec_cycles` saw: time taken, lines expected, lines lost, execs that failed.
struct Execs {
    took: std::time::Duration,
    lines: usize,
    lost: usize,
    failed: usize,
}

/// `n` `ctr task exec` into a running container (`init` under `runtime`), each of `exec`, a
/// command printing `expected`; counts the expected lines that did not reach `ctr`.
fn exec_cycles(
    containerd: &Containerd,
    runtime: Option<&str>,
    (image, init): (&str, &[&str]),
    exec: &[&str],
    expected: &str,
    n: usize,
) -> Result<Execs> {
    let id = "soak-exec";
    let mut args = vec!["run", "-d"];
    if let Some(runtime) = runtime {
        args.extend(["--runtime", runtime]);
    }
    args.extend([image, id]);
    args.extend(init);
    containerd.ctr(&args)?.success()?;
    containerd.running(id)?;
    let want: Vec<&str> = expected.lines().collect();
    let (mut lost, mut failed) = (0, 0);
    let began = Instant::now();
    for i in 0..n {
        let exec_id = format!("e{i}");
        let mut args = vec!["task", "exec", "--exec-id", &exec_id, id];
        args.extend(exec);
        let out = containerd.ctr(&args)?;
        let got: Vec<&str> = out.stdout.lines().collect();
        lost += want.iter().filter(|line| !got.contains(line)).count();
        if out.code != Some(0) {
            failed += 1;
        }
    }
    let took = began.elapsed();
    containerd.remove(id)?;
    Ok(Execs {
        took,
        lines: want.len() * n,
        lost,
        failed,
    })
}

/// Phase: `n` execs of a command printing two known lines, ours (the sleeper's `0`: "sleeper
/// started", "sleeper done") into a running sleeper, runc's (`sh -c 'echo ...; echo ...'`) into
/// busybox `sleep`. Every line must arrive.
pub fn execs(containerd: &Containerd, n: usize) -> Result<()> {
    let expected = "sleeper started\nsleeper done\n";
    let ours = exec_cycles(
        containerd,
        WASMTIME,
        ("bench.local/sleeper:latest", &[]),
        &["/sleeper.wasm", "0"],
        expected,
        n,
    )?;
    let runc = exec_cycles(
        containerd,
        None,
        (BUSYBOX_IMAGE, &["/bin/sleep", "3600"]),
        &["/bin/sh", "-c", "echo sleeper started; echo sleeper done"],
        expected,
        n,
    )?;
    println!("\nexec cycles: {n} `ctr task exec` into one running container, two lines each");
    println!("| runtime | execs/s | lines lost | execs failed |");
    println!("| --- | --- | --- | --- |");
    for (name, execs) in [
        ("wasmcell (sleeper 0)", &ours),
        ("runc (busybox sh)", &runc),
    ] {
        println!(
            "| {name} | {:.1} | {} of {} | {} |",
            rate(n, execs.took),
            execs.lost,
            execs.lines,
            execs.failed
        );
    }
    ensure!(
        ours.lost == 0 && ours.failed == 0,
        "ours lost {} lines, {} execs failed",
        ours.lost,
        ours.failed
    );
    Ok(())
}

/// What the pod's servers answered in one round.
struct Served {
    ok: usize,
    failed: usize,
    latencies: Vec<Duration>,
    took: Duration,
}

impl Served {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let at = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[at].as_secs_f64() * 1000.0
    }
}

/// One `GET /` on a new connection, with a 2 s deadline for each step; whether it got a 200.
fn get(port: u16) -> bool {
    use std::io::{Read, Write};
    let deadline = Duration::from_secs(2);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, deadline) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(deadline));
    let _ = stream.set_write_timeout(Some(deadline));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).is_ok() && reply.starts_with(b"HTTP/1.1 200")
}

/// Each of `ports` gets requests one after another from its own client for `seconds`.
fn serve_round(ports: &[u16], seconds: u64) -> Served {
    let began = Instant::now();
    let until = began + Duration::from_secs(seconds);
    let clients: Vec<_> = ports
        .iter()
        .map(|&port| {
            std::thread::spawn(move || {
                let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
                while Instant::now() < until {
                    let sent = Instant::now();
                    if get(port) {
                        ok += 1;
                        latencies.push(sent.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed, latencies)
            })
        })
        .collect();
    let mut served = Served {
        ok: 0,
        failed: 0,
        latencies: Vec::new(),
        took: Duration::ZERO,
    };
    for client in clients {
        let (ok, failed, latencies) = client.join().expect("client thread");
        served.ok += ok;
        served.failed += failed;
        served.latencies.extend(latencies);
    }
    served.latencies.sort();
    served.took = began.elapsed();
    served
}

/// Phase: one pod (one shim, one sandbox process) of `servers` HTTP servers (the HTTP
/// example, each on its own loopback port in the host's network), loaded for `seconds` by one
/// sequential client per server; then again while a container of the same pod misbehaves
/// (`hostile spin`: a guest spinning without a CPU limit, then `hostile alloc` to its 64 MiB
/// limit over and over). Reports the servers' success rate and latency in both rounds.
pub fn misbehaving_pod(containerd: &Containerd, servers: usize, seconds: u64) -> Result<()> {
    const POD: &str = "io.kubernetes.cri.sandbox-id=soak-pod";
    let tmp = tempfile::tempdir()?;
    for (wasm, tag) in [
        ("hello-http.wasm", "bench.local/hello-http:latest"),
        ("hostile.wasm", "bench.local/hostile:latest"),
    ] {
        containerd.import(&build_image(&guest(wasm), tag, tmp.path(), &[])?)?;
    }
    let mut ports = Vec::new();
    for i in 0..servers {
        let port = free_port()?;
        let addr = format!("WASMCELL_HTTP_ADDR=127.0.0.1:{port}");
        let id = format!("web{i}");
        containerd
            .run_wasm(
                &["-d", "--net-host", "--annotation", POD, "--env", &addr],
                "bench.local/hello-http:latest",
                &id,
                &[],
            )?
            .success()?;
        containerd.running(&id)?;
        wait_for(&format!("{id} to answer"), || Ok(get(port)))?;
        ports.push(port);
    }
    let calm = serve_round(&ports, seconds);
    let hostile = "bench.local/hostile:latest";
    containerd
        .run_wasm(
            &["-d", "--net-host", "--annotation", POD],
            hostile,
            "spinner",
            &["/hostile.wasm", "spin"],
        )?
        .success()?;
    containerd.running("spinner")?;
    let spinning = serve_round(&ports, seconds);
    containerd.remove("spinner")?;
    // A guest that hits its memory limit (137, a TaskOOM) again and again while they serve.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs = {
        let stop = stop.clone();
        let namespace = containerd.namespace().to_owned();
        let address = containerd.dir().join("containerd.sock");
        std::thread::spawn(move || -> Result<usize> {
            let mut ended_137 = 0;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new(wasmcell_e2e::tools().join("usr/bin/ctr"))
                    .arg("--address")
                    .arg(&address)
                    .args(["--namespace", &namespace, "run", "--rm", "--net-host"])
                    .args([
                        "--runtime",
                        "io.containerd.wasmtime.v1",
                        "--annotation",
                        POD,
                    ])
                    .args(["--memory-limit", "67108864", hostile, &format!("hog{i}")])
                    .args(["/hostile.wasm", "alloc"])
                    .stdin(std::process::Stdio::null())
                    .output()?;
                if out.status.code() == Some(137) {
                    ended_137 += 1;
                }
                i += 1;
            }
            Ok(ended_137)
        })
    };
    let leaking = serve_round(&ports, seconds);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ooms = hogs.join().expect("hog thread")?;
    for i in 0..servers {
        containerd.remove(&format!("web{i}"))?;
    }

    println!(
        "\none pod, {servers} HTTP servers (hello-http) each loaded by one sequential client for {seconds} s per round"
    );
    println!("| round | requests ok | failed | success | req/s | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, served) in [
        ("the 10 alone", &calm),
        ("+ a guest spinning, no CPU limit", &spinning),
        (
            &*format!("+ a guest hitting its 64 MiB limit ({ooms} x 137)"),
            &leaking,
        ),
    ] {
        let total = served.ok + served.failed;
        println!(
            "| {name} | {} | {} | {:.2}% | {:.0} | {:.2} | {:.2} |",
            served.ok,
            served.failed,
            100.0 * served.ok as f64 / total.max(1) as f64,
            served.ok as f64 / served.took.as_secs_f64(),
            served.percentile(0.5),
            served.percentile(0.99)
        );
    }
    Ok(())
}
