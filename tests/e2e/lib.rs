//! The end-to-end harness: real binaries, real containerd, private instances.
//!
//! - [`wasmcell`]: the built `wasmcell` binary (the one under test);
//! - [`guest`]: a test guest from `guests/`, built on first use;
//! - [`Containerd`]: a private containerd 1.7 (own root, state, sockets and namespace in a temp
//!   dir; our shim links first on its PATH), stopped by PID when dropped.
//!
//! containerd comes from `scripts/setup.sh` (Debian trixie's package, extracted into
//! `$WASMCELL_TOOLS`, default `~/.cache/wasmcell/tools`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The `wasmcell` binary built with this test (`target/<profile>/wasmcell`), or `$WASMCELL_BIN`.
pub fn wasmcell() -> PathBuf {
    if let Some(bin) = std::env::var_os("WASMCELL_BIN") {
        return bin.into();
    }
    // Test executables live in target/<profile>/deps/, other binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.ancestors().find(|dir| dir.join("wasmcell").is_file());
    let bin = profile_dir
        .expect("the wasmcell binary beside this one: run `cargo build -p wasmcell` first");
    bin.join("wasmcell")
}

/// Where containerd and friends were installed by `scripts/setup.sh`.
pub fn tools() -> PathBuf {
    std::env::var_os("WASMCELL_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/wasmcell/tools")
        })
}

/// The path of a test guest, e.g. `guest("hello.wasm")`. Builds the guests once per test binary.
pub fn guest(name: &str) -> PathBuf {
    static GUESTS: OnceLock<PathBuf> = OnceLock::new();
    let dir = GUESTS.get_or_init(|| {
        let out = Command::new(repo().join("scripts/build-guests.sh"))
            .output()
            .expect("run build-guests.sh");
        assert!(
            out.status.success(),
            "building guests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim())
    });
    let path = dir.join(name);
    assert!(path.exists(), "no guest {name} in {}", dir.display());
    path
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
}

impl Ran {
    fn of(output: Output) -> Ran {
        Ran {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            code: output.status.code(),
        }
    }

    /// Fails with everything printed unless the command exited 0.
    pub fn success(self) -> Result<Ran> {
        ensure!(
            self.code == Some(0),
            "command failed ({:?}):\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }
}

/// Runs a command to completion, with a deadline so a hung test fails instead of stalling CI.
pub fn run(command: &mut Command) -> Result<Ran> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {command:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{command:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Ran::of(child.wait_with_output()?))
}

/// `wasmcell build WASM --tag TAG --output DIR/NAME.tar [EXTRA...]`, returning the archive path.
pub fn build_image(wasm: &Path, tag: &str, dir: &Path, extra: &[&str]) -> Result<PathBuf> {
    let archive = dir.join(format!("{}.tar", tag.replace(['/', ':'], "_")));
    run(Command::new(wasmcell())
        .arg("build")
        .arg(wasm)
        .args(["--tag", tag, "--output"])
        .arg(&archive)
        .args(extra))?
    .success()?;
    Ok(archive)
}

/// A private containerd 1.7 whose PATH starts with our shim links.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    namespace: String,
}

impl Containerd {
    /// Starts containerd with extra environment (e.g. a canary that must not reach guests) and
    /// waits until it answers.
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Containerd> {
        static INSTANCE: AtomicU32 = AtomicU32::new(0);
        let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new().prefix("wcd-").tempdir_in("/tmp")?;
        let root = dir.path();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        for shim in ["containerd-shim-wasmtime-v1", "containerd-shim-wasmedge-v1"] {
            std::os::unix::fs::symlink(wasmcell(), bin.join(shim))?;
        }
        let config = root.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"#,
                root = root.display()
            ),
        )?;
        let path = format!(
            "{}:{}:{}",
            bin.display(),
            tools().join("usr/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(root.join("containerd.log"))?;
        let child = Command::new(tools().join("usr/bin/containerd"))
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("WASMCELL_CACHE_DIR", root.join("cache"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd (run scripts/setup.sh to install it)")?;
        let containerd = Containerd {
            dir,
            child,
            namespace: format!("wasmcell-test-{}-{instance}", std::process::id()),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while containerd.ctr(&["version"])?.code != Some(0) {
            ensure!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(containerd)
    }

    /// Starts containerd with no extra environment.
    pub fn start() -> Result<Containerd> {
        Containerd::start_with_env(&[])
    }

    /// The instance's directory (root, state, sockets, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    /// A `ctr` command against this instance and its namespace.
    pub fn ctr_command(&self) -> Command {
        let mut command = Command::new(tools().join("usr/bin/ctr"));
        command
            .arg("--address")
            .arg(self.dir().join("containerd.sock"))
            .args(["--namespace", &self.namespace]);
        command
    }

    /// Runs `ctr ARGS...` to completion.
    pub fn ctr(&self, args: &[&str]) -> Result<Ran> {
        run(self.ctr_command().args(args))
    }

    /// Imports an image archive (all platforms: Wasm images are never the host's).
    pub fn import(&self, archive: &Path) -> Result<()> {
        self.ctr(&[
            "images",
            "import",
            "--all-platforms",
            archive.to_str().expect("utf-8 path"),
        ])?
        .success()?;
        Ok(())
    }

    /// The process ids of every task's shim, from `ctr task ls`.
    pub fn task_pids(&self) -> Result<Vec<(String, u32, String)>> {
        let out = self.ctr(&["task", "ls"])?.success()?;
        Ok(out
            .stdout
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut cols = line.split_whitespace();
                Some((
                    cols.next()?.to_owned(),
                    cols.next()?.parse().ok()?,
                    cols.next()?.to_owned(),
                ))
            })
            .collect())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Leave nothing behind even when a test failed half-way: end its tasks, then containerd.
        if let Ok(tasks) = self.task_pids() {
            for (id, _, _) in tasks {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
                let _ = self.ctr(&["task", "delete", "--force", &id]);
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir().join("root"))
            .stderr(Stdio::null())
            .status();
    }
}

/// The PIDs of shim daemons serving `namespace` (their command line is
/// `... -namespace NAMESPACE -id ID ...`).
pub fn shim_pids(namespace: &str) -> Vec<i32> {
    let needle = format!("\0-namespace\0{namespace}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
        .collect()
}
