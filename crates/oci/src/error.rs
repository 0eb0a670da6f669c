//! What can go wrong reading or writing an image, in one error type for every format.

use std::io;

use crate::layout::LayoutError;
use crate::media::WASM_CONFIG_MEDIA_TYPE;
use crate::platform::PlatformError;
use crate::wasm::FileKind;

/// Errors reading or writing an image archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The input to `build` is not a Wasm binary.
    #[error("{file} is {kind}")]
    NotWasm {
        /// The file given.
        file: String,
        /// What it is instead.
        kind: FileKind,
    },
    /// The file name cannot be a path in the image.
    #[error(
        "cannot use `{0}` as the module's file name in the image: it must be a plain file name"
    )]
    BadFileName(String),
    /// An I/O error on the archive.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A layer entry would land outside the rootfs (`..`, or a hard link out).
    #[error(
        "layer {layer} has an entry that leads outside the rootfs: {entry}; the image is refused"
    )]
    Escape {
        /// The layer's digest.
        layer: String,
        /// The entry's name.
        entry: String,
    },
    /// A document, a layer or the whole image is larger than wasmcell accepts.
    #[error("{what} exceed {limit} bytes, the most wasmcell accepts; the image is refused")]
    TooLarge {
        /// What is too large.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A manifest lists more layers than wasmcell accepts.
    #[error(
        "the image has {layers} layers; wasmcell accepts at most {max} (Docker's limit is 127)"
    )]
    TooManyLayers {
        /// How many it has.
        layers: usize,
        /// The most accepted.
        max: usize,
    },
    /// Image indexes nest deeper than wasmcell follows (or an index names itself).
    #[error("{image}: its image indexes nest more than {max} deep (or one names itself)")]
    IndexTooDeep {
        /// The image.
        image: String,
        /// The deepest nesting followed.
        max: usize,
    },
    /// A JSON document in the archive is malformed.
    #[error("{what} is not valid")]
    Json {
        /// Which document.
        what: String,
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The archive does not have the OCI layout structure.
    #[error("{archive} is not an OCI image archive: {reason}")]
    NotAnArchive {
        /// The archive path.
        archive: String,
        /// What is missing.
        reason: String,
    },
    /// A blob's content does not match its digest.
    #[error("blob {digest} in {archive} does not match its digest (the archive is corrupted)")]
    DigestMismatch {
        /// The archive path.
        archive: String,
        /// The expected digest.
        digest: String,
    },
    /// The image is for another platform.
    #[error(
        "{archive} holds no Wasm image: its platforms are {found}; build one with `wasmcell build`"
    )]
    NoWasmPlatform {
        /// The archive path.
        archive: String,
        /// The platforms it has.
        found: String,
    },
    /// A platform value is invalid.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// `--include` asked of an artifact, whose one layer is the binary.
    #[error("--include needs the image format: a Wasm artifact's only layer is the binary")]
    IncludeInArtifact,
    /// An app (a manifest and its files) asked to be built as a Wasm artifact.
    #[error(
        "an app image needs the image format: a Wasm artifact holds one binary, an app a manifest and its files"
    )]
    AppArtifact,
    /// A component the builder cannot read.
    #[error("the component cannot be parsed: {0}")]
    Malformed(String),
    /// A Wasm artifact that does not have exactly one layer.
    #[error(
        "{image} is a Wasm artifact with {layers} layers; it must have exactly one, the binary"
    )]
    ArtifactLayers {
        /// The image.
        image: String,
        /// How many it has.
        layers: usize,
    },
    /// A manifest whose config is neither an image config nor a Wasm config.
    #[error(
        "{image} has a config of media type {media_type}: neither an OCI image config nor {WASM_CONFIG_MEDIA_TYPE}"
    )]
    ConfigMediaType {
        /// The image.
        image: String,
        /// The config's media type.
        media_type: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A layer has a media type we cannot unpack.
    #[error("layer {digest} has media type {media_type}, which wasmcell cannot unpack")]
    UnsupportedLayer {
        /// The layer digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let what = what.into();
    move |source| ArchiveError::Io { what, source }
}

pub(crate) fn json_err(
    what: impl Into<String>,
) -> impl FnOnce(oci_spec::OciSpecError) -> ArchiveError {
    let what = what.into();
    move |source| ArchiveError::Json { what, source }
}
