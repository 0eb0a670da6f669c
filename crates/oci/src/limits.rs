//! What an image may ask of wasmcell: bounds checked before anything is fetched, read or
//! written.

/// The most bytes of a JSON document (index, manifest, config) wasmcell reads: registries
/// refuse manifests over 4 MiB, and a Wasm image's config is a few hundred bytes.
pub const MAX_DOCUMENT: u64 = 4 << 20;

/// The most layers an image may have: Docker's limit is 127.
pub const MAX_LAYERS: usize = 128;

/// Spin's own bound on an app's layers (it switches to archive layers above it).
pub const MAX_SPIN_LAYERS: usize = 500;

/// What an image may unpack to, all layers together: far above any Wasm app's size.
pub const MAX_UNPACKED: u64 = 4 << 30;
