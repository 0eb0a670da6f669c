//! Creating containers and execs: the sandbox, the workload from the spec, its compile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::{CreateTaskRequest, CreateTaskResponse, Empty, ExecProcessRequest};
use containerd_shim::protos::events::task::{TaskCreate, TaskExecAdded, TaskIO};
use containerd_shim::protos::protobuf::MessageField;
use oci_spec::runtime::Spec;
use wasmcell_engine::{
    Error as EngineError, InUse, Input, ModuleSource, Output, Stdio, WorkloadSpec,
};
use wasmcell_sandbox::Sandbox;
use wasmcell_sandbox::protocol::{Request, grants};

use crate::cgroup::{Cgroup, Hierarchy, OomWatch, Resources};
use crate::container::{Container, Guest, Payload, Process, describe, sandbox_key};
use crate::error::Error;
use crate::hooks::{Lifecycle, Stage};
use crate::pod::{self, Role};
use crate::runtime::App;
use crate::{slight, spec, spin, sys};

use super::lifecycle::record_exits;
use super::{Result, SandboxHandle, TaskService};

impl TaskService {
    pub(super) async fn create_task(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        if self.containers.lock().await.contains_key(&req.id) {
            return Err(Error::AlreadyExists(req.id));
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

    pub(super) async fn exec_process(&self, req: ExecProcessRequest) -> Result<Empty> {
        let workload = {
            let mut containers = self.containers.lock().await;
            let container = containers
                .get_mut(&req.id)
                .ok_or_else(|| Error::NotFound(req.id.clone()))?;
            if container.processes.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(describe(&req.id, &req.exec_id)));
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

    /// The group's sandbox, started from the first container's spec (container `id`'s, in
    /// role `role`).
    async fn sandbox_for(&self, oci: &Spec, id: &str, role: Role) -> Result<&Sandbox> {
        let handle = self
            .sandbox
            .get_or_try_init(|| async {
                let setup = spec::sandbox_setup(oci, &self.cache_dir, self.compiler.policy())?;
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
