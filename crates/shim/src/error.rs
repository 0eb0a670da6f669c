//! The shim's errors, and their one mapping to ttrpc status codes.

use containerd_shim::protos::ttrpc::{self, Code};

use crate::runtime::Runtime;
use crate::spec::SpecError;

/// Why a task request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container or process with that id in this shim.
    #[error("container {0} not found")]
    NotFound(String),
    /// A container with that id exists already.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// The request does not fit the task's state.
    #[error("container {id} is {state}: cannot {action}")]
    WrongState {
        /// The container.
        id: String,
        /// Its state.
        state: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// The task already exited.
    #[error("process already finished")]
    Finished,
    /// The image's app (Spin, SpiderLightning) cannot run: the message names the file, line
    /// or component.
    #[error("the image's {} app cannot run: {message}", app.name())]
    App {
        /// The framework.
        app: crate::runtime::App,
        /// What is wrong.
        message: String,
    },
    /// A feature of the request is not supported for Wasm guests.
    #[error("{0}")]
    Unsupported(String),
    /// The container spec cannot be run.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The workload cannot be prepared or run.
    #[error(transparent)]
    Engine(#[from] wasmcell_engine::Error),
    /// The rootfs could not be mounted or unmounted.
    #[error("cannot {action} the rootfs at {path}")]
    Rootfs {
        /// `mount` or `unmount`.
        action: &'static str,
        /// The mount point.
        path: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The sandbox process failed or refused.
    #[error(transparent)]
    Sandbox(#[from] wasmcell_sandbox::SandboxError),
    /// An OCI hook failed.
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    /// The container's cgroup could not be placed, created or limited.
    #[error("cannot set up the container's cgroup")]
    CgroupSetup(#[source] crate::cgroup::CgroupError),
    /// The container's cgroup could not be set up.
    #[error("cannot set up the container's cgroup")]
    Cgroup(#[source] std::io::Error),
    /// The container's cgroup could not be measured.
    #[error("cannot read the container's metrics")]
    Metrics(#[source] crate::metrics::MetricsError),
    /// A Wasm layer could not be read from containerd's content store.
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    /// A pod's container cannot run as asked.
    #[error(transparent)]
    Pod(#[from] crate::pod::PodError),
    /// A pod's container is not Wasm.
    #[error(
        "this pod's runtime class runs WebAssembly only ({runtime}); give Linux containers pods of their own, with a runtime class for Linux containers (such as runc)"
    )]
    NotWasmInPod {
        /// The runtime the pod's class names.
        runtime: Runtime,
        /// What the entrypoint is instead.
        #[source]
        source: wasmcell_engine::Error,
    },
    /// An exec names a program that is not a Wasm file of the container.
    #[error(
        "cannot exec `{command}` in container {id}: a Wasm container runs the Wasm files of its image, and has no shell or other programs; name a .wasm file in its rootfs"
    )]
    ExecNotWasm {
        /// The command's first word.
        command: String,
        /// The container.
        id: String,
        /// What is wrong with it.
        #[source]
        source: wasmcell_engine::Error,
    },
    /// A pod's container could not be created: the container and image as the pod spec
    /// names them, and why.
    #[error("cannot create {container}")]
    PodContainer {
        /// `container `NAME` of image `IMAGE``.
        container: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A blocking step panicked or was cancelled.
    #[error("internal error, a bug in wasmcell (the shim and its other containers go on): {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    fn code(&self) -> Code {
        match self {
            Error::PodContainer { source, .. } => source.code(),
            Error::NotFound(_) | Error::Finished => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::WrongState { .. } => Code::FAILED_PRECONDITION,
            Error::Unsupported(_) => Code::UNIMPLEMENTED,
            Error::Spec(_)
            | Error::Engine(_)
            | Error::Hook(_)
            | Error::Pod(_)
            | Error::NotWasmInPod { .. }
            | Error::App { .. }
            | Error::ExecNotWasm { .. } => Code::INVALID_ARGUMENT,
            // What the sandbox refuses is the workload's fault (e.g. a preopen it cannot open).
            Error::Sandbox(wasmcell_sandbox::SandboxError::Refused(_)) => Code::INVALID_ARGUMENT,
            Error::Rootfs { .. }
            | Error::Join(_)
            | Error::Sandbox(_)
            | Error::Cgroup(_)
            | Error::Metrics(_)
            | Error::CgroupSetup(_)
            | Error::Content(_) => Code::INTERNAL,
        }
    }
}

/// The one place errors cross into ttrpc: the message is the whole chain of causes, because
/// containerd shows it to the user as is (`ctr: failed to create shim task: ...`).
impl From<Error> for ttrpc::Error {
    fn from(error: Error) -> ttrpc::Error {
        let message = wasmcell_engine::error_chain(&error);
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), message))
    }
}
