//! One container in the shim: its prepared workload and where it is in its life.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::{oneshot, watch};
use wasmcell_engine::Prepared;

/// How a task ended: its status and when.
#[derive(Debug, Clone)]
pub struct ExitInfo {
    /// The exit status containerd reports (guest code, 128 + signal, or 134 for a trap).
    pub status: u32,
    /// When it ended.
    pub at: Timestamp,
}

/// Where a container is in its life. Each state holds exactly what is valid in it.
pub enum State {
    /// Created: prepared, not started.
    Created,
    /// Running: a signal sent on `kill` ends the guest with 128 + signal.
    Running {
        /// Delivers a terminating signal to the runner; taken by the first kill.
        kill: Option<oneshot::Sender<u32>>,
    },
    /// Finished.
    Stopped(ExitInfo),
}

impl State {
    /// The name used in messages.
    pub fn name(&self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running { .. } => "running",
            State::Stopped(_) => "stopped",
        }
    }
}

/// A container and its task.
pub struct Container {
    /// The bundle directory containerd made.
    pub bundle: PathBuf,
    /// The rootfs the shim mounted (unmounted at delete), if containerd passed mounts.
    pub mounted_rootfs: Option<PathBuf>,
    /// The stdio paths as containerd gave them, for `state`.
    pub stdio: [String; 3],
    /// The workload, ready to instantiate.
    pub prepared: Arc<Prepared>,
    /// Where it is in its life.
    pub state: State,
    /// Set once when the task exits; `wait` watches it.
    pub exited: watch::Sender<Option<ExitInfo>>,
}

impl Container {
    /// Records the exit, wakes every `wait`, and returns the event announcing it.
    pub fn finish(&mut self, id: &str, exit: ExitInfo) -> TaskExit {
        self.state = State::Stopped(exit.clone());
        self.exited.send_replace(Some(exit.clone()));
        TaskExit {
            container_id: id.to_owned(),
            id: id.to_owned(),
            pid: std::process::id(),
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        }
    }
}
