//! Output is never lost (issue 26): all of a short task's and exec's output reaches the client
//! before its exit is published, as with runc, on a machine whose cores are all busy.
//! Docker's and CRI's clients are counted in docker.rs and kubernetes.rs.

use anyhow::{Result, ensure};
use wasmcell_e2e::{CpuLoad, Ran, containerd_with};

/// What a run that lost output printed, by its number.
type Lost = Vec<(usize, Ran)>;

fn check(what: &str, runs: usize, lost: &Lost) -> Result<()> {
    ensure!(
        lost.is_empty(),
        "{} of {runs} {what} lost output: {lost:?}",
        lost.len()
    );
    Ok(())
}

/// `ctr task exec` of a command that prints two lines, and `ctr run --rm` of a short task that
/// prints to stdout and stderr, many times over with every core busy: every line arrives. Lines
/// were lost in 1-2 of 60 execs under load, and once a `ctr run --rm` of a pulled image printed
/// nothing: the exit reached `ctr` while the output still sat in the FIFO, and `ctr` stops
/// reading at the exit.
#[test]
fn every_execs_and_short_tasks_output_reaches_ctr_before_its_exit() -> Result<()> {
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
    let _load = CpuLoad::on_every_core();

    const EXECS: usize = 200;
    let mut lost = Lost::new();
    for n in 0..EXECS {
        let exec_id = format!("e{n}");
        let exec = containerd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            "init",
            "/sleeper.wasm",
            "0",
        ])?;
        if exec.stdout != "sleeper started\nsleeper done\n" || exec.code != Some(0) {
            lost.push((n, exec));
        }
    }
    check("execs", EXECS, &lost)?;

    const TASKS: usize = 40;
    for n in 0..TASKS {
        let task = containerd.run_wasm(
            &["--rm"],
            "example.com/hello:latest",
            &format!("short{n}"),
            &[
                "/hello.wasm",
                &format!("line{n}"),
                &format!("stderr=err{n}"),
            ],
        )?;
        let expected = format!("Hello from Wasm!\narg: line{n}\n");
        if task.stdout != expected || task.stderr != format!("err{n}\n") || task.code != Some(0) {
            lost.push((n, task));
        }
    }
    check("short tasks", TASKS, &lost)
}
