//! Wasm OCI images: the formats wasmcell reads and writes, with no engine and no I/O policy.
//!
//! - [`wasm`]: what a file is (core module, component, or why it is not wasm at all);
//! - [`platform`]: the `os/arch` pairs a Wasm image may carry;
//! - [`entrypoint`]: the `path#function` entrypoint syntax;
//! - [`archive`]: OCI image archives (an OCI layout in a tar), built from a `.wasm` and read back.
#![deny(missing_docs)]

pub mod archive;
pub mod entrypoint;
pub mod platform;
pub mod wasm;

pub use archive::{Archive, ArchiveError, BuildOptions, ImageContents, build_archive};
pub use entrypoint::Entrypoint;
pub use platform::{Platform, PlatformError};
pub use wasm::{FileKind, WasmKind};
