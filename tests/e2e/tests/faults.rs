//! Faults a runc user expects containers to survive, or to end cleanly from: containerd
//! restarted under running containers, and the sandbox process killed under its guests (by a
//! signal, or by its cgroup's OOM killer).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wasmcell_e2e::soak::settled;
use wasmcell_e2e::{Footprint, RUNTIME, cgroup_dir, containerd_with, wait_for};

const SLEEPER: &str = "example.com/sleeper:latest";
const HOSTILE: &str = "example.com/hostile:latest";

#[test]
fn containers_run_on_through_a_containerd_restart_and_stop_cleanly_after() -> Result<()> {
    let (_tmp, containerd) = containerd_with(&[], &[("sleeper.wasm", SLEEPER)])?;
    let namespace = containerd.namespace().to_owned();
    let before = Footprint::of(&containerd, &namespace)?;
    for (signal, id) in [
        (Signal::SIGTERM, "through-term"),
        (Signal::SIGKILL, "through-kill"),
    ] {
        containerd.run_wasm(&["-d"], SLEEPER, id, &[])?.success()?;
        let pid = containerd.running(id)?;
        containerd.restart(signal)?;
        // The same task, the same process, still running, still under control.
        assert_eq!(containerd.running(id)?, pid, "{signal}");
        containerd.remove(id)?;
    }
    settled(&before, || Footprint::of(&containerd, &namespace))?;
    Ok(())
}

#[test]
fn a_sandbox_killed_under_its_guests_ends_them_with_137_and_leaves_nothing() -> Result<()> {
    let (_tmp, containerd) = containerd_with(&[], &[("sleeper.wasm", SLEEPER)])?;
    let namespace = containerd.namespace().to_owned();
    let before = Footprint::of(&containerd, &namespace)?;
    // Two guests in one sandbox, as in a pod; one attached, to see its exit status.
    let group = "io.kubernetes.cri.sandbox-id=faults";
    containerd
        .run_wasm(&["-d", "--annotation", group], SLEEPER, "first", &[])?
        .success()?;
    let sandbox = containerd.running("first")?;
    let mut attached = containerd
        .ctr_command()
        .args([
            "run",
            "--runtime",
            RUNTIME,
            "--annotation",
            group,
            SLEEPER,
            "second",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_for("the second guest", || {
        Ok(containerd
            .task("second")?
            .is_some_and(|(_, s)| s == "RUNNING"))
    })?;
    kill(Pid::from_raw(sandbox as i32), Signal::SIGKILL)?;
    wait_for("the attached run to end", || {
        Ok(attached.try_wait()?.is_some())
    })?;
    let status = attached.wait().context("ctr run")?;
    assert_eq!(status.code(), Some(137), "{status}");
    containerd.wait_status("first", "STOPPED")?;
    for id in ["first", "second"] {
        containerd.ctr(&["task", "delete", id]).ok();
        containerd.ctr(&["container", "delete", id])?.success()?;
    }
    settled(&before, || Footprint::of(&containerd, &namespace))?;
    // The next container starts a new sandbox as usual.
    containerd
        .run_wasm(&["-d"], SLEEPER, "after", &[])?
        .success()?;
    containerd.running("after")?;
    Ok(())
}

#[test]
fn a_sandbox_its_cgroup_oom_kills_ends_its_guest_with_137_and_an_oom_event() -> Result<()> {
    let (tmp, containerd) =
        containerd_with(&[], &[("sleeper.wasm", SLEEPER), ("hostile.wasm", HOSTILE)])?;
    let namespace = containerd.namespace().to_owned();
    let before = Footprint::of(&containerd, &namespace)?;
    containerd
        .run_wasm(&["-d"], SLEEPER, "bystander", &[])?
        .success()?;
    let bystander = containerd.running("bystander")?;
    let mut events = containerd.events()?;
    let (found, seen) = mpsc::channel();
    let lines = BufReader::new(events.stdout.take().context("events")?).lines();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("/tasks/oom") {
                let _ = found.send(line);
            }
        }
    });

    // The guest's own limit (512 MiB) is far off; it waits for its cue, then allocates.
    let cue = tmp.path().join("cue");
    std::fs::create_dir(&cue)?;
    let mount = format!("type=bind,src={},dst=/cue,options=rbind:ro", cue.display());
    let attached = containerd
        .ctr_command()
        .args(["run", "--runtime", RUNTIME, "--memory-limit", "536870912"])
        .args(["--mount", &mount, HOSTILE, "hog"])
        .args(["/hostile.wasm", "after", "/cue/go", "alloc"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let sandbox = containerd.running("hog")?;
    // The cgroup's limit is lowered under the guest, as an operator or the kubelet's
    // eviction would: 64 MiB above what the sandbox uses now, far below the guest's limit.
    let memory = cgroup_dir(sandbox, "memory")?;
    let usage: u64 = std::fs::read_to_string(memory.join("memory.usage_in_bytes"))?
        .trim()
        .parse()?;
    std::fs::write(
        memory.join("memory.limit_in_bytes"),
        (usage + (64 << 20)).to_string(),
    )?;
    std::fs::write(cue.join("go"), "")?;

    let out = attached.wait_with_output().context("ctr run")?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(137), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("allocated 16 MiB"),
        "it ran until the cgroup's limit: {stdout}"
    );
    assert!(
        !stderr.contains("exceeded its memory limit"),
        "the kernel killed it, not the engine: {stderr}"
    );
    assert_eq!(
        containerd.task("bystander")?,
        Some((bystander, "RUNNING".to_owned())),
        "another container's sandbox died"
    );
    let oom = seen
        .recv_timeout(Duration::from_secs(10))
        .context("no /tasks/oom event for the container")?;
    let _ = events.kill();
    assert!(oom.contains("hog"), "{oom}");

    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "bystander"])?
        .success()?;
    containerd.wait_status("bystander", "STOPPED")?;
    for id in ["hog", "bystander"] {
        containerd.ctr(&["task", "delete", id]).ok();
        containerd.ctr(&["container", "delete", id])?.success()?;
    }
    settled(&before, || Footprint::of(&containerd, &namespace))?;
    Ok(())
}
