//! OCI runtime spec (`config.json`) → [`WorkloadSpec`].
//!
//! This is where the container's grants are decided, so it is deliberately narrow:
//! - the rootfs is preopened as `/`, read-only when `root.readonly` says so;
//! - each bind mount of a directory is preopened at its destination, read-only with `ro`;
//! - kernel filesystems (`proc`, `sysfs`, `devpts`, `mqueue`, `cgroup`, ...) and anything mounted
//!   under `/proc`, `/sys` or `/dev` are not exposed: a guest has no use for them and they leak
//!   the host (a peer shim lets guests read `/proc/self/environ`);
//! - the environment is exactly `process.env`;
//! - the network is the container's network namespace (sockets and outgoing HTTP work there);
//! - an HTTP component is served where `WASMCELL_HTTP_ADDR` (or runwasi's
//!   `WASMTIME_HTTP_PROXY_SOCKET_ADDR`) in `process.env` says, by default `0.0.0.0:8080`.
//!
//! The only I/O is a `stat` of bind mount sources, so a missing source fails `create` with its
//! name rather than the first guest open.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Mount, Process, Spec};
use wasmcell_engine::{
    Access, App, CompilePolicy, CpuQuota, HttpServe, HttpSettingError, Limits, ModuleSource,
    NameFiles, Network, Preopen, Stdio, WorkloadSpec,
};
use wasmcell_oci::Entrypoint;
use wasmcell_sandbox::protocol::{Namespace, NamespaceKind, Rlimit, Setup, User};

use crate::cgroup::Resources;

/// Why a container spec cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `config.json` is missing or malformed.
    #[error("cannot read the container spec {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The spec has no `process`.
    #[error("the container spec has no `process`: nothing to run")]
    NoProcess,
    /// The spec has no `root`.
    #[error("the container spec has no `root`")]
    NoRoot,
    /// `process.args` is empty.
    #[error(
        "no entrypoint: the process args are empty; set the image's Entrypoint or give a command"
    )]
    NoArgs,
    /// An `exec` request's process spec is malformed.
    #[error("the exec process spec is not valid: {0}")]
    Exec(String),
    /// The spec asks for something wasmcell does not provide yet.
    #[error("the container spec asks for {0}, which wasmcell does not support yet")]
    Unsupported(&'static str),
    /// An HTTP setting in the environment cannot be used.
    #[error(transparent)]
    Http(#[from] HttpSettingError),
    /// A bind mount names a source that does not exist.
    #[error("bind mount source {} (for {}) does not exist", source_path.display(), destination.display())]
    MissingBindSource {
        /// The host path.
        source_path: PathBuf,
        /// The mount point in the container.
        destination: PathBuf,
    },
}

/// Reads `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|source| SpecError::Read { path, source })
}

/// Where the container's rootfs is mounted: the spec's root path in the bundle, `rootfs` when
/// the spec names none or could not be read (cleaning up after a shim that died).
pub fn rootfs_path(spec: Option<&Spec>, bundle: &Path) -> PathBuf {
    let root = spec.and_then(|spec| spec.root().as_ref());
    bundle.join(root.map_or(Path::new("rootfs"), |root| root.path()))
}

/// Translates a runtime spec into what the engine runs.
pub fn workload(spec: &Spec, bundle: &Path, stdio: Stdio) -> Result<WorkloadSpec, SpecError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let (rootfs, preopens) = filesystem(spec, bundle)?;
    let names = name_files(spec);
    from_process(process, rootfs, preopens, stdio, limits(spec), names)
}

/// A Spin app's workload: the app (read from the rootfs by the caller) instead of an
/// entrypoint, which Spin images need not have. Its HTTP trigger listens where Spin's shim
/// does, `0.0.0.0:80`, unless `SPIN_HTTP_LISTEN_ADDR` or wasmcell's own setting says otherwise.
pub fn spin_workload(
    spec: &Spec,
    bundle: &Path,
    stdio: Stdio,
    app: wasmcell_spin::App,
) -> Result<WorkloadSpec, SpecError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let env = environment(process);
    let mut http = HttpServe::from_env(&env)?;
    let ours = env
        .iter()
        .any(|(k, _)| k == "WASMCELL_HTTP_ADDR" || k == "WASMTIME_HTTP_PROXY_SOCKET_ADDR");
    if !ours {
        http.addr = match env.iter().rev().find(|(k, _)| k == "SPIN_HTTP_LISTEN_ADDR") {
            Some((_, value)) => value.parse().map_err(|_| HttpSettingError {
                variable: "SPIN_HTTP_LISTEN_ADDR",
                value: value.clone(),
                expected: "an IP:PORT address such as 0.0.0.0:80",
            })?,
            None => std::net::SocketAddr::from(([0, 0, 0, 0], 80)),
        };
    }
    let app = App::Spin(Box::new(app));
    app_workload(spec, bundle, stdio, env, http, wasmcell_spin::MANIFEST, app)
}

/// A SpiderLightning app's workload: `/app.wasm` in the rootfs whatever the entrypoint, with
/// the capabilities of its slightfile (read from the rootfs by the caller). It listens where
/// it asks to, or at `WASMCELL_HTTP_ADDR`.
pub fn slight_workload(
    spec: &Spec,
    bundle: &Path,
    stdio: Stdio,
    app: wasmcell_slight::SlightApp,
) -> Result<WorkloadSpec, SpecError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let env = environment(process);
    let http = HttpServe::from_env(&env)?;
    let app = App::Slight(Box::new(app));
    app_workload(spec, bundle, stdio, env, http, wasmcell_slight::APP, app)
}

/// The workload of a framework's `app`, whose file `path` (its manifest, or its module) is at
/// the root of the container's rootfs.
fn app_workload(
    spec: &Spec,
    bundle: &Path,
    stdio: Stdio,
    env: Vec<(String, String)>,
    http: HttpServe,
    path: &str,
    app: App,
) -> Result<WorkloadSpec, SpecError> {
    let (rootfs, preopens) = filesystem(spec, bundle)?;
    Ok(WorkloadSpec {
        module: ModuleSource::Rootfs {
            root: rootfs,
            path: path.to_owned(),
        },
        function: None,
        args: match app {
            App::Spin(_) => Vec::new(),
            App::Slight(_) => vec![path.to_owned()],
        },
        env,
        cwd: "/".to_owned(),
        preopens,
        stdio,
        limits: limits(spec),
        network: Network::Inherit,
        http,
        names: name_files(spec),
        app: Some(app),
    })
}

/// The rootfs, and what the guest may open: the rootfs itself and the directories bind-mounted
/// into it.
fn filesystem(spec: &Spec, bundle: &Path) -> Result<(PathBuf, Vec<Preopen>), SpecError> {
    let root = spec.root().as_ref().ok_or(SpecError::NoRoot)?;
    let rootfs = bundle.join(root.path());
    let access = if root.readonly().unwrap_or(false) {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let mut preopens = vec![Preopen {
        host: rootfs.clone(),
        guest: "/".to_owned(),
        access,
    }];
    for mount in spec.mounts().iter().flatten() {
        if let Some(preopen) = bind_preopen(mount)? {
            preopens.push(preopen);
        }
    }
    Ok((rootfs, preopens))
}

/// The environment of the spec's process (none without one).
pub fn process_environment(spec: &Spec) -> Vec<(String, String)> {
    spec.process().as_ref().map(environment).unwrap_or_default()
}

/// The value of `name` in `env`: the last, as in a shell.
pub fn variable(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
}

/// The process's environment, exactly: `KEY=VALUE` entries (others are dropped).
pub fn environment(process: &Process) -> Vec<(String, String)> {
    process
        .env()
        .iter()
        .flatten()
        .filter_map(|var| var.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// The `/etc/hosts` and `/etc/resolv.conf` a runtime bind-mounts into the container (Docker
/// does, as CRI does): guests cannot open them (file mounts are not preopens), but their name
/// lookups read them.
fn name_files(spec: &Spec) -> NameFiles {
    let source_of = |destination: &str| {
        spec.mounts()
            .iter()
            .flatten()
            .rev()
            .find(|m| m.destination() == Path::new(destination))
            .and_then(|m| m.source().clone())
    };
    NameFiles {
        hosts: source_of("/etc/hosts"),
        resolv_conf: source_of("/etc/resolv.conf"),
    }
}

/// An `exec` in a container: the exec's own command, environment, working directory and stdio,
/// in the container's rootfs with the container's grants and limits.
pub fn exec_workload(
    container: &WorkloadSpec,
    process: &Process,
    stdio: Stdio,
) -> Result<WorkloadSpec, SpecError> {
    let ModuleSource::Rootfs { root, .. } = &container.module else {
        unreachable!("container workloads come from a rootfs");
    };
    from_process(
        process,
        root.clone(),
        container.preopens.clone(),
        stdio,
        container.limits,
        container.names.clone(),
    )
}

/// A workload running an OCI `process`: `args[0]` is `path[#function]` in `rootfs`, the
/// environment is exactly `process.env` (entries without `=` are dropped).
fn from_process(
    process: &Process,
    rootfs: PathBuf,
    preopens: Vec<Preopen>,
    stdio: Stdio,
    limits: Limits,
    names: NameFiles,
) -> Result<WorkloadSpec, SpecError> {
    let args = process.args().as_deref().unwrap_or_default();
    let entrypoint = Entrypoint::parse(args.first().ok_or(SpecError::NoArgs)?);
    let mut argv = vec![entrypoint.path.clone()];
    argv.extend(args[1..].iter().cloned());
    let env = environment(process);
    let http = HttpServe::from_env(&env)?;
    Ok(WorkloadSpec {
        module: ModuleSource::Rootfs {
            root: rootfs,
            path: entrypoint.path,
        },
        function: entrypoint.function,
        args: argv,
        env,
        cwd: process.cwd().display().to_string(),
        preopens,
        stdio,
        limits,
        network: Network::Inherit,
        http,
        names,
        app: None,
    })
}

/// The per-instance limits the spec sets: `linux.resources.memory.limit` (absent, zero or -1
/// mean none) and the CPU quota.
fn limits(spec: &Spec) -> Limits {
    let resources = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.resources().as_ref());
    resources.map(instance_limits).unwrap_or_default()
}

/// The limits one guest instance gets from `linux.resources` (at create, or from an update).
pub fn instance_limits(resources: &LinuxResources) -> Limits {
    let cpu = resources.cpu().as_ref();
    let quota = cpu.and_then(|c| c.quota()).filter(|q| *q > 0);
    let cpu = quota.map(|quota| CpuQuota {
        quota_us: quota as u64,
        period_us: cpu
            .and_then(|c| c.period())
            .filter(|p| *p > 0)
            .unwrap_or(DEFAULT_CPU_PERIOD_US),
    });
    Limits {
        memory: memory_limit(resources),
        cpu,
    }
}

/// The CFS period the kernel uses when a quota comes without one.
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;

/// The sandbox's isolation for this spec. Namespaces follow runc: listed without a path, a new
/// one; with a path, that one is joined; not listed, the host's is kept (`ctr run --net-host`).
/// The mount namespace is always private. A user namespace is refused rather than ignored.
pub fn sandbox_setup(
    spec: &Spec,
    cache_dir: &Path,
    compile: CompilePolicy,
) -> Result<Setup, SpecError> {
    let mut namespaces = Vec::new();
    for namespace in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
    {
        let kind = match namespace.typ() {
            LinuxNamespaceType::Network => NamespaceKind::Network,
            LinuxNamespaceType::Ipc => NamespaceKind::Ipc,
            LinuxNamespaceType::Uts => NamespaceKind::Uts,
            LinuxNamespaceType::User => {
                return Err(SpecError::Unsupported(
                    "a user namespace (Kubernetes: `hostUsers: false`)",
                ));
            }
            // Mount: always private. Pid and cgroup: guests see neither processes nor cgroups.
            _ => continue,
        };
        namespaces.push(Namespace {
            kind,
            path: namespace.path().clone(),
        });
    }
    let new_uts = namespaces
        .iter()
        .any(|n| n.kind == NamespaceKind::Uts && n.path.is_none());
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let user = process.user();
    Ok(Setup {
        namespaces,
        hostname: spec.hostname().clone().filter(|h| new_uts && !h.is_empty()),
        user: User {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
        },
        rlimits: process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| Rlimit {
                name: serde_json::to_value(r.typ())
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                soft: r.soft(),
                hard: r.hard(),
            })
            .collect(),
        cache_dir: cache_dir.to_owned(),
        compile,
        names: name_files(spec),
        bind_low_ports: process
            .capabilities()
            .as_ref()
            .and_then(|caps| caps.effective().as_ref())
            .is_some_and(|effective| {
                effective.contains(&oci_spec::runtime::Capability::NetBindService)
            }),
    })
}

/// Room for the sandbox process itself (engine, runtime, buffers) on top of the guests' own
/// memory limit, so the guest meets its limit in the engine (a clean 137 with an OOM event)
/// before the kernel's OOM killer meets the whole sandbox.
pub const SANDBOX_MEMORY_HEADROOM: i64 = 32 << 20;

/// The cgroup path and limits the spec asks for, if it names a cgroup.
pub fn cgroup(spec: &Spec) -> Option<(String, Resources)> {
    let linux = spec.linux().as_ref()?;
    let path = linux.cgroups_path().as_ref()?.display().to_string();
    Some((
        path,
        linux
            .resources()
            .as_ref()
            .map(resources)
            .unwrap_or_default(),
    ))
}

/// The cgroup limits for `linux.resources` (at create, or from `ctr task update`).
pub fn resources(resources: &LinuxResources) -> Resources {
    let cpu = resources.cpu().as_ref();
    Resources {
        memory: memory_limit(resources).map(|limit| limit as i64 + SANDBOX_MEMORY_HEADROOM),
        cpu_quota: cpu.and_then(|c| c.quota()),
        cpu_period: cpu.and_then(|c| c.period()),
        cpu_shares: cpu.and_then(|c| c.shares()),
        pids: resources
            .pids()
            .as_ref()
            .map(|p| p.limit())
            .filter(|l| *l > 0),
    }
}

/// The guest memory limit in `linux.resources` (absent, zero or -1 mean none).
fn memory_limit(resources: &LinuxResources) -> Option<u64> {
    resources
        .memory()
        .as_ref()
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| l as u64)
}

/// The preopen for a mount, if the guest gets one: directory bind mounts outside the kernel's
/// pseudo-filesystems. File bind mounts (`/etc/hosts` and friends) cannot be preopens in WASI,
/// which grants directories only.
fn bind_preopen(mount: &Mount) -> Result<Option<Preopen>, SpecError> {
    let destination = mount.destination();
    let options = mount.options().as_deref().unwrap_or_default();
    let is_bind = mount.typ().as_deref() == Some("bind")
        || options.iter().any(|o| o == "bind" || o == "rbind");
    let kernel_path = ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| destination.starts_with(p));
    if !is_bind || kernel_path {
        tracing::debug!(destination = %destination.display(), "mount not exposed to the guest");
        return Ok(None);
    }
    let Some(source) = mount.source() else {
        return Ok(None);
    };
    let metadata = std::fs::metadata(source).map_err(|_| SpecError::MissingBindSource {
        source_path: source.clone(),
        destination: destination.clone(),
    })?;
    if !metadata.is_dir() {
        tracing::debug!(destination = %destination.display(), "file bind mount not exposed: WASI preopens are directories");
        return Ok(None);
    }
    let readonly = options.iter().any(|o| o == "ro");
    Ok(Some(Preopen {
        host: source.clone(),
        guest: destination.display().to_string(),
        access: if readonly {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        },
    }))
}

#[cfg(test)]
mod tests;
