//! Output is never lost (issue 26): all of a short task's and exec's output reaches the client
//! before its exit is published, as with runc.

use anyhow::{Result, ensure};
use wasmcell_e2e::containerd_with;

/// `ctr task exec` of a command that prints a line, many times over, while the container's
/// init keeps running: every exec's line arrives (it was lost in 1-2 of 60 execs, and once a
/// `ctr run --rm` of a pulled image printed nothing, because the exit reached `ctr` before it had
/// read the guest's last bytes out of the FIFO, and `ctr` stops reading at the exit).
#[test]
fn every_execs_output_reaches_ctr_before_its_exit() -> Result<()> {
    let (_tmp, containerd) = containerd_with(
        &[],
        &[
            ("sleeper.wasm", "example.com/sleeper:latest"),
            ("hello.wasm", "example.com/hello:latest"),
        ],
    )?;
    containerd
        .run_wasm(
            &["-d"],
            "example.com/sleeper:latest",
            "init",
            &["/sleeper.wasm", "600"],
        )?
        .success()?;
    containerd.running("init")?;
    let mut lost = Vec::new();
    for n in 0..120 {
        let exec = containerd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &format!("e{n}"),
            "init",
            "/sleeper.wasm",
            "0",
        ])?;
        if exec.stdout != "sleeper started\nsleeper done\n" || exec.code != Some(0) {
            lost.push((n, exec));
        }
    }
    ensure!(
        lost.is_empty(),
        "{} of 120 execs lost output: {lost:?}",
        lost.len()
    );
    Ok(())
}
