//! The containerd task service (shim v2 `Task` API) over Wasm workloads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, Status, WaitRequest, WaitResponse,
};
use containerd_shim::event::Event;
use containerd_shim::protos::api::ProcessInfo;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::timestamp;
use containerd_shim::{ExitSignal, Task, TtrpcContext};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use wasmcell_engine::{Engine, Input, Output, Stdio};

use crate::container::{Container, ExitInfo, State};
use crate::error::Error;
use crate::runtime::Runtime;
use crate::{spec, sys};

type Result<T> = std::result::Result<T, Error>;

/// Signals whose default action is to do nothing: a guest cannot install handlers, so these are
/// no-ops, as they would be for a process that never handled them.
const IGNORED_SIGNALS: [u32; 4] = [
    libc::SIGCHLD as u32,
    libc::SIGCONT as u32,
    libc::SIGURG as u32,
    libc::SIGWINCH as u32,
];

/// Serves the Task API for every container of this shim (one shim per pod, or per container).
pub struct TaskService {
    runtime: Runtime,
    engine: Arc<Engine>,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    events: mpsc::UnboundedSender<Box<dyn Event + Send>>,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    /// Creates the service; events are forwarded in order to containerd by a background task.
    pub fn new(
        runtime: Runtime,
        namespace: String,
        engine: Arc<Engine>,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> TaskService {
        let (events, mut queue) = mpsc::unbounded_channel::<Box<dyn Event + Send>>();
        tokio::spawn(async move {
            while let Some(event) = queue.recv().await {
                let topic = event.topic();
                if let Err(error) = publisher
                    .publish(Default::default(), &topic, &namespace, event)
                    .await
                {
                    tracing::error!("cannot publish {topic}: {error}");
                }
            }
        });
        TaskService {
            runtime,
            engine,
            containers: Default::default(),
            events,
            exit,
        }
    }

    fn publish(&self, event: impl Event + Send + 'static) {
        // Fails only when the forwarder is gone, i.e. the shim is shutting down.
        let _ = self.events.send(Box::new(event));
    }

    async fn create_container(&self, req: &CreateTaskRequest) -> Result<Container> {
        if !self.runtime.is_supported() {
            return Err(Error::UnsupportedRuntime(self.runtime));
        }
        if req.terminal {
            return Err(Error::Unsupported(
                "a terminal (`-t`) is not supported for Wasm guests: run without -t".to_owned(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let stdio = Stdio {
            stdin: if req.stdin.is_empty() {
                Input::Null
            } else {
                Input::Fifo(req.stdin.clone().into())
            },
            stdout: output(&req.stdout)?,
            stderr: output(&req.stderr)?,
        };
        let oci = spec::load(&bundle)?;
        let mounted_rootfs = if req.rootfs.is_empty() {
            None
        } else {
            let target = bundle.join(
                oci.root()
                    .as_ref()
                    .map(|r| r.path().clone())
                    .unwrap_or_else(|| "rootfs".into()),
            );
            sys::mount_rootfs(&req.rootfs, &target).await?;
            Some(target)
        };
        let prepared = async {
            let workload = spec::workload(&oci, &bundle, stdio)?;
            let engine = self.engine.clone();
            Ok::<_, Error>(tokio::task::spawn_blocking(move || engine.prepare(workload)).await??)
        }
        .await;
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                if let Some(target) = &mounted_rootfs {
                    let _ = sys::unmount_rootfs(target);
                }
                return Err(error);
            }
        };
        Ok(Container {
            bundle,
            mounted_rootfs,
            stdio: [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
            prepared: Arc::new(prepared),
            state: State::Created,
            exited: watch::channel(None).0,
        })
    }

    /// Runs the container's guest until it exits or is killed, then records and announces the exit.
    fn run(&self, id: String, container: &Container, kill: oneshot::Receiver<u32>) {
        let prepared = container.prepared.clone();
        let containers = self.containers.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                exit = prepared.run() => match exit {
                    Ok(exit) => exit.status(),
                    // The engine has already said why on the guest's stderr.
                    Err(error) => {
                        tracing::error!("container {id} failed to start: {}", wasmcell_engine::error_chain(&error));
                        1
                    }
                },
                Ok(signal) = kill => 128 + signal,
            };
            let exit = ExitInfo {
                status,
                at: timestamp().unwrap_or_default(),
            };
            if let Some(container) = containers.lock().await.get_mut(&id) {
                let _ = events.send(Box::new(container.finish(&id, exit)));
            }
        });
    }
}

/// A stdio path from containerd: a FIFO, or a `file://` log URI.
fn output(path: &str) -> Result<Output> {
    if path.is_empty() {
        Ok(Output::Null)
    } else if let Some(file) = path.strip_prefix("file://") {
        Ok(Output::File(file.into()))
    } else if path.contains("://") {
        Err(Error::Unsupported(format!(
            "log URI {path} is not supported: use FIFOs (the default) or a file:// log URI"
        )))
    } else {
        Ok(Output::Fifo(path.into()))
    }
}

fn status_of(
    state: &State,
) -> (
    Status,
    u32,
    Option<containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp>,
) {
    match state {
        State::Created => (Status::CREATED, 0, None),
        State::Running { .. } => (Status::RUNNING, 0, None),
        State::Stopped(exit) => (Status::STOPPED, exit.status, Some(exit.at.clone())),
    }
}

fn no_exec(exec_id: &str) -> Result<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(Error::NotFound(format!("exec {exec_id}")))
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        if self.containers.lock().await.contains_key(&req.id) {
            return Err(Error::AlreadyExists(req.id).into());
        }
        let container = self
            .create_container(&req)
            .await
            .inspect_err(|e| tracing::warn!("create {}: {e}", req.id))?;
        let pid = std::process::id();
        self.containers
            .lock()
            .await
            .insert(req.id.clone(), container);
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint.clone(),
            pid,
            ..Default::default()
        });
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        no_exec(&req.exec_id)?;
        let mut containers = self.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        if !matches!(container.state, State::Created) {
            return Err(Error::WrongState {
                id: req.id,
                state: container.state.name(),
                action: "start",
            }
            .into());
        }
        let (kill, killed) = oneshot::channel();
        container.state = State::Running { kill: Some(kill) };
        self.run(req.id.clone(), container, killed);
        let pid = std::process::id();
        self.publish(TaskStart {
            container_id: req.id,
            pid,
            ..Default::default()
        });
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        no_exec(&req.exec_id)?;
        if IGNORED_SIGNALS.contains(&req.signal) {
            return Ok(Empty::new());
        }
        let mut containers = self.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        match &mut container.state {
            // A guest cannot handle signals: every other signal ends it at once, 128 + signal.
            // The runner records the exit; until then the task still counts as running.
            State::Running { kill } => {
                if let Some(kill) = kill.take() {
                    let _ = kill.send(req.signal);
                }
            }
            State::Created => {
                let exit = ExitInfo {
                    status: 128 + req.signal,
                    at: timestamp().unwrap_or_default(),
                };
                let event = container.finish(&req.id, exit);
                self.publish(event);
            }
            State::Stopped(_) => return Err(Error::Finished.into()),
        }
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        no_exec(&req.exec_id)?;
        let mut exited = {
            let containers = self.containers.lock().await;
            containers
                .get(&req.id)
                .ok_or_else(|| Error::NotFound(req.id.clone()))?
                .exited
                .subscribe()
        };
        let exit = exited
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::NotFound(req.id.clone()))?
            .clone()
            .expect("waited for Some");
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        no_exec(&req.exec_id)?;
        let mut containers = self.containers.lock().await;
        let container = containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let (status, exited_at) = match &container.state {
            State::Running { .. } => {
                return Err(Error::WrongState {
                    id: req.id,
                    state: "running",
                    action: "delete",
                }
                .into());
            }
            State::Created => (0, timestamp().unwrap_or_default()),
            State::Stopped(exit) => (exit.status, exit.at.clone()),
        };
        let container = containers.remove(&req.id).expect("present");
        if let Some(rootfs) = &container.mounted_rootfs {
            sys::unmount_rootfs(rootfs)?;
        }
        let pid = std::process::id();
        self.publish(TaskDelete {
            container_id: req.id.clone(),
            id: req.id,
            pid,
            exit_status: status,
            exited_at: MessageField::some(exited_at.clone()),
            ..Default::default()
        });
        Ok(DeleteResponse {
            pid,
            exit_status: status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        no_exec(&req.exec_id)?;
        let containers = self.containers.lock().await;
        let container = containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let (status, exit_status, exited_at) = status_of(&container.state);
        let [stdin, stdout, stderr] = container.stdio.clone();
        Ok(StateResponse {
            id: req.id,
            bundle: container.bundle.display().to_string(),
            pid: std::process::id(),
            status: status.into(),
            stdin,
            stdout,
            stderr,
            exit_status,
            exited_at: exited_at.into(),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let containers = self.containers.lock().await;
        containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let process = ProcessInfo {
            pid: std::process::id(),
            ..Default::default()
        };
        Ok(PidsResponse {
            processes: vec![process],
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        let pid = std::process::id();
        Ok(ConnectResponse {
            shim_pid: pid,
            task_pid: pid,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        // containerd asks after each delete; the shim stays while other containers of its group live.
        if self.containers.lock().await.is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}

/// The bundle's rootfs mount point, for cleaning up after a shim that died (`delete` action).
pub fn rootfs_of(bundle: &Path) -> PathBuf {
    spec::load(bundle)
        .ok()
        .and_then(|oci| oci.root().as_ref().map(|root| bundle.join(root.path())))
        .unwrap_or_else(|| bundle.join("rootfs"))
}
