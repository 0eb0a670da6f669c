//! One container in the shim: where it is in its life.

use std::path::PathBuf;

use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

/// How a task ended: its status and when.
#[derive(Debug, Clone)]
pub struct ExitInfo {
    /// The exit status containerd reports (guest code, 128 + signal, 134 for a trap, 137 for
    /// out of memory).
    pub status: u32,
    /// When it ended.
    pub at: Timestamp,
}

/// Where a container is in its life.
pub enum State {
    /// Created: prepared in the sandbox, not started.
    Created,
    /// Its guest is running in the sandbox.
    Running,
    /// Finished.
    Stopped(ExitInfo),
}

impl State {
    /// The name used in messages.
    pub fn name(&self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
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
    /// Where it is in its life.
    pub state: State,
    /// Set once when the task exits; `wait` watches it.
    pub exited: watch::Sender<Option<ExitInfo>>,
}

impl Container {
    /// Records the exit, wakes every `wait`, and returns the event announcing it.
    pub fn finish(&mut self, id: &str, pid: u32, exit: ExitInfo) -> TaskExit {
        self.state = State::Stopped(exit.clone());
        self.exited.send_replace(Some(exit.clone()));
        TaskExit {
            container_id: id.to_owned(),
            id: id.to_owned(),
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        }
    }
}
