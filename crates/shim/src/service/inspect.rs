//! What containerd asks about and changes in a running container: state, pids, pause and
//! resume, live limits, stats.

use containerd_shim::api::{
    ConnectRequest, ConnectResponse, Empty, PauseRequest, PidsRequest, PidsResponse, ResumeRequest,
    StateRequest, StateResponse, StatsRequest, StatsResponse, Status, UpdateTaskRequest,
};
use containerd_shim::protos::api::ProcessInfo;
use containerd_shim::protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::util::convert_to_any;
use oci_spec::runtime::LinuxResources;
use wasmcell_sandbox::protocol::Request;

use crate::container::{State, sandbox_key};
use crate::error::Error;
use crate::{metrics, spec};

use super::{Result, TaskService};

impl TaskService {
    pub(super) async fn process_state(&self, req: StateRequest) -> Result<StateResponse> {
        let mut containers = self.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let bundle = container.bundle.display().to_string();
        let process = container.process(&req.id, &req.exec_id)?;
        let (status, exit_status, exited_at) = match &process.state {
            State::Created => (Status::CREATED, 0, None),
            State::Running => (Status::RUNNING, 0, None),
            State::Paused => (Status::PAUSED, 0, None),
            State::Stopped(exit) => (Status::STOPPED, exit.status, Some(exit.at.clone())),
        };
        let [stdin, stdout, stderr] = process.stdio.clone();
        Ok(StateResponse {
            id: req.id,
            exec_id: req.exec_id,
            bundle,
            pid: self.pid(),
            status: status.into(),
            stdin,
            stdout,
            stderr,
            exit_status,
            exited_at: exited_at.into(),
            ..Default::default()
        })
    }

    pub(super) async fn process_pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let containers = self.containers.lock().await;
        let container = containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let pid = self.pid();
        // Guests are instances in one sandbox process: each is listed with that PID and, for an
        // exec, its exec id (as runc's shim reports exec processes).
        let processes = container
            .processes
            .iter()
            .filter(|(_, process)| !matches!(process.state, State::Stopped(_)))
            .map(|(exec_id, _)| {
                let info = (!exec_id.is_empty())
                    .then(|| {
                        convert_to_any(Box::new(ProcessDetails {
                            exec_id: exec_id.clone(),
                            ..Default::default()
                        }))
                        .ok()
                    })
                    .flatten();
                ProcessInfo {
                    pid,
                    info: info.into(),
                    ..Default::default()
                }
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    pub(super) async fn pause_container(&self, req: PauseRequest) -> Result<Empty> {
        self.switch(&req.id, State::Running, State::Paused).await?;
        self.publish(TaskPaused {
            container_id: req.id,
            ..Default::default()
        });
        Ok(Empty::new())
    }

    pub(super) async fn resume_container(&self, req: ResumeRequest) -> Result<Empty> {
        self.switch(&req.id, State::Paused, State::Running).await?;
        self.publish(TaskResumed {
            container_id: req.id,
            ..Default::default()
        });
        Ok(Empty::new())
    }

    pub(super) async fn update_container(&self, req: UpdateTaskRequest) -> Result<Empty> {
        let resources: LinuxResources = serde_json::from_slice(&req.resources.value)
            .map_err(|e| Error::Unsupported(format!("unreadable resources in the update: {e}")))?;
        let keys = {
            let mut containers = self.containers.lock().await;
            let container = containers
                .get_mut(&req.id)
                .ok_or_else(|| Error::NotFound(req.id.clone()))?;
            // Later execs get the new limits too.
            container.guest(&req.id)?.workload.limits = spec::instance_limits(&resources);
            container
                .processes
                .keys()
                .map(|exec_id| sandbox_key(&req.id, exec_id))
                .collect::<Vec<_>>()
        };
        if let Some(cgroup) = self.cgroup_of(&req.id) {
            cgroup
                .apply(&spec::resources(&resources))
                .map_err(|e| Error::CgroupSetup(e.into()))?;
        }
        let limits = spec::instance_limits(&resources);
        for id in keys {
            self.sandbox()?
                .request(Request::Update { id, limits })
                .await
                .map_err(Error::Sandbox)?;
        }
        Ok(Empty::new())
    }

    pub(super) async fn container_stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        if !self.containers.lock().await.contains_key(&req.id) {
            return Err(Error::NotFound(req.id));
        }
        // The container that owns the sandbox's cgroup reports it (all of a lone container's
        // use; a whole pod's, for its sandbox container); a pod's other containers report
        // what their own guests used, since they share the cgroup.
        let metrics = match self.cgroup_of(&req.id) {
            Some(cgroup) => cgroup.metrics().map_err(Error::Metrics)?,
            None if self.owns_sandbox(&req.id) => {
                return Err(Error::Unsupported(format!(
                    "container {} has no cgroup",
                    req.id
                )));
            }
            None => metrics::usage(
                self.sandbox()?
                    .usage(&req.id)
                    .await
                    .map_err(Error::Sandbox)?,
            ),
        };
        let stats = metrics.into_any().map_err(Error::Metrics)?;
        Ok(StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    pub(super) async fn connection(&self, _req: ConnectRequest) -> Result<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.pid(),
            ..Default::default()
        })
    }
}

impl TaskService {
    /// Pauses or resumes every process of a container that is in state `from` (runc freezes a
    /// whole container the same way), moving each to `to`.
    async fn switch(&self, id: &str, from: State, to: State) -> Result<()> {
        let keys = self
            .containers
            .lock()
            .await
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_owned()))?
            .processes_to_switch(id, &from)?;
        for exec_id in keys {
            let key = sandbox_key(id, &exec_id);
            let request = if matches!(to, State::Paused) {
                Request::Pause { id: key }
            } else {
                Request::Resume { id: key }
            };
            self.sandbox()?.request(request).await?;
            if let Some(process) = self
                .containers
                .lock()
                .await
                .get_mut(id)
                .and_then(|c| c.processes.get_mut(&exec_id))
                && !matches!(process.state, State::Stopped(_))
            {
                process.state = if matches!(to, State::Paused) {
                    State::Paused
                } else {
                    State::Running
                };
            }
        }
        Ok(())
    }
}
