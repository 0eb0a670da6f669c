//! The containerd task service (shim v2 `Task` API) over Wasm workloads.
//!
//! The shim keeps the privileged work (rootfs mounts, cgroups, opening stdio and granted
//! paths, events, ttrpc) and validates each workload itself at `create` and `exec`, so bad
//! input fails there with its reason. Guests run in the group's sandbox process, started at the
//! first `create` from that container's spec.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, Status, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim::event::Event;
use containerd_shim::protos::api::ProcessInfo;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::ttrpc;
use containerd_shim::util::{convert_to_any, timestamp};
use containerd_shim::{ExitSignal, Task, TtrpcContext};
use oci_spec::runtime::{LinuxResources, Spec};
use tokio::sync::{Mutex, OnceCell, mpsc};
use wasmcell_engine::{
    Compiler, Error as EngineError, InUse, Input, ModuleSource, Output, Stdio, WorkloadSpec,
};
use wasmcell_sandbox::protocol::{Request, grants};
use wasmcell_sandbox::{Exited, Sandbox, SandboxError};

use crate::cgroup::{Cgroup, Hierarchy, OomWatch, Resources};
use crate::container::{
    Container, ExitInfo, Guest, Payload, Process, State, describe, sandbox_key, split_key,
};
use crate::content::ImageContent;
use crate::error::Error;
use crate::events::{Events, Outgoing};
use crate::hooks::{Lifecycle, Stage};
use crate::pod::{self, Role};
use crate::runtime::{App, Runtime};
use crate::socket::ShimSocket;
use crate::{metrics, slight, spec, spin, sys};

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

    /// The group's sandbox, started from the first container's spec (container `id`'s, in
    /// role `role`).
    async fn sandbox_for(&self, oci: &Spec, id: &str, role: Role) -> Result<&Sandbox> {
        let handle = self
            .sandbox
            .get_or_try_init(|| async {
                let setup = spec::sandbox_setup(oci, &self.cache_dir)?;
                let cgroup = match spec::cgroup(oci) {
                    Some((path, resources)) => {
                        // A pod's sandbox container is the pause process's (CRI gives it two
                        // CPU shares); its cgroup holds every guest of the pod here, bounded
                        // by the pod's cgroup above it.
                        let resources = match role {
                            Role::PodSandbox => Resources::default(),
                            Role::PodContainer | Role::Plain => resources,
                        };
                        let hierarchy = Hierarchy::host();
                        Some(
                            Cgroup::create(&hierarchy, &path, &resources)
                                .map_err(Error::CgroupSetup)?,
                        )
                    }
                    None => None,
                };
                let joins = cgroup.as_ref().map_or(Ok(Vec::new()), Cgroup::join_files);
                let started = match joins {
                    Ok(joins) => Sandbox::start(&setup, joins).await.map_err(Error::Sandbox),
                    Err(error) => Err(Error::Cgroup(error)),
                };
                match started {
                    Ok((sandbox, exits)) => {
                        tokio::spawn(record_exits(
                            exits,
                            self.containers.clone(),
                            self.events.clone(),
                            sandbox.pid(),
                            cgroup.as_ref().and_then(OomWatch::start),
                        ));
                        Ok(SandboxHandle {
                            sandbox,
                            cgroup,
                            owner: id.to_owned(),
                        })
                    }
                    Err(error) => {
                        cgroup.inspect(Cgroup::remove);
                        Err(error)
                    }
                }
            })
            .await?;
        Ok(&handle.sandbox)
    }

    /// The workload of a container: an app of the framework the runtime name stands for when
    /// the rootfs holds its manifest (`spin.toml`, `slightfile.toml`), otherwise the spec's
    /// entrypoint, plain WASI under every name.
    async fn workload(
        &self,
        oci: &Spec,
        bundle: &Path,
        stdio: Stdio,
        id: &str,
    ) -> Result<WorkloadSpec> {
        let rootfs = spec::rootfs_path(Some(oci), bundle);
        // Not followed: a manifest that is a symlink (to a host path) still marks an app.
        let app = self
            .runtime
            .app()
            .filter(|app| rootfs.join(app.manifest()).symlink_metadata().is_ok());
        // Without a manifest in the rootfs, the image may be in Spin's registry format.
        let image = match app {
            None if self.runtime.app() == Some(App::Spin) => self.content.spin_image(id).await?,
            _ => None,
        };
        match (app, image) {
            (None, None) => Ok(spec::workload(oci, bundle, stdio)?),
            (Some(App::Spin), image) | (None, image @ Some(_)) => {
                // Reading the app and staging its files is file I/O: off the shim's one thread,
                // where a panic on a bad app is also this create's error and not a hung shim.
                let (oci, bundle) = (oci.clone(), bundle.to_owned());
                tokio::task::spawn_blocking(move || {
                    spin::workload(&oci, &bundle, stdio, image.as_ref())
                })
                .await?
            }
            (Some(App::SpiderLightning), _) => {
                let (oci, bundle) = (oci.clone(), bundle.to_owned());
                tokio::task::spawn_blocking(move || slight::workload(&oci, &bundle, stdio)).await?
            }
        }
    }

    /// Compiles a workload into the cache here (as root, which may write it) unless it is there
    /// already: the shim's half of `create` and `exec`, which fails them at once on a missing,
    /// non-wasm or malformed binary. Returns its cache entries held in use, to keep until the
    /// sandbox has loaded them (cache collection skips them).
    async fn compile(&self, workload: &WorkloadSpec) -> Result<Vec<InUse>> {
        let compiler = self.compiler.clone();
        let checked = workload.clone();
        Ok(tokio::task::spawn_blocking(move || compiler.compile(&checked)).await??)
    }

    /// Creates a compiled workload in the sandbox, which loads and links the artifact.
    async fn create_in(
        &self,
        sandbox: &Sandbox,
        key: String,
        workload: WorkloadSpec,
    ) -> Result<()> {
        let grants = grants(&workload);
        sandbox
            .request(Request::Create {
                id: key,
                spec: Box::new(workload),
                grants,
            })
            .await?;
        Ok(())
    }

    async fn create_container(&self, req: &CreateTaskRequest) -> Result<Container> {
        let stdio = stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        let bundle = PathBuf::from(&req.bundle);
        let oci = spec::load(&bundle)?;
        let role = Role::of(&oci);
        pod::check_privilege(&oci, role)?;
        let init = Process::new([req.stdin.clone(), req.stdout.clone(), req.stderr.clone()]);
        let processes = HashMap::from([(String::new(), init)]);
        if role == Role::PodSandbox {
            // Nothing to mount or run: the pod's sandbox process is all it stands for.
            self.sandbox_for(&oci, &req.id, role).await?;
            return Ok(Container {
                bundle,
                payload: Payload::PodSandbox,
                processes,
            });
        }
        if let Some(handle) = self.sandbox.get() {
            pod::check_namespaces(&oci, handle.sandbox.pid())?;
        }
        let guest = self
            .create_guest(req, &oci, role, &bundle, stdio)
            .await
            .map_err(|error| match role {
                Role::PodContainer => Error::PodContainer {
                    container: pod::describe(&oci),
                    source: Box::new(match error {
                        Error::Engine(source @ EngineError::NotWasm { .. }) => {
                            Error::NotWasmInPod {
                                runtime: self.runtime,
                                source,
                            }
                        }
                        error => error,
                    }),
                },
                Role::PodSandbox | Role::Plain => error,
            })?;
        Ok(Container {
            bundle,
            payload: Payload::Guest(Box::new(guest)),
            processes,
        })
    }

    /// Mounts the rootfs, builds and compiles the workload, and creates it in the group's
    /// sandbox (started now if this is the group's first container).
    async fn create_guest(
        &self,
        req: &CreateTaskRequest,
        oci: &Spec,
        role: Role,
        bundle: &Path,
        stdio: Stdio,
    ) -> Result<Guest> {
        let hooks = Lifecycle::of(oci, &req.id, bundle).map_err(|what| {
            Error::Unsupported(format!(
                "the container spec asks for {what}, which run inside the container: a Wasm guest is not a process to run them in"
            ))
        })?;
        let rootfs = (!req.rootfs.is_empty()).then(|| spec::rootfs_path(Some(oci), bundle));
        // The first container's sandbox starts while its rootfs is mounted and its module
        // compiled or found in the cache: the sandbox's exec and isolation take milliseconds
        // in which the shim would otherwise wait.
        let staged = async {
            if let Some(target) = &rootfs {
                sys::mount_rootfs(&req.rootfs, target).await?;
            }
            let workload = self.workload(oci, bundle, stdio, &req.id).await?;
            if let (ModuleSource::Rootfs { root, path }, None) = (&workload.module, &workload.app) {
                self.content.materialize(&req.id, root, path).await?;
            }
            let cached = self.compile(&workload).await?;
            Ok::<_, Error>((workload, cached))
        };
        // Both run to the end even when one fails: a mount still in flight could not be undone.
        let (sandbox, staged) = tokio::join!(self.sandbox_for(oci, &req.id, role), staged);
        let created = async {
            let (sandbox, (workload, _cached)) = (sandbox?, staged?);
            if let Some(hooks) = &hooks {
                hooks.run(Stage::Create, sandbox.pid()).await?;
            }
            self.create_in(sandbox, req.id.clone(), workload.clone())
                .await?;
            Ok::<_, Error>(workload)
        }
        .await;
        let workload = match created {
            Ok(workload) => workload,
            Err(error) => {
                // Also undoes a mount that failed part of the way; not mounted is not an error.
                if let Some(target) = &rootfs {
                    let _ = sys::unmount_rootfs(target);
                }
                return Err(error);
            }
        };
        Ok(Guest {
            hooks: hooks.map(Arc::new),
            mounted_rootfs: rootfs,
            workload,
        })
    }
}

impl TaskService {
    /// Pauses or resumes every process of a container that is in state `from` (runc freezes a
    /// whole container the same way), moving each to `to`.
    async fn switch(&self, id: &str, from: State, to: State) -> Result<()> {
        let keys = {
            let mut containers = self.containers.lock().await;
            let container = containers
                .get_mut(id)
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            let init = container.process(id, "")?;
            if std::mem::discriminant(&init.state) != std::mem::discriminant(&from) {
                let action = if matches!(to, State::Paused) {
                    "pause"
                } else {
                    "resume"
                };
                return Err(Error::WrongState {
                    id: id.to_owned(),
                    state: init.state.name(),
                    action,
                });
            }
            let matching = container
                .processes
                .iter()
                .filter(|(_, p)| std::mem::discriminant(&p.state) == std::mem::discriminant(&from));
            matching
                .map(|(exec_id, _)| exec_id.clone())
                .collect::<Vec<_>>()
        };
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

/// Records the guests' exits as the sandbox reports them; when the sandbox itself ends, every
/// guest it still held ends with it, OOM-killed (an OOM event first) if its cgroup's OOM
/// killer ended it.
async fn record_exits(
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

/// A process's stdio from containerd's paths: FIFOs, or a `file://` log URI.
fn stdio(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Result<Stdio> {
    if terminal {
        return Err(Error::Unsupported(
            "a terminal (`-t`) is not supported for Wasm guests: run without -t".to_owned(),
        ));
    }
    let output = |path: &str| {
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
    };
    let stdin = if stdin.is_empty() {
        Input::Null
    } else {
        Input::Fifo(stdin.into())
    };
    Ok(Stdio {
        stdin,
        stdout: output(stdout)?,
        stderr: output(stderr)?,
    })
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
        self.containers
            .lock()
            .await
            .insert(req.id.clone(), container);
        let pid = self.pid();
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

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let workload = {
            let mut containers = self.containers.lock().await;
            let container = containers
                .get_mut(&req.id)
                .ok_or_else(|| Error::NotFound(req.id.clone()))?;
            if container.processes.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(describe(&req.id, &req.exec_id)).into());
            }
            let process: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
                .map_err(|e| Error::Spec(spec::SpecError::Exec(e.to_string())))?;
            let stdio = stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
            spec::exec_workload(&container.guest(&req.id)?.workload, &process, stdio)
                .map_err(Error::Spec)?
        };
        let key = sandbox_key(&req.id, &req.exec_id);
        let command = workload.args.first().cloned().unwrap_or_default();
        let created = async {
            let _cached = self.compile(&workload).await?;
            self.create_in(self.sandbox()?, key, workload).await
        };
        created
            .await
            .map_err(|error| match error {
                // What `kubectl exec` and `docker exec` users try first is a shell.
                Error::Engine(
                    source @ (EngineError::ReadEntrypoint { .. } | EngineError::NotWasm { .. }),
                ) => Error::ExecNotWasm {
                    command,
                    id: req.id.clone(),
                    source,
                },
                error => error,
            })
            .inspect_err(|e| tracing::warn!("exec {}: {e}", req.exec_id))?;
        let mut containers = self.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let process = Process::new([req.stdin.clone(), req.stdout.clone(), req.stderr.clone()]);
        container.processes.insert(req.exec_id.clone(), process);
        self.publish(TaskExecAdded {
            container_id: req.id,
            exec_id: req.exec_id,
            ..Default::default()
        });
        Ok(Empty::new())
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let mut containers = self.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let process = container.process(&req.id, &req.exec_id)?;
        if !matches!(process.state, State::Created) {
            let id = describe(&req.id, &req.exec_id);
            return Err(Error::WrongState {
                id,
                state: process.state.name(),
                action: "start",
            }
            .into());
        }
        // Marked running before the guest can exit, so its exit is never recorded first.
        process.state = State::Running;
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
            return Err(Error::Sandbox(error).into());
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

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
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
            State::Stopped(_) => return Err(Error::Finished.into()),
        }
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
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

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        let mut containers = self.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let process = container.process(&req.id, &req.exec_id)?;
        let (status, exited_at) = match &process.state {
            running @ (State::Running | State::Paused) => {
                let id = describe(&req.id, &req.exec_id);
                return Err(Error::WrongState {
                    id,
                    state: running.name(),
                    action: "delete",
                }
                .into());
            }
            State::Created => (0, timestamp().unwrap_or_default()),
            State::Stopped(exit) => (exit.status, exit.at.clone()),
        };
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

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
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

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
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

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        self.switch(&req.id, State::Running, State::Paused).await?;
        self.publish(TaskPaused {
            container_id: req.id,
            ..Default::default()
        });
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        self.switch(&req.id, State::Paused, State::Running).await?;
        self.publish(TaskResumed {
            container_id: req.id,
            ..Default::default()
        });
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
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

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        if !self.containers.lock().await.contains_key(&req.id) {
            return Err(Error::NotFound(req.id).into());
        }
        // The container that owns the sandbox's cgroup reports it (all of a lone container's
        // use; a whole pod's, for its sandbox container); a pod's other containers report
        // what their own guests used, since they share the cgroup.
        let metrics = match self.cgroup_of(&req.id) {
            Some(cgroup) => cgroup.metrics().map_err(Error::Metrics)?,
            None if self.owns_sandbox(&req.id) => {
                return Err(
                    Error::Unsupported(format!("container {} has no cgroup", req.id)).into(),
                );
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

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.pid(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
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
