//! A pod survives its worst container (issue 26, point 3): one container's requests, however
//! large, however many mounts, or made while another holds every descriptor of the sandbox,
//! succeed or fail alone, and the pod's other containers keep running.

use anyhow::{Context, Result, ensure};
use wasmcell_e2e::{Containerd, POD_GROUP, pod_with_survivor, wait_for};

/// Whether the pod's survivor still runs, as the same process.
fn assert_survived(containerd: &Containerd, sandbox: u32) -> Result<()> {
    ensure!(
        containerd.task("survivor")? == Some((sandbox, "RUNNING".to_owned())),
        "the pod's other container did not survive: {:?}",
        containerd.task("survivor")?
    );
    Ok(())
}

/// More grants than one control packet carries (64 descriptors) ended the pod's sandbox.
#[test]
fn a_container_with_a_hundred_bind_mounts_runs_in_the_pod() -> Result<()> {
    let (tmp, containerd, sandbox) = pod_with_survivor(&[("fs.wasm", "example.com/fs:latest")])?;
    let mut opts = vec![
        "--rm".to_owned(),
        "--annotation".to_owned(),
        POD_GROUP.to_owned(),
    ];
    for i in 0..100 {
        let dir = tmp.path().join(format!("mount{i}"));
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("name"), format!("mount number {i}"))?;
        opts.push("--mount".to_owned());
        opts.push(format!(
            "type=bind,src={},dst=/m{i},options=rbind:ro",
            dir.display()
        ));
    }
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    for i in [0, 63, 64, 99] {
        let path = format!("/m{i}/name");
        let out = containerd.run_wasm(
            &opts,
            "example.com/fs:latest",
            &format!("mounts{i}"),
            &["/fs.wasm", "cat", &path],
        )?;
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), format!("mount number {i}").as_str()),
            "{out:?}"
        );
    }
    assert_survived(&containerd, sandbox)
}

/// A request above the socket's buffer (208 KiB) failed with "Message too long".
#[test]
fn thirty_thousand_args_and_seven_thousand_env_variables_reach_the_guest() -> Result<()> {
    let (tmp, containerd, sandbox) =
        pod_with_survivor(&[("hello.wasm", "example.com/hello:latest")])?;

    let args: Vec<String> = (0..30_000).map(|i| format!("a{i}")).collect();
    let mut cmd = vec!["/hello.wasm"];
    cmd.extend(args.iter().map(String::as_str));
    let out = containerd.run_wasm(
        &["--rm", "--annotation", POD_GROUP],
        "example.com/hello:latest",
        "many-args",
        &cmd,
    )?;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let echoed: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("arg: "))
        .collect();
    assert!(echoed == args, "{} of 30000 args came back", echoed.len());

    // Kubernetes' service links: seven variables per service, for a thousand services.
    let vars: Vec<String> = (0..1000)
        .flat_map(|i| {
            let name = format!("BACKEND_SERVICE_{i:04}");
            [
                format!("{name}_SERVICE_HOST=10.96.{}.{}", i / 250, i % 250),
                format!("{name}_SERVICE_PORT=8080"),
                format!("{name}_PORT=tcp://10.96.{}.{}:8080", i / 250, i % 250),
                format!(
                    "{name}_PORT_8080_TCP=tcp://10.96.{}.{}:8080",
                    i / 250,
                    i % 250
                ),
                format!("{name}_PORT_8080_TCP_PROTO=tcp"),
                format!("{name}_PORT_8080_TCP_PORT=8080"),
                format!("{name}_PORT_8080_TCP_ADDR=10.96.{}.{}", i / 250, i % 250),
            ]
        })
        .collect();
    let env_file = tmp.path().join("env");
    std::fs::write(&env_file, vars.join("\n") + "\n")?;
    ensure!(std::fs::metadata(&env_file)?.len() > 233_000);
    let out = containerd.run_wasm(
        &[
            "--rm",
            "--annotation",
            POD_GROUP,
            "--env-file",
            env_file.to_str().context("utf-8")?,
        ],
        "example.com/hello:latest",
        "many-env",
        &["/hello.wasm", "env"],
    )?;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let seen: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("BACKEND_SERVICE_"))
        .collect();
    let mut expected: Vec<&str> = vars.iter().map(String::as_str).collect();
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert!(
        sorted == expected,
        "{} of 7000 variables came back",
        seen.len()
    );
    assert_survived(&containerd, sandbox)
}

/// How many descriptors process `pid` has open.
fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Process `pid`'s soft `RLIMIT_NOFILE`.
fn fd_limit(pid: u32) -> Result<usize> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-file limit")?;
    Ok(line
        .split_whitespace()
        .nth(3)
        .context("no soft limit")?
        .parse()?)
}

/// Whether a failure names the lack of descriptors as its cause: the control channel's words,
/// or the engine's when the request arrived but loading the module needed more.
fn starved(stderr: &str) -> bool {
    stderr.contains("no descriptors left") || stderr.contains("Too many open files")
}

/// A guest holding every descriptor of the sandbox made the next create's descriptors
/// undeliverable (MSG_CTRUNC), which ended the control channel, the sandbox and the pod. With a
/// few descriptors left the create gets further, and fails (or not) on its own.
#[test]
fn a_guest_holding_every_descriptor_fails_the_next_create_alone() -> Result<()> {
    let (_tmp, containerd, sandbox) = pod_with_survivor(&[
        ("hostile.wasm", "example.com/hostile:latest"),
        ("hello.wasm", "example.com/hello:latest"),
    ])?;
    let limit = fd_limit(sandbox)?;
    ensure!(
        limit <= 1 << 16,
        "the sandbox's limit is {limit}: too many to fill"
    );
    let before = open_fds(sandbox)?;
    let create = |id: &str| {
        containerd.run_wasm(
            &["--rm", "--annotation", POD_GROUP],
            "example.com/hello:latest",
            id,
            &["/hello.wasm", "still", "here"],
        )
    };
    for spare in [0, 2, 5, 10, 20] {
        let hog = format!("hog{spare}");
        containerd
            .run_wasm(
                &["-d", "--annotation", POD_GROUP],
                "example.com/hostile:latest",
                &hog,
                &[
                    "/hostile.wasm",
                    "files",
                    "/hostile.wasm",
                    &spare.to_string(),
                ],
            )?
            .success()?;
        wait_for("the hog to fill the sandbox's descriptors", || {
            Ok(open_fds(sandbox)? + spare >= limit)
        })?;
        let out = create(&format!("starved{spare}"))?;
        // What this test holds is that the create runs or fails alone; whether all of a short
        // task's output reaches `ctr` before its exit is issue 26's point 4 (output lost, seen
        // here once as an exit 0 with nothing printed, with 10 descriptors left under load).
        assert!(
            out.code == Some(0) || starved(&out.stderr),
            "{spare} left: {out:?}"
        );
        if spare == 0 {
            assert!(
                out.code != Some(0)
                    && out.stderr.contains(&format!(
                        "no descriptors left: 0 of the 4 descriptors sent arrived (its open-file limit, RLIMIT_NOFILE, is {limit})"
                    )),
                "the failure does not say why: {out:?}"
            );
        }
        let exec = containerd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &format!("probe{spare}"),
            "survivor",
            "/sleeper.wasm",
            "0",
        ])?;
        assert!(
            exec.stdout == "sleeper started\nsleeper done\n" || starved(&exec.stderr),
            "{spare} left: {exec:?}"
        );
        assert_survived(&containerd, sandbox)?;
        containerd
            .ctr(&["task", "kill", "-s", "SIGKILL", &hog])?
            .success()?;
        containerd.wait_status(&hog, "STOPPED")?;
        containerd.ctr(&["task", "delete", &hog])?.success()?;
        wait_for("the hog's descriptors to close", || {
            Ok(open_fds(sandbox)? <= before + 10)
        })?;
    }

    // Once the hog is gone, the pod takes containers again.
    let out = create("fed")?;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "Hello from Wasm!\narg: still\narg: here\n"),
        "{out:?}"
    );
    assert_survived(&containerd, sandbox)
}
