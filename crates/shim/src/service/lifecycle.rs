//! A process's life: start, signals, its exit (recorded as the sandbox reports it), delete, and
//! the shim's own shutdown.

use std::time::Duration;

use containerd_shim::api::{
    DeleteRequest, DeleteResponse, Empty, KillRequest, ShutdownRequest, StartRequest,
    StartResponse, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{TaskDelete, TaskExecStarted, TaskOOM, TaskStart};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::util::timestamp;
use tokio::sync::mpsc;
use wasmcell_sandbox::Exited;
use wasmcell_sandbox::protocol::Request;

use crate::cgroup::OomWatch;
use crate::container::{
    Container, ExitInfo, Payload, Process, State, describe, sandbox_key, split_key,
};
use crate::error::Error;
use crate::events::{Events, Outgoing};
use crate::hooks::Stage;
use crate::sys;

use super::{Containers, IGNORED_SIGNALS, Result, SANDBOX_DIED_STATUS, TaskService};

impl TaskService {
    pub(super) async fn start_process(&self, req: StartRequest) -> Result<StartResponse> {
        let mut containers = self.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        // Marked running before the guest can exit, so its exit is never recorded first.
        container
            .process(&req.id, &req.exec_id)?
            .mark_started(&req.id, &req.exec_id)?;
        let (poststart, runs_guest) = match &container.payload {
            Payload::Guest(guest) => (
                req.exec_id
                    .is_empty()
                    .then(|| guest.hooks.clone())
                    .flatten(),
                true,
            ),
            Payload::PodSandbox => (None, false),
        };
        drop(containers);
        let key = sandbox_key(&req.id, &req.exec_id);
        if runs_guest && let Err(error) = self.sandbox()?.request(Request::Start { id: key }).await
        {
            if let Some(process) = self
                .containers
                .lock()
                .await
                .get_mut(&req.id)
                .and_then(|c| c.processes.get_mut(&req.exec_id))
            {
                process.state = State::Created;
            }
            return Err(Error::Sandbox(error));
        }
        let pid = self.pid();
        if let Some(hooks) = poststart
            && let Err(error) = hooks.run(Stage::Poststart, pid).await
        {
            tracing::warn!("{}: {error}", req.id);
        }
        if req.exec_id.is_empty() {
            self.publish(TaskStart {
                container_id: req.id,
                pid,
                ..Default::default()
            });
        } else {
            self.publish(TaskExecStarted {
                container_id: req.id,
                exec_id: req.exec_id,
                pid,
                ..Default::default()
            });
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    pub(super) async fn kill_process(&self, req: KillRequest) -> Result<Empty> {
        if IGNORED_SIGNALS.contains(&req.signal) {
            return Ok(Empty::new());
        }
        let mut containers = self.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let runs_guest = matches!(container.payload, Payload::Guest(_));
        let process = container.process(&req.id, &req.exec_id)?;
        match process.state {
            // A command cannot handle signals: every other signal ends it at once, 128 +
            // signal; an HTTP server drains on SIGTERM/SIGINT. The sandbox reports the exit,
            // which is recorded like any other.
            State::Running | State::Paused if runs_guest => {
                drop(containers);
                let key = sandbox_key(&req.id, &req.exec_id);
                self.sandbox()?
                    .request(Request::Kill {
                        id: key,
                        signal: req.signal,
                    })
                    .await
                    .map_err(|_| Error::Finished)?;
            }
            // Nothing runs yet, or nothing runs at all (a pod's sandbox container): it ends
            // here, as a process killed by the signal would.
            State::Created | State::Running | State::Paused => {
                let exit = ExitInfo {
                    status: 128 + req.signal,
                    at: timestamp().unwrap_or_default(),
                };
                let event = process.finish(&req.id, &req.exec_id, self.pid(), exit);
                self.publish(event);
            }
            State::Stopped(_) => return Err(Error::Finished),
        }
        Ok(Empty::new())
    }

    pub(super) async fn wait_process(&self, req: WaitRequest) -> Result<WaitResponse> {
        let mut exited = {
            let mut containers = self.containers.lock().await;
            let container = containers
                .get_mut(&req.id)
                .ok_or_else(|| Error::NotFound(req.id.clone()))?;
            container.process(&req.id, &req.exec_id)?.exited.subscribe()
        };
        let exit = exited
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::NotFound(describe(&req.id, &req.exec_id)))?
            .clone()
            .expect("waited for Some");
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    pub(super) async fn delete_process(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let mut containers = self.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let process = container.process(&req.id, &req.exec_id)?;
        let (status, exited_at) = process.exit_for_delete(&req.id, &req.exec_id)?;
        // Deleting the init process deletes the container, with whatever execs it still lists.
        let (keys, removed) = if req.exec_id.is_empty() {
            let container = containers.remove(&req.id).expect("present");
            let keys = container
                .processes
                .keys()
                .map(|exec_id| sandbox_key(&req.id, exec_id))
                .collect();
            (keys, Some(container))
        } else {
            container.processes.remove(&req.exec_id);
            (vec![sandbox_key(&req.id, &req.exec_id)], None)
        };
        drop(containers);
        if let Ok(sandbox) = self.sandbox() {
            for key in keys {
                // A sandbox that is gone has forgotten its workloads already.
                let _ = sandbox.request(Request::Delete { id: key }).await;
            }
        }
        let pid = self.pid();
        if let Some(Container {
            payload: Payload::Guest(guest),
            ..
        }) = &removed
        {
            if let Some(rootfs) = &guest.mounted_rootfs {
                sys::unmount_rootfs(rootfs)?.release_in_background();
            }
            if let Some(hooks) = &guest.hooks
                && let Err(error) = hooks.run(Stage::Poststop, pid).await
            {
                tracing::warn!("{}: {error}", req.id);
            }
        }
        if req.exec_id.is_empty() {
            self.publish(TaskDelete {
                container_id: req.id.clone(),
                id: req.id,
                pid,
                exit_status: status,
                exited_at: MessageField::some(exited_at.clone()),
                ..Default::default()
            });
        }
        Ok(DeleteResponse {
            pid,
            exit_status: status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    pub(super) async fn shut_down(&self, _req: ShutdownRequest) -> Result<Empty> {
        // containerd asks after each delete; the shim stays while other containers of its group live.
        if !self.containers.lock().await.is_empty() {
            return Ok(Empty::new());
        }
        // Before the reply: containerd deletes the bundle once it has it, and a `start` for this
        // pod from now on must make a new shim rather than find this one leaving.
        self.socket.remove();
        // Answered at once: containerd waits for the reply, not for this process. The shim
        // exits once the sandbox is gone and its cgroup removed.
        let handle = self.sandbox.get();
        let gone = handle.map(|h| h.sandbox.end(Duration::from_secs(1)));
        let cgroup = handle.and_then(|h| h.cgroup.clone());
        let exit = self.exit.clone();
        tokio::spawn(async move {
            if let Some(gone) = gone {
                gone.await;
            }
            if let Some(cgroup) = cgroup {
                cgroup.remove();
            }
            exit.signal();
        });
        Ok(Empty::new())
    }
}

/// Records the guests' exits as the sandbox reports them; when the sandbox itself ends, every
/// guest it still held ends with it, OOM-killed (an OOM event first) if its cgroup's OOM
/// killer ended it.
pub(super) async fn record_exits(
    mut exits: mpsc::UnboundedReceiver<Exited>,
    containers: Containers,
    events: Events,
    pid: u32,
    oom: Option<OomWatch>,
) {
    while let Some(Exited {
        id: key,
        status,
        oom,
    }) = exits.recv().await
    {
        let (id, exec_id) = split_key(&key);
        let exit = ExitInfo {
            status,
            at: timestamp().unwrap_or_default(),
        };
        if let Some(process) = containers
            .lock()
            .await
            .get_mut(id)
            .and_then(|c| c.processes.get_mut(exec_id))
        {
            if oom {
                let _ = events.send(Outgoing::new(&TaskOOM {
                    container_id: id.to_owned(),
                    ..Default::default()
                }));
            }
            let _ = events.send(Outgoing::new(&process.finish(id, exec_id, pid, exit)));
        }
    }
    let oom_killed = oom.as_ref().is_some_and(OomWatch::fired);
    let mut containers = containers.lock().await;
    for (id, container) in containers.iter_mut() {
        let running = |p: &Process| !matches!(p.state, State::Stopped(_));
        if oom_killed && container.processes.values().any(running) {
            let _ = events.send(Outgoing::new(&TaskOOM {
                container_id: id.clone(),
                ..Default::default()
            }));
        }
        for (exec_id, process) in container.processes.iter_mut() {
            if running(process) {
                tracing::warn!(
                    "the sandbox ended under {}{}",
                    describe(id, exec_id),
                    if oom_killed {
                        ", killed by its cgroup's OOM killer"
                    } else {
                        ""
                    }
                );
                let exit = ExitInfo {
                    status: SANDBOX_DIED_STATUS,
                    at: timestamp().unwrap_or_default(),
                };
                let _ = events.send(Outgoing::new(&process.finish(id, exec_id, pid, exit)));
            }
        }
    }
}
