//! The kernel every Wasm workload runs on, naming no framework: the compile cache, the function
//! cache and the compiler's child process, which code to compile when (codegen), the epoch clock, pause and live limits (controls), resource usage,
//! standard streams, the store types and their WASI linkers, the HTTP server, how a run ends,
//! and the error type.
//!
//! Capabilities (Spin, slight, WasmEdge's sockets) build on it through its seams: the store
//! types' `host` part ([`state`]), a server's [`http::Routes`], [`http::Handler`] and
//! [`outbound::Outbound`] policy, and what a prepared workload runs ([`run::Run`]). It knows none
//! of them.
#![deny(missing_docs)]

pub mod binary;
pub mod cache;
pub mod codegen;
pub mod connections;
pub mod controls;
pub mod core_abi;
pub mod epoch;
pub mod error;
pub mod exit;
pub mod functions;
pub mod http;
pub mod link;
pub mod outbound;
pub mod precompile;
pub mod run;
pub mod state;
pub mod stdio;
pub mod store;
pub mod usage;
pub mod wasi;

pub use cache::{
    CachedEntry, CompileCache, DEFAULT_MAX_SIZE, InUse, MAX_SIZE_ENV, Prune, Pruned, SizeError,
    parse_memory_size, parse_size,
};
pub use controls::Controls;
pub use error::{Error, error_chain};
pub use exit::Exit;
pub use usage::Usage;

/// The engine configuration of optimised code ([`codegen::Codegen::Optimized`]).
pub fn config() -> wasmtime::Config {
    codegen::Codegen::Optimized.config()
}
