//! The end-to-end harness: real binaries, real containerd, private instances.
//!
//! - [`wasmcell`]: the built `wasmcell` binary (the one under test);
//! - [`guest`]: a test guest from `guests/`, built on first use;
//! - [`Containerd`]: a private containerd 1.7 (own root, state, sockets and namespace in a temp
//!   dir; our shim links first on its PATH), stopped by PID when dropped;
//! - [`Docker`]: a private Docker Engine 26 with the containerd image store, on its own private
//!   containerd, stopped by PID when dropped.
//!
//! - [`cri::Cri`]: containerd with its CRI plugin, CNI pod networking and pod cgroups, and a
//!   client making kubelet's calls; [`stream`]: `kubectl exec`/`port-forward` over WebSocket;
//! - [`linux_image`]: native images (pause, busybox) for the runc baselines.
//!
//! containerd and Docker come from `scripts/setup.sh` (Debian trixie's packages, extracted into
//! `$WASMCELL_TOOLS`, default `~/.cache/wasmcell/tools`).

pub mod cri;
pub mod linux_image;
pub mod soak;
pub mod stream;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest as _, Sha256};

/// The repository root: from the manifest directory cargo gives the tests it runs, else the
/// one this was built in. Cargo reuses this library's build across checkouts that share a
/// target directory (a CI clone and a working tree), so the built-in path may name another
/// checkout, or one since deleted.
pub fn repo() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.join("../../scripts/build-guests.sh").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
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

/// A background process (a server under test or under load) killed and reaped when dropped,
/// so a failing test or benchmark leaves none behind. Its output is discarded.
pub struct Background(Child);

impl Background {
    /// Spawns `command` with no stdin and its output discarded.
    pub fn spawn(command: &mut Command) -> Result<Background> {
        Background::spawn_logging(command, Stdio::null())
    }

    /// Spawns `command` with no stdin, its stdout discarded and its stderr to `stderr` (a
    /// file the test reads what the process said from).
    pub fn spawn_logging(command: &mut Command, stderr: impl Into<Stdio>) -> Result<Background> {
        Ok(Background(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .with_context(|| format!("spawn {command:?}"))?,
        ))
    }

    /// Its PID.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGTERM and waits (at most 10 s) for the process to end.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "still running 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command to completion, with a deadline so a hung test fails instead of stalling CI.
/// Its output is read as it comes: a command that prints more than a pipe holds (64 KiB)
/// would otherwise block until the deadline.
pub fn run(command: &mut Command) -> Result<Ran> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {command:?}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{command:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Ran::of(Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }))
}

/// An HTTP reply as `curl` saw it.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body, as text.
    pub body: String,
}

/// `curl ARGS...`, as a user would type it; fails if curl cannot connect.
pub fn curl(args: &[&str]) -> Result<Reply> {
    let out = run(Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(["--write-out", "\n%{http_code} %{content_type}"])
        .args(args))?
    .success()?;
    let (body, meta) = out
        .stdout
        .rsplit_once('\n')
        .context("curl printed no status")?;
    let (status, content_type) = meta.split_once(' ').unwrap_or((meta, ""));
    Ok(Reply {
        status: status.parse().context("curl's status code")?,
        content_type: content_type.to_owned(),
        body: body.to_owned(),
    })
}

/// Checks the routes of the HTTP example (`guests/hello-http`) at `base`, as the README shows
/// them: the greeting, the echo with its content type, and a 404.
pub fn assert_serves_hello_http(base: &str) -> Result<()> {
    let root = curl(&[&format!("{base}/")])?;
    ensure!(
        (root.status, root.body.as_str()) == (200, "Hello from a Wasm container!\n"),
        "GET /: {root:?}"
    );
    let json = r#"{"message":"Hello"}"#;
    let echo = curl(&[
        &format!("{base}/echo"),
        "-d",
        json,
        "-H",
        "Content-type: application/json",
    ])?;
    ensure!(
        (echo.status, echo.body.as_str(), echo.content_type.as_str())
            == (200, json, "application/json"),
        "POST /echo: {echo:?}"
    );
    let missing = curl(&[&format!("{base}/nothing-here")])?;
    ensure!(missing.status == 404, "GET /nothing-here: {missing:?}");
    // Every request starts from the component's initial state, however the host reuses the
    // memory of earlier instances.
    let first = curl(&[&format!("{base}/state")])?;
    ensure!(
        first.status == 200
            && first
                .body
                .starts_with("counter=42 bss=clean heap=clean scattered=clean pages="),
        "GET /state: {first:?}"
    );
    for _ in 0..4 {
        let again = curl(&[&format!("{base}/state")])?;
        ensure!(
            again.body == first.body,
            "GET /state again: {again:?} after {first:?}"
        );
    }
    Ok(())
}

/// The directory of `pid`'s cgroup for `controller`: its v1 hierarchy's (the test hosts are
/// hybrid v1), or on a cgroup v2 host the one unified directory.
pub fn cgroup_dir(pid: u32, controller: &str) -> Result<PathBuf> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let path = cgroups
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(':')?;
            rest.split_once(':')
        })
        .find(|(controllers, _)| {
            if unified {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == controller)
            }
        })
        .map(|(_, path)| path.trim_start_matches('/'))
        .with_context(|| format!("no {controller} cgroup for {pid}"))?;
    let root = Path::new("/sys/fs/cgroup");
    Ok(if unified {
        root.join(path)
    } else {
        root.join(controller).join(path)
    })
}

/// Waits until `url` answers at all.
pub fn wait_http(url: &str) -> Result<()> {
    wait_for(&format!("{url} to answer"), || Ok(curl(&[url]).is_ok()))
}

/// A TCP port nothing listens on now, for a test's server.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `wasmcell build WASM --tag TAG --output DIR/NAME.tar [EXTRA...]`, returning the archive path.
/// (`dir/store` is the local image store `wasmcell build` also writes to.)
pub fn build_image(wasm: &Path, tag: &str, dir: &Path, extra: &[&str]) -> Result<PathBuf> {
    let archive = dir.join(format!("{}.tar", tag.replace(['/', ':'], "_")));
    run(Command::new(wasmcell())
        .env("WASMCELL_STORE", dir.join("store"))
        .arg("build")
        .arg(wasm)
        .args(["--tag", tag, "--output"])
        .arg(&archive)
        .args(extra))?
    .success()?;
    Ok(archive)
}

/// The shim binaries a private containerd finds first on its PATH, each a link to the
/// `wasmcell` under test.
const SHIM_NAMES: [&str; 5] = [
    "containerd-shim-wasmtime-v1",
    "containerd-shim-wasmedge-v1",
    "containerd-shim-spin-v1",
    "containerd-shim-spin-v2",
    "containerd-shim-slight-v1",
];

/// The containerd namespace CRI keeps Kubernetes' pods, containers and images in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// An OCI archive of an image whose one layer is the binary itself, of `media_type`, under a
/// standard image config (as runwasi's and wasm-pkg's tools build them).
pub fn wasm_layer_archive(wasm: &[u8], media_type: &str, name: &str, path: &Path) -> Result<()> {
    let digest = |bytes: &[u8]| format!("sha256:{:x}", Sha256::digest(bytes));
    let config = serde_json::json!({
        "architecture": "wasm", "os": "wasip1",
        "config": {"Entrypoint": ["/hello.wasm"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": media_type, "digest": digest(wasm), "size": wasm.len(),
                    "annotations": {"org.opencontainers.image.title": "hello.wasm"}}],
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest),
                       "size": manifest.len(), "platform": {"os": "wasip1", "architecture": "wasm"},
                       "annotations": {"io.containerd.image.name": name}}],
    })
    .to_string()
    .into_bytes();
    let mut tar = tar::Builder::new(std::fs::File::create(path)?);
    let mut add = |name: String, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json".into(), &index)?;
    for blob in [wasm, &config[..], &manifest[..]] {
        add(format!("blobs/sha256/{}", &digest(blob)[7..]), blob)?;
    }
    tar.finish()?;
    Ok(())
}

/// A private containerd 1.7 whose PATH starts with our shim links.
pub struct Containerd {
    daemon: Daemon,
    dir: tempfile::TempDir,
    namespace: String,
    /// Extra environment it was started with, for a restart.
    env: Vec<(String, String)>,
}

impl Containerd {
    /// Starts containerd with extra environment (e.g. a canary that must not reach guests) and
    /// waits until it answers.
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Containerd> {
        Containerd::start_with(&wasmcell(), env)
    }

    /// Starts containerd with `shim` (a `wasmcell` binary, e.g. an older build for a benchmark)
    /// behind the shim names, and extra environment.
    pub fn start_with(shim: &Path, env: &[(&str, &str)]) -> Result<Containerd> {
        Containerd::launch(shim, env, None)
    }

    /// Starts containerd; with `cri` (the CRI plugin's configuration), the CRI plugin is enabled
    /// and `ctr` commands use CRI's namespace, `k8s.io`.
    pub(crate) fn launch(
        shim: &Path,
        env: &[(&str, &str)],
        cri: Option<&dyn Fn(&Path) -> String>,
    ) -> Result<Containerd> {
        let (dir, namespace) = Containerd::configure(Some(shim), cri)?;
        Containerd::start_in(dir, namespace, env)
    }

    /// A private containerd's directory and `config.toml`, not started yet: `shim` linked in
    /// its `bin/` (first on its PATH) behind every shim name, or nothing there when `None` (a
    /// test installs them, as `wasmcell install --prefix DIR` does). Returns the directory and
    /// the namespace its `ctr` commands will use.
    pub(crate) fn configure(
        shim: Option<&Path>,
        cri: Option<&dyn Fn(&Path) -> String>,
    ) -> Result<(tempfile::TempDir, String)> {
        static INSTANCE: AtomicU32 = AtomicU32::new(0);
        let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new().prefix("wcd-").tempdir_in("/tmp")?;
        let root = dir.path();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        // As `wasmcell install` links them.
        if let Some(shim) = shim {
            for runtime in SHIM_NAMES {
                std::os::unix::fs::symlink(shim, bin.join(runtime))?;
            }
        }
        let mut disabled = vec![
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.tracing.processor.v1.otlp",
            "io.containerd.internal.v1.tracing",
        ];
        if cri.is_none() {
            disabled.push("io.containerd.grpc.v1.cri");
        }
        std::fs::write(
            root.join("config.toml"),
            format!(
                r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = {disabled:?}
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  level = "{level}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
{cri}"#,
                root = root.display(),
                // Debug for the tests' logs; the benches ask for less (bench/run.sh), since at
                // debug the shims log every frame they exchange with containerd.
                level = std::env::var("WASMCELL_CONTAINERD_LOG_LEVEL")
                    .unwrap_or_else(|_| "debug".to_owned()),
                cri = cri.map(|section| section(root)).unwrap_or_default(),
            ),
        )?;
        let namespace = if cri.is_some() {
            CRI_NAMESPACE.to_owned()
        } else {
            format!("wasmcell-test-{}-{instance}", std::process::id())
        };
        Ok((dir, namespace))
    }

    /// Starts the containerd [`Containerd::configure`] prepared, with extra environment, and
    /// waits until it answers.
    pub(crate) fn start_in(
        dir: tempfile::TempDir,
        namespace: String,
        env: &[(&str, &str)],
    ) -> Result<Containerd> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut command = containerd_command(dir.path(), &env);
        let log = dir.path().join("containerd.log");
        let daemon = Daemon::spawn("containerd", &mut command, &log)?;
        let containerd = Containerd {
            daemon,
            dir,
            namespace,
            env,
        };
        containerd
            .daemon
            .wait_ready(|| containerd.ctr(&["version"]))?;
        Ok(containerd)
    }

    /// Stops containerd with `signal` (SIGTERM: as a service manager restarts it; SIGKILL: a
    /// crash) and starts it again on the same root and state; shims and their containers run
    /// on meanwhile, as they do under runc.
    pub fn restart(&self, signal: Signal) -> Result<()> {
        self.daemon.stop_with(signal);
        self.daemon
            .respawn(&mut containerd_command(self.dir(), &self.env))?;
        self.daemon.wait_ready(|| self.ctr(&["version"]))
    }

    /// Starts containerd with no extra environment.
    pub fn start() -> Result<Containerd> {
        Containerd::start_with_env(&[])
    }

    /// Its API socket: `CONTAINERD_ADDRESS`'s value for a plain `ctr`.
    pub fn address(&self) -> PathBuf {
        self.dir().join("containerd.sock")
    }

    /// The namespace its `ctr` commands use.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The daemon's process id (for a benchmark's CPU accounting).
    pub fn pid(&self) -> u32 {
        self.daemon.child.borrow().id()
    }

    /// The socket file of the shim serving container `id` (from its bundle's `address`).
    pub fn shim_socket(&self, id: &str) -> Result<PathBuf> {
        let bundle = self
            .dir()
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id);
        let address = std::fs::read_to_string(bundle.join("address"))?;
        let path = address
            .trim()
            .strip_prefix("unix://")
            .with_context(|| format!("shim address {address:?}"))?;
        Ok(PathBuf::from(path))
    }

    /// The PIDs of the shim daemons this instance started, in any namespace (their command
    /// line is `... -address SOCKET ...`, SOCKET being this instance's).
    pub fn shim_pids(&self) -> Vec<i32> {
        let needle = format!(
            "\0-address\0{}\0",
            self.dir().join("containerd.sock").display()
        );
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

    /// Stops, by PID, any shim daemon of this instance still running. A shim is detached from
    /// containerd; one outlives it when a test fails between start and delete.
    fn stop_shims(&self) {
        for pid in self.shim_pids() {
            eprintln!("wasmcell-e2e: stopping shim {pid} left behind");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// The instance's directory (root, state, sockets, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

    /// `ctr events`, running, its stdout piped: every event this containerd publishes from now
    /// on, a line each.
    pub fn events(&self) -> Result<Child> {
        Ok(self
            .ctr_command()
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?)
    }

    /// Kills task `id` (SIGKILL), waits until it is stopped, and deletes it and its container.
    pub fn remove(&self, id: &str) -> Result<()> {
        self.ctr(&["task", "kill", "-s", "SIGKILL", id])?
            .success()?;
        self.wait_status(id, "STOPPED")?;
        self.ctr(&["task", "delete", id])?.success()?;
        self.ctr(&["container", "delete", id])?.success()?;
        Ok(())
    }

    /// Stops `events` (from [`Containerd::events`]) and checks that each of `ids` had a
    /// `/tasks/oom` event in what it printed.
    pub fn assert_oom_events(mut events: Child, ids: &[&str]) -> Result<()> {
        let _ = events.kill();
        let seen: Vec<String> = BufReader::new(events.stdout.take().context("events' stdout")?)
            .lines()
            .collect::<Result<_, _>>()?;
        for id in ids {
            ensure!(
                seen.iter()
                    .any(|l| l.contains("/tasks/oom") && l.contains(id)),
                "no /tasks/oom for {id} in:\n{}",
                seen.join("\n")
            );
        }
        Ok(())
    }

    /// Runs `ctr ARGS...` to completion.
    pub fn ctr(&self, args: &[&str]) -> Result<Ran> {
        run(self.ctr_command().args(args))
    }

    /// Imports an image archive (all platforms: Wasm images are never the host's).
    pub fn import(&self, archive: &Path) -> Result<()> {
        let archive = archive.to_str().expect("utf-8 path");
        self.ctr(&["images", "import", "--all-platforms", archive])?
            .success()?;
        Ok(())
    }

    /// Every task as (id, pid, status), from `ctr task ls`.
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
        self.daemon.stop();
        self.stop_shims();
        unmount_under(&self.dir().join("root"));
    }
}

/// The command starting a private containerd whose directory is `root` (its config, and the
/// shim links first on its PATH).
fn containerd_command(root: &Path, env: &[(String, String)]) -> Command {
    let path = search_path(&[&root.join("bin"), &tools().join("usr/bin")]);
    let mut command = Command::new(tools().join("usr/bin/containerd"));
    command
        .arg("--config")
        .arg(root.join("config.toml"))
        .env("PATH", path)
        .env("WASMCELL_CACHE_DIR", root.join("cache"))
        .envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// A private registry (Debian's `docker-registry`) on a free loopback port, its storage in a
/// temp dir; stopped by PID when dropped.
pub struct Registry {
    daemon: Daemon,
    _dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Registry {
    /// Starts it and waits until it answers `/v2/`.
    pub fn start() -> Result<Registry> {
        Registry::start_at(&format!("127.0.0.1:{}", free_port()?))
    }

    /// Starts it on `addr` (e.g. `127.0.0.1:5000`, where the docs' examples push) and waits
    /// until it answers `/v2/`.
    pub fn start_at(addr: &str) -> Result<Registry> {
        let dir = tempfile::Builder::new().prefix("wcr-").tempdir_in("/tmp")?;
        let addr = addr.to_owned();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )?;
        let mut command = Command::new(tools().join("usr/bin/docker-registry"));
        command.arg("serve").arg(&config);
        let daemon = Daemon::spawn(
            "docker-registry",
            &mut command,
            &dir.path().join("registry.log"),
        )?;
        let url = format!("http://{addr}/v2/");
        daemon.wait_ready(|| run(Command::new("curl").args(["-sf", "-o", "/dev/null", &url])))?;
        Ok(Registry {
            daemon,
            _dir: dir,
            addr,
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.daemon.stop();
    }
}

/// A private Docker Engine 26 using the containerd image store (so it can run shim runtimes on
/// Wasm images), on its own private containerd. No bridge network: tests that publish ports set
/// one up themselves.
pub struct Docker {
    daemon: Daemon,
    socket: PathBuf,
    /// The bridge this fixture made for its containers, if it networks them; held to be
    /// deleted after dockerd stops.
    _bridge: Option<Bridge>,
    // Declared last: dropped after dockerd has stopped.
    containerd: Containerd,
}

/// A Linux bridge made for one Docker fixture, deleted with it. Its own name and subnet keep
/// it clear of other fixtures: a dockerd started with `--bridge none` deletes `docker0`.
struct Bridge(String);

impl Bridge {
    fn create() -> Result<Bridge> {
        let pid = std::process::id();
        let bridge = Bridge(format!("wcbr{pid}"));
        let subnet = format!("10.213.{}.1/24", pid % 250);
        for args in [
            vec!["link", "add", "name", &bridge.0, "type", "bridge"],
            vec!["addr", "add", &subnet, "dev", &bridge.0],
            vec!["link", "set", &bridge.0, "up"],
        ] {
            run(Command::new("ip").args(&args))?.success()?;
        }
        Ok(bridge)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", &self.0])
            .status();
    }
}

impl Docker {
    /// Starts containerd, then dockerd on it with no container networking (the tests that need
    /// no ports run side by side without touching the host's iptables), and waits until
    /// dockerd answers.
    pub fn start() -> Result<Docker> {
        let network = ["--bridge", "none", "--iptables=false", "--ip6tables=false"];
        Docker::start_with(&network, None)
    }

    /// As [`Docker::start`], with a bridge network and iptables, so `-p` publishes ports as on
    /// any Docker host. One such daemon at a time: dockerd resets its iptables chains when it
    /// starts.
    pub fn start_bridged() -> Result<Docker> {
        let bridge = Bridge::create()?;
        let name = bridge.0.clone();
        Docker::start_with(&["--bridge", &name], Some(bridge))
    }

    fn start_with(network: &[&str], bridge: Option<Bridge>) -> Result<Docker> {
        let containerd = Containerd::start()?;
        let dir = containerd.dir().join("docker");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("daemon.json"),
            r#"{"features":{"containerd-snapshotter":true}}"#,
        )?;
        let socket = dir.join("docker.sock");
        let namespace = format!("{}-docker", containerd.namespace);
        let mut command = Command::new(tools().join("usr/sbin/dockerd"));
        command
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(containerd.dir().join("containerd.sock"))
            .args(["--containerd-namespace", &namespace])
            .args([
                "--containerd-plugins-namespace",
                &format!("{namespace}-plugins"),
            ])
            .args(network)
            // docker-proxy lives in sbin.
            .env(
                "PATH",
                search_path(&[&tools().join("usr/bin"), &tools().join("usr/sbin")]),
            );
        let daemon = Daemon::spawn("dockerd", &mut command, &dir.join("dockerd.log"))?;
        let docker = Docker {
            daemon,
            socket,
            _bridge: bridge,
            containerd,
        };
        docker.daemon.wait_ready(|| docker.docker(&["version"]))?;
        Ok(docker)
    }

    /// `docker load` of an image archive.
    pub fn load(&self, archive: &Path) -> Result<Ran> {
        self.docker(&["load", "--input", archive.to_str().expect("utf-8 path")])?
            .success()
    }

    /// Runs `docker ARGS...` against this engine to completion.
    pub fn docker(&self, args: &[&str]) -> Result<Ran> {
        run(self.command().args(args))
    }

    /// A `docker` command against this engine, for one that streams until stopped.
    pub fn command(&self) -> Command {
        let mut command = Command::new(tools().join("usr/bin/docker"));
        command
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()));
        command
    }

    /// Where `docker` reaches this engine: `DOCKER_HOST`'s value.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The containerd under this engine (its shims, for instance).
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// `docker stop` (SIGTERM, then SIGKILL after docker's 10 s) and the container's exit
    /// code as `docker inspect` reports it.
    pub fn stop(&self, container: &str) -> Result<String> {
        self.docker(&["stop", container])?.success()?;
        let inspect = ["inspect", "--format", "{{.State.ExitCode}}", container];
        Ok(self.docker(&inspect)?.success()?.stdout.trim().to_owned())
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        self.daemon.stop();
        self.containerd.stop_shims();
        unmount_under(&self.containerd.dir().join("docker"));
    }
}

/// A daemon process a fixture started, with its log.
struct Daemon {
    name: &'static str,
    child: std::cell::RefCell<Child>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, command: &mut Command, log: &Path) -> Result<Daemon> {
        let out = std::fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {name} (run scripts/setup.sh to install it)"))?;
        Ok(Daemon {
            name,
            child: child.into(),
            log: log.to_owned(),
        })
    }

    /// Waits until `probe` succeeds; fails with the daemon's log if it exits or 20 s pass.
    fn wait_ready(&self, mut probe: impl FnMut() -> Result<Ran>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while probe()?.code != Some(0) {
            let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(status) = self.child.borrow_mut().try_wait()? {
                bail!("{} exited ({status}):\n{}", self.name, log());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not start in 20 s:\n{}",
                self.name,
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the daemon by its PID and reaps it.
    fn stop(&self) {
        self.stop_with(Signal::SIGTERM);
    }

    /// Sends `signal` to the daemon by its PID and reaps it.
    fn stop_with(&self, signal: Signal) {
        let mut child = self.child.borrow_mut();
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let _ = child.wait();
    }

    /// Starts the daemon again with `command`, its output appended to the same log.
    fn respawn(&self, command: &mut Command) -> Result<()> {
        let out = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("restart {}", self.name))?;
        *self.child.borrow_mut() = child;
        Ok(())
    }
}

/// `PATH` with `dirs` first.
fn search_path(dirs: &[&Path]) -> String {
    let mut path: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    path.push(std::env::var("PATH").unwrap_or_default());
    path.join(":")
}

/// Unmounts anything a failed test left mounted under `dir`, so its temp dir can be removed.
fn unmount_under(dir: &Path) {
    let _ = Command::new("umount")
        .arg("-R")
        .arg(dir)
        .stderr(Stdio::null())
        .status();
}

/// The runtime the tests run guests under.
pub const RUNTIME: &str = "io.containerd.wasmtime.v1";

impl Containerd {
    /// `ctr run --runtime io.containerd.wasmtime.v1 OPTS... IMAGE ID CMD...`.
    pub fn run_wasm(&self, opts: &[&str], image: &str, id: &str, cmd: &[&str]) -> Result<Ran> {
        let mut args = vec!["run", "--runtime", RUNTIME];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[image, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// A task's PID and status, from `ctr task ls`.
    pub fn task(&self, id: &str) -> Result<Option<(u32, String)>> {
        Ok(self
            .task_pids()?
            .into_iter()
            .find(|(task, _, _)| task == id)
            .map(|(_, pid, status)| (pid, status)))
    }

    /// Waits until the task is in `status`.
    pub fn wait_status(&self, id: &str, status: &str) -> Result<()> {
        wait_for(&format!("{id} {status}"), || {
            Ok(self.task(id)?.is_some_and(|(_, s)| s == status))
        })
    }

    /// Waits until the task runs, and returns its PID.
    pub fn running(&self, id: &str) -> Result<u32> {
        self.wait_status(id, "RUNNING")?;
        Ok(self.task(id)?.context("task vanished")?.0)
    }
}

/// A copy of guest `name` made distinct by a custom section named `tag`: another module (its
/// own digest, so its own compile-cache entry) with the same code, written into `dir`.
pub fn distinct_guest(name: &str, tag: &str, dir: &Path) -> Result<PathBuf> {
    let mut bytes = std::fs::read(guest(name))?;
    ensure!(
        tag.len() < 127,
        "a short tag: its length is one LEB128 byte"
    );
    bytes.extend([0, 1 + tag.len() as u8, tag.len() as u8]);
    bytes.extend(tag.as_bytes());
    let module = dir.join(format!("{tag}.wasm"));
    std::fs::write(&module, bytes)?;
    Ok(module)
}

/// What `wasmcell cache ls --cache-dir CACHE` printed.
#[derive(Debug)]
pub struct CacheListing(pub Ran);

impl CacheListing {
    /// Lists the compile cache at `cache`.
    pub fn of(cache: &Path) -> Result<CacheListing> {
        run(Command::new(wasmcell())
            .args(["cache", "ls", "--cache-dir"])
            .arg(cache))?
        .success()
        .map(CacheListing)
    }

    /// The total bytes: the last line says "(N bytes)".
    pub fn total(&self) -> Result<u64> {
        let last = self.0.stdout.lines().last().unwrap_or_default();
        let bytes = last
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(" bytes)"))
            .context("no total")?
            .0;
        Ok(bytes.parse()?)
    }

    /// Whether it lists the compiled form of the wasm file at `wasm`.
    pub fn lists(&self, wasm: &Path) -> Result<bool> {
        let digest = format!("{:x}", Sha256::digest(std::fs::read(wasm)?));
        Ok(self.0.stdout.contains(&format!("sha256:{}", &digest[..12])))
    }
}

/// A private containerd with extra environment and the given guests imported as images
/// (guest file, tag); the temp dir holds the archives.
pub fn containerd_with(
    env: &[(&str, &str)],
    images: &[(&str, &str)],
) -> Result<(tempfile::TempDir, Containerd)> {
    let tmp = tempfile::tempdir()?;
    let containerd = Containerd::start_with_env(env)?;
    for (wasm, tag) in images {
        containerd.import(&build_image(&guest(wasm), tag, tmp.path(), &[])?)?;
    }
    Ok((tmp, containerd))
}

/// The annotation that puts containers in one shim and one sandbox, as CRI does for a pod.
pub const POD_GROUP: &str = "io.kubernetes.cri.sandbox-id=pod1";

/// A private containerd with the sleeper and `images` imported, and a sleeper "survivor"
/// running in pod [`POD_GROUP`] (its shim and sandbox are the pod's); returns the sandbox's PID
/// too, for tests of what a pod's other containers must not do to it.
pub fn pod_with_survivor(images: &[(&str, &str)]) -> Result<(tempfile::TempDir, Containerd, u32)> {
    let mut all = vec![("sleeper.wasm", "example.com/sleeper:latest")];
    all.extend_from_slice(images);
    let (tmp, containerd) = containerd_with(&[], &all)?;
    containerd
        .run_wasm(
            &["-d", "--annotation", POD_GROUP],
            "example.com/sleeper:latest",
            "survivor",
            &[],
        )?
        .success()?;
    let sandbox = containerd.running("survivor")?;
    Ok((tmp, containerd, sandbox))
}

/// Polls `done` until it holds, for at most 10 s.
pub fn wait_for(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done()? {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Busy threads competing with containerd, the shim and the client for this machine's cores
/// until dropped: output that was lost only when a client was slow to read (1-2 of 60 execs
/// under load) is lost in a test only under load.
pub struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    spinners: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    /// One spinning thread per core.
    pub fn on_every_core() -> CpuLoad {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinners = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        CpuLoad { stop, spinners }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for spinner in self.spinners.drain(..) {
            let _ = spinner.join();
        }
    }
}

/// A private `redis-server` (Debian's, installed by scripts/setup.sh) on a free loopback port,
/// keeping nothing on disk; stopped by PID when dropped.
pub struct Redis {
    daemon: Daemon,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts the server and waits until it answers `PING`.
    pub fn start() -> Result<Redis> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path());
        let daemon = Daemon::spawn("redis-server", &mut command, &dir.path().join("redis.log"))?;
        let redis = Redis {
            daemon,
            port,
            _dir: dir,
        };
        redis.daemon.wait_ready(|| redis.cli(&["PING"]))?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p PORT ARGS...`.
    pub fn cli(&self, args: &[&str]) -> Result<Ran> {
        run(Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.daemon.stop();
    }
}

/// A private MQTT broker (Debian's mosquitto, extracted by scripts/setup.sh) on a loopback port:
/// anonymous clients and any credentials are accepted.
pub struct Mosquitto {
    daemon: Daemon,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts the broker and waits until a client can publish to it.
    pub fn start() -> Result<Mosquitto> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nlog_type subscribe\n"
            ),
        )?;
        let mut command = Command::new(tools().join("usr/sbin/mosquitto"));
        command
            .env("LD_LIBRARY_PATH", Self::libraries())
            .arg("-c")
            .arg(&config);
        let log = dir.path().join("mosquitto.log");
        let daemon = Daemon::spawn("mosquitto", &mut command, &log)?;
        let broker = Mosquitto {
            daemon,
            port,
            log,
            _dir: dir,
        };
        broker
            .daemon
            .wait_ready(|| broker.client("mosquitto_pub", &["-t", "ready", "-m", "1"]))?;
        Ok(broker)
    }

    fn libraries() -> PathBuf {
        tools().join("usr/lib/x86_64-linux-gnu")
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Runs mosquitto's client `name` (`mosquitto_pub`, `mosquitto_sub`) against the broker.
    pub fn client(&self, name: &str, args: &[&str]) -> Result<Ran> {
        run(Command::new(tools().join("usr/bin").join(name))
            .env("LD_LIBRARY_PATH", Self::libraries())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args))
    }

    /// Subscribes to `topic` and returns the first `count` messages (one a line), waiting at
    /// most 20 s; the subscription is made before `publish` runs.
    pub fn receive(
        &self,
        topic: &str,
        count: u32,
        publish: impl FnOnce() -> Result<()>,
    ) -> Result<String> {
        let sub = Command::new(tools().join("usr/bin/mosquitto_sub"))
            .env("LD_LIBRARY_PATH", Self::libraries())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-t", topic, "-C", &count.to_string(), "-W", "20", "-q", "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        // A message is delivered only to subscriptions made before it is published: wait until
        // the broker logs this one.
        let subscribed = format!(" {topic}");
        wait_for(&format!("a subscription to {topic}"), || {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            Ok(log.lines().any(|line| line.ends_with(&subscribed)))
        })?;
        let published = publish();
        let out = sub.wait_with_output()?;
        published?;
        ensure!(out.status.success(), "mosquitto_sub: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.daemon.stop();
    }
}

/// The library directories of Debian 12 packages extracted into [`tools`] (some ship theirs in
/// /lib, some in /usr/lib), for `LD_LIBRARY_PATH`: the libraries a fresh Debian 12 lacks.
fn tools_libraries() -> std::ffi::OsString {
    std::env::join_paths([
        tools().join("usr/lib/x86_64-linux-gnu"),
        tools().join("lib/x86_64-linux-gnu"),
    ])
    .expect("library path")
}

/// A private PostgreSQL 15 server (Debian's, extracted by scripts/setup.sh) on a free loopback
/// port, its cluster in a temp dir; user `postgres`, password `wasmcell` over TCP; stopped by
/// PID when dropped.
///
/// postgres refuses to run as root, and nobody (uid 65534) cannot reach `$WASMCELL_TOOLS`, by
/// default under root's home (mode 0700); nor would CAP_DAC_READ_SEARCH do, since postgres
/// checks its own binary with access(2), which ignores capabilities. So initdb and the server
/// run in a user namespace of their own (`unshare --user`) whose uid 65534 is root outside:
/// not root to postgres, root to the files (the data dir is root's, which postgres sees as its
/// own).
pub struct Postgres {
    daemon: Daemon,
    port: u16,
    /// The CA that signed its certificate (PEM), when it serves TLS.
    ca: Option<String>,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// The superuser the cluster is made with.
    pub const USER: &str = "postgres";
    /// Its password, for connections over TCP (scram-sha-256).
    pub const PASSWORD: &str = "wasmcell";

    /// Makes a cluster (UTF-8, locale C, not synced to disk), starts the server on 127.0.0.1
    /// only (its Unix socket in the data dir, fsync off) and waits until `psql` can query it.
    pub fn start() -> Result<Postgres> {
        Self::start_with(false)
    }

    /// The same, serving TLS too (`ssl=on`) with a certificate for `localhost` and
    /// `127.0.0.1` signed by a CA of its own ([`Postgres::ca`]), made by [`certificates`].
    pub fn start_tls() -> Result<Postgres> {
        Self::start_with(true)
    }

    /// The CA that signed the server's certificate (PEM), for a TLS server.
    pub fn ca(&self) -> Option<&str> {
        self.ca.as_deref()
    }

    fn start_with(tls: bool) -> Result<Postgres> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let password = dir.path().join("password");
        std::fs::write(&password, Self::PASSWORD)?;
        run(Self::command("initdb")
            .arg("--pgdata")
            .arg(&data)
            .args(["--username", Self::USER, "--pwfile"])
            .arg(&password)
            .args(["--auth-host=scram-sha-256", "--auth-local=trust"])
            .args(["--encoding=UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]))?
        .success()
        .context("initdb")?;
        let port = free_port()?;
        let mut command = Self::command("postgres");
        command
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(&data)
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        let ca = match tls {
            true => {
                let (ca, cert, key) = certificates(dir.path())?;
                command
                    .args(["-c", "ssl=on", "-c"])
                    .arg(format!("ssl_cert_file={}", cert.display()))
                    .arg("-c")
                    .arg(format!("ssl_key_file={}", key.display()));
                Some(ca)
            }
            false => None,
        };
        let daemon = Daemon::spawn("postgres", &mut command, &dir.path().join("postgres.log"))?;
        let postgres = Postgres {
            daemon,
            port,
            ca,
            _dir: dir,
        };
        postgres.daemon.wait_ready(|| postgres.psql("SELECT 1"))?;
        Ok(postgres)
    }

    /// `PROGRAM` from the extracted PostgreSQL, as uid 65534 in a user namespace mapping it to
    /// root (`unshare` execs it: its PID is the program's).
    fn command(program: &str) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["--user", "--map-user=65534", "--map-group=65534", "--"])
            .arg(tools().join("usr/lib/postgresql/15/bin").join(program))
            .env("LD_LIBRARY_PATH", tools_libraries());
        command
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's (postmaster's) PID.
    pub fn pid(&self) -> u32 {
        self.daemon.child.borrow().id()
    }

    /// The connection string in key=value form:
    /// `host=127.0.0.1 port=PORT user=postgres password=wasmcell dbname=postgres`.
    pub fn address(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname=postgres",
            self.port,
            Self::USER,
            Self::PASSWORD
        )
    }

    /// The connection URL: `postgres://postgres:wasmcell@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres",
            Self::USER,
            Self::PASSWORD,
            self.port
        )
    }

    /// Runs `sql` with `psql` over TCP as `postgres`, stopping at the first error; rows are
    /// printed unaligned, a line each, fields separated by `|`, without headers.
    pub fn psql(&self, sql: &str) -> Result<Ran> {
        self.psql_at(&self.address(), sql)
    }

    /// Runs `sql` as [`Postgres::psql`] does, connecting with `connection` instead (a key=value
    /// string or a URL): another database, user or password.
    pub fn psql_at(&self, connection: &str, sql: &str) -> Result<Ran> {
        run(Command::new(tools().join("usr/lib/postgresql/15/bin/psql"))
            .env("LD_LIBRARY_PATH", tools_libraries())
            .args(["--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-At"])
            .args(["-d", connection, "-c", sql]))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown: SIGTERM (smart) would wait for every client to disconnect. The server
        // waits for its children (they exit too when it dies) before it exits.
        self.daemon.stop_with(Signal::SIGINT);
    }
}

/// Makes a CA and a server certificate it signs (`localhost`, `127.0.0.1`) in `dir`: the
/// CA's PEM, the certificate's and its key's paths (the key private, as servers want).
fn certificates(dir: &Path) -> Result<(String, PathBuf, PathBuf)> {
    let openssl = |args: &[&str]| -> Result<()> {
        run(Command::new("openssl").current_dir(dir).args(args))?
            .success()
            .map(drop)
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-noenc",
    ];
    let ca = [
        "-subj",
        "/CN=wasmcell test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ];
    openssl(&[&["req", "-x509", "-days", "2"][..], &key, &ca].concat())?;
    let request = [
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    openssl(&[&["req"][..], &key, &request].concat())?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ])?;
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((
        std::fs::read_to_string(dir.join("ca.pem"))?,
        dir.join("server.pem"),
        key,
    ))
}

/// A private MariaDB 10.11 server (Debian's, extracted by scripts/setup.sh) on a free loopback
/// port, its data, socket and PID file in a temp dir; database `spin`, on which user `spin`
/// (password `wasmcell`) has every privilege; stopped by PID when dropped.
///
/// It runs as root (`--user=root`): unlike postgres, mariadbd allows that when told. Its root
/// account is reachable only through its Unix socket, by root (unix_socket authentication).
pub struct MariaDb {
    daemon: Daemon,
    port: u16,
    ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl MariaDb {
    /// The user tests and guests connect as.
    pub const USER: &str = "spin";
    /// Its password.
    pub const PASSWORD: &str = "wasmcell";
    /// The database it owns.
    pub const DATABASE: &str = "spin";

    /// Settings for a throwaway server, given both to the bootstrap and to the server (the
    /// InnoDB files must match, and `spin` is made with the server's character set): small
    /// InnoDB files (~20 MB in all, not ~110) and buffer pool, no doublewrite, the log flushed
    /// about once a second instead of at every commit, no binary log, no DNS; UTF-8 (utf8mb4)
    /// as Debian's packaged configuration sets it, not the built-in latin1.
    const OPTIONS: [&str; 11] = [
        "--innodb-buffer-pool-size=16M",
        "--innodb-log-file-size=4M",
        "--innodb-data-file-path=ibdata1:4M:autoextend",
        "--innodb-autoextend-increment=4",
        "--innodb-temp-data-file-path=ibtmp1:4M:autoextend",
        "--innodb-doublewrite=0",
        "--innodb-flush-log-at-trx-commit=0",
        "--skip-log-bin",
        "--skip-name-resolve",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_general_ci",
    ];

    /// The user that may connect over TLS only (`REQUIRE SSL`), with [`MariaDb::PASSWORD`],
    /// on a TLS server.
    pub const TLS_USER: &str = "spin_tls";

    /// Makes the data dir with `mariadb-install-db` (system tables, then user `spin` and its
    /// database), starts the server on 127.0.0.1 and waits until `spin` can query it.
    pub fn start() -> Result<MariaDb> {
        Self::start_with(false)
    }

    /// The same, serving TLS too with a certificate for `localhost` and `127.0.0.1` signed by a
    /// CA of its own ([`MariaDb::ca`], made by [`certificates`]); and user
    /// [`MariaDb::TLS_USER`], which the server lets in over TLS only.
    pub fn start_tls() -> Result<MariaDb> {
        Self::start_with(true)
    }

    /// The file holding the CA that signed the server's certificate (PEM), for a TLS server.
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    fn start_with(tls: bool) -> Result<MariaDb> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let init = dir.path().join("init.sql");
        // mariadb-install-db's bootstrap runs without the grant tables loaded: FLUSH PRIVILEGES
        // loads those it just made, so that users can be created.
        std::fs::write(
            &init,
            format!(
                "FLUSH PRIVILEGES;\nCREATE DATABASE {db};\n\
                 CREATE USER '{user}'@'%' IDENTIFIED BY '{password}';\n\
                 GRANT ALL PRIVILEGES ON {db}.* TO '{user}'@'%';\n\
                 CREATE USER '{tls_user}'@'%' IDENTIFIED BY '{password}' REQUIRE SSL;\n\
                 GRANT ALL PRIVILEGES ON {db}.* TO '{tls_user}'@'%';\n",
                db = Self::DATABASE,
                user = Self::USER,
                tls_user = Self::TLS_USER,
                password = Self::PASSWORD
            ),
        )?;
        // --no-defaults: no my.cnf of the machine's; --cross-bootstrap: no account for this
        // host's name (nor a lookup of it with resolveip).
        run(Command::new(tools().join("usr/bin/mariadb-install-db"))
            .env("LD_LIBRARY_PATH", tools_libraries())
            .arg("--no-defaults")
            .arg(format!("--basedir={}", tools().join("usr").display()))
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=root", "--cross-bootstrap", "--skip-test-db"])
            .arg(format!("--extra-file={}", init.display()))
            .args(Self::OPTIONS))?
        .success()
        .context("mariadb-install-db")?;
        let port = free_port()?;
        let mut command = Command::new(tools().join("usr/sbin/mariadbd"));
        command
            .env("LD_LIBRARY_PATH", tools_libraries())
            .args(["--no-defaults", "--user=root"])
            .arg(format!("--basedir={}", tools().join("usr").display()))
            .arg(format!("--datadir={}", data.display()))
            .args(["--bind-address=127.0.0.1", &format!("--port={port}")])
            .arg(format!(
                "--socket={}",
                dir.path().join("mariadbd.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mariadbd.pid").display()
            ))
            .args(Self::OPTIONS);
        let ca = match tls {
            true => {
                let (_, cert, key) = certificates(dir.path())?;
                command
                    .arg(format!("--ssl-cert={}", cert.display()))
                    .arg(format!("--ssl-key={}", key.display()));
                Some(dir.path().join("ca.pem"))
            }
            false => None,
        };
        let daemon = Daemon::spawn("mariadbd", &mut command, &dir.path().join("mariadbd.log"))?;
        let mariadb = MariaDb {
            daemon,
            port,
            ca,
            _dir: dir,
        };
        mariadb.daemon.wait_ready(|| mariadb.sql("SELECT 1"))?;
        Ok(mariadb)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's PID.
    pub fn pid(&self) -> u32 {
        self.daemon.child.borrow().id()
    }

    /// The connection URL: `mysql://spin:wasmcell@127.0.0.1:PORT/spin`.
    pub fn url(&self) -> String {
        format!(
            "mysql://{}:{}@127.0.0.1:{}/{}",
            Self::USER,
            Self::PASSWORD,
            self.port,
            Self::DATABASE
        )
    }

    /// Runs `statement` (one or more, `;`-separated) with the `mariadb` client over TCP as
    /// `spin` in database `spin`, stopping at the first error; rows are printed a line each,
    /// fields separated by tabs, without headers.
    pub fn sql(&self, statement: &str) -> Result<Ran> {
        self.sql_as(Self::USER, Self::PASSWORD, statement)
    }

    /// Runs `statement` as [`MariaDb::sql`] does, as `user` with `password` instead.
    pub fn sql_as(&self, user: &str, password: &str, statement: &str) -> Result<Ran> {
        run(Command::new(tools().join("usr/bin/mariadb"))
            .env("LD_LIBRARY_PATH", tools_libraries())
            .args(["--no-defaults", "--protocol=TCP", "--host=127.0.0.1"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={user}"))
            .arg(format!("--password={password}"))
            .args([
                "--batch",
                "--skip-column-names",
                Self::DATABASE,
                "-e",
                statement,
            ]))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // SIGTERM: a clean shutdown, closing any client connection.
        self.daemon.stop();
    }
}

/// `ctr run -d` of `image` as `id` under the spin runtime, in the host's network on a free
/// port; its base URL once `ready` answers.
pub fn run_spin_detached(
    containerd: &Containerd,
    image: &str,
    id: &str,
    ready: &str,
) -> Result<String> {
    let base = start_spin_detached(containerd, image, id, &[])?;
    wait_http(&format!("{base}{ready}"))?;
    Ok(base)
}

/// `ctr run -d` of `image` as `id` under the spin shim, listening on a free loopback port, its
/// environment holding `env` (`NAME=VALUE`s) too; returns its base URL at once, before the app
/// answers.
pub fn start_spin_detached(
    containerd: &Containerd,
    image: &str,
    id: &str,
    env: &[&str],
) -> Result<String> {
    let port = free_port()?;
    let listen = format!("SPIN_HTTP_LISTEN_ADDR=127.0.0.1:{port}");
    let mut run = vec![
        "run",
        "-d",
        "--runtime",
        "io.containerd.spin.v2",
        "--net-host",
        "--env",
        &listen,
    ];
    for pair in env {
        run.extend(["--env", pair]);
    }
    run.extend([image, id]);
    containerd.ctr(&run)?.success()?;
    Ok(format!("http://127.0.0.1:{port}"))
}

/// `wasmcell up`, as `command` (`up` and its arguments) starts it with `--listen` on a free
/// loopback port, answering `ready`; stopped as Ctrl-C stops it.
pub struct Up {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Up {
    /// Starts `command` and waits until `ready` answers.
    pub fn start(command: &mut Command, ready: &str) -> Result<Up> {
        let port = free_port()?;
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let up = Up {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        wait_http(&format!("{}{ready}", up.base))?;
        Ok(up)
    }

    /// SIGTERM, as Ctrl-C: it must drain and exit 0. Its output.
    pub fn stop(mut self) -> Result<std::process::Output> {
        let pid = self.child.id().to_string();
        run(Command::new("kill").args(["-TERM", &pid]))?.success()?;
        wait_for("wasmcell up to exit", || {
            Ok(self.child.try_wait()?.is_some())
        })?;
        let out = self.child.wait_with_output()?;
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        Ok(out)
    }
}

/// A copy of the Spin test app `name` (guests/spin-apps, assembled by build-guests.sh) in
/// `dir`, for a test to change or to keep its stores in.
pub fn spin_app(name: &str, dir: &Path) -> Result<PathBuf> {
    let from = guest(&format!("spin/{name}"));
    let to = dir.join(name);
    run(Command::new("cp").arg("-r").arg(&from).arg(&to))?.success()?;
    Ok(to)
}

/// `wasmcell build --spin APP/spin.toml --tag TAG --output DIR/NAME.tar`, returning the archive.
pub fn build_spin_image(app: &Path, tag: &str, dir: &Path) -> Result<PathBuf> {
    let archive = dir.join(format!("{}.tar", tag.replace(['/', ':'], "_")));
    run(Command::new(wasmcell())
        .env("WASMCELL_STORE", dir.join("store"))
        .args(["build", "--spin"])
        .arg(app.join("spin.toml"))
        .args(["--tag", tag, "--output"])
        .arg(&archive))?
    .success()?;
    Ok(archive)
}

/// What a containerd and its shims hold on the machine, counted to find leaks: after any
/// number of containers have come and gone, everything but containerd's own fds and memory
/// must be back where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// Shim processes serving this containerd.
    pub shims: usize,
    /// Sandbox processes on the machine.
    pub sandboxes: usize,
    /// Mounts under this containerd's directory.
    pub mounts: usize,
    /// Container cgroups in this containerd's namespace (memory hierarchy).
    pub cgroups: usize,
    /// Network namespaces CNI made (`/run/netns`).
    pub netns: usize,
    /// FIFOs containerd and ctr made (`/run/containerd/fifo`).
    pub fifos: usize,
    /// Task bundles in this containerd's state.
    pub bundles: usize,
    /// Shim sockets (`/run/containerd/s`).
    pub sockets: usize,
    /// containerd's open descriptors (its own growth is reported, not a leak of ours).
    pub containerd_fds: usize,
    /// containerd's resident memory, KiB.
    pub containerd_rss_kib: u64,
}

impl Footprint {
    /// Counts everything now, for `containerd` (its containers in `namespace`, e.g. its own
    /// or CRI's `k8s.io`).
    pub fn of(containerd: &Containerd, namespace: &str) -> Result<Footprint> {
        let count = |dir: &Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
        let sandboxes = std::fs::read_dir("/proc")?
            .flatten()
            .filter(|entry| {
                std::fs::read(entry.path().join("cmdline"))
                    .is_ok_and(|c| c.starts_with(b"wasmcell-sandbox\0"))
            })
            .count();
        let dir = containerd.dir().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .filter(|l| l.contains(&dir))
            .count();
        let pid = containerd.pid();
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0);
        Ok(Footprint {
            shims: containerd.shim_pids().len(),
            sandboxes,
            mounts,
            cgroups: std::fs::read_dir(Path::new("/sys/fs/cgroup/memory").join(namespace))
                .map_or(0, |d| d.flatten().filter(|e| e.path().is_dir()).count()),
            netns: count(Path::new("/run/netns")),
            fifos: count(Path::new("/run/containerd/fifo")),
            bundles: count(
                &containerd
                    .dir()
                    .join("state/io.containerd.runtime.v2.task")
                    .join(namespace),
            ),
            sockets: count(Path::new("/run/containerd/s")),
            containerd_fds: count(Path::new(&format!("/proc/{pid}/fd"))),
            containerd_rss_kib: rss,
        })
    }

    /// What is left over compared with `before`, by name, leaving out containerd's own
    /// descriptors and memory.
    pub fn leaks_since(&self, before: &Footprint) -> Vec<String> {
        let pairs = [
            ("shim processes", self.shims, before.shims),
            ("sandbox processes", self.sandboxes, before.sandboxes),
            ("mounts", self.mounts, before.mounts),
            ("cgroups", self.cgroups, before.cgroups),
            ("network namespaces", self.netns, before.netns),
            ("FIFOs", self.fifos, before.fifos),
            ("bundles", self.bundles, before.bundles),
            ("shim sockets", self.sockets, before.sockets),
        ];
        pairs
            .into_iter()
            .filter(|(_, now, then)| now > then)
            .map(|(what, now, then)| format!("{what}: {then} -> {now}"))
            .collect()
    }
}

/// An HTTP server on 127.0.0.1 answering every request with `body`: the upstream of
/// outbound-request tests.
pub fn upstream(body: &'static str) -> Result<u16> {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                &stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(port)
}
