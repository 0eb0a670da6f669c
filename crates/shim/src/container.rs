//! One container in the shim: its workload and its processes (the init process, whose exec id
//! is empty, and any `exec`s), each with its own life.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;
use wasmcell_engine::WorkloadSpec;

use crate::error::Error;

/// How a process ended: its status and when.
#[derive(Debug, Clone)]
pub struct ExitInfo {
    /// The exit status containerd reports (guest code, 128 + signal, 134 for a trap, 137 for
    /// out of memory).
    pub status: u32,
    /// When it ended.
    pub at: Timestamp,
}

/// Where a process is in its life.
pub enum State {
    /// Created: prepared in the sandbox, not started.
    Created,
    /// Its guest is running in the sandbox.
    Running,
    /// Its guest is stopped at an epoch tick until resumed.
    Paused,
    /// Finished.
    Stopped(ExitInfo),
}

impl State {
    /// The name used in messages.
    pub fn name(&self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped(_) => "stopped",
        }
    }
}

/// A guest instance of a container: its init process or an exec.
pub struct Process {
    /// The stdio paths as containerd gave them, for `state`.
    pub stdio: [String; 3],
    /// Where it is in its life.
    pub state: State,
    /// Set once when it exits; `wait` watches it.
    pub exited: watch::Sender<Option<ExitInfo>>,
}

impl Process {
    /// A created process with these stdio paths.
    pub fn new(stdio: [String; 3]) -> Process {
        Process {
            stdio,
            state: State::Created,
            exited: watch::channel(None).0,
        }
    }

    /// Records the exit, wakes every `wait`, and returns the event announcing it.
    pub fn finish(
        &mut self,
        container_id: &str,
        exec_id: &str,
        pid: u32,
        exit: ExitInfo,
    ) -> TaskExit {
        self.state = State::Stopped(exit.clone());
        self.exited.send_replace(Some(exit.clone()));
        TaskExit {
            container_id: container_id.to_owned(),
            id: if exec_id.is_empty() {
                container_id
            } else {
                exec_id
            }
            .to_owned(),
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        }
    }
}

/// A container and its processes.
pub struct Container {
    /// The bundle directory containerd made.
    pub bundle: PathBuf,
    /// What it runs.
    pub payload: Payload,
    /// Its processes by exec id; the init process is `""`.
    pub processes: HashMap<String, Process>,
}

/// What a container runs.
pub enum Payload {
    /// A Wasm guest (boxed: a guest's workload spec is large, a pod sandbox is nothing).
    Guest(Box<Guest>),
    /// Nothing: CRI's sandbox container of a pod, emulated (see `crate::pod`).
    PodSandbox,
}

/// A container's guest: what its init process runs, and what the shim set up for it.
pub struct Guest {
    /// Its OCI hooks, if its spec has any: poststart and poststop run from here.
    pub hooks: Option<Arc<crate::hooks::Lifecycle>>,
    /// The rootfs the shim mounted (unmounted at delete), if containerd passed mounts.
    pub mounted_rootfs: Option<PathBuf>,
    /// What its init process runs; execs run in the same rootfs with the same grants.
    pub workload: WorkloadSpec,
}

impl Container {
    /// Its guest; a pod's sandbox container has none, so there is nothing to exec or update.
    pub fn guest(&mut self, id: &str) -> Result<&mut Guest, Error> {
        match &mut self.payload {
            Payload::Guest(guest) => Ok(guest),
            Payload::PodSandbox => Err(Error::Unsupported(format!(
                "container {id} is a pod's sandbox: it runs nothing (no pause process either)"
            ))),
        }
    }

    /// The process with this exec id (`""`: the init process).
    pub fn process(&mut self, id: &str, exec_id: &str) -> Result<&mut Process, Error> {
        self.processes
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(describe(id, exec_id)))
    }
}

/// The name of a process in messages: `ID` or `exec EXEC in ID`.
pub fn describe(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        id.to_owned()
    } else {
        format!("exec {exec_id} in {id}")
    }
}

/// The key a process has in the sandbox: the container id, or `ID/EXEC` (ids never hold `/`).
pub fn sandbox_key(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        id.to_owned()
    } else {
        format!("{id}/{exec_id}")
    }
}

/// The container and exec id of a sandbox key.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((key, ""))
}
