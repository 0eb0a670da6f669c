//! Cycles that create and remove containers many times, for the soak bench and its CI variant:
//! each returns how long its cycles took, and leaves nothing behind it on success.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::Containerd;
use crate::cri::Cri;

/// `ctr run MODE [--runtime RUNTIME] IMAGE ID CMD...`.
fn ctr_run(
    containerd: &Containerd,
    mode: &str,
    runtime: Option<&str>,
    (image, id): (&str, &str),
    cmd: &[&str],
) -> Result<()> {
    let mut args = vec!["run", mode];
    if let Some(runtime) = runtime {
        args.extend(["--runtime", runtime]);
    }
    args.extend([image, id]);
    args.extend(cmd);
    containerd.ctr(&args)?.success()?;
    Ok(())
}

/// `ctr run --rm [--runtime RUNTIME] IMAGE ID CMD...`, `n` times.
pub fn run_rm(
    containerd: &Containerd,
    runtime: Option<&str>,
    image: &str,
    cmd: &[&str],
    n: usize,
) -> Result<Duration> {
    let began = Instant::now();
    for i in 0..n {
        ctr_run(
            containerd,
            "--rm",
            runtime,
            (image, &format!("soak-rm-{i}")),
            cmd,
        )?;
    }
    Ok(began.elapsed())
}

/// `ctr run -d`, `ctr task kill -s SIGKILL`, wait for the exit, `ctr task delete`,
/// `ctr container delete`: `n` times.
pub fn run_kill_delete(
    containerd: &Containerd,
    runtime: Option<&str>,
    image: &str,
    cmd: &[&str],
    n: usize,
) -> Result<Duration> {
    let began = Instant::now();
    for i in 0..n {
        let id = format!("soak-kill-{i}");
        ctr_run(containerd, "-d", runtime, (image, &id), cmd)?;
        containerd.running(&id)?;
        containerd
            .ctr(&["task", "kill", "-s", "SIGKILL", &id])?
            .success()?;
        containerd.wait_status(&id, "STOPPED")?;
        containerd.ctr(&["task", "delete", &id])?.success()?;
        containerd.ctr(&["container", "delete", &id])?.success()?;
    }
    Ok(began.elapsed())
}

/// `n` pods of `image` (running `command`, or its own) under `handler` through CRI, `at_once`
/// alive at a time: each RunPodSandbox, CreateContainer, StartContainer, then for the batch
/// StopPodSandbox and RemovePodSandbox, as kubelet tears pods down.
pub fn pods(
    cri: &Cri,
    handler: &str,
    (image, command): (&str, &[&str]),
    n: usize,
    at_once: usize,
) -> Result<Duration> {
    let began = Instant::now();
    let mut made = 0;
    while made < n {
        let batch = at_once.min(n - made);
        let mut pods = Vec::new();
        for i in 0..batch {
            let pod = cri.run_pod(cri.pod_config(&format!("soak-{}", made + i))?, handler)?;
            let mut config = pod.container_config("main", image);
            config.command = command.iter().map(|c| c.to_string()).collect();
            let id = pod.run(config)?;
            cri.wait_running(&id)?;
            pods.push(pod);
        }
        for pod in &pods {
            pod.stop()?;
            pod.remove()?;
        }
        made += batch;
    }
    let left = cri
        .call(
            cri.runtime()
                .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default()),
        )?
        .items;
    ensure!(left.is_empty(), "pods left after removal: {}", left.len());
    Ok(began.elapsed())
}

/// Cycles per second.
pub fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// Waits (up to 10 s) until `now()` has nothing left over compared with `before`: shims and
/// sandboxes exit a moment after the last delete returns.
pub fn settled(
    before: &crate::Footprint,
    now: impl Fn() -> Result<crate::Footprint>,
) -> Result<crate::Footprint> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = now()?;
        let leaks = after.leaks_since(before);
        if leaks.is_empty() {
            return Ok(after);
        }
        ensure!(
            Instant::now() < deadline,
            "left behind: {}",
            leaks.join(", ")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A CRI image reference for the sleeper, imported into CRI's namespace.
pub fn import_sleeper_for_cri(cri: &Cri, dir: &std::path::Path) -> Result<String> {
    let image = "wasmcell.test/sleeper:1";
    let archive = crate::build_image(&crate::guest("sleeper.wasm"), image, dir, &[])?;
    cri.containerd()
        .import(&archive)
        .context("import the sleeper for CRI")?;
    Ok(image.to_owned())
}
