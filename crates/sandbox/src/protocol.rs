//! The control protocol between a shim and its sandbox.
//!
//! A `SOCK_SEQPACKET` socket pair carrying [`crate::channel`] messages, each one JSON document
//! with the descriptors of the request that needs them (`SCM_RIGHTS`), tagged with the request's
//! sequence number. The shim sends [`Setup`] first (number 0), then [`Request`]s; the sandbox
//! answers each with a [`Message::Reply`] under the request's number, and reports
//! [`Message::Exited`] (tagged [`UNSOLICITED`]) whenever a guest ends.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use wasmcell_engine::{
    Access, CompilePolicy, Input, Limits, NameFiles, Output, Usage, WorkloadSpec,
};

/// The descriptor number the control socket has in the sandbox.
pub const CONTROL_FD: i32 = 3;

/// The tag of a message that answers no request.
pub const UNSOLICITED: u64 = u64::MAX;

/// How the sandbox isolates itself, from the first container's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// Namespaces to join or create, besides the private mount namespace it always gets. A kind
    /// not listed stays the host's, as with runc.
    pub namespaces: Vec<Namespace>,
    /// The hostname to set (needs a new UTS namespace).
    pub hostname: Option<String>,
    /// Who the guests run as.
    pub user: User,
    /// Resource limits of the sandbox process (`process.rlimits`).
    pub rlimits: Vec<Rlimit>,
    /// The compile cache to load artifacts from: the one host directory the sandbox sees (at
    /// the same path, read-only).
    pub cache_dir: PathBuf,
    /// When the engines compile what (the shim's `WASMCELL_COMPILE`): a tiered server waits
    /// for the optimised code the shim compiles.
    #[serde(default)]
    pub compile: CompilePolicy,
    /// The first container's `/etc/hosts` and `/etc/resolv.conf` (the sources of the bind
    /// mounts Docker and CRI add), which the sandbox's own root shows at those paths for the C
    /// library's name lookups (`wasi:sockets`' `ip-name-lookup`); the host's where not given.
    pub names: NameFiles,
    /// Keep `CAP_NET_BIND_SERVICE` (and no other capability), for servers on ports below
    /// 1024: set when the spec's process has it, as Docker's and Kubernetes' defaults do and
    /// as Spin apps need for their default port 80.
    pub bind_low_ports: bool,
}

/// A namespace of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Which kind.
    pub kind: NamespaceKind,
    /// Join the namespace at this path (e.g. a pod's netns); `None` creates a new one.
    pub path: Option<PathBuf>,
}

/// The namespace kinds a sandbox applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceKind {
    /// Network: sockets the guests open live here.
    Network,
    /// System V IPC and POSIX message queues.
    Ipc,
    /// Hostname and domain name.
    Uts,
}

/// Credentials of the guests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
}

/// A POSIX resource limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Its name as the OCI spec writes it, e.g. `RLIMIT_NOFILE`.
    pub name: String,
    /// The soft limit.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// A request from the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Prepare a container. Each grant comes with the packet as a descriptor, in order, and
    /// the spec's uses of its path are served through it (see [`apply_grants`]).
    Create {
        /// The container id.
        id: String,
        /// What to run, with host paths as the shim knows them.
        spec: Box<WorkloadSpec>,
        /// What the shim opened for it ([`grants`] of the spec).
        grants: Vec<Grant>,
    },
    /// Start a created container's guest.
    Start {
        /// The container id.
        id: String,
    },
    /// Deliver a signal: a guest cannot handle signals, so it ends with 128 + signal.
    Kill {
        /// The container id.
        id: String,
        /// The signal number.
        signal: u32,
    },
    /// Stop a running guest at its next epoch tick, until `Resume`.
    Pause {
        /// The workload's key.
        id: String,
    },
    /// Let a paused guest go on.
    Resume {
        /// The workload's key.
        id: String,
    },
    /// Change a workload's limits, live.
    Update {
        /// The workload's key.
        id: String,
        /// The new limits.
        limits: Limits,
    },
    /// Forget a container that is not running, releasing its descriptors.
    Delete {
        /// The container id.
        id: String,
    },
    /// What a container's processes (its init process and execs, deleted ones included) have
    /// used: answered with [`Answer::Usage`].
    Usage {
        /// The container id.
        id: String,
    },
}

/// What a request that succeeded returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Done; nothing to say.
    Done,
    /// A container's use (for [`Request::Usage`]).
    Usage(Usage),
}

/// A message from the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The outcome of the request it is tagged with: its answer, or why it failed (with
    /// causes).
    Reply(Result<Answer, String>),
    /// A guest ended.
    Exited {
        /// The container id.
        id: String,
        /// Its exit status.
        status: u32,
        /// Whether it ended by exceeding its memory limit.
        oom: bool,
    },
}

/// A host path a container needs, and how the shim opens it for the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The host path.
    pub path: PathBuf,
    /// How it is opened.
    pub open: Open,
}

/// How a granted path is opened by the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Open {
    /// A directory or file the spec reaches through `/proc/self/fd/N` (so the sandbox's own uid
    /// decides what it may read or write there, as for a runc process). The shim passes a
    /// detached copy of its mount (`open_tree`), `nodev` and `nosuid`, read-only unless some use
    /// of the path writes: `..` cannot climb out of a detached mount, a device node in an image
    /// cannot be opened, and a read-only grant is read-only to every opener in the sandbox (the
    /// stores included), not only to the guest's WASI calls.
    Reach(Access),
    /// Read, non-blocking: the stdin FIFO.
    Read,
    /// Read-write, non-blocking: a stdout/stderr FIFO (it then never reports EPIPE).
    Write,
    /// Append, created if missing: a `file://` log.
    Append,
}

/// What a spec needs from the host, each path once: its directories and module to reach, and
/// its stdio to open. The shim opens these (as root, where containerd's 0700 directories are
/// no obstacle) and passes them with `Create`.
pub fn grants(spec: &WorkloadSpec) -> Vec<Grant> {
    let mut grants: Vec<Grant> = Vec::new();
    let mut add = |path: &PathBuf, open| match grants.iter_mut().find(|g| &g.path == path) {
        // A path reached both read-only and read-write (the rootfs: the module's source and
        // the guest's `/`) is granted read-write.
        Some(granted) => {
            if open == Open::Reach(Access::ReadWrite) {
                granted.open = open;
            }
        }
        None => grants.push(Grant {
            path: path.clone(),
            open,
        }),
    };
    // Every reached path is read-only but where a preopen writes.
    for path in spec.clone().host_paths_mut() {
        add(path, Open::Reach(Access::ReadOnly));
    }
    for preopen in &spec.preopens {
        add(&preopen.host, Open::Reach(preopen.access));
    }
    if let Input::Fifo(path) = &spec.stdio.stdin {
        add(path, Open::Read);
    }
    for output in [&spec.stdio.stdout, &spec.stdio.stderr] {
        match output {
            Output::Fifo(path) => add(path, Open::Write),
            Output::File(path) => add(path, Open::Append),
            _ => {}
        }
    }
    grants
}

/// Rewrites `spec` to use the descriptors that arrived for `grants`: reached paths become
/// `/proc/self/fd/N`, stdio becomes the descriptor itself.
pub fn apply_grants(
    spec: &mut WorkloadSpec,
    grants: &[Grant],
    fds: &[OwnedFd],
) -> Result<(), String> {
    if grants.len() != fds.len() {
        return Err(format!(
            "{} grants arrived with {} descriptors",
            grants.len(),
            fds.len()
        ));
    }
    let fd_of: HashMap<&PathBuf, i32> = grants
        .iter()
        .map(|g| &g.path)
        .zip(fds.iter().map(AsRawFd::as_raw_fd))
        .collect();
    let granted = |path: &PathBuf| {
        fd_of
            .get(path)
            .copied()
            .ok_or_else(|| format!("{} was not granted", path.display()))
    };
    for path in spec.host_paths_mut() {
        *path = PathBuf::from(format!("/proc/self/fd/{}", granted(path)?));
    }
    if let Input::Fifo(path) = &spec.stdio.stdin {
        spec.stdio.stdin = Input::Descriptor(granted(path)?);
    }
    for output in [&mut spec.stdio.stdout, &mut spec.stdio.stderr] {
        if let Output::Fifo(path) | Output::File(path) = output {
            *output = Output::Descriptor(granted(path)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcell_engine::{HttpServe, Limits, ModuleSource, Network, Preopen, Stdio};

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            module: ModuleSource::Rootfs {
                root: "/bundle/rootfs".into(),
                path: "/app.wasm".into(),
            },
            function: None,
            args: vec!["/app.wasm".into()],
            env: vec![],
            cwd: "/".into(),
            preopens: vec![
                Preopen {
                    host: "/bundle/rootfs".into(),
                    guest: "/".into(),
                    access: Access::ReadWrite,
                },
                Preopen {
                    host: "/data".into(),
                    guest: "/data".into(),
                    access: Access::ReadOnly,
                },
            ],
            stdio: Stdio {
                stdin: Input::Fifo("/fifo/in".into()),
                stdout: Output::Fifo("/fifo/out".into()),
                stderr: Output::File("/log".into()),
            },
            limits: Limits::default(),
            network: Network::Inherit,
            http: HttpServe::default(),
            names: Default::default(),
            app: None,
        }
    }

    #[test]
    fn each_path_is_granted_once_with_its_mode() {
        let opens: Vec<_> = grants(&spec())
            .into_iter()
            .map(|g| (g.path.display().to_string(), g.open))
            .collect();
        assert_eq!(
            opens,
            [
                ("/bundle/rootfs".to_owned(), Open::Reach(Access::ReadWrite)),
                ("/data".to_owned(), Open::Reach(Access::ReadOnly)),
                ("/fifo/in".to_owned(), Open::Read),
                ("/fifo/out".to_owned(), Open::Write),
                ("/log".to_owned(), Open::Append),
            ]
        );
    }

    #[test]
    fn granted_spec_uses_only_descriptors() {
        let mut spec = spec();
        let grants = grants(&spec);
        let fds: Vec<OwnedFd> = grants
            .iter()
            .map(|_| std::fs::File::open("/dev/null").unwrap().into())
            .collect();
        let numbers: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        apply_grants(&mut spec, &grants, &fds).unwrap();
        let root = PathBuf::from(format!("/proc/self/fd/{}", numbers[0]));
        assert_eq!(
            spec.module,
            ModuleSource::Rootfs {
                root: root.clone(),
                path: "/app.wasm".into()
            }
        );
        assert_eq!(spec.preopens[0].host, root);
        assert_eq!(
            spec.preopens[1].host,
            PathBuf::from(format!("/proc/self/fd/{}", numbers[1]))
        );
        assert_eq!(spec.stdio.stdin, Input::Descriptor(numbers[2]));
        assert_eq!(spec.stdio.stdout, Output::Descriptor(numbers[3]));
        assert_eq!(spec.stdio.stderr, Output::Descriptor(numbers[4]));
    }

    #[test]
    fn a_missing_descriptor_is_refused() {
        let mut spec = spec();
        let grants = grants(&spec);
        assert!(
            apply_grants(&mut spec, &grants, &[])
                .unwrap_err()
                .contains("5 grants arrived with 0")
        );
    }
}
