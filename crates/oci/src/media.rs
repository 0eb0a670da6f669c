//! The media types and annotations of the image formats wasmcell reads and writes: Docker's
//! and containerd's, the CNCF Wasm artifact's, and Spin's registry format.

/// The annotation containerd and Docker read an imported image's name from.
pub const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// Records whether the entry binary is a core module or a component.
pub const WASM_KIND_ANNOTATION: &str = "run.wasmcell.wasm.kind";
/// crun and other Wasm-aware runtimes recognise compat images by this manifest annotation.
pub(crate) const WASM_VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
/// The file name of an artifact's layer.
pub(crate) const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// The CNCF Wasm artifact's config and layer media types.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// See [`WASM_CONFIG_MEDIA_TYPE`].
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";

/// Layer media types that are the Wasm binary itself, not a tar: the CNCF artifact's, and
/// those of earlier Wasm artifact tools (runwasi's, wasm-pkg-tools').
pub const WASM_LAYER_MEDIA_TYPES: [&str; 3] = [
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];

/// Spin's registry format: the locked app's media type, a layer's or (before Spin 2.0) the config's.
pub const SPIN_APPLICATION_MEDIA_TYPE: &str = "application/vnd.fermyon.spin.application.v1+config";
/// A component's Wasm.
pub const SPIN_WASM_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// One file a component reads.
pub const SPIN_DATA_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+data";
/// A component's files, together.
pub const SPIN_ARCHIVE_MEDIA_TYPE: &str = "application/vnd.wasm.content.bundle.v1.tar+gzip";
