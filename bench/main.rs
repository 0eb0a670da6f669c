//! Benchmarks, each reported against a baseline measured in the same run on the same machine.
//!
//! `wasmcell-bench ctr-run [N]`: N interleaved `ctr run --rm` of the hello guest under our shim
//! and of busybox `echo` under runc, one private containerd.
//! `wasmcell-bench all [N]`: everything below at its defaults (N runs for ctr-run and cli).
//! `wasmcell-bench cli [N]`: `wasmcell run hello.wasm` with a cold and a warm compile cache,
//! against `wasmtime run` with its cache warm.
//! `wasmcell-bench cold [N] [SECONDS]`: real apps (the Python and JS Spin apps, 37 and 12 MB)
//! from an empty, a warm and a stale compile cache, first 200 and memory (see `cold.rs`).
//! `wasmcell-bench density [N]`: PSS of N idle containers (ours: standalone and grouped in one pod;
//! runc + busybox `sleep`), every process each adds.
//! `wasmcell-bench parallel [N]`: wall time of N `ctr run -d` started at once, ours vs runc, and
//! the CPU time each container took from `ctr`, containerd and the runtime.
//! `wasmcell-bench http [SECONDS]`: requests per second and latency of the HTTP example (see
//! `http.rs`); `spin [SECONDS]`, what serving it as a Spin app costs; `slight [SECONDS]`, a
//! SpiderLightning app's router.
//! `wasmcell-bench stress [SECONDS]`: the HTTP example at c=200 with traps and loops mixed in
//! (see `stress.rs`).
//! `wasmcell-bench pod [N]`: Kubernetes pods through containerd's CRI plugin, ours against
//! runc's: start to running, start to first HTTP 200, PSS per idle pod, 50 at once (see
//! `pod.rs`).
//! `wasmcell-bench sandbox-cost OLD_WASMCELL [N]`: this build against an older one (e.g. before a
//! change of process model): `ctr run --rm` hello and PSS per idle container, each binary behind
//! its own private containerd, interleaved.
//!
//! Run through `bench/run.sh`, which builds everything first.

mod cold;
mod http;
mod pod;
mod registry;
mod soak;
mod stress;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use wasmcell_e2e::linux_image::{BUSYBOX_IMAGE, busybox_image};
use wasmcell_e2e::{Containerd, build_image, guest, wasmcell};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |at: usize| -> Result<usize> {
        args.get(at)
            .map(|n| n.parse())
            .transpose()
            .context("N must be a number")
            .map(|n| n.unwrap_or(30))
    };
    let seconds = |at: usize| -> Result<u32> {
        args.get(at)
            .map(|n| n.parse())
            .transpose()
            .context("SECONDS must be a number")
            .map(|n| n.unwrap_or(10))
    };
    match args.first().map(String::as_str).unwrap_or("all") {
        "ctr-run" => ctr_run(count(1)?),
        "cli" => cli(count(1)?),
        "cold" => cold::cold(
            args.get(1).map_or(Ok(3), |n| n.parse()).context("N")?,
            seconds(2)?,
        ),
        "all" => {
            let n = count(1)?;
            ctr_run(n)?;
            cli(n)?;
            density(50)?;
            parallel(50)?;
            pod::pod(n)?;
            http::http(10)?;
            http::wasmedge_http(10)?;
            registry::registry(5)
        }
        "density" => density(count(1)?),
        "parallel" => parallel(count(1)?),
        "pod" => pod::pod(count(1)?),
        "http" => http::http(seconds(1)?),
        "spin" => http::spin(seconds(1)?),
        "slight" => http::slight(seconds(1)?),
        "soak" => soak::soak(count(1)?),
        "soak-exec" => soak::soak_exec(count(1)?),
        "soak-pod" => soak::soak_pod(seconds(1)?.into()),
        "stress" => stress::stress(args.get(1).map_or(Ok(60), |s| s.parse())?),
        "wasmedge-http" => http::wasmedge_http(seconds(1)?),
        "registry" => registry::registry(count(1)?.min(10)),
        "native-http" => http::native(args.get(1).context("native-http PORT")?.parse()?),
        "sandbox-cost" => {
            let old = args
                .get(1)
                .context("sandbox-cost needs the older wasmcell binary")?;
            sandbox_cost(Path::new(old), count(2)?)
        }
        other => bail!(
            "unknown benchmark {other}: use ctr-run, cli, cold, all, density, parallel, pod, soak, soak-exec, soak-pod, stress, http, spin, slight, wasmedge-http, registry or sandbox-cost"
        ),
    }
}

/// Runs `command` and returns how long it took; fails if it fails. Waits with a blocking
/// `wait`, not the test harness's polling loop, whose 5 ms steps would quantize the timings.
fn timed(command: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {command:?}"))?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

struct Stats {
    median: Duration,
    p10: Duration,
    p90: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn table(title: &str, n: usize, rows: &[(&str, Stats)]) {
    let baseline = rows[0].1.median.as_secs_f64();
    println!("\n{title} (n = {n} each, interleaved)");
    println!(
        "| {:<40} | {:>10} | {:>10} | {:>10} | {:>8} |",
        "what", "median", "p10", "p90", "ratio"
    );
    println!(
        "|{:-<42}|{:->12}|{:->12}|{:->12}|{:->10}|",
        "", "", "", "", ""
    );
    for (name, s) in rows {
        let ratio = s.median.as_secs_f64() / baseline;
        println!(
            "| {name:<40} | {:>10} | {:>10} | {:>10} | {ratio:>7.2}x |",
            ms(s.median),
            ms(s.p10),
            ms(s.p90)
        );
    }
}

fn ctr_run(n: usize) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let containerd = bench_containerd(tmp.path())?;

    let ours = |i: usize| run_hello(&containerd, &format!("wasm-{i}"));
    let runc = |i: usize| {
        timed(
            containerd
                .ctr_command()
                .args(["run", "--rm", BUSYBOX_IMAGE, &format!("runc-{i}")]),
        )
    };
    // Warm-up: the first wasm run compiles into the cache, the first runc run pages in binaries.
    ours(1000)?;
    runc(1000)?;
    let (mut wasm, mut native) = (Vec::new(), Vec::new());
    for i in 0..n {
        wasm.push(ours(i)?);
        native.push(runc(i)?);
    }
    table(
        "ctr run --rm: hello (exits at once), same containerd 1.7",
        n,
        &[
            ("runc + busybox echo (baseline)", stats(native)),
            ("wasmcell shim + hello.wasm", stats(wasm)),
        ],
    );
    Ok(())
}

/// `wasmcell run hello.wasm` with a warm and a cold compile cache, against `wasmtime run` of
/// the same module with its own cache warm (`$WASMTIME_CLI`, from scripts/wasmtime-cli.sh).
fn cli(n: usize) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let hello = guest("hello.wasm");
    let run_with = |cache: &Path| {
        timed(
            Command::new(wasmcell())
                .arg("run")
                .arg("--cache-dir")
                .arg(cache)
                .arg(&hello),
        )
    };
    let wasmtime = std::env::var_os("WASMTIME_CLI");
    // wasmtime keeps its cache under $HOME/.cache unless told; give it a private, warm one.
    let wasmtime_cache = tmp.path().join("wasmtime-cache.toml");
    std::fs::write(
        &wasmtime_cache,
        format!(
            "[cache]\ndirectory = \"{}\"\n",
            tmp.path().join("wasmtime-cache").display()
        ),
    )?;
    let wasmtime_run = || -> Option<Result<Duration>> {
        let wasmtime = wasmtime.as_ref()?;
        Some(timed(
            Command::new(wasmtime)
                .arg("run")
                .arg("-C")
                .arg("cache=y")
                .arg("-C")
                .arg(format!("cache-config={}", wasmtime_cache.display()))
                .arg(&hello),
        ))
    };
    let warm_cache = tmp.path().join("warm");
    run_with(&warm_cache)?;
    wasmtime_run().transpose()?;
    let (mut cold, mut warm, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        if let Some(took) = wasmtime_run() {
            baseline.push(took?);
        }
        cold.push(run_with(&tmp.path().join(format!("cold-{i}")))?);
        warm.push(run_with(&warm_cache)?);
    }
    let mut rows = Vec::new();
    if baseline.is_empty() {
        println!("(no $WASMTIME_CLI: run through bench/run.sh for the wasmtime run baseline)");
    } else {
        rows.push(("wasmtime run, cache warm (baseline)", stats(baseline)));
    }
    rows.push(("wasmcell run, cache warm", stats(warm)));
    rows.push(("wasmcell run, cache cold (compiles)", stats(cold)));
    table(
        &format!(
            "run hello.wasm ({} KB) with no container engine",
            std::fs::metadata(&hello)?.len() / 1024
        ),
        n,
        &rows,
    );
    Ok(())
}

/// The proportional set size of a process, in KiB: its own pages plus its share of pages it
/// maps together with others (the binary, shared libraries, cache artifacts).
fn pss_kib(pid: u32) -> Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let line = rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .context("no Pss in smaps_rollup")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("Pss value")?
        .parse()?)
}

fn sandbox_cost(old: &Path, n: usize) -> Result<()> {
    const IDLE: usize = 10;
    let tmp = tempfile::tempdir()?;
    let new_cd = Containerd::start()?;
    let old_cd = Containerd::start_with(old, &[])?;
    for containerd in [&new_cd, &old_cd] {
        import_guests(containerd, tmp.path())?;
    }
    run_hello(&new_cd, "warm")?;
    run_hello(&old_cd, "warm")?;
    let (mut new, mut older) = (Vec::new(), Vec::new());
    for i in 0..n {
        older.push(run_hello(&old_cd, &format!("h{i}"))?);
        new.push(run_hello(&new_cd, &format!("h{i}"))?);
    }
    table(
        "ctr run --rm hello: older build vs this build",
        n,
        &[("older build", stats(older)), ("this build", stats(new))],
    );

    println!(
        "\nidle containers ({IDLE} sleepers each): PSS of every process wasmcell adds (shims, sandboxes)"
    );
    println!(
        "| {:<40} | {:>10} | {:>16} |",
        "what", "processes", "PSS / container"
    );
    println!("|{:-<42}|{:->12}|{:->18}|", "", "", "");
    for (name, containerd) in [("older build", &old_cd), ("this build", &new_cd)] {
        for i in 0..IDLE {
            let args = idle_container(&format!("idle{i}"), true, None);
            timed(containerd.ctr_command().args(&args))?;
        }
        std::thread::sleep(Duration::from_secs(2));
        let pids = task_processes(containerd)?;
        let total: u64 = pids.iter().map(|&pid| pss_kib(pid)).sum::<Result<u64>>()?;
        println!(
            "| {name:<40} | {:>10} | {:>12} KiB |",
            pids.len(),
            total / IDLE as u64
        );
    }
    Ok(())
}

/// A containerd with our hello and sleeper images and a busybox image for runc.
fn bench_containerd(tmp: &Path) -> Result<Containerd> {
    let containerd = Containerd::start()?;
    import_guests(&containerd, tmp)?;
    containerd.import(&busybox_image(tmp)?)?;
    Ok(containerd)
}

/// Builds and imports our hello and sleeper images.
fn import_guests(containerd: &Containerd, tmp: &Path) -> Result<()> {
    for name in ["hello", "sleeper"] {
        let tag = format!("bench.local/{name}:latest");
        containerd.import(&build_image(
            &guest(&format!("{name}.wasm")),
            &tag,
            tmp,
            &[],
        )?)?;
    }
    Ok(())
}

/// `ctr run --rm` of the hello image under our shim, timed.
fn run_hello(containerd: &Containerd, id: &str) -> Result<Duration> {
    timed(containerd.ctr_command().args([
        "run",
        "--rm",
        "--runtime",
        "io.containerd.wasmtime.v1",
        "bench.local/hello:latest",
        id,
    ]))
}

/// `ctr run -d` arguments for container `id`: our sleeper (optionally in a pod), or busybox sleep.
fn idle_container(id: &str, wasm: bool, pod: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into(), "-d".into()];
    if let Some(pod) = pod {
        args.extend([
            "--annotation".into(),
            format!("io.kubernetes.cri.sandbox-id={pod}"),
        ]);
    }
    if wasm {
        args.extend(
            [
                "--runtime",
                "io.containerd.wasmtime.v1",
                "bench.local/sleeper:latest",
                id,
            ]
            .map(String::from),
        );
    } else {
        args.extend([BUSYBOX_IMAGE, id, "/bin/sleep", "3600"].map(String::from));
    }
    args
}

/// Every process serving the containerd's tasks: shims (ours or runc's, found by address) and
/// the task processes (our sandboxes, or the containers' own processes under runc).
fn task_processes(containerd: &Containerd) -> Result<Vec<u32>> {
    let mut pids: Vec<u32> = containerd
        .shim_pids()
        .into_iter()
        .map(|p| p as u32)
        .collect();
    pids.extend(containerd.task_pids()?.into_iter().map(|(_, pid, _)| pid));
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn density(n: usize) -> Result<()> {
    ensure!(n >= 2, "density needs at least 2 containers");
    let tmp = tempfile::tempdir()?;
    let mut details = String::new();
    println!("\n{n} idle containers: PSS of every process each runtime adds");
    println!(
        "| {:<40} | {:>10} | {:>14} | {:>16} | {:>16} | {:>10} |",
        "what", "processes", "total PSS", "per container", "each after 1st", "wakeups/s"
    );
    println!(
        "|{:-<42}|{:->12}|{:->16}|{:->18}|{:->18}|{:->12}|",
        "", "", "", "", "", ""
    );
    for (name, wasm, pod) in [
        ("runc + busybox sleep (baseline)", false, None),
        ("wasmcell, one shim each", true, None),
        ("wasmcell, one pod (grouped)", true, Some("pod")),
    ] {
        let containerd = bench_containerd(tmp.path())?;
        let settled_pss = || -> Result<(usize, u64)> {
            // Let the starts' transient allocations be freed before measuring.
            std::thread::sleep(Duration::from_secs(2));
            let pids = task_processes(&containerd)?;
            let total = pids.iter().map(|&pid| pss_kib(pid)).sum::<Result<u64>>()?;
            Ok((pids.len(), total))
        };
        timed(
            containerd
                .ctr_command()
                .args(idle_container("idle0", wasm, pod)),
        )?;
        let (_, first) = settled_pss()?;
        for i in 1..n {
            let args = idle_container(&format!("idle{i}"), wasm, pod);
            timed(containerd.ctr_command().args(&args))?;
        }
        if wasm && pod.is_none() {
            // The last one started: its image was compiled long before, as on a busy node.
            let (sandbox, _) = containerd
                .task(&format!("idle{}", n - 1))?
                .context("the last container's task")?;
            details = breakdown(&[parent_of(sandbox)?, sandbox])?;
        }
        let (processes, total) = settled_pss()?;
        let pids = task_processes(&containerd)?;
        let before = context_switches(&pids)?;
        std::thread::sleep(Duration::from_secs(WAKEUP_WINDOW_S));
        let wakeups = context_switches(&pids)?.saturating_sub(before) / WAKEUP_WINDOW_S;
        println!(
            "| {name:<40} | {processes:>10} | {total:>10} KiB | {:>12} KiB | {:>12} KiB | {wakeups:>10} |",
            total / n as u64,
            total.saturating_sub(first) / (n as u64 - 1),
        );
    }
    print!("{details}");
    Ok(())
}

fn parent_of(pid: u32) -> Result<u32> {
    stat_field(&pid.to_string(), 4)
}

/// Field `number` (counted from 1, as proc(5) does) of `/proc/PID/stat`, from the state (3) on.
fn stat_field(pid: &str, number: usize) -> Result<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its closing paren do not.
    let after = &stat[stat.rfind(')').context("stat")? + 1..];
    let field = after.split_whitespace().nth(number - 3);
    Ok(field
        .with_context(|| format!("no field {number} in {stat}"))?
        .parse()?)
}

/// How long idle containers are watched for wakeups.
const WAKEUP_WINDOW_S: u64 = 5;

/// Context switches so far of every thread of `pids`: each is a wakeup of an idle process.
fn context_switches(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let status = std::fs::read_to_string(task?.path().join("status"))?;
            total += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(total)
}

/// Where one container's memory goes: each process's mappings by kind, PSS and private dirty
/// pages (what the process alone costs), from `/proc/PID/smaps`.
fn breakdown(pids: &[u32]) -> Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(
        out,
        "\none standalone container (shim, then sandbox): where its memory goes"
    )?;
    writeln!(
        out,
        "| {:<8} | {:<42} | {:>10} | {:>14} |",
        "pid", "mappings", "PSS", "private dirty"
    )?;
    writeln!(out, "|{:-<10}|{:-<44}|{:->12}|{:->16}|", "", "", "", "")?;
    for &pid in pids {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
        let mut kinds: Vec<(&str, u64, u64)> = Vec::new();
        let mut at = 0;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields
                .first()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                let kind = mapping_kind(fields.get(5).copied().unwrap_or(""), &exe);
                at = kinds
                    .iter()
                    .position(|(k, _, _)| *k == kind)
                    .unwrap_or_else(|| {
                        kinds.push((kind, 0, 0));
                        kinds.len() - 1
                    });
                continue;
            }
            let kib = || {
                fields
                    .get(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            match fields.first() {
                Some(&"Pss:") => kinds[at].1 += kib(),
                Some(&"Private_Dirty:") => kinds[at].2 += kib(),
                _ => {}
            }
        }
        kinds.sort_by_key(|(_, pss, _)| std::cmp::Reverse(*pss));
        for (kind, pss, dirty) in kinds {
            writeln!(
                out,
                "| {pid:<8} | {kind:<42} | {pss:>6} KiB | {dirty:>10} KiB |"
            )?;
        }
    }
    Ok(out)
}

/// The kind of an smaps mapping, from its path.
fn mapping_kind(path: &str, exe: &Path) -> &'static str {
    match path {
        "" => "anonymous (malloc arenas, thread stacks)",
        "[heap]" => "heap",
        "[stack]" => "main thread stack",
        p if Path::new(p) == exe => "the wasmcell binary",
        p if p.ends_with(".cwasm") => "compiled guest (cache, mmapped)",
        p if p.contains(".so") => "shared libraries",
        _ => "other (vdso, vvar, ...)",
    }
}

fn parallel(n: usize) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cpus = std::thread::available_parallelism()?.get();
    println!("\n{n} `ctr run -d` started at once: wall time until all have returned, and CPU time");
    println!(
        "per container: the `ctr` clients', containerd's, and the runtime's (everything else the"
    );
    println!(
        "machine ran: shims and sandboxes, or runc and the containers' processes). The floor is"
    );
    println!("the wall time `ctr` and containerd alone would need on this machine's {cpus} CPUs.");
    println!(
        "| {:<32} | {:>10} | {:>7} | {:>9} | {:>10} | {:>9} | {:>9} |",
        "what", "wall", "ratio", "ctr CPU", "containerd", "runtime", "floor"
    );
    println!(
        "|{:-<34}|{:->12}|{:->9}|{:->11}|{:->12}|{:->11}|{:->11}|",
        "", "", "", "", "", "", ""
    );
    let mut baseline = None;
    for (name, wasm) in [
        ("runc + busybox sleep (baseline)", false),
        ("wasmcell sleeper", true),
    ] {
        let containerd = bench_containerd(tmp.path())?;
        let before = CpuTicks::now(&containerd)?;
        let started = Instant::now();
        let children: Vec<_> = (0..n)
            .map(|i| {
                containerd
                    .ctr_command()
                    .args(idle_container(&format!("p{i}"), wasm, None))
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for child in children {
            let out = child.wait_with_output()?;
            ensure!(
                out.status.success(),
                "ctr run -d failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let wall = started.elapsed();
        let used = CpuTicks::now(&containerd)?.since(&before);
        let ratio = wall.as_secs_f64() / *baseline.get_or_insert(wall.as_secs_f64());
        let per_container = |ticks: u64| format!("{:.1} ms", ticks as f64 * TICK_MS / n as f64);
        let floor = (used.ctr + used.containerd) as f64 * TICK_MS / cpus as f64;
        println!(
            "| {name:<32} | {:>10} | {ratio:>6.2}x | {:>9} | {:>10} | {:>9} | {:>6.0} ms |",
            ms(wall),
            per_container(used.ctr),
            per_container(used.containerd),
            per_container(used.all.saturating_sub(used.ctr + used.containerd)),
            floor,
        );
    }
    Ok(())
}

/// Milliseconds per clock tick: `/proc` counts CPU time in ticks of 1/100 s (`USER_HZ`, fixed
/// at 100 for user space on Linux).
const TICK_MS: f64 = 10.0;

/// CPU time used so far, in clock ticks: by this process's reaped children (the `ctr` clients),
/// by containerd itself, and by the whole machine.
struct CpuTicks {
    ctr: u64,
    containerd: u64,
    all: u64,
}

impl CpuTicks {
    fn now(containerd: &Containerd) -> Result<CpuTicks> {
        // utime and stime are fields 14 and 15 of /proc/PID/stat, cutime and cstime 16 and 17.
        let fields = |pid: &str, from: usize| -> Result<u64> {
            Ok(u64::from(stat_field(pid, from)?) + u64::from(stat_field(pid, from + 1)?))
        };
        // The first line of /proc/stat: user nice system idle iowait irq softirq steal ...
        let stat = std::fs::read_to_string("/proc/stat")?;
        let all: Vec<u64> = stat
            .lines()
            .next()
            .context("/proc/stat")?
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        Ok(CpuTicks {
            ctr: fields("self", 16)?,
            containerd: fields(&containerd.pid().to_string(), 14)?,
            all: all[0] + all[1] + all[2] + all[5] + all[6],
        })
    }

    fn since(&self, before: &CpuTicks) -> CpuTicks {
        CpuTicks {
            ctr: self.ctr - before.ctr,
            containerd: self.containerd - before.containerd,
            all: self.all - before.all,
        }
    }
}
