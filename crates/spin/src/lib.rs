//! Spin applications as plain data: `spin.toml` (manifest versions 1 and 2) and
//! `runtime-config.toml` resolved into an [`App`]: its components and what each is granted
//! (files, environment, variables, outbound hosts, stores), its HTTP routes, Redis channels and
//! command components; and Spin's locked app, which its registry format carries. The shim builds
//! one from a container's rootfs or image and `wasmcell up` from a directory or an image;
//! the engine runs it. Nothing here knows wasmtime or containerd.
#![deny(missing_docs)]

mod app;
mod load;
pub mod locked;
pub mod manifest;
pub mod outbound;
pub mod routes;
pub mod runtime_config;
pub mod variables;

pub use app::{
    App, Component, HttpHandler, HttpTrigger, MAX_STAGED_BYTES, MAX_STAGED_FILES, RedisTrigger,
    Resolve, stage_files,
};
pub use load::{RuntimeConfigSource, is_app, load, load_locked};
pub use locked::{ContentKind, Locked, lock};
pub use manifest::{Manifest, ManifestError, StaticResponse};
pub use outbound::{AllowedHosts, InvalidEntry, Transport};
pub use routes::{RouteMatch, Router};
pub use runtime_config::{DatabaseConfig, RuntimeConfig, StoreConfig};

/// The manifest's file name at the root of an app's directory (or a container's rootfs).
pub const MANIFEST: &str = "spin.toml";

/// The directory beside the manifest where `spin up` (and `wasmcell up`) keep an app's local
/// state: its default stores. Never part of the app's image.
pub const LOCAL_STATE: &str = ".spin";

/// The runtime config's file name beside the manifest, read when present.
pub const RUNTIME_CONFIG: &str = "runtime-config.toml";
