//! The docs as a user runs them: every fenced block marked ```` ```sh runnable ```` in
//! README.md and docs/*.md runs, in order, as written, against a private containerd, Docker
//! Engine and registry (at `127.0.0.1:5000`, where the examples push), with `wasmcell`, `ctr`
//! and `docker` first on `PATH`. A doc that drifts from the product fails here.
//!
//! Each block runs in `bash -euo pipefail` in one working directory per file (so a block may
//! use what an earlier one made), in a process group of its own: a block must stop what it
//! starts (a server in the background, a container), and one that leaves a process behind
//! fails. The repository's `scripts/`, `guests/` and `examples/` are linked into the working
//! directory, so paths read as they do from a checkout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use wasmcell_e2e::{Docker, Registry, repo, tools, wasmcell};

/// The info string that marks a block as runnable.
const MARK: &str = "sh runnable";

/// How long one block may take (building the guests from cold is the longest).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A runnable block: where it is, and its text.
struct Block {
    file: String,
    line: usize,
    text: String,
}

/// The runnable blocks of `markdown`, in order, each with the line of its opening fence.
fn runnable_blocks(file: &str, markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let mut fenced = false;
    for (number, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match (&mut open, trimmed.strip_prefix("```")) {
            (Some(_), Some(rest)) if rest.trim().is_empty() => {
                blocks.extend(open.take());
                fenced = false;
            }
            (Some(block), _) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, Some(info)) if !fenced && info.trim() == MARK => {
                open = Some(Block {
                    file: file.to_owned(),
                    line: number + 1,
                    text: String::new(),
                });
            }
            (None, Some(_)) => fenced = !fenced,
            (None, None) => {}
        }
    }
    blocks
}

#[test]
fn fences_mark_what_runs() {
    let markdown = "```\nnot this\n```\n```sh runnable\necho one\n\necho two\n```\n\
                    ```sh\nnor this\n```\n```sh runnable\necho three\n```\n";
    let blocks = runnable_blocks("x.md", markdown);
    let texts: Vec<(usize, &str)> = blocks.iter().map(|b| (b.line, b.text.as_str())).collect();
    assert_eq!(texts, [(4, "echo one\n\necho two\n"), (12, "echo three\n")]);
}

/// The docs in the order a reader meets them: the README, then docs/ by name.
fn docs() -> Result<Vec<PathBuf>> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))?
        .map(|entry| Ok(entry?.path()))
        .collect::<Result<_>>()?;
    docs.retain(|path| path.extension().is_some_and(|e| e == "md"));
    docs.sort();
    docs.insert(0, repo().join("README.md"));
    Ok(docs)
}

/// A working directory that reads like a checkout: the repository's `scripts/` and `guests/`
/// linked in, and `bin/` holding `wasmcell`.
fn workdir() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for linked in ["scripts", "guests"] {
        std::os::unix::fs::symlink(repo().join(linked), dir.path().join(linked))?;
    }
    std::fs::create_dir(dir.path().join("bin"))?;
    std::os::unix::fs::symlink(wasmcell(), dir.path().join("bin/wasmcell"))?;
    Ok(dir)
}

/// The command lines of the processes in process group `group`.
fn members(group: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            // A zombie has ended: orphans are reaped by whoever adopted them, maybe not yet.
            let alive = *fields.first()? != "Z";
            (alive && fields.get(2)?.parse::<u32>().ok()? == group).then(|| {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            })
        })
        .collect()
}

/// Reads `pipe` to its end on a thread of its own.
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Runs `block` in `dir` with `env`; what went wrong, if anything.
fn run_block(block: &Block, dir: &Path, env: &[(String, String)]) -> Result<Option<String>> {
    use std::os::unix::process::CommandExt;
    let started = Instant::now();
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &block.text])
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > BLOCK_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever the block left running in its group ends now; that it was left is a failure.
    let left = members(child.id());
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    let problem = match status {
        None => Some(format!("did not finish within {BLOCK_TIMEOUT:?}")),
        Some(status) if !status.success() => Some(format!("failed ({status})")),
        Some(_) if !left.is_empty() => Some(format!("left processes running: {left:?}")),
        Some(_) => None,
    };
    Ok(problem.map(|problem| {
        format!(
            "{}:{} {problem}\n--- block\n{}--- stdout\n{stdout}--- stderr\n{stderr}",
            block.file, block.line, block.text
        )
    }))
}

#[test]
fn every_runnable_block_of_the_docs_runs_as_written() -> Result<()> {
    let docs = docs()?;
    let mut blocks = Vec::new();
    for doc in &docs {
        let name = doc.strip_prefix(repo())?.display().to_string();
        let text = std::fs::read_to_string(doc).with_context(|| name.clone())?;
        blocks.push((name.clone(), runnable_blocks(&name, &text)));
    }
    let count: usize = blocks.iter().map(|(_, b)| b.len()).sum();
    ensure!(count >= 8, "only {count} runnable blocks in the docs");

    let registry = Registry::start_at("127.0.0.1:5000")
        .context("the docs push to a registry at 127.0.0.1:5000: is something else there?")?;
    let docker = Docker::start_bridged()?;
    let mut failures = Vec::new();
    for (_, doc_blocks) in &blocks {
        // Each file from a clean slate: its own directory, store and cache.
        let dir = workdir()?;
        let path = std::env::join_paths(
            [
                dir.path().join("bin"),
                tools().join("usr/bin"),
                tools().join("usr/sbin"),
            ]
            .into_iter()
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
        )?;
        let containerd = docker.containerd();
        let env = [
            ("PATH", path.to_string_lossy().into_owned()),
            ("DOCKER_HOST", docker.host()),
            (
                "CONTAINERD_ADDRESS",
                containerd.address().display().to_string(),
            ),
            ("CONTAINERD_NAMESPACE", containerd.namespace().to_owned()),
            (
                "WASMCELL_STORE",
                dir.path().join("store").display().to_string(),
            ),
            (
                "WASMCELL_CACHE_DIR",
                dir.path().join("cache").display().to_string(),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        for block in doc_blocks {
            if let Some(failure) = run_block(block, dir.path(), &env)? {
                failures.push(failure);
            }
        }
    }
    drop(registry);
    ensure!(
        failures.is_empty(),
        "{} of {count} runnable blocks failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    Ok(())
}

/// The first example `wasmcell up --help` gives runs from a checkout as written (it named an
/// app that only builds elsewhere once).
#[test]
fn the_first_example_of_up_help_serves() -> Result<()> {
    let help = wasmcell_e2e::run(Command::new(wasmcell()).args(["up", "--help"]))?.success()?;
    let example = help
        .stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("wasmcell up "))
        .context("an example in up --help")?;
    let args: Vec<&str> = example
        .split('#')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    wasmcell_e2e::guest("hello.wasm"); // builds the guests the example names
    let port = wasmcell_e2e::free_port()?;
    let state = tempfile::tempdir()?;
    let mut up = Command::new(wasmcell())
        .current_dir(repo())
        .arg("up")
        .args(&args)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let served = wasmcell_e2e::wait_http(&format!("http://127.0.0.1:{port}/hello"));
    let _ = up.kill();
    let _ = up.wait();
    served.with_context(|| format!("`wasmcell up {example}` from up --help"))
}
