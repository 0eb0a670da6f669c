//! Wasm OCI images: the formats wasmcell reads and writes, with no engine and no I/O policy.
//!
//! - [`wasm`]: what a file is (core module, component, or why it is not wasm at all);
//! - [`platform`]: the `os/arch` pairs a Wasm image may carry;
//! - [`entrypoint`]: the `path#function` entrypoint syntax;
//! - [`image`]: building images from a `.wasm`, Docker-compatible or as the CNCF Wasm artifact;
//! - [`archive`]: reading them back, from OCI archives (an OCI layout in a tar) or the store,
//!   within limits on what an image may ask for;
//! - [`spin`]: Spin's registry format (`spin registry push`), built and read back;
//! - [`unpack`]: applying their layers to a rootfs, whiteouts included, never outside it;
//! - [`rootfs`]: reading an unpacked image's files as hostile input: beneath the root, regular
//!   files only, bounded in size;
//! - [`layout`]: the local image store, an OCI image layout directory;
//! - [`media`], [`limits`], [`error`] and [`encoding`]: what every format shares (media types
//!   and annotations, bounds on what an image may ask, the error type, reproducible bytes);
//!   they import no format module, so the formats never import each other through them.
#![deny(missing_docs)]

pub mod archive;
mod encoding;
pub mod entrypoint;
pub mod error;
pub mod image;
pub mod layout;
pub mod limits;
pub mod media;
pub mod platform;
pub mod rootfs;
pub mod spin;
pub mod unpack;
pub mod wasm;

pub use archive::{Archive, ImageContents};
pub use entrypoint::Entrypoint;
pub use error::ArchiveError;
pub use image::{BuildOptions, Format, Image, build_app_image, build_image};
pub use layout::{Layout, LayoutError};
pub use platform::{Platform, PlatformError};
pub use spin::{SpinContent, SpinImage, build_spin_image};
pub use wasm::{FileKind, WasmKind};
