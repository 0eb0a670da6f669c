//! The containerd task service (shim v2 `Task` API) over Wasm workloads.
//!
//! The shim keeps the privileged work (rootfs mounts, cgroups, opening stdio and granted
//! paths, events, ttrpc) and validates each workload itself at `create` and `exec`, so bad
//! input fails there with its reason. Guests run in the group's sandbox process, started at the
//! first `create` from that container's spec.
//!
//! Each `Task` method below is one line: the work is in [`create`] (create and exec),
//! [`lifecycle`] (start, kill, wait, delete, shutdown, and recording exits) and [`inspect`]
//! (state, pids, pause and resume, update, stats).

mod create;
mod inspect;
mod lifecycle;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::ttrpc;
use containerd_shim::{ExitSignal, Task, TtrpcContext};
use tokio::sync::{Mutex, OnceCell};
use wasmcell_engine::Compiler;
use wasmcell_sandbox::{Sandbox, SandboxError};

use crate::cgroup::Cgroup;
use crate::container::Container;
use crate::content::ImageContent;
use crate::error::Error;
use crate::events::{Events, Outgoing};
use crate::runtime::Runtime;
use crate::socket::ShimSocket;

type Result<T> = std::result::Result<T, Error>;
type Containers = Arc<Mutex<HashMap<String, Container>>>;

/// Signals whose default action is to do nothing: a guest cannot install handlers, so these are
/// no-ops, as they would be for a process that never handled them.
const IGNORED_SIGNALS: [u32; 4] = [
    libc::SIGCHLD as u32,
    libc::SIGCONT as u32,
    libc::SIGURG as u32,
    libc::SIGWINCH as u32,
];

/// The status of guests whose sandbox process died under them (killed, or OOM-killed as a
/// whole by its cgroup).
const SANDBOX_DIED_STATUS: u32 = 128 + libc::SIGKILL as u32;

/// The group's sandbox process and the cgroup it was placed in.
struct SandboxHandle {
    sandbox: Sandbox,
    cgroup: Option<Cgroup>,
    /// The container whose spec started the sandbox and named its cgroup: a lone container,
    /// a pod's sandbox container, or the first of a group. Its stats and updates are the
    /// cgroup's; every other container's are its guests' own.
    owner: String,
}

/// Serves the Task API for every container of this shim (one shim per pod, or per container).
pub struct TaskService {
    runtime: Runtime,
    compiler: Arc<Compiler>,
    cache_dir: PathBuf,
    content: ImageContent,
    sandbox: OnceCell<SandboxHandle>,
    containers: Containers,
    events: Events,
    socket: ShimSocket,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    /// Creates the service; events are forwarded in order to containerd by `publish`.
    pub fn new(
        runtime: Runtime,
        compiler: Arc<Compiler>,
        cache_dir: PathBuf,
        content: ImageContent,
        events: Events,
        socket: ShimSocket,
        exit: Arc<ExitSignal>,
    ) -> Self {
        TaskService {
            runtime,
            compiler,
            cache_dir,
            content,
            sandbox: OnceCell::new(),
            containers: Default::default(),
            events,
            socket,
            exit,
        }
    }

    fn publish<E: Event + Message>(&self, event: E) {
        // Fails only when the forwarder is gone, i.e. the shim is shutting down.
        let _ = self.events.send(Outgoing::new(&event));
    }

    /// The PID tasks report: the sandbox's, where the guests run (the shim's before it exists).
    fn pid(&self) -> u32 {
        self.sandbox
            .get()
            .map_or_else(std::process::id, |handle| handle.sandbox.pid())
    }

    /// Whether container `id` started the group's sandbox (see [`SandboxHandle::owner`]).
    fn owns_sandbox(&self, id: &str) -> bool {
        self.sandbox.get().is_some_and(|h| h.owner == id)
    }

    /// The sandbox's cgroup, if container `id` owns it.
    fn cgroup_of(&self, id: &str) -> Option<&Cgroup> {
        let handle = self.sandbox.get().filter(|h| h.owner == id)?;
        handle.cgroup.as_ref()
    }

    fn sandbox(&self) -> Result<&Sandbox> {
        self.sandbox
            .get()
            .map(|h| &h.sandbox)
            .ok_or(Error::Sandbox(SandboxError::Gone))
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        Ok(self.create_task(req).await?)
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        Ok(self.exec_process(req).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        Ok(self.start_process(req).await?)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        Ok(self.kill_process(req).await?)
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        Ok(self.wait_process(req).await?)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        Ok(self.delete_process(req).await?)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        Ok(self.process_state(req).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        Ok(self.process_pids(req).await?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        Ok(self.pause_container(req).await?)
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        Ok(self.resume_container(req).await?)
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        Ok(self.update_container(req).await?)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        Ok(self.container_stats(req).await?)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        Ok(self.connection(req).await?)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        Ok(self.shut_down(req).await?)
    }
}
