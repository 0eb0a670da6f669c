//! The one place that knows wasmtime.
//!
//! Both front ends (the containerd shim and `wasmcell run`) describe what to run as a
//! [`WorkloadSpec`]: plain data, engine-agnostic. This crate turns it into a [`Prepared`]
//! workload (module read from inside the rootfs, compiled once through the content-addressed
//! [`CompileCache`], linked against WASI, pre-instantiated) and runs instances of it.
//!
//! Invariants:
//! - one [`Engine`] per process; everything per-instance happens in [`Prepared::run`];
//! - a guest gets exactly what its spec grants: its args, its env, its preopens, its stdio;
//!   nothing of the host process's own environment;
//! - every way a run can end is an [`Exit`]: dropping the future of [`Prepared::run`] stops the
//!   guest at its next epoch tick or host call, which is how the shim kills guests.
#![deny(missing_docs)]

mod command;
mod engine;

pub use engine::{Compiler, Engine, Prepared};
pub use wasmcell_runtime::Controls;
pub use wasmcell_runtime::Exit;
pub use wasmcell_runtime::Usage;
pub use wasmcell_runtime::binary::serves_http;
pub use wasmcell_runtime::cache::{
    CachedEntry, CompileCache, DEFAULT_MAX_SIZE, InUse, MAX_SIZE_ENV, Prune, Pruned, SizeError,
    parse_memory_size, parse_size,
};
pub use wasmcell_runtime::codegen::{Codegen, CompilePolicy};
pub use wasmcell_runtime::http::open_pagemap;
pub use wasmcell_runtime::precompile::{COMPILER_ARG0, CompileBounds, child_main as compiler_main};
pub use wasmcell_runtime::store::Overrun;
pub use wasmcell_runtime::{Error, error_chain};
pub use wasmcell_workload::{
    Access, App, CpuQuota, HttpServe, HttpSettingError, Input, Limits, ModuleSource, NameFiles,
    Network, Output, Preopen, Stdio, WorkloadSpec,
};

/// Entry points for the fuzz targets (`fuzz/`, built by `cargo fuzz` with `--cfg fuzzing`):
/// decoders of guest-controlled input that are otherwise internal.
#[cfg(fuzzing)]
pub mod fuzzing {
    /// Decodes a WasmEdge `wasi_address` at `ptr` in guest `memory`, with `port`.
    pub fn wasmedge_address(
        memory: &mut [u8],
        ptr: u32,
        port: u32,
    ) -> Option<std::net::SocketAddr> {
        wasmcell_wasmedge::read_address(memory, ptr, port)
    }
}
