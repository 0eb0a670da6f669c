//! The sandbox process and limits, under a real containerd: what a runc user expects of the
//! Linux boundary, and hostile guests that must end alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use wasmcell_e2e::{
    Containerd, POD_GROUP, RUNTIME, build_image, cgroup_dir, containerd_with, guest,
    pod_with_survivor, wait_for,
};

/// Whether this host has cgroup v2's one unified hierarchy (the test hosts are hybrid v1; the
/// cgroup v2 VM is not).
fn unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

fn status_field(pid: u32, field: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("no {field}"))?;
    Ok(line[field.len() + 1..].trim().to_owned())
}

fn namespace(pid: &str, kind: &str) -> Result<PathBuf> {
    Ok(std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))?)
}

#[test]
fn the_sandbox_runs_without_privilege_in_its_own_namespaces_and_cgroup() -> Result<()> {
    let (_tmp, containerd) =
        containerd_with(&[], &[("sleeper.wasm", "example.com/sleeper:latest")])?;
    containerd
        .run_wasm(
            &["-d", "--memory-limit", "67108864"],
            "example.com/sleeper:latest",
            "boxed",
            &[],
        )?
        .success()?;
    let pid = containerd.running("boxed")?;
    assert_ne!(pid, 0);
    assert_eq!(
        status_field(pid, "Uid")?
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0"; 4]
    );
    // Of the spec's capabilities only CAP_NET_BIND_SERVICE (bit 10) is kept, as servers on
    // ports below 1024 need it; nothing can be passed on.
    for caps in ["CapInh", "CapAmb"] {
        assert_eq!(status_field(pid, caps)?, "0000000000000000", "{caps}");
    }
    for caps in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status_field(pid, caps)?, "0000000000000400", "{caps}");
    }
    // A spec without it leaves none at all.
    containerd
        .run_wasm(
            &["-d", "--cap-drop", "CAP_NET_BIND_SERVICE"],
            "example.com/sleeper:latest",
            "no-caps",
            &[],
        )?
        .success()?;
    let bare = containerd.running("no-caps")?;
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(bare, caps)?, "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs")?, "1");
    assert_eq!(status_field(pid, "Seccomp")?, "2", "seccomp filter mode");
    for kind in ["net", "ipc", "uts", "mnt"] {
        assert_ne!(
            namespace(&pid.to_string(), kind)?,
            namespace("self", kind)?,
            "{kind} namespace is the host's"
        );
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let memory = cgroups
        .lines()
        .find(|l| l.contains(":memory:") || (unified() && l.starts_with("0::")))
        .context("memory cgroup")?;
    let path = memory.rsplit(':').next().unwrap();
    assert!(path.ends_with("/boxed"), "{memory}");
    // Every thread, in every hierarchy: the sandbox joined before it started any.
    let mut threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    threads.sort();
    let threads_file = if unified() { "cgroup.threads" } else { "tasks" };
    for controller in ["memory", "cpu", "pids"] {
        let dir = cgroup_dir(pid, controller)?;
        let mut listed: Vec<String> = std::fs::read_to_string(dir.join(threads_file))?
            .lines()
            .map(str::to_owned)
            .collect();
        listed.sort();
        assert_eq!(listed, threads, "{controller}: {}", dir.display());
    }
    // It reaches the rootfs through descriptors only: the mount is not in its namespace.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    assert!(!mounts.contains("/boxed/rootfs"), "{mounts}");
    let limit = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/memory")
            .join(path.trim_start_matches('/'))
            .join("memory.limit_in_bytes"),
    )
    .or_else(|_| {
        std::fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(path.trim_start_matches('/'))
                .join("memory.max"),
        )
    })?;
    assert_eq!(
        limit.trim(),
        ((64u64 << 20) + (32 << 20)).to_string(),
        "the spec limit plus the sandbox headroom"
    );

    // `--net-host` keeps the host's network namespace, as with runc.
    containerd
        .run_wasm(
            &["-d", "--net-host"],
            "example.com/sleeper:latest",
            "host-net",
            &[],
        )?
        .success()?;
    let host_pid = containerd.running("host-net")?;
    assert_eq!(
        namespace(&host_pid.to_string(), "net")?,
        namespace("self", "net")?
    );
    Ok(())
}

#[test]
fn a_guest_past_its_memory_limit_ends_with_137_and_an_oom_event_and_alone() -> Result<()> {
    let (_tmp, containerd, sandbox) =
        pod_with_survivor(&[("hostile.wasm", "example.com/hostile:latest")])?;
    let events = containerd.events()?;

    for (id, opts) in [
        ("hog-grouped", vec!["--rm", "--annotation", POD_GROUP]),
        ("hog-alone", vec!["--rm"]),
    ] {
        let mut opts = opts;
        opts.extend(["--memory-limit", "33554432"]);
        let out = containerd.run_wasm(
            &opts,
            "example.com/hostile:latest",
            id,
            &["/hostile.wasm", "alloc"],
        )?;
        assert_eq!(out.code, Some(137), "{id}: {out:?}");
        assert!(
            out.stdout.contains("allocated 16 MiB"),
            "{id}: it ran until the limit: {out:?}"
        );
        assert!(
            out.stderr
                .contains("exceeded its memory limit of 33554432 bytes"),
            "{id}: {out:?}"
        );
    }
    // Within the limit, the same guest completes.
    let out = containerd.run_wasm(
        &["--rm", "--memory-limit", "67108864"],
        "example.com/hostile:latest",
        "fits",
        &["/hostile.wasm", "alloc", "20"],
    )?;
    assert_eq!(
        (out.code, out.stdout.lines().last()),
        (Some(0), Some("done: 20 MiB")),
        "{out:?}"
    );

    assert_eq!(
        containerd.task("survivor")?,
        Some((sandbox, "RUNNING".to_owned())),
        "the pod's other container died"
    );
    Containerd::assert_oom_events(events, &["hog-grouped", "hog-alone"])
}

#[test]
fn hostile_guests_end_alone_with_a_reason() -> Result<()> {
    let (tmp, containerd, sandbox) =
        pod_with_survivor(&[("hostile.wasm", "example.com/hostile:latest")])?;
    let group = ["--rm", "--annotation", POD_GROUP];

    // Deep recursion: the engine's stack limit, a trap, 134.
    let out = containerd.run_wasm(
        &group,
        "example.com/hostile:latest",
        "recurse",
        &["/hostile.wasm", "recurse"],
    )?;
    assert_eq!(out.code, Some(134), "{out:?}");
    assert!(out.stderr.contains("call stack exhausted"), "{out:?}");

    // An infinite loop without host calls still ends at once on SIGKILL (epoch interruption).
    containerd
        .run_wasm(
            &["-d", "--annotation", POD_GROUP],
            "example.com/hostile:latest",
            "spin",
            &["/hostile.wasm", "spin"],
        )?
        .success()?;
    containerd.running("spin")?;
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "spin"])?
        .success()?;
    wait_for("spin STOPPED", || {
        Ok(containerd
            .task("spin")?
            .is_some_and(|(_, s)| s == "STOPPED"))
    })?;
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "a spinning guest took {:?} to die",
        killed.elapsed()
    );
    containerd.ctr(&["task", "delete", "spin"])?.success()?;

    // 100 MiB of output as fast as possible: it all arrives, and the sandbox does not buffer it.
    let log = tmp.path().join("flood.log");
    let log_uri = format!("file://{}", log.display());
    let opts = [&group[..], &["--log-uri", &log_uri]].concat();
    containerd
        .run_wasm(
            &opts,
            "example.com/hostile:latest",
            "flood",
            &["/hostile.wasm", "flood", "100"],
        )?
        .success()?;
    assert_eq!(std::fs::metadata(&log)?.len(), 100 << 20);
    let peak_kib: u64 = status_field(sandbox, "VmHWM")?
        .trim_end_matches(" kB")
        .parse()?;
    assert!(
        peak_kib < 64 << 10,
        "the sandbox peaked at {peak_kib} KiB while flooding"
    );

    // A module importing a function nobody provides fails at create, naming it.
    let module = tmp.path().join("imports");
    std::fs::create_dir(&module)?;
    std::fs::write(module.join("imports.wasm"), UNKNOWN_IMPORT_MODULE)?;
    containerd.import(&build_image(
        &module.join("imports.wasm"),
        "example.com/imports:latest",
        tmp.path(),
        &[],
    )?)?;
    let out = containerd.run_wasm(&group, "example.com/imports:latest", "imports", &[])?;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("cannot be linked") && out.stderr.contains("env::nope"),
        "{out:?}"
    );

    assert_eq!(
        containerd.task("survivor")?,
        Some((sandbox, "RUNNING".to_owned())),
        "the pod's other container died"
    );
    Ok(())
}

/// `(module (import "env" "nope" (func)) (func (export "_start")))`, encoded by hand.
const UNKNOWN_IMPORT_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: () -> ()
    0x02, 0x0c, 0x01, 0x03, b'e', b'n', b'v', 0x04, b'n', b'o', b'p', b'e', 0x00,
    0x00, // import env::nope
    0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00,
    0x01, // export _start = func 1
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: empty body
];

#[test]
fn exec_runs_another_entrypoint_in_the_container_with_its_own_stdio_and_status() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let containerd = Containerd::start()?;
    let tools = tmp.path().join("tools");
    std::fs::create_dir(&tools)?;
    std::fs::copy(guest("fs.wasm"), tools.join("fs.wasm"))?;
    std::fs::copy(guest("hello.wasm"), tools.join("hello.wasm"))?;
    std::fs::copy("/bin/true", tools.join("true"))?;
    std::fs::write(tools.join("motd"), "in the image\n")?;
    let include = format!("{}:/", tools.display());
    containerd.import(&build_image(
        &guest("sleeper.wasm"),
        "example.com/tools:latest",
        tmp.path(),
        &["--include", &include],
    )?)?;
    containerd
        .run_wasm(
            &["-d", "--env", "FROM=init"],
            "example.com/tools:latest",
            "box",
            &[],
        )?
        .success()?;
    let pid = containerd.running("box")?;

    // Same rootfs as the container; its own args, stdio and exit status.
    let out = containerd
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "cat",
            "box",
            "/fs.wasm",
            "cat",
            "/motd",
        ])?
        .success()?;
    assert_eq!(out.stdout, "in the image\n");
    // ctr gives an exec the container's process spec with its own args.
    let hello = [
        "task",
        "exec",
        "--exec-id",
        "hello",
        "box",
        "/hello.wasm",
        "env",
        "exit=6",
    ];
    let out = containerd.ctr(&hello)?;
    assert_eq!(out.code, Some(6), "{out:?}");
    assert!(out.stdout.contains("FROM=init\n"), "{out:?}");
    let out = containerd.ctr(&["task", "exec", "--exec-id", "elf", "box", "/true"])?;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("the entrypoint `/true` is a native ELF executable"),
        "{out:?}"
    );

    // A long exec is listed, can be killed alone, and the container keeps running.
    containerd
        .ctr(&[
            "task",
            "exec",
            "--detach",
            "--exec-id",
            "long",
            "box",
            "/sleeper.wasm",
        ])?
        .success()?;
    wait_for("the exec in ps", || {
        Ok(containerd
            .ctr(&["task", "ps", "box"])?
            .stdout
            .contains("exec_id:\"long\""))
    })?;
    containerd
        .ctr(&["task", "kill", "--exec-id", "long", "-s", "SIGKILL", "box"])?
        .success()?;
    wait_for("the exec gone from ps", || {
        Ok(!containerd
            .ctr(&["task", "ps", "box"])?
            .stdout
            .contains("long"))
    })?;
    assert_eq!(containerd.task("box")?, Some((pid, "RUNNING".to_owned())));
    Ok(())
}

#[test]
fn metrics_report_the_cgroup() -> Result<()> {
    let (_tmp, containerd) =
        containerd_with(&[], &[("sleeper.wasm", "example.com/sleeper:latest")])?;
    containerd
        .run_wasm(
            &["-d", "--memory-limit", "67108864"],
            "example.com/sleeper:latest",
            "measured",
            &[],
        )?
        .success()?;
    containerd.running("measured")?;
    let out = containerd
        .ctr(&["task", "metrics", "--format", "json", "measured"])?
        .success()?;
    let metrics: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(
        metrics["memory"]["usage"]["limit"],
        (64u64 << 20) + (32 << 20),
        "{metrics}"
    );
    assert!(
        metrics["memory"]["usage"]["usage"]
            .as_u64()
            .is_some_and(|u| u > 0),
        "{metrics}"
    );
    assert!(
        metrics["cpu"]["usage"]["total"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{metrics}"
    );
    assert!(
        metrics["pids"]["current"].as_u64().is_some_and(|p| p > 0),
        "{metrics}"
    );
    // What runc's shim fills and Docker reads (issue 26): throttling, `memory.stat`'s counters.
    assert!(metrics["cpu"]["throttling"].is_object(), "{metrics}");
    assert!(
        metrics["memory"]["total_rss"]
            .as_u64()
            .is_some_and(|rss| rss > 0),
        "{metrics}"
    );
    Ok(())
}

/// Issue #26: a systemd driver's `cgroupsPath` (`slice:prefix:name`, what containerd's CRI
/// passes with `SystemdCgroup = true`) was made a literal top-level directory, outside its
/// slice; on cgroup v2 a limit could not be written at all, as no controller was enabled.
#[test]
fn a_systemd_cgroups_path_puts_the_sandbox_in_a_scope_under_its_slice_with_its_limit() -> Result<()>
{
    let (_tmp, containerd) =
        containerd_with(&[], &[("sleeper.wasm", "example.com/sleeper:latest")])?;
    // A slice of this test's own, on a host other tests share: `a-b.slice` nests in `a.slice`.
    let top = format!("wasmcelltest{}", std::process::id());
    let cgroups_path = format!("{top}-pod1.slice:cri-containerd:scoped");
    containerd
        .run_wasm(
            &[
                "-d",
                "--cgroup",
                &cgroups_path,
                "--memory-limit",
                "67108864",
            ],
            "example.com/sleeper:latest",
            "scoped",
            &[],
        )?
        .success()?;
    let pid = containerd.running("scoped")?;
    let memory = cgroup_dir(pid, "memory")?;
    let unified = unified();
    let root = if unified {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    };
    assert_eq!(
        memory,
        root.join(format!(
            "{top}.slice/{top}-pod1.slice/cri-containerd-scoped.scope"
        ))
    );
    let limit_file = if unified {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let limit = std::fs::read_to_string(memory.join(limit_file))?;
    assert_eq!(limit.trim(), ((64u64 << 20) + (32 << 20)).to_string());

    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "scoped"])?
        .success()?;
    wait_for("the task's exit", || {
        Ok(containerd
            .task("scoped")?
            .is_some_and(|(_, status)| status == "STOPPED"))
    })?;
    containerd.ctr(&["task", "delete", "scoped"])?.success()?;
    wait_for("the scope's removal", || Ok(!memory.exists()))?;
    // The slices stay, as systemd's do (and runc's without systemd): this test removes its own.
    let hierarchies = if unified {
        vec![root]
    } else {
        let entries = std::fs::read_dir("/sys/fs/cgroup")?;
        entries.map(|e| Ok(e?.path())).collect::<Result<_>>()?
    };
    for hierarchy in hierarchies {
        let slice = hierarchy.join(format!("{top}.slice"));
        let _ = std::fs::remove_dir(slice.join(format!("{top}-pod1.slice")));
        let _ = std::fs::remove_dir(slice);
    }
    Ok(())
}

#[test]
fn pause_stops_the_guest_and_resume_lets_it_go_on() -> Result<()> {
    let (tmp, containerd) =
        containerd_with(&[], &[("sleeper.wasm", "example.com/sleeper:latest")])?;
    let log = tmp.path().join("ticks.log");
    let log_uri = format!("file://{}", log.display());
    containerd
        .run_wasm(
            &["-d", "--log-uri", &log_uri],
            "example.com/sleeper:latest",
            "napper",
            &[],
        )?
        .success()?;
    let pid = containerd.running("napper")?;
    let ticks = || -> Result<usize> {
        Ok(std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("tick")
            .count())
    };
    wait_for("a first tick", || Ok(ticks()? >= 1))?;

    containerd.ctr(&["task", "pause", "napper"])?.success()?;
    assert_eq!(containerd.task("napper")?, Some((pid, "PAUSED".to_owned())));
    // A tick may already be on its way out; after that, nothing while paused.
    std::thread::sleep(Duration::from_millis(1500));
    let paused_at = ticks()?;
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(ticks()?, paused_at, "the guest ran while paused");

    containerd.ctr(&["task", "resume", "napper"])?.success()?;
    assert_eq!(
        containerd.task("napper")?,
        Some((pid, "RUNNING".to_owned()))
    );
    wait_for("ticks after resume", || Ok(ticks()? > paused_at))?;

    // A paused container can still be killed.
    containerd.ctr(&["task", "pause", "napper"])?.success()?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "napper"])?
        .success()?;
    wait_for("STOPPED", || {
        Ok(containerd
            .task("napper")?
            .is_some_and(|(_, s)| s == "STOPPED"))
    })?;
    Ok(())
}

/// Asserts that the guests in `pid`'s cgroup used less than half a core over two seconds
/// while one of them spins: unthrottled, a spin loop uses a whole core, and load on the
/// machine can only lower the figure, so this cannot pass by luck or fail by noise.
fn assert_held_below_half_a_core(pid: u32) -> Result<()> {
    // The cgroup's CPU use: v1's cpuacct.usage (ns), v2's usage_usec in cpu.stat.
    let usage = || -> Result<Duration> {
        if unified() {
            let stat = std::fs::read_to_string(cgroup_dir(pid, "cpu")?.join("cpu.stat"))?;
            let usec = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .context("no usage_usec in cpu.stat")?;
            Ok(Duration::from_micros(usec.trim().parse()?))
        } else {
            let usage = std::fs::read_to_string(cgroup_dir(pid, "cpuacct")?.join("cpuacct.usage"))?;
            Ok(Duration::from_nanos(usage.trim().parse()?))
        }
    };
    let (before, started) = (usage()?, Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let used = usage()? - before;
    let wall = started.elapsed();
    ensure!(
        used < wall / 2,
        "the spinner used {used:?} of CPU in {wall:?}"
    );
    ensure!(!used.is_zero(), "the spinner never ran");
    Ok(())
}

#[test]
fn a_cpu_quota_holds_a_spinning_guest() -> Result<()> {
    let (_tmp, containerd) =
        containerd_with(&[], &[("hostile.wasm", "example.com/hostile:latest")])?;
    containerd
        .run_wasm(
            &["-d", "--cpus", "0.1"],
            "example.com/hostile:latest",
            "spinner",
            &["/hostile.wasm", "spin"],
        )?
        .success()?;
    let pid = containerd.running("spinner")?;
    // The kernel is told (runc's way), and the guest is held.
    let (file, expected) = if unified() {
        ("cpu.max", "10000 100000")
    } else {
        ("cpu.cfs_quota_us", "10000")
    };
    let quota = std::fs::read_to_string(cgroup_dir(pid, "cpu")?.join(file))?;
    assert_eq!(quota.trim(), expected);
    assert_held_below_half_a_core(pid)?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "spinner"])?
        .success()?;
    Ok(())
}

/// A WASI 0.3 command (its `run` async, on the component model's event loop) computing without
/// a host call is held to its CPU quota as a 0.2 one is, and stops at SIGTERM with 143.
#[test]
fn a_cpu_quota_and_sigterm_hold_a_spinning_wasi_0_3_guest() -> Result<()> {
    let (_tmp, containerd) = containerd_with(&[], &[("p3-cli.wasm", "example.com/p3-cli:latest")])?;
    containerd
        .run_wasm(
            &["-d", "--cpus", "0.1"],
            "example.com/p3-cli:latest",
            "p3-spinner",
            &["/p3-cli.wasm", "spin"],
        )?
        .success()?;
    let pid = containerd.running("p3-spinner")?;
    assert_held_below_half_a_core(pid)?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGTERM", "p3-spinner"])?
        .success()?;
    containerd.wait_status("p3-spinner", "STOPPED")?;
    let deleted = containerd
        .ctr(&["task", "delete", "p3-spinner"])?
        .success()?;
    assert!(
        deleted
            .stderr
            .contains("task p3-spinner exit with non-zero exit code 143"),
        "{deleted:?}"
    );
    Ok(())
}

#[test]
fn a_cpu_quota_holds_per_container_inside_a_shared_sandbox() -> Result<()> {
    // The pod's sandbox (and its cgroup) comes from the survivor, which has no CPU quota;
    // only the engine's time slicing can hold the spinner to its own 10%.
    let (_tmp, containerd, pid) =
        pod_with_survivor(&[("hostile.wasm", "example.com/hostile:latest")])?;
    let spin = ["-d", "--annotation", POD_GROUP, "--cpus", "0.1"];
    containerd
        .run_wasm(
            &spin,
            "example.com/hostile:latest",
            "spinner",
            &["/hostile.wasm", "spin"],
        )?
        .success()?;
    containerd.running("spinner")?;
    assert_held_below_half_a_core(pid)?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "spinner"])?
        .success()?;
    Ok(())
}

#[test]
fn hand_written_specs_unknown_fields_run_and_missing_or_impossible_parts_are_named() -> Result<()> {
    let (tmp, containerd) = containerd_with(&[], &[])?;
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs)?;
    std::fs::copy(guest("hello.wasm"), rootfs.join("hello.wasm"))?;
    // With --config, ctr takes the spec as it is: only a container id, no image.
    let run_config = |config: &str, id: &str| {
        containerd.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", config, id])
    };
    let spec = |extra: serde_json::Value| -> Result<String> {
        let mut spec = serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["/hello.wasm", "from-config"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["A=1"]},
            "root": {"path": rootfs},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "network"}]},
        });
        for (key, value) in extra.as_object().unwrap() {
            if value.is_null() {
                spec.as_object_mut().unwrap().remove(key);
            } else {
                spec[key] = value.clone();
            }
        }
        let path = tmp
            .path()
            .join(format!("spec-{}.json", extra.to_string().len()));
        std::fs::write(&path, spec.to_string())?;
        Ok(path.display().to_string())
    };

    // Fields from a newer spec version, or nobody's, are ignored as runc ignores them.
    let future = spec(serde_json::json!({"futureKnob": {"x": 1}, "annotations": {"a": "b"}}))?;
    let out = run_config(&future, "future")?.success()?;
    assert_eq!(out.stdout, "Hello from Wasm!\narg: from-config\n");

    let no_process = spec(serde_json::json!({"process": null}))?;
    let out = run_config(&no_process, "noproc")?;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("no `process`"), "{out:?}");

    let mut absurd =
        serde_json::json!({"args": ["/hello.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    absurd["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1u64 << 40, "hard": 1u64 << 40}]);
    let absurd = spec(serde_json::json!({"process": absurd}))?;
    let out = run_config(&absurd, "absurd")?;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("cannot set RLIMIT_NOFILE"), "{out:?}");
    Ok(())
}

/// A network namespace made for a test with `ip netns`, deleted when dropped.
struct NetNs(String);

impl NetNs {
    fn new() -> Result<NetNs> {
        let name = format!("wasmcell-test-{}", std::process::id());
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()?;
        ensure!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(NetNs(name))
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[test]
fn a_network_namespace_named_by_path_is_joined_as_a_pod_would_ask() -> Result<()> {
    let (_tmp, containerd) =
        containerd_with(&[], &[("sleeper.wasm", "example.com/sleeper:latest")])?;
    let netns = NetNs::new()?;
    let with_ns = format!("network:{}", netns.path().display());
    containerd
        .run_wasm(
            &["-d", "--with-ns", &with_ns],
            "example.com/sleeper:latest",
            "joined",
            &[],
        )?
        .success()?;
    let pid = containerd.running("joined")?;
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(netns.path())?);
    assert_eq!(
        namespace(&pid.to_string(), "net")?,
        PathBuf::from(format!("net:[{inode}]"))
    );
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "joined"])?
        .success()?;
    containerd.wait_status("joined", "STOPPED")?;
    Ok(())
}
