//! Docker Engine 26 (containerd image store) loading and running images built by wasmcell.

use std::path::Path;

use anyhow::{Context, Result};
use wasmcell_e2e::{
    CpuLoad, Docker, assert_serves_hello_http, build_image, cgroup_dir, curl, free_port, guest,
    wait_for, wait_http,
};

const RUNTIME: &str = "--runtime=io.containerd.wasmtime.v1";
const PLATFORM: &str = "--platform=wasi/wasm";

/// A private Docker with these guests built and loaded as images (guest file, tag).
fn docker_with(images: &[(&str, &str)]) -> Result<(tempfile::TempDir, Docker)> {
    let tmp = tempfile::tempdir()?;
    let docker = Docker::start()?;
    for (wasm, tag) in images {
        docker.load(&build_image(&guest(wasm), tag, tmp.path(), &[])?)?;
    }
    Ok((tmp, docker))
}

/// `docker run -d` of the sleeper image with our runtime and `opts`: its id and its PID.
fn run_sleeper(docker: &Docker, opts: &[&str]) -> Result<(String, u32)> {
    let run = [
        &["run", "-d", RUNTIME, PLATFORM][..],
        opts,
        &["example.com/sleeper:latest"],
    ]
    .concat();
    let id = docker.docker(&run)?.success()?.stdout.trim().to_owned();
    let pid = docker
        .docker(&["inspect", "--format", "{{.State.Pid}}", &id])?
        .success()?;
    Ok((id, pid.stdout.trim().parse().context("a PID")?))
}

#[test]
fn docker_loads_a_built_image_and_runs_it_with_the_wasmtime_runtime() -> Result<()> {
    let (tmp, docker) = docker_with(&[])?;
    for platform in ["wasi/wasm32", "wasip1/wasm"] {
        let tag = format!("example.com/hello-{}:latest", platform.replace('/', "-"));
        let archive = build_image(
            &guest("hello.wasm"),
            &tag,
            tmp.path(),
            &["--platform", platform],
        )?;
        let loaded = docker.load(&archive)?;
        assert!(
            loaded.stdout.contains(&format!("Loaded image: {tag}")),
            "{loaded:?}"
        );

        // As with any image: arguments replace Cmd and follow the Entrypoint.
        let run = [
            "run",
            "--rm",
            RUNTIME,
            &format!("--platform={platform}"),
            &tag,
            "from-docker",
            "exit=5",
        ];
        let out = docker.docker(&run)?;
        assert_eq!(out.code, Some(5), "{out:?}");
        assert_eq!(
            out.stdout, "Hello from Wasm!\narg: from-docker\n",
            "{out:?}"
        );
    }

    // A WASI 0.3 command, as any image: its environment, arguments and exit code; and the
    // memory limit ends it with 137.
    let tag = "example.com/p3-cli:latest";
    let p3 = build_image(
        &guest("p3-cli.wasm"),
        tag,
        tmp.path(),
        &["--platform", "wasi/wasm32"],
    )?;
    docker.load(&p3)?;
    let run = |opts: &[&str], args: &[&str]| {
        let run = [
            &["run", "--rm", RUNTIME, "--platform=wasi/wasm32"],
            opts,
            &[tag],
            args,
        ]
        .concat();
        docker.docker(&run)
    };
    let out = run(&["-e", "COLOR=green"], &["env", "COLOR"])?.success()?;
    assert_eq!(out.stdout, "green\n/p3-cli.wasm env COLOR\n", "{out:?}");
    assert_eq!(run(&[], &["exit", "4"])?.code, Some(4));
    assert_eq!(
        run(&["--memory", "64m"], &["alloc", "8"])?.stdout,
        "allocated 8\n"
    );
    let oom = run(&["--memory", "64m"], &["alloc", "256"])?;
    assert_eq!(oom.code, Some(137), "{oom:?}");
    Ok(())
}

/// Docker + Wasm's documentation runs one plain WASI image under each runtime name.
#[test]
fn docker_runs_one_wasi_image_under_every_runtime_name() -> Result<()> {
    let (tmp, docker) = docker_with(&[])?;
    let tag = "example.com/hello-wasi:latest";
    let archive = build_image(
        &guest("hello.wasm"),
        tag,
        tmp.path(),
        &["--platform", "wasi/wasm32"],
    )?;
    docker.load(&archive)?;
    for runtime in [
        "io.containerd.wasmtime.v1",
        "io.containerd.spin.v1",
        "io.containerd.spin.v2",
        "io.containerd.slight.v1",
    ] {
        let run = [
            "run",
            "--rm",
            &format!("--runtime={runtime}"),
            "--platform=wasi/wasm32",
            tag,
            runtime,
        ];
        let out = docker.docker(&run)?.success()?;
        assert_eq!(
            out.stdout,
            format!("Hello from Wasm!\narg: {runtime}\n"),
            "{out:?}"
        );
    }
    Ok(())
}

#[test]
fn docker_user_runs_the_sandbox_as_that_user_and_the_guest_still_gets_its_files() -> Result<()> {
    let (_tmp, docker) = docker_with(&[
        ("hello.wasm", "example.com/hello:latest"),
        ("sleeper.wasm", "example.com/sleeper:latest"),
    ])?;
    // The module, the rootfs and the stdio FIFOs are root's; the sandbox reaches them through
    // descriptors the shim passed, so user 1000 still runs and prints.
    let out = docker.docker(&[
        "run",
        "--rm",
        RUNTIME,
        PLATFORM,
        "--user",
        "1000:1000",
        "example.com/hello:latest",
        "hi",
    ])?;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "Hello from Wasm!\narg: hi\n"),
        "{out:?}"
    );

    let (id, pid) = run_sleeper(&docker, &["--user", "1000:1000"])?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["1000"; 4],
        "{uid}"
    );
    docker.docker(&["rm", "--force", &id])?.success()?;
    Ok(())
}

#[test]
fn docker_update_changes_the_limits_live() -> Result<()> {
    let (_tmp, docker) = docker_with(&[("sleeper.wasm", "example.com/sleeper:latest")])?;
    let (id, pid) = run_sleeper(&docker, &["--memory", "128m"])?;
    let limit = || -> Result<u64> {
        let file = cgroup_dir(pid, "memory")?.join("memory.limit_in_bytes");
        Ok(std::fs::read_to_string(file)?.trim().parse()?)
    };
    // The spec's limit plus the sandbox's own headroom (32 MiB).
    assert_eq!(limit()?, (128 << 20) + (32 << 20));
    docker
        .docker(&["update", "--memory", "64m", "--memory-swap", "64m", &id])?
        .success()?;
    assert_eq!(limit()?, (64 << 20) + (32 << 20));
    let state = docker
        .docker(&["inspect", "--format", "{{.State.Status}}", &id])?
        .success()?;
    assert_eq!(state.stdout.trim(), "running");
    docker.docker(&["rm", "--force", &id])?.success()?;
    Ok(())
}

#[test]
fn docker_ulimits_and_pids_limit_apply_and_an_impossible_ulimit_is_refused() -> Result<()> {
    let (_tmp, docker) = docker_with(&[("sleeper.wasm", "example.com/sleeper:latest")])?;
    let (id, pid) = run_sleeper(
        &docker,
        &["--ulimit", "nofile=512:512", "--pids-limit", "64"],
    )?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        nofile
            .split_whitespace()
            .skip(3)
            .take(2)
            .collect::<Vec<_>>(),
        ["512", "512"],
        "{nofile}"
    );
    let pids_max = std::fs::read_to_string(cgroup_dir(pid, "pids")?.join("pids.max"))?;
    assert_eq!(pids_max.trim(), "64");
    docker.docker(&["rm", "--force", &id])?.success()?;

    // Above the hard limit the daemon itself has: refused with the limit named, as runc would.
    let absurd = [
        "run",
        "--rm",
        RUNTIME,
        PLATFORM,
        "--ulimit",
        "nofile=1048576000:1048576000",
        "example.com/sleeper:latest",
    ];
    let out = docker.docker(&absurd)?;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("cannot set RLIMIT_NOFILE to 1048576000:1048576000"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn docker_runs_the_http_example_as_in_dockers_wasm_guide() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let docker = Docker::start_bridged()?;
    for (i, platform) in ["wasi/wasm32", "wasi/wasm", "wasip1/wasm"]
        .iter()
        .enumerate()
    {
        let tag = format!("example.com/hello-http-{i}:latest");
        let archive = build_image(
            &guest("hello-http.wasm"),
            &tag,
            tmp.path(),
            &["--platform", platform],
        )?;
        docker.load(&archive)?;
        // The command from Docker's guide, on a free host port.
        let port = free_port()?;
        let name = format!("--name=wasm-example-{i}");
        let publish = format!("{port}:8080");
        let platform = format!("--platform={platform}");
        let run = ["run", "-dp", &publish, &name, RUNTIME, &platform, &tag];
        let id = docker.docker(&run)?.success()?.stdout.trim().to_owned();
        let base = format!("http://localhost:{port}");
        wait_http(&format!("{base}/"))?;
        assert_serves_hello_http(&base)?;
        curl(&[&format!("{base}/stdout")])?;
        wait_for("the guest's line in docker logs", || {
            Ok(docker
                .docker(&["logs", &id])?
                .stdout
                .contains("hello-http: a log line"))
        })?;
        // The server said once, on the container's stderr, that it started and where.
        let logs = docker.docker(&["logs", &id])?;
        assert_eq!(
            logs.stderr
                .matches("wasmcell: listening on http://")
                .count(),
            1,
            "{logs:?}"
        );

        // SIGTERM is honoured: the server drains and exits 0 (a SIGKILL after the timeout
        // would show as 137).
        assert_eq!(docker.stop(&id)?, "0");
        docker.docker(&["rm", &id])?.success()?;
        let left = docker.docker(&["ps", "--all", "--quiet"])?.success()?;
        assert!(left.stdout.trim().is_empty(), "{left:?}");
    }
    Ok(())
}

/// Issue 26: `docker stats` panicked dockerd 26 (a nil `CPU.Throttling` in the cgroup v1
/// metrics the shim returned); every later docker command failed and the container's shim and
/// sandbox stayed behind.
#[test]
fn docker_stats_shows_a_wasm_container_and_dockerd_lives_on() -> Result<()> {
    let (tmp, docker) = docker_with(&[("sleeper.wasm", "example.com/sleeper:latest")])?;
    let (id, pid) = run_sleeper(&docker, &[])?;
    let short = &id[..12];

    let once = docker
        .docker(&["stats", "--no-stream", "--format", "{{json .}}", &id])?
        .success()?;
    let row: serde_json::Value = serde_json::from_str(once.stdout.trim())
        .with_context(|| format!("docker stats --no-stream: {once:?}"))?;
    assert_eq!(row["ID"], short, "{row}");
    let memory = row["MemUsage"].as_str().unwrap_or_default();
    let (used, limit) = memory.split_once(" / ").context("MemUsage")?;
    assert!(!used.starts_with("0B") && !limit.starts_with("0B"), "{row}");
    let pids: u64 = row["PIDs"].as_str().unwrap_or_default().parse()?;
    assert!(pids > 0, "{row}");
    assert!(
        row["CPUPerc"].as_str().is_some_and(|c| c.ends_with('%')),
        "{row}"
    );

    // Streaming, as `docker stats` runs by default: a row a second until stopped.
    let streamed = tmp.path().join("stats.out");
    let mut stream = docker
        .command()
        .args(["stats", &id])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&streamed)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let rows = || -> Result<usize> {
        let text = std::fs::read_to_string(&streamed)?;
        Ok(text.lines().filter(|l| l.starts_with(short)).count())
    };
    let shown = wait_for("two rows of docker stats", || {
        if let Some(status) = stream.try_wait()? {
            anyhow::bail!("docker stats ended ({status}) after {} rows", rows()?);
        }
        Ok(rows()? >= 2)
    });
    let _ = stream.kill();
    stream.wait()?;
    shown?;

    // dockerd is alive and answers; the container still runs.
    let ps = docker
        .docker(&["ps", "--format", "{{.ID}} {{.State}}"])?
        .success()?;
    assert_eq!(ps.stdout.trim(), format!("{short} running"), "{ps:?}");

    // It stops and is removed, and neither its shim nor its sandbox stays behind.
    docker.stop(&id)?;
    docker.docker(&["rm", &id])?.success()?;
    wait_for("the shim and the sandbox to exit", || {
        Ok(docker.containerd().shim_pids().is_empty()
            && !Path::new(&format!("/proc/{pid}")).exists())
    })?;
    let all = docker.docker(&["ps", "--all", "--quiet"])?.success()?;
    assert_eq!(all.stdout, "", "{all:?}");
    Ok(())
}

/// `docker exec` and `docker run --rm` of short commands, many times over with every core busy:
/// every line reaches the client (Docker waits at most 2 s for a process's streams after its
/// exit, then closes them; output the shim had not let it read by then was lost).
#[test]
fn every_docker_exec_and_runs_output_arrives_under_load() -> Result<()> {
    let (_tmp, docker) = docker_with(&[
        ("sleeper.wasm", "example.com/sleeper:latest"),
        ("hello.wasm", "example.com/hello:latest"),
    ])?;
    let (id, _) = run_sleeper(&docker, &[])?;
    let _load = CpuLoad::on_every_core();
    let mut lost = Vec::new();
    const EXECS: usize = 60;
    for n in 0..EXECS {
        let exec = docker.docker(&["exec", &id, "/sleeper.wasm", "0"])?;
        if exec.stdout != "sleeper started\nsleeper done\n" || exec.code != Some(0) {
            lost.push((n, exec));
        }
    }
    const RUNS: usize = 20;
    for n in 0..RUNS {
        let line = format!("line{n}");
        let err = format!("stderr=err{n}");
        let run = docker.docker(&[
            "run",
            "--rm",
            RUNTIME,
            PLATFORM,
            "example.com/hello:latest",
            &line,
            &err,
        ])?;
        if run.stdout != format!("Hello from Wasm!\narg: {line}\n")
            || run.stderr != format!("err{n}\n")
            || run.code != Some(0)
        {
            lost.push((EXECS + n, run));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {EXECS} execs and {RUNS} runs lost output: {lost:?}",
        lost.len()
    );
    Ok(())
}
