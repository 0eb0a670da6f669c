//! OCI image archives: an OCI image layout in a tar, as `ctr images import`, `docker load`
//! and `wasmcell run` read it.
//!
//! The image is the Docker-compatible Wasm image: one uncompressed tar layer holding the
//! module at `/<file name>`, an `Entrypoint` naming it, and a Wasm platform. The archive also
//! carries Docker's `manifest.json`, so `docker load` accepts it without the containerd store.
//! Everything written is reproducible: fixed timestamps and modes, so the same input gives
//! the same digests.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::Path;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, ImageConfiguration, ImageConfigurationBuilder, ImageIndex,
    ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType, Os, PlatformBuilder,
    RootFsBuilder, SCHEMA_VERSION,
};
use sha2::{Digest as _, Sha256};

use crate::platform::{Platform, PlatformError};
use crate::wasm::{FileKind, WasmKind};

/// The annotation containerd and Docker read an imported image's name from.
const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The OCI annotation for the tag part of the name.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Records whether the entry binary is a core module or a component.
pub const WASM_KIND_ANNOTATION: &str = "run.wasmcell.wasm.kind";
/// crun and other Wasm-aware runtimes recognise compat images by this manifest annotation.
const WASM_VARIANT_ANNOTATION: &str = "module.wasm.image/variant";

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
    /// A layer has a media type we cannot unpack.
    #[error("layer {digest} has media type {media_type}, which wasmcell cannot unpack")]
    UnsupportedLayer {
        /// The layer digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let what = what.into();
    move |source| ArchiveError::Io { what, source }
}

fn json_err(what: impl Into<String>) -> impl FnOnce(oci_spec::OciSpecError) -> ArchiveError {
    let what = what.into();
    move |source| ArchiveError::Json { what, source }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The image name, e.g. `example.com/hello:latest`.
    pub reference: String,
    /// The platform to declare; `None` picks `wasip1/wasm` for modules, `wasip2/wasm` for components.
    pub platform: Option<Platform>,
    /// The module's file name inside the image: it is placed at `/<file_name>`.
    pub file_name: String,
    /// Host directories copied into the image: (host directory, absolute path in the image).
    /// Symlinks are kept as symlinks.
    pub include: Vec<(std::path::PathBuf, String)>,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The digest of the image manifest.
    pub manifest_digest: String,
    /// The platform declared.
    pub platform: Platform,
    /// Module or component.
    pub kind: WasmKind,
}

struct Blob {
    media_type: MediaType,
    bytes: Vec<u8>,
    digest: String,
}

impl Blob {
    fn new(media_type: MediaType, bytes: Vec<u8>) -> Blob {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Blob {
            media_type,
            bytes,
            digest,
        }
    }

    fn descriptor(&self) -> Result<Descriptor, ArchiveError> {
        Ok(Descriptor::new(
            self.media_type.clone(),
            self.bytes.len() as u64,
            self.digest
                .parse::<oci_spec::image::Digest>()
                .map_err(json_err("digest"))?,
        ))
    }

    fn path(&self) -> String {
        format!("blobs/{}", self.digest.replacen(':', "/", 1))
    }
}

/// Builds the Docker-compatible Wasm image of `wasm` and writes it as an OCI archive to `out`.
pub fn build_archive(
    wasm: &[u8],
    options: &BuildOptions,
    out: impl Write,
) -> Result<BuiltImage, ArchiveError> {
    let kind = match FileKind::detect(wasm) {
        FileKind::Wasm(kind) => kind,
        other => {
            return Err(ArchiveError::NotWasm {
                file: options.file_name.clone(),
                kind: other,
            });
        }
    };
    let name = &options.file_name;
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(ArchiveError::BadFileName(name.clone()));
    }
    let platform = options.platform.unwrap_or(match kind {
        WasmKind::Module => Platform::WASIP1,
        WasmKind::Component => Platform::WASIP2,
    });

    let layer = Blob::new(
        MediaType::ImageLayer,
        layer_tar(name, wasm, &options.include)?,
    );
    let config = ImageConfigurationBuilder::default()
        .os(Os::from(platform.os()))
        .architecture(Arch::from(platform.arch()))
        .config(
            ConfigBuilder::default()
                .entrypoint(vec![format!("/{name}")])
                .labels(HashMap::from([(
                    WASM_KIND_ANNOTATION.to_owned(),
                    kind.to_string(),
                )]))
                .build()
                .map_err(json_err("image config"))?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![layer.digest.clone()])
                .build()
                .map_err(json_err("image rootfs"))?,
        )
        .build()
        .map_err(json_err("image config"))?;
    let config = Blob::new(MediaType::ImageConfig, canonical_json(&config));
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config.descriptor()?)
        .layers(vec![layer.descriptor()?])
        .annotations(HashMap::from([
            (WASM_KIND_ANNOTATION.to_owned(), kind.to_string()),
            (WASM_VARIANT_ANNOTATION.to_owned(), "compat".to_owned()),
        ]))
        .build()
        .map_err(json_err("image manifest"))?;
    let manifest = Blob::new(MediaType::ImageManifest, canonical_json(&manifest));

    let tag = options
        .reference
        .rsplit_once(':')
        .map(|(_, t)| t)
        .filter(|t| !t.contains('/'));
    let mut annotations =
        HashMap::from([(IMAGE_NAME_ANNOTATION.to_owned(), options.reference.clone())]);
    annotations.insert(
        REF_NAME_ANNOTATION.to_owned(),
        tag.unwrap_or("latest").to_owned(),
    );
    let mut manifest_descriptor = manifest.descriptor()?;
    manifest_descriptor.set_platform(Some(
        PlatformBuilder::default()
            .os(Os::from(platform.os()))
            .architecture(Arch::from(platform.arch()))
            .build()
            .map_err(json_err("platform"))?,
    ));
    manifest_descriptor.set_annotations(Some(annotations));
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_descriptor])
        .build()
        .map_err(json_err("image index"))?;

    // Docker's own archive manifest, so `docker load` also works with the classic image store.
    let docker_manifest = serde_json::json!([{
        "Config": config.path(),
        "RepoTags": [options.reference],
        "Layers": [layer.path()],
    }]);

    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    append(
        &mut tar,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    append(&mut tar, "index.json", &canonical_json(&index), 0o644)?;
    append(
        &mut tar,
        "manifest.json",
        docker_manifest.to_string().as_bytes(),
        0o644,
    )?;
    for blob in [&layer, &config, &manifest] {
        append(&mut tar, &blob.path(), &blob.bytes, 0o644)?;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err("write image archive"))?;

    Ok(BuiltImage {
        manifest_digest: manifest.digest,
        platform,
        kind,
    })
}

/// JSON with object keys sorted: oci-spec keeps labels and annotations in `HashMap`s, whose
/// order changes from run to run, and a digest must not.
fn canonical_json(value: &impl serde::Serialize) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("OCI types serialize to JSON");
    serde_json::to_vec(&value).expect("a JSON value serializes")
}

/// The image's only layer: the binary at the root, executable, then the included directories.
fn layer_tar(
    name: &str,
    wasm: &[u8],
    include: &[(std::path::PathBuf, String)],
) -> Result<Vec<u8>, ArchiveError> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    append(&mut tar, name, wasm, 0o755)?;
    for (host, dest) in include {
        let dest = dest.trim_start_matches('/');
        let dest = if dest.is_empty() { "." } else { dest };
        tar.append_dir_all(dest, host)
            .map_err(io_err(format!("add {} to the image", host.display())))?;
    }
    tar.into_inner().map_err(io_err("build layer"))
}

/// Appends a regular file with a fixed timestamp, so archives are reproducible.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(), ArchiveError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, bytes)
        .map_err(io_err(format!("write {path}")))
}

/// An image read from an archive: what `wasmcell run` needs to build a container from it.
#[derive(Debug)]
pub struct ImageContents {
    /// The image's platform.
    pub platform: Platform,
    /// The image configuration (entrypoint, cmd, env, working dir).
    pub config: ImageConfiguration,
    layers: Vec<(Descriptor, Vec<u8>)>,
}

impl ImageContents {
    /// `Entrypoint` followed by `Cmd`, as a container would run them.
    pub fn command(&self) -> (Vec<String>, Vec<String>) {
        let config = self.config.config().as_ref();
        let entrypoint = config
            .and_then(|c| c.entrypoint().clone())
            .unwrap_or_default();
        let cmd = config.and_then(|c| c.cmd().clone()).unwrap_or_default();
        (entrypoint, cmd)
    }

    /// The image's environment, as `KEY=VALUE` strings.
    pub fn env(&self) -> Vec<String> {
        self.config
            .config()
            .as_ref()
            .and_then(|c| c.env().clone())
            .unwrap_or_default()
    }

    /// The image's working directory, `/` when unset.
    pub fn working_dir(&self) -> String {
        self.config
            .config()
            .as_ref()
            .and_then(|c| c.working_dir().clone())
            .filter(|dir| !dir.is_empty())
            .unwrap_or_else(|| "/".to_owned())
    }

    /// Unpacks every layer, in order, into `dir`. Entries that would land outside `dir`
    /// (`..`, absolute paths) are refused by the tar reader.
    pub fn unpack(&self, dir: &Path) -> Result<(), ArchiveError> {
        for (descriptor, bytes) in &self.layers {
            let digest = descriptor.digest().to_string();
            let reader: Box<dyn Read> = match descriptor.media_type() {
                MediaType::ImageLayer => Box::new(bytes.as_slice()),
                MediaType::ImageLayerGzip => {
                    Box::new(flate2::read::GzDecoder::new(bytes.as_slice()))
                }
                MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                    Box::new(flate2::read::GzDecoder::new(bytes.as_slice()))
                }
                other => {
                    return Err(ArchiveError::UnsupportedLayer {
                        digest,
                        media_type: other.to_string(),
                    });
                }
            };
            tar::Archive::new(reader)
                .unpack(dir)
                .map_err(io_err(format!(
                    "unpack layer {digest} into {}",
                    dir.display()
                )))?;
        }
        Ok(())
    }
}

/// An OCI image archive on disk.
pub struct Archive;

impl Archive {
    /// Reads the archive at `path` and selects its Wasm image, verifying every blob it uses.
    pub fn read(path: &Path) -> Result<ImageContents, ArchiveError> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(io_err(format!("open {shown}")))?;
        let mut files = HashMap::new();
        let mut tar = tar::Archive::new(file);
        for entry in tar.entries().map_err(io_err(format!("read {shown}")))? {
            let mut entry = entry.map_err(io_err(format!("read {shown}")))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(io_err(format!("read {shown}")))?;
            let name = name.to_string_lossy().trim_start_matches("./").to_owned();
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(io_err(format!("read {name} in {shown}")))?;
            files.insert(name, bytes);
        }
        let blob = |descriptor: &Descriptor| -> Result<Vec<u8>, ArchiveError> {
            let digest = descriptor.digest().to_string();
            let (algorithm, hex) = digest.split_once(':').unwrap_or(("", ""));
            let bytes = files
                .get(&format!("blobs/{algorithm}/{hex}"))
                .ok_or_else(|| ArchiveError::NotAnArchive {
                    archive: shown.clone(),
                    reason: format!("blob {digest} is missing"),
                })?;
            if algorithm != "sha256" || hex::encode(Sha256::digest(bytes)) != hex {
                return Err(ArchiveError::DigestMismatch {
                    archive: shown.clone(),
                    digest,
                });
            }
            Ok(bytes.clone())
        };

        let index = files
            .get("index.json")
            .ok_or_else(|| ArchiveError::NotAnArchive {
                archive: shown.clone(),
                reason: "it has no index.json".to_owned(),
            })?;
        let mut index =
            ImageIndex::from_reader(index.as_slice()).map_err(json_err("index.json"))?;
        let mut found = Vec::new();
        loop {
            let wasm = index.manifests().iter().find(|d| {
                d.platform().as_ref().is_none_or(|p| {
                    Platform::new(&p.os().to_string(), &p.architecture().to_string()).is_ok()
                })
            });
            found.extend(
                index
                    .manifests()
                    .iter()
                    .filter_map(|d| d.platform().as_ref())
                    .map(|p| format!("{}/{}", p.os(), p.architecture())),
            );
            let Some(descriptor) = wasm.cloned() else {
                return Err(ArchiveError::NoWasmPlatform {
                    archive: shown,
                    found: found.join(", "),
                });
            };
            let bytes = blob(&descriptor)?;
            if *descriptor.media_type() == MediaType::ImageIndex {
                index = ImageIndex::from_reader(bytes.as_slice())
                    .map_err(json_err("nested image index"))?;
                continue;
            }
            let manifest =
                ImageManifest::from_reader(bytes.as_slice()).map_err(json_err("image manifest"))?;
            let config = ImageConfiguration::from_reader(blob(manifest.config())?.as_slice())
                .map_err(json_err("image config"))?;
            let platform =
                Platform::new(&config.os().to_string(), &config.architecture().to_string())
                    .map_err(|_| ArchiveError::NoWasmPlatform {
                        archive: shown.clone(),
                        found: format!("{}/{}", config.os(), config.architecture()),
                    })?;
            let layers = manifest
                .layers()
                .iter()
                .map(|d| Ok((d.clone(), blob(d)?)))
                .collect::<Result<_, ArchiveError>>()?;
            return Ok(ImageContents {
                platform,
                config,
                layers,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn options(platform: Option<&str>) -> BuildOptions {
        BuildOptions {
            reference: "example.com/hello:v1".into(),
            platform: platform.map(|p| p.parse().unwrap()),
            file_name: "app.wasm".into(),
            include: vec![],
        }
    }

    fn build(
        wasm: &[u8],
        platform: Option<&str>,
    ) -> (tempfile::TempDir, std::path::PathBuf, BuiltImage) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        let built = build_archive(
            wasm,
            &options(platform),
            std::fs::File::create(&path).unwrap(),
        )
        .unwrap();
        (dir, path, built)
    }

    #[test]
    fn built_image_reads_back_with_entrypoint_and_layer() {
        let (dir, path, built) = build(MODULE, None);
        assert_eq!(
            (built.platform, built.kind),
            (Platform::WASIP1, WasmKind::Module)
        );
        let image = Archive::read(&path).unwrap();
        assert_eq!(image.platform, Platform::WASIP1);
        assert_eq!(image.command(), (vec!["/app.wasm".to_owned()], vec![]));
        let rootfs = dir.path().join("rootfs");
        image.unpack(&rootfs).unwrap();
        assert_eq!(std::fs::read(rootfs.join("app.wasm")).unwrap(), MODULE);
    }

    #[test]
    fn components_default_to_wasip2_and_platform_is_selectable() {
        assert_eq!(build(COMPONENT, None).2.platform, Platform::WASIP2);
        let (_dir, path, built) = build(MODULE, Some("wasi/wasm32"));
        assert_eq!(built.platform.to_string(), "wasi/wasm32");
        assert_eq!(
            Archive::read(&path).unwrap().platform.to_string(),
            "wasi/wasm32"
        );
    }

    #[test]
    fn index_names_the_image_for_containerd_and_docker() {
        let (_dir, path, _) = build(MODULE, None);
        let mut tar = tar::Archive::new(std::fs::File::open(path).unwrap());
        let mut names = Vec::new();
        let mut index = String::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if name == "index.json" {
                entry.read_to_string(&mut index).unwrap();
            }
            names.push(name);
        }
        assert!(
            names.contains(&"oci-layout".to_owned()) && names.contains(&"manifest.json".to_owned())
        );
        let index: serde_json::Value = serde_json::from_str(&index).unwrap();
        let manifest = &index["manifests"][0];
        assert_eq!(
            manifest["annotations"][IMAGE_NAME_ANNOTATION],
            "example.com/hello:v1"
        );
        assert_eq!(manifest["annotations"][REF_NAME_ANNOTATION], "v1");
        assert_eq!(manifest["platform"]["os"], "wasip1");
    }

    #[test]
    fn included_directories_keep_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let assets = dir.path().join("assets");
        std::fs::create_dir_all(assets.join("sub")).unwrap();
        std::fs::write(assets.join("sub/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", assets.join("escape")).unwrap();
        let mut opts = options(None);
        opts.include = vec![(assets, "/static".into())];
        let path = dir.path().join("image.tar");
        build_archive(MODULE, &opts, std::fs::File::create(&path).unwrap()).unwrap();
        let rootfs = dir.path().join("rootfs");
        Archive::read(&path).unwrap().unpack(&rootfs).unwrap();
        assert_eq!(
            std::fs::read_to_string(rootfs.join("static/sub/a.txt")).unwrap(),
            "a"
        );
        assert_eq!(
            std::fs::read_link(rootfs.join("static/escape")).unwrap(),
            Path::new("/etc/hostname")
        );
    }

    #[test]
    fn builds_are_reproducible() {
        assert_eq!(
            build(MODULE, None).2.manifest_digest,
            build(MODULE, None).2.manifest_digest
        );
    }

    #[test]
    fn non_wasm_input_is_refused_with_what_it_is() {
        let err = build_archive(b"\x7fELF....", &options(None), Vec::new()).unwrap_err();
        assert!(
            err.to_string()
                .contains("app.wasm is a native ELF executable"),
            "{err}"
        );
    }

    #[test]
    fn corrupted_blob_is_detected() {
        let (dir, path, _) = build(MODULE, None);
        // Rewrite the archive with the layer's bytes altered but its name kept.
        let mut tar = tar::Archive::new(std::fs::File::open(&path).unwrap());
        let corrupted = dir.path().join("corrupted.tar");
        let mut out = tar::Builder::new(std::fs::File::create(&corrupted).unwrap());
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            if bytes.windows(4).any(|w| w == b"\0asm") {
                let at = bytes.windows(4).position(|w| w == b"\0asm").unwrap();
                bytes[at + 4] = 9;
            }
            let mut header = entry.header().clone();
            out.append_data(&mut header, entry.path().unwrap(), bytes.as_slice())
                .unwrap();
        }
        out.finish().unwrap();
        drop(out);
        let err = Archive::read(&corrupted).unwrap_err();
        assert!(matches!(err, ArchiveError::DigestMismatch { .. }), "{err}");
    }
}
