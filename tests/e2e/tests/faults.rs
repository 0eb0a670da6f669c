//! Faults a runc user expects containers to survive, or to end cleanly from: containerd
//! restarted under running containers, and the sandbox process killed under its guests.

use std::process::Stdio;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wasmcell_e2e::soak::settled;
use wasmcell_e2e::{Footprint, RUNTIME, containerd_with, wait_for};

const SLEEPER: &str = "example.com/sleeper:latest";

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
        containerd
            .ctr(&["task", "kill", "-s", "SIGKILL", id])?
            .success()?;
        containerd.wait_status(id, "STOPPED")?;
        containerd.ctr(&["task", "delete", id])?.success()?;
        containerd.ctr(&["container", "delete", id])?.success()?;
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
