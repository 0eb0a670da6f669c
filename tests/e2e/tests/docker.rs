//! Docker Engine 26 (containerd image store) loading and running images built by wasmcell.

use std::path::Path;

use anyhow::Result;
use wasmcell_e2e::{Docker, build_image, guest};

#[test]
fn docker_loads_a_built_image_and_runs_it_with_the_wasmtime_runtime() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let docker = Docker::start()?;
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
        let out = docker.docker(&[
            "run",
            "--rm",
            "--runtime=io.containerd.wasmtime.v1",
            &format!("--platform={platform}"),
            &tag,
            "from-docker",
            "exit=5",
        ])?;
        assert_eq!(out.code, Some(5), "{out:?}");
        assert_eq!(
            out.stdout, "Hello from Wasm!\narg: from-docker\n",
            "{out:?}"
        );
    }
    Ok(())
}

#[test]
fn docker_user_runs_the_sandbox_as_that_user_and_the_guest_still_gets_its_files() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let docker = Docker::start()?;
    for (wasm, tag) in [
        ("hello.wasm", "example.com/hello:latest"),
        ("sleeper.wasm", "example.com/sleeper:latest"),
    ] {
        let archive = build_image(&guest(wasm), tag, tmp.path(), &[])?;
        docker.load(&archive)?;
    }
    let runtime = "--runtime=io.containerd.wasmtime.v1";
    let platform = "--platform=wasip1/wasm";
    // The module, the rootfs and the stdio FIFOs are root's; the sandbox reaches them through
    // descriptors the shim passed, so user 1000 still runs and prints.
    let out = docker.docker(&[
        "run",
        "--rm",
        runtime,
        platform,
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

    let id = docker
        .docker(&[
            "run",
            "-d",
            runtime,
            platform,
            "--user",
            "1000:1000",
            "example.com/sleeper:latest",
        ])?
        .success()?;
    let id = id.stdout.trim();
    let pid = docker
        .docker(&["inspect", "--format", "{{.State.Pid}}", id])?
        .success()?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.stdout.trim()))?;
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["1000"; 4],
        "{uid}"
    );
    docker.docker(&["rm", "--force", id])?.success()?;
    Ok(())
}

#[test]
fn docker_update_changes_the_limits_live() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let docker = Docker::start()?;
    let archive = build_image(
        &guest("sleeper.wasm"),
        "example.com/sleeper:latest",
        tmp.path(),
        &[],
    )?;
    docker.load(&archive)?;
    let run = [
        "run",
        "-d",
        "--runtime=io.containerd.wasmtime.v1",
        "--platform=wasip1/wasm",
        "--memory",
        "128m",
    ];
    let id = docker
        .docker(&[&run[..], &["example.com/sleeper:latest"]].concat())?
        .success()?;
    let id = id.stdout.trim();
    let pid = docker
        .docker(&["inspect", "--format", "{{.State.Pid}}", id])?
        .success()?
        .stdout
        .trim()
        .to_owned();
    let limit = || -> Result<u64> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let path = cgroups
            .lines()
            .find(|l| l.contains(":memory:"))
            .and_then(|l| l.rsplit(':').next())
            .unwrap()
            .to_owned();
        let file = Path::new("/sys/fs/cgroup/memory")
            .join(path.trim_start_matches('/'))
            .join("memory.limit_in_bytes");
        Ok(std::fs::read_to_string(file)?.trim().parse()?)
    };
    // The spec's limit plus the sandbox's own headroom (32 MiB).
    assert_eq!(limit()?, (128 << 20) + (32 << 20));
    docker
        .docker(&["update", "--memory", "64m", "--memory-swap", "64m", id])?
        .success()?;
    assert_eq!(limit()?, (64 << 20) + (32 << 20));
    let state = docker
        .docker(&["inspect", "--format", "{{.State.Status}}", id])?
        .success()?;
    assert_eq!(state.stdout.trim(), "running");
    docker.docker(&["rm", "--force", id])?.success()?;
    Ok(())
}

#[test]
fn docker_ulimits_and_pids_limit_apply_and_an_impossible_ulimit_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let docker = Docker::start()?;
    let archive = build_image(
        &guest("sleeper.wasm"),
        "example.com/sleeper:latest",
        tmp.path(),
        &[],
    )?;
    docker.load(&archive)?;
    let run = [
        "run",
        "-d",
        "--runtime=io.containerd.wasmtime.v1",
        "--platform=wasip1/wasm",
    ];
    let limits = ["--ulimit", "nofile=512:512", "--pids-limit", "64"];
    let id = docker
        .docker(&[&run[..], &limits[..], &["example.com/sleeper:latest"]].concat())?
        .success()?;
    let id = id.stdout.trim();
    let pid = docker
        .docker(&["inspect", "--format", "{{.State.Pid}}", id])?
        .success()?
        .stdout
        .trim()
        .to_owned();
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
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = cgroups
        .lines()
        .find(|l| l.contains(":pids:"))
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .to_owned();
    let pids_max = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/pids")
            .join(path.trim_start_matches('/'))
            .join("pids.max"),
    )?;
    assert_eq!(pids_max.trim(), "64");
    docker.docker(&["rm", "--force", id])?.success()?;

    // Above the hard limit the daemon itself has: refused with the limit named, as runc would.
    let absurd = ["--ulimit", "nofile=1048576000:1048576000"];
    let out = docker.docker(
        &[
            &[
                "run",
                "--rm",
                "--runtime=io.containerd.wasmtime.v1",
                "--platform=wasip1/wasm",
            ][..],
            &absurd[..],
            &["example.com/sleeper:latest"],
        ]
        .concat(),
    )?;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("cannot set RLIMIT_NOFILE to 1048576000:1048576000"),
        "{out:?}"
    );
    Ok(())
}
