//! [`WorkloadSpec`]: what to run, as plain data. The shim builds it from an OCI runtime spec,
//! the CLI from an image and flags; nothing below it knows which.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the engine needs to run a guest, and nothing it may add on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Where the Wasm binary comes from.
    pub module: ModuleSource,
    /// The export to call for a core module (`path#function`); `None` runs `_start`, or
    /// `wasi:cli/run` for a component.
    pub function: Option<String>,
    /// The guest's argv, program name first.
    pub args: Vec<String>,
    /// The guest's whole environment.
    pub env: Vec<(String, String)>,
    /// The guest's initial working directory.
    pub cwd: String,
    /// The directories the guest may open, and nothing else.
    pub preopens: Vec<Preopen>,
    /// Where the guest's standard streams go.
    pub stdio: Stdio,
    /// What the guest may consume.
    pub limits: Limits,
}

impl WorkloadSpec {
    /// The host paths the spec reaches directly: the module's source and every preopened
    /// directory (stdio is separate: it is opened, not reached). A sandbox that is handed these
    /// as descriptors rewrites them in place.
    pub fn host_paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let module = match &mut self.module {
            ModuleSource::File(path) => path,
            ModuleSource::Rootfs { root, .. } => root,
        };
        std::iter::once(module)
            .chain(self.preopens.iter_mut().map(|p| &mut p.host))
            .collect()
    }
}

/// Resource limits of one guest instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// The most bytes any one of its linear memories may grow to; growing past it ends the guest
    /// as out of memory (status 137), as the kernel's OOM killer would end a process.
    pub memory: Option<u64>,
    /// The CPU time the guest may use per period, enforced at epoch ticks.
    pub cpu: Option<CpuQuota>,
}

/// CPU time per period, as in the OCI spec's `cpu.quota` and `cpu.period` (microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuQuota {
    /// Microseconds of CPU time per period.
    pub quota_us: u64,
    /// The period, in microseconds.
    pub period_us: u64,
}

/// Where the Wasm binary is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModuleSource {
    /// A file the user named on the host (`wasmcell run app.wasm`).
    File(PathBuf),
    /// A path inside a container rootfs, resolved like the guest would resolve it: symlinks and
    /// `..` cannot leave `root`.
    Rootfs {
        /// The rootfs directory on the host.
        root: PathBuf,
        /// The path inside it, absolute or relative to the spec's `cwd`.
        path: String,
    },
}

/// A host directory the guest sees at `guest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it, e.g. `/` for the rootfs.
    pub guest: String,
    /// Whether the guest may write.
    pub access: Access,
}

/// What a guest may do in a preopened directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// Read only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// The guest's standard streams.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stdio {
    /// Standard input.
    pub stdin: Input,
    /// Standard output.
    pub stdout: Output,
    /// Standard error.
    pub stderr: Output,
}

/// Where standard input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Input {
    /// Nothing: reads see end of file.
    #[default]
    Null,
    /// This process's own standard input (the CLI).
    Inherit,
    /// A FIFO containerd writes to.
    Fifo(PathBuf),
    /// A descriptor this process already has open (a sandbox receives stdio this way); each
    /// instance reads from a duplicate.
    Descriptor(i32),
}

/// Where an output stream goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Output {
    /// Discarded.
    #[default]
    Null,
    /// This process's own stream (the CLI).
    Inherit,
    /// A FIFO containerd reads from. Writes wait while nobody reads, as they do under runc.
    Fifo(PathBuf),
    /// A log file, appended to (containerd's `file://` log URIs).
    File(PathBuf),
    /// A descriptor this process already has open (a sandbox receives stdio this way); each
    /// instance writes to a duplicate.
    Descriptor(i32),
}
