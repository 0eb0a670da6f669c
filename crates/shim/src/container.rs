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

    /// Marks a created process running, before its guest is started (so that its exit can
    /// never be recorded first); a process in any other state cannot start.
    pub fn mark_started(&mut self, id: &str, exec_id: &str) -> Result<(), Error> {
        if !matches!(self.state, State::Created) {
            return Err(self.wrong_state(id, exec_id, "start"));
        }
        self.state = State::Running;
        Ok(())
    }

    /// The status and time `delete` reports: a process that never started is deleted as 0,
    /// now; one still running or paused must be killed first.
    pub fn exit_for_delete(&self, id: &str, exec_id: &str) -> Result<(u32, Timestamp), Error> {
        match &self.state {
            State::Running | State::Paused => Err(self.wrong_state(id, exec_id, "delete")),
            State::Created => Ok((0, containerd_shim::util::timestamp().unwrap_or_default())),
            State::Stopped(exit) => Ok((exit.status, exit.at.clone())),
        }
    }

    fn wrong_state(&self, id: &str, exec_id: &str, action: &'static str) -> Error {
        Error::WrongState {
            id: describe(id, exec_id),
            state: self.state.name(),
            action,
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

    /// The exec ids of the processes to pause (`from` running) or resume (`from` paused): all
    /// of them in that state, as runc freezes a whole container, provided its init process is.
    pub fn processes_to_switch(&mut self, id: &str, from: &State) -> Result<Vec<String>, Error> {
        let same = |state: &State| std::mem::discriminant(state) == std::mem::discriminant(from);
        let init = self.process(id, "")?;
        if !same(&init.state) {
            let action = if matches!(from, State::Running) {
                "pause"
            } else {
                "resume"
            };
            return Err(init.wrong_state(id, "", action));
        }
        Ok(self
            .processes
            .iter()
            .filter(|(_, process)| same(&process.state))
            .map(|(exec_id, _)| exec_id.clone())
            .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn container(states: impl IntoIterator<Item = (&'static str, State)>) -> Container {
        Container {
            bundle: PathBuf::new(),
            payload: Payload::PodSandbox,
            processes: states
                .into_iter()
                .map(|(exec_id, state)| {
                    let mut process = Process::new(Default::default());
                    process.state = state;
                    (exec_id.to_owned(), process)
                })
                .collect(),
        }
    }

    fn stopped(status: u32) -> State {
        State::Stopped(ExitInfo {
            status,
            at: Timestamp::default(),
        })
    }

    #[test]
    fn only_a_created_process_starts_and_only_once() {
        let mut process = Process::new(Default::default());
        process.mark_started("c", "").unwrap();
        assert!(matches!(process.state, State::Running));
        let again = process.mark_started("c", "").unwrap_err().to_string();
        assert!(again.contains("running"), "{again}");
        process.state = stopped(0);
        let ended = process.mark_started("c", "e1").unwrap_err().to_string();
        assert!(
            ended.contains("exec e1 in c") && ended.contains("stopped"),
            "{ended}"
        );
    }

    #[test]
    fn delete_reports_the_exit_and_refuses_a_live_process() {
        let mut process = Process::new(Default::default());
        assert_eq!(process.exit_for_delete("c", "").unwrap().0, 0);
        process.state = stopped(137);
        assert_eq!(process.exit_for_delete("c", "").unwrap().0, 137);
        for live in [State::Running, State::Paused] {
            let name = live.name();
            process.state = live;
            let refused = process.exit_for_delete("c", "").unwrap_err().to_string();
            assert!(refused.contains(name), "{refused}");
        }
    }

    #[test]
    fn pause_takes_every_running_process_and_needs_a_running_init() {
        let mut running = container([
            ("", State::Running),
            ("e1", State::Running),
            ("e2", stopped(0)),
        ]);
        let mut paused = running.processes_to_switch("c", &State::Running).unwrap();
        paused.sort();
        assert_eq!(paused, ["", "e1"]);
        let not_paused = running
            .processes_to_switch("c", &State::Paused)
            .unwrap_err()
            .to_string();
        assert!(not_paused.contains("resume"), "{not_paused}");

        let mut ended = container([("", stopped(0)), ("e1", State::Running)]);
        assert!(ended.processes_to_switch("c", &State::Running).is_err());
        assert!(
            container([])
                .processes_to_switch("c", &State::Running)
                .is_err()
        );
    }
}
