//! The containerd shim v2 for Wasm workloads.
//!
//! containerd runs `containerd-shim-<name>-v1 start`, which re-executes the binary as the
//! long-lived shim daemon serving the Task API over ttrpc, then exits. The daemon owns the
//! containers of one group (a pod, by its sandbox id, or a lone container): their rootfs
//! mounts, stdio, events and guest instances.
//!
//! The runtime name must survive the re-execution: the daemon is spawned from
//! `/proc/self/exe`, which names `wasmcell`, not the link containerd invoked, so `start`
//! passes the runtime to the daemon in [`RUNTIME_ENV`].
#![deny(missing_docs)]

mod cgroup;
mod container;
mod content;
mod error;
mod events;
mod hooks;
mod metrics;
mod pod;
mod runtime;
mod service;
mod slight;
mod socket;
mod spec;
mod spin;
mod sys;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::timestamp;
use containerd_shim::{Config, ExitSignal, Flags, Shim, StartOpts};
use wasmcell_engine::{CompileCache, CompilePolicy, Compiler, DEFAULT_MAX_SIZE};

pub use error::Error;
pub use runtime::Runtime;
pub use spec::SpecError;

use content::ImageContent;
use service::TaskService;
use socket::ShimSocket;

/// Carries the runtime from `start` to the daemon it spawns.
pub const RUNTIME_ENV: &str = "WASMCELL_SHIM_RUNTIME";

/// Exit status reported for a task whose shim died under it (as runc's shim reports a SIGKILL).
const DIED_STATUS: u32 = 128 + libc::SIGKILL as u32;

/// Runs the shim for `runtime`: containerd's `start`, `delete` and daemon modes. Does not return
/// on error: the shim protocol reports failures by exit status and stderr.
///
/// One thread serves every request: a shim only relays them to its sandbox and waits, and a
/// multi-threaded runtime would start a worker per core in every shim on the node. Compiling,
/// the one long step, runs on tokio's blocking pool.
pub fn main(runtime: Runtime) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio.block_on(containerd_shim::asynchronous::run::<WasmShim>(
        runtime.id(),
        None,
    ));
}

struct WasmShim {
    runtime: Runtime,
    flags_namespace: String,
    flags_id: String,
    flags_bundle: String,
    /// containerd's gRPC address, for its content store (and the shim's socket name).
    flags_address: String,
    /// The daemon's own socket (`-socket`; empty in `start` and `delete`).
    flags_socket: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for WasmShim {
    type T = TaskService;

    async fn new(runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let runtime = Runtime::from_id(runtime_id).expect("main passes a known runtime id");
        WasmShim {
            runtime,
            flags_namespace: args.namespace.clone(),
            flags_id: args.id.clone(),
            flags_bundle: args.bundle.clone(),
            flags_address: args.address.clone(),
            flags_socket: args.socket.clone(),
            exit: Arc::default(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd runs `start` in the bundle directory.
        let grouping = grouping(
            spec::load(std::path::Path::new(".")).ok().as_ref(),
            &opts.id,
        );
        let address = containerd_shim::spawn(
            opts,
            &grouping,
            vec![(RUNTIME_ENV, self.runtime.binary_name())],
        )
        .await?;
        // Written directly: tokio's file functions would start a thread for it.
        std::fs::write("address", &address)
            .map_err(|e| containerd_shim::Error::Other(format!("write address: {e}")))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // containerd runs this whenever its connection to the daemon drops: after a clean exit
        // nothing is left; after a crash (killed, out of memory) this releases what it held.
        let bundle = if self.flags_bundle.is_empty() {
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?
        } else {
            self.flags_bundle.clone().into()
        };
        let oci = spec::load(&bundle).ok();
        match sys::unmount_rootfs(&spec::rootfs_path(oci.as_ref(), &bundle)) {
            // Released here: this process exists only to clean up.
            Ok(detached) => drop(detached),
            Err(error) => tracing::warn!("{error}"),
        }
        // The daemon may still be alive, serving other containers of a pod: its socket goes
        // only if nobody listens on it.
        let grouping = grouping(oci.as_ref(), &self.flags_id);
        ShimSocket::from_address(&containerd_shim::socket_address(
            &self.flags_address,
            &self.flags_namespace,
            &grouping,
        ))
        .remove_if_stale();
        Ok(DeleteResponse {
            exit_status: DIED_STATUS,
            exited_at: MessageField::some(timestamp()?),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let cache_dir = CompileCache::default_dir();
        // The shim inherits containerd's environment, where WASMCELL_CACHE_MAX_SIZE may bound
        // the cache; a value that is not a size must not keep containers from starting.
        let max_size = CompileCache::max_size_from_env().unwrap_or_else(|error| {
            tracing::warn!(
                "{error}; keeping the compile cache within the default {DEFAULT_MAX_SIZE} bytes"
            );
            DEFAULT_MAX_SIZE
        });
        // An image's module is compiled in a child bounded in CPU time and memory.
        let cache = CompileCache::new(&cache_dir)
            .max_size(max_size)
            .compiling_in_own_child();
        let policy = CompilePolicy::from_env().unwrap_or_else(|error| {
            tracing::warn!("{error}; compiling as `{}`", CompilePolicy::default());
            CompilePolicy::default()
        });
        let compiler = match Compiler::new(cache, policy) {
            Ok(compiler) => Arc::new(compiler),
            Err(error) => {
                // Nothing can run without an engine; containerd sees the shim exit and reports it.
                tracing::error!("{error}");
                std::process::exit(1);
            }
        };
        let events = events::forward(publisher, self.flags_namespace.clone());
        let content = ImageContent::new(self.flags_address.clone(), self.flags_namespace.clone());
        TaskService::new(
            self.runtime,
            compiler,
            cache_dir,
            content,
            events,
            ShimSocket::from_address(&self.flags_socket),
            self.exit.clone(),
        )
    }
}

/// Which shim serves container `id`, by its spec: the pod's (its sandbox id) for a container of
/// a pod, its own otherwise. containerd's shim address is derived from it.
fn grouping(oci: Option<&oci_spec::runtime::Spec>, id: &str) -> String {
    oci.and_then(|oci| {
        oci.annotations()
            .as_ref()?
            .get(pod::SANDBOX_ID_ANNOTATION)
            .cloned()
    })
    .unwrap_or_else(|| id.to_owned())
}

/// Entry points for the fuzz targets (`fuzz/`, built by `cargo fuzz` with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub mod fuzzing {
    use std::path::Path;

    /// Translates an OCI runtime spec (`config.json` bytes) as `create` does: into a workload,
    /// a Spin workload's settings and a sandbox setup. Errors are fine; panics are not.
    pub fn translate(config: &[u8]) {
        let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(config) else {
            return;
        };
        let bundle = Path::new("/nonexistent/bundle");
        let _ = crate::spec::workload(&spec, bundle, wasmcell_engine::Stdio::default());
        let _ = crate::spec::sandbox_setup(
            &spec,
            Path::new("/nonexistent/cache"),
            wasmcell_engine::CompilePolicy::Tiered,
        );
        let _ = crate::spec::cgroup(&spec);
        let _ = crate::pod::Role::of(&spec);
    }
}
