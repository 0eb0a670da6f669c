//! Containers without an engine: `wasmcell run -d`, `ps`, `logs`, `stop` and `rm`, as Docker
//! users expect them and `spin up` lacks.
//!
//! A detached run is two processes in a session of their own: a supervisor, and under it the
//! `wasmcell run` that runs the guest (the same code as a foreground run, its stdout and stderr
//! going to files). The supervisor waits for it, forwards `stop`'s SIGTERM to it, and keeps its
//! exit status as a shell reports it (128 + signal when a signal ended it), as a shim keeps its
//! sandbox's. State lives under the user's runtime directory, a directory per container:
//!
//! - `config.json`: the name and the command line that was run;
//! - `supervisor`: the supervisor's PID and start time (a PID alone may be reused);
//! - `stdout.log`, `stderr.log`: the guest's output (and wasmcell's own lines on stderr);
//! - `exit`: the exit status, once it has ended.

use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Set in the environment of the `wasmcell run` a supervisor starts: it runs in the
/// foreground, whatever `-d` its command line holds.
pub const DETACHED_ENV: &str = "WASMCELL_DETACHED";

/// Where the containers' state lives: `$WASMCELL_STATE`, else `/run/wasmcell/containers` for
/// root, else `$XDG_RUNTIME_DIR/wasmcell/containers` (or a directory of the user's in /tmp).
fn state_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("WASMCELL_STATE") {
        return PathBuf::from(dir);
    }
    let uid = nix::unistd::geteuid();
    let base = match (uid.is_root(), std::env::var_os("XDG_RUNTIME_DIR")) {
        (true, _) => PathBuf::from("/run/wasmcell"),
        (false, Some(runtime)) => Path::new(&runtime).join("wasmcell"),
        (false, None) => std::env::temp_dir().join(format!("wasmcell-{uid}")),
    };
    base.join("containers")
}

/// The state directory, when it is this user's own (see [`check_private`]): every command
/// reads it through here, so that state another user planted is never acted on.
fn state_root() -> Result<PathBuf> {
    let root = state_path();
    if root.exists() {
        check_private(&root)?;
    }
    Ok(root)
}

/// A container's name, checked as Docker checks it (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`): it names a
/// directory, so nothing else may pass.
fn checked_name(name: &str) -> Result<&str> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        bail!(
            "invalid container name `{name}`: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, as with docker"
        );
    }
    Ok(name)
}

/// What `config.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Config {
    name: String,
    /// `wasmcell`'s arguments for the run (as typed, `-d` and `--name` included).
    command: Vec<String>,
    /// What runs, and its arguments: what `ps` shows (not the flags, which may hold secrets).
    target: String,
    args: Vec<String>,
    /// When it was created, in seconds since the epoch.
    created: u64,
    /// Removed once it ends (`--rm`).
    remove: bool,
}

/// One container's state directory.
struct Container {
    dir: PathBuf,
}

/// Where a container stands.
enum Status {
    Running,
    Exited(i32),
    /// Its supervisor is gone without keeping a status (killed, or the machine restarted).
    Gone,
}

impl Container {
    fn open(name: &str) -> Result<Container> {
        let dir = state_root()?.join(checked_name(name)?);
        if !dir.join("config.json").is_file() {
            bail!("no such container: {name} (`wasmcell ps -a` lists them)");
        }
        Ok(Container { dir })
    }

    fn config(&self) -> Result<Config> {
        let text = std::fs::read(self.dir.join("config.json"))?;
        Ok(serde_json::from_slice(&text)?)
    }

    /// The supervisor, if it still runs: its PID is checked against the start time recorded.
    fn supervisor(&self) -> Option<Pid> {
        let recorded = std::fs::read_to_string(self.dir.join("supervisor")).ok()?;
        let (pid, start) = recorded.trim().split_once(' ')?;
        let pid: i32 = pid.parse().ok()?;
        (start_time(pid)?.to_string() == start).then(|| Pid::from_raw(pid))
    }

    fn status(&self) -> Status {
        let exited = std::fs::read_to_string(self.dir.join("exit"))
            .ok()
            .and_then(|code| code.trim().parse().ok());
        match (exited, self.supervisor()) {
            (Some(code), _) => Status::Exited(code),
            (None, Some(_)) => Status::Running,
            (None, None) => Status::Gone,
        }
    }
}

/// The start time of process `pid` (field 22 of its stat, in clock ticks since boot), if it
/// runs (a zombie has ended, whoever is yet to reap it).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if *fields.first()? == "Z" {
        return None;
    }
    // After the command: state is field 3, so start time (22) is at index 19.
    fields.get(19)?.parse().ok()
}

/// Starts `wasmcell run` detached: its state directory, and a supervisor in a session of its
/// own, which records itself before it starts the run. Prints the container's name, as
/// `docker run -d` prints its ID.
pub fn detach(name: Option<&str>, target: &str, args: &[String], remove: bool) -> Result<()> {
    let root = state_path();
    private_dir(&root)?;
    let given = name;
    let (name, dir) = loop {
        let name = match given {
            Some(name) => checked_name(name)?.to_owned(),
            None => generated_name(&root, target),
        };
        let dir = root.join(&name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break (name, dir),
            // Another `run -d` took the generated name first: the next number.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && given.is_some() => {
                bail!(
                    "the container name {name} is already in use: `wasmcell rm -f {name}` removes that container, or give another --name"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    };
    let config = Config {
        name: name.clone(),
        command: std::env::args().skip(1).collect(),
        target: target.to_owned(),
        args: args.to_vec(),
        created: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        remove,
    };
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config)?)?;
    let exe = std::env::current_exe()?;
    let stdout = std::fs::File::create(dir.join("stdout.log"))?;
    let stderr = std::fs::File::create(dir.join("stderr.log"))?;
    let mut supervisor = std::process::Command::new(exe);
    supervisor
        .arg("supervise")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe; the closure touches nothing else.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut supervisor, || {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = supervisor.spawn().context("cannot start the container")?;
    // Back only once the supervisor has recorded itself: until then the container would look
    // gone, and `rm` would take its directory from under it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("supervisor").exists() {
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            let said = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            bail!("the container {name} did not start: {}", said.trim());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("{name}");
    Ok(())
}

/// Checks that `dir` is this user's own directory and its parent this user's or root's,
/// neither a link another user planted (a state directory in /tmp is where one could): the
/// logs in it are the guest's output, and its PIDs are what `stop` signals.
fn check_private(dir: &Path) -> Result<()> {
    owned_dir(dir.parent().unwrap_or(dir), true)?;
    owned_dir(dir, false)
}

/// Checks that `path` is a directory (not a link to one) of this user's, or root's when
/// `or_root`.
fn owned_dir(path: &Path, or_root: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() || !(meta.uid() == me || (or_root && meta.uid() == 0)) {
        bail!(
            "{} is not a directory of this user's: containers' state cannot be kept there (set WASMCELL_STATE)",
            path.display()
        );
    }
    Ok(())
}

/// Makes `dir` (and what is missing above it) readable by this user alone, checked by
/// [`check_private`] before anything is made through its parent.
fn private_dir(dir: &Path) -> Result<()> {
    let create = |dir: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))
    };
    let parent = dir.parent().unwrap_or(dir);
    create(parent)?;
    owned_dir(parent, true)?;
    create(dir)?;
    owned_dir(dir, false)
}

/// A name for a container given none: the target's file stem and a number that is free.
fn generated_name(root: &Path, target: &str) -> String {
    let stem: String = Path::new(target.split(['#', ':', '@']).next().unwrap_or(target))
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c))
        .collect();
    let stem = match stem.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() => stem,
        _ => "wasm".to_owned(),
    };
    (1..)
        .map(|n| format!("{stem}-{n}"))
        .find(|name| !root.join(name).exists())
        .expect("a free name")
}

/// Runs the container in `dir` (what `supervise DIR` does, in the detached session): starts
/// its `wasmcell run`, forwards SIGTERM and SIGINT to it, and keeps its exit status.
pub fn supervise(dir: &Path) -> Result<u8> {
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    let config: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    let me = std::process::id();
    let start = start_time(me as i32).context("cannot read this process's start time")?;
    let mut signals = SigSet::empty();
    for signal in FORWARDED.into_iter().chain([Signal::SIGCHLD]) {
        signals.add(signal);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)?;
    let mut run = std::process::Command::new(std::env::current_exe()?);
    run.args(&config.command).env(DETACHED_ENV, "1");
    // SAFETY: sigprocmask is async-signal-safe; the guest's run must get signals as usual.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut run, move || {
            sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&signals), None).map_err(std::io::Error::from)
        });
    }
    let mut child = run.spawn()?;
    std::fs::write(dir.join("supervisor"), format!("{me} {start}\n"))?;
    let pid = Pid::from_raw(child.id() as i32);
    let status = loop {
        match signals.wait()? {
            Signal::SIGCHLD => {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
            }
            signal => {
                let _ = kill(pid, signal);
            }
        }
    };
    let code = status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    });
    match config.remove {
        true => std::fs::remove_dir_all(dir)?,
        false => std::fs::write(dir.join("exit"), format!("{code}\n"))?,
    }
    Ok(0)
}

/// The signals a supervisor passes on to its run (any other ends it, as for any process).
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// List the containers `run -d` started.
#[derive(Args)]
pub struct PsArgs {
    /// Show all containers, not only running ones.
    #[arg(long, short = 'a')]
    all: bool,
    /// Print only their names.
    #[arg(long, short = 'q')]
    quiet: bool,
}

pub fn ps(args: PsArgs) -> Result<()> {
    let mut containers = Vec::new();
    if let Ok(entries) = std::fs::read_dir(state_root()?) {
        for entry in entries.flatten() {
            let container = Container { dir: entry.path() };
            let Ok(config) = container.config() else {
                continue;
            };
            if checked_name(&config.name).is_err() {
                continue;
            }
            let status = container.status();
            if args.all || matches!(status, Status::Running) {
                containers.push((config, status));
            }
        }
    }
    containers.sort_by_key(|(config, _)| std::cmp::Reverse(config.created));
    if !args.quiet {
        println!("{:<24} {:<16} COMMAND", "NAME", "STATUS");
    }
    for (config, status) in containers {
        if args.quiet {
            println!("{}", config.name);
            continue;
        }
        let status = match status {
            Status::Running => "Up".to_owned(),
            Status::Exited(code) => format!("Exited ({code})"),
            Status::Gone => "Exited (unknown)".to_owned(),
        };
        let command: Vec<&str> = std::iter::once(config.target.as_str())
            .chain(config.args.iter().map(String::as_str))
            .collect();
        println!("{:<24} {status:<16} {}", config.name, command.join(" "));
    }
    Ok(())
}

/// Print a container's output: its stdout on stdout, its stderr on stderr.
#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing what it writes until it ends.
    #[arg(long, short = 'f')]
    follow: bool,
    /// The container.
    name: String,
}

pub fn logs(args: LogsArgs) -> Result<()> {
    let container = Container::open(&args.name)?;
    let mut out = std::fs::File::open(container.dir.join("stdout.log"))?;
    let mut err = std::fs::File::open(container.dir.join("stderr.log"))?;
    loop {
        let running = matches!(container.status(), Status::Running);
        copy_new(&mut out, &mut std::io::stdout())?;
        copy_new(&mut err, &mut std::io::stderr())?;
        if !args.follow || !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Copies what `file` gained since the last call to `to` (a read leaves it at its end).
fn copy_new(file: &mut std::fs::File, to: &mut impl Write) -> Result<()> {
    let mut new = Vec::new();
    file.read_to_end(&mut new)?;
    to.write_all(&new)?;
    to.flush().map_err(Into::into)
}

/// Stop running containers: SIGTERM (a server finishes its requests and exits 0; a command
/// ends at once), then SIGKILL after the grace period, as `docker stop` does.
#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait before SIGKILL.
    #[arg(long, short = 't', default_value_t = 10)]
    time: u64,
    /// The containers.
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn stop(args: StopArgs) -> Result<()> {
    for name in &args.names {
        let container = Container::open(name)?;
        stop_one(&container, Duration::from_secs(args.time))?;
        println!("{name}");
    }
    Ok(())
}

/// SIGTERM to the supervisor (forwarded to the run), then SIGKILL to the session after `grace`.
fn stop_one(container: &Container, grace: Duration) -> Result<()> {
    let Some(supervisor) = container.supervisor() else {
        return Ok(());
    };
    let signal = |target: Pid, signal: Signal| match kill(target, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "cannot signal the container's processes: {e}"
        )),
    };
    signal(supervisor, Signal::SIGTERM)?;
    let ended = |within: Duration| {
        let deadline = Instant::now() + within;
        while container.supervisor().is_some() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    };
    if ended(grace) {
        return Ok(());
    }
    // The session: the supervisor and the run under it.
    signal(Pid::from_raw(-supervisor.as_raw()), Signal::SIGKILL)?;
    if !ended(Duration::from_secs(10)) {
        bail!("the container's processes did not end after SIGKILL");
    }
    match container.config()?.remove {
        true => std::fs::remove_dir_all(&container.dir)?,
        false if !container.dir.join("exit").exists() => {
            std::fs::write(container.dir.join("exit"), "137\n")?
        }
        false => {}
    }
    Ok(())
}

/// Remove containers and their logs.
#[derive(Args)]
pub struct RmArgs {
    /// Stop a running container first (SIGKILL), as `docker rm -f`.
    #[arg(long, short = 'f')]
    force: bool,
    /// The containers.
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn rm(args: RmArgs) -> Result<()> {
    for name in &args.names {
        let container = Container::open(name)?;
        if matches!(container.status(), Status::Running) {
            if !args.force {
                bail!(
                    "container {name} is running: `wasmcell stop {name}` first, or `wasmcell rm -f {name}`"
                );
            }
            stop_one(&container, Duration::ZERO)?;
        }
        std::fs::remove_dir_all(&container.dir)
            .with_context(|| format!("cannot remove {}", container.dir.display()))?;
        println!("{name}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_docker_checks_them() {
        for good in ["web", "web-1", "a.b_c", "X9"] {
            assert!(checked_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", "-x", ".x", "a b", &"x".repeat(129)] {
            assert!(checked_name(bad).is_err(), "{bad}");
        }
    }
}
