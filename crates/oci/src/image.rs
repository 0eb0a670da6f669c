//! Building Wasm images, in two formats, for one or more platforms:
//!
//! - [`Format::Image`], the Docker-compatible image: one uncompressed tar layer holding the
//!   binary at `/<file name>`, an `Entrypoint` naming it, a Wasm platform. Every container
//!   runtime can unpack it.
//! - [`Format::Artifact`], the CNCF TAG-Runtime Wasm OCI artifact: the binary itself as the one
//!   layer (`application/wasm`), and a config of type `application/vnd.wasm.config.v0+json`
//!   saying its OS (`wasip1`/`wasip2`), architecture `wasm`, layer digests and, for a
//!   component, its imports and exports.
//!
//! Several platforms give one manifest each under an image index, so any of the platform
//! strings users write (`wasi/wasm32`, `wasip1/wasm`, ...) resolves to the image. Everything is
//! reproducible: fixed timestamps and modes, canonical JSON, so the same input gives the same
//! digests.

use std::collections::HashMap;
use std::io::Write;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder, SCHEMA_VERSION,
};

use crate::encoding::{append, canonical_json};
use crate::error::{ArchiveError, io_err, json_err};
use crate::layout::{Layout, LayoutError, REF_NAME, sha256};
use crate::media::{
    IMAGE_NAME_ANNOTATION, TITLE_ANNOTATION, WASM_CONFIG_MEDIA_TYPE, WASM_KIND_ANNOTATION,
    WASM_LAYER_MEDIA_TYPE, WASM_VARIANT_ANNOTATION,
};
use crate::platform::Platform;
use crate::wasm::{FileKind, WasmKind};

/// Which kind of image to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The Docker-compatible image (a tar layer).
    #[default]
    Image,
    /// The CNCF Wasm OCI artifact (the binary as the layer).
    Artifact,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The image name, e.g. `example.com/hello:latest`.
    pub reference: String,
    /// The platforms to declare; none picks, for the image format, `wasi/wasm` (what Docker's
    /// Wasm guide tells users to type, `docker run --platform=wasi/wasm`), and for the CNCF
    /// artifact its own OS names, `wasip1/wasm` for modules and `wasip2/wasm` for components.
    pub platforms: Vec<Platform>,
    /// The module's file name inside the image: it is placed at `/<file_name>`.
    pub file_name: String,
    /// Host directories copied into the image (compatible format only): (host directory,
    /// absolute path in the image). Symlinks are kept as symlinks.
    pub include: Vec<(std::path::PathBuf, String)>,
    /// The format.
    pub format: Format,
}

/// A built image: its blobs, and the descriptor its name points at (a manifest, or an index of
/// one manifest per platform).
#[derive(Debug, Clone)]
pub struct Image {
    /// The name it was built with.
    pub reference: String,
    /// Module or component.
    pub kind: WasmKind,
    /// Its platforms.
    pub platforms: Vec<Platform>,
    /// Every blob: layers and configs, manifests, and the index if any, the root last.
    pub blobs: Vec<Blob>,
    /// What the name points at: the last blob's descriptor.
    pub root: Descriptor,
    /// Docker's `manifest.json` entry, for `docker load` into Docker's classic store.
    docker: Option<serde_json::Value>,
}

/// One content-addressed blob.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Its media type.
    pub media_type: MediaType,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>`.
    pub digest: String,
}

impl Blob {
    pub(crate) fn new(media_type: MediaType, bytes: Vec<u8>) -> Blob {
        let digest = sha256(&bytes);
        Blob {
            media_type,
            bytes,
            digest,
        }
    }

    /// Its descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type.clone(),
            self.bytes.len() as u64,
            self.digest
                .parse::<oci_spec::image::Digest>()
                .expect("a sha256 digest we computed"),
        )
    }

    fn path(&self) -> String {
        format!("blobs/{}", self.digest.replacen(':', "/", 1))
    }
}

/// Builds the image of `wasm`.
pub fn build_image(wasm: &[u8], options: &BuildOptions) -> Result<Image, ArchiveError> {
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
    if options.format == Format::Artifact && !options.include.is_empty() {
        return Err(ArchiveError::IncludeInArtifact);
    }
    let mut platforms = options.platforms.clone();
    if platforms.is_empty() {
        platforms.push(match (options.format, kind) {
            (Format::Image, _) => Platform::WASI,
            (Format::Artifact, WasmKind::Module) => Platform::WASIP1,
            (Format::Artifact, WasmKind::Component) => Platform::WASIP2,
        });
    }
    platforms.dedup();

    let layer = match options.format {
        Format::Image => Blob::new(
            MediaType::ImageLayer,
            layer_tar(name, wasm, &options.include)?,
        ),
        Format::Artifact => Blob::new(
            MediaType::Other(WASM_LAYER_MEDIA_TYPE.into()),
            wasm.to_vec(),
        ),
    };
    assemble(layer, name, wasm, kind, platforms, options)
}

/// Builds the Docker-compatible image of an app whose manifest (`manifest`, e.g. Spin's
/// `spin.toml`) is at the root of `dir`: the directory is the one layer, as a Dockerfile's
/// `COPY . /` makes it, but for the top-level entries `local` names (the app's local state,
/// such as Spin's `.spin/`, as a `.dockerignore` would leave it out), and the Entrypoint names
/// the manifest (an app runtime reads the manifest and ignores it). Its platform is
/// `wasi/wasm`, which Docker's Spin examples use.
pub fn build_app_image(
    dir: &std::path::Path,
    manifest: &str,
    local: &[&str],
    options: &BuildOptions,
) -> Result<Image, ArchiveError> {
    if options.format == Format::Artifact {
        return Err(ArchiveError::AppArtifact);
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut entries = std::fs::read_dir(dir)
        .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
        .map_err(io_err(format!("read {}", dir.display())))?;
    // Sorted: the same directory, the same layer.
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name();
        if local.iter().any(|l| name == *l) {
            continue;
        }
        let path = entry.path();
        let appended = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            tar.append_dir_all(&name, &path)
        } else {
            tar.append_path_with_name(&path, &name)
        };
        appended.map_err(io_err(format!("add {} to the image", path.display())))?;
    }

    let layer = Blob::new(
        MediaType::ImageLayer,
        tar.into_inner().map_err(io_err("build layer"))?,
    );
    let mut platforms = options.platforms.clone();
    if platforms.is_empty() {
        platforms.push(Platform::WASI);
    }
    assemble(
        layer,
        manifest,
        &[],
        WasmKind::Component,
        platforms,
        options,
    )
}

/// An image of `layer` for each of `platforms`: configs, manifests, and an index when there
/// are several. `name` is the file the Entrypoint names; `wasm`, the binary an artifact's
/// config describes.
fn assemble(
    layer: Blob,
    name: &str,
    wasm: &[u8],
    kind: WasmKind,
    platforms: Vec<Platform>,
    options: &BuildOptions,
) -> Result<Image, ArchiveError> {
    let mut blobs = vec![layer.clone()];
    let mut manifests = Vec::new();
    let mut docker = None;
    for platform in &platforms {
        let (config, manifest) = match options.format {
            Format::Image => compat_manifest(&layer, name, kind, *platform)?,
            Format::Artifact => artifact_manifest(&layer, name, wasm, kind, *platform)?,
        };
        if docker.is_none() && options.format == Format::Image {
            docker = Some(serde_json::json!([{
                "Config": config.path(),
                "RepoTags": [options.reference],
                "Layers": [layer.path()],
            }]));
        }
        let mut descriptor = manifest.descriptor();
        descriptor.set_platform(Some(
            PlatformBuilder::default()
                .os(Os::from(platform.os()))
                .architecture(Arch::from(platform.arch()))
                .build()
                .map_err(json_err("platform"))?,
        ));
        manifests.push(descriptor);
        blobs.extend([config, manifest]);
    }
    let root = if let [single] = manifests.as_slice() {
        single.clone()
    } else {
        let index = ImageIndexBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()
            .map_err(json_err("image index"))?;
        let index = Blob::new(MediaType::ImageIndex, canonical_json(&index));
        let descriptor = index.descriptor();
        blobs.push(index);
        descriptor
    };
    Ok(Image {
        reference: options.reference.clone(),
        kind,
        platforms,
        blobs,
        root,
        docker,
    })
}

/// The compatible image's config and manifest for one platform.
fn compat_manifest(
    layer: &Blob,
    name: &str,
    kind: WasmKind,
    platform: Platform,
) -> Result<(Blob, Blob), ArchiveError> {
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
        .config(config.descriptor())
        .layers(vec![layer.descriptor()])
        .annotations(HashMap::from([
            (WASM_KIND_ANNOTATION.to_owned(), kind.to_string()),
            (WASM_VARIANT_ANNOTATION.to_owned(), "compat".to_owned()),
        ]))
        .build()
        .map_err(json_err("image manifest"))?;
    Ok((
        config,
        Blob::new(MediaType::ImageManifest, canonical_json(&manifest)),
    ))
}

/// The CNCF artifact's config and manifest for one platform.
fn artifact_manifest(
    layer: &Blob,
    name: &str,
    wasm: &[u8],
    kind: WasmKind,
    platform: Platform,
) -> Result<(Blob, Blob), ArchiveError> {
    let mut config = serde_json::json!({
        // The Unix epoch, as reproducible builds use: the same input, the same digest.
        "created": "1970-01-01T00:00:00Z",
        "architecture": "wasm",
        "os": platform.os(),
        "layerDigests": [layer.digest],
    });
    if kind == WasmKind::Component {
        let (imports, exports) = component_world(wasm)?;
        let target = component_target(&exports);
        config["component"] = serde_json::json!({"imports": imports, "exports": exports});
        if let Some(target) = target {
            config["component"]["target"] = target.into();
        }
    }
    let config = Blob::new(
        MediaType::Other(WASM_CONFIG_MEDIA_TYPE.into()),
        canonical_json(&config),
    );
    let mut layer_descriptor = layer.descriptor();
    layer_descriptor.set_annotations(Some(HashMap::from([(
        TITLE_ANNOTATION.to_owned(),
        name.to_owned(),
    )])));
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config.descriptor())
        .layers(vec![layer_descriptor])
        .annotations(HashMap::from([(
            WASM_KIND_ANNOTATION.to_owned(),
            kind.to_string(),
        )]))
        .build()
        .map_err(json_err("artifact manifest"))?;
    Ok((
        config,
        Blob::new(MediaType::ImageManifest, canonical_json(&manifest)),
    ))
}

/// A component's top-level import and export names, read from the binary.
/// The world a component targets, named from what it exports as the CNCF artifact's
/// `component.target` names it: `wasi:http/service@0.3.x` for a WASI 0.3 HTTP handler,
/// `wasi:http/proxy@0.2.x` for a 0.2 one, `wasi:cli/command@…` for a command; none for a
/// component exporting neither (a library).
fn component_target(exports: &[String]) -> Option<String> {
    let version = |interface: &str| {
        exports.iter().find_map(|export| {
            let version = export.strip_prefix(interface)?.strip_prefix('@')?;
            Some(version.to_owned())
        })
    };
    [
        ("wasi:http/handler", "wasi:http/service"),
        ("wasi:http/incoming-handler", "wasi:http/proxy"),
        ("wasi:cli/run", "wasi:cli/command"),
    ]
    .into_iter()
    .find_map(|(export, world)| Some(format!("{world}@{}", version(export)?)))
}

fn component_world(wasm: &[u8]) -> Result<(Vec<String>, Vec<String>), ArchiveError> {
    use wasmparser::{Parser, Payload};
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| ArchiveError::Malformed(e.to_string()))?;
                    imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| ArchiveError::Malformed(e.to_string()))?;
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

impl Image {
    /// An image that Docker's classic store cannot load (no `manifest.json` entry).
    pub(crate) fn new(
        reference: &str,
        kind: WasmKind,
        platforms: Vec<Platform>,
        blobs: Vec<Blob>,
        root: Descriptor,
    ) -> Image {
        Image {
            reference: reference.to_owned(),
            kind,
            platforms,
            blobs,
            root,
            docker: None,
        }
    }

    /// Writes the image as an OCI archive (an OCI layout in a tar, plus Docker's
    /// `manifest.json`), as `ctr images import` and `docker load` read it.
    pub fn write_archive(&self, out: impl Write) -> Result<(), ArchiveError> {
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        append(
            &mut tar,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            0o644,
        )?;
        append(
            &mut tar,
            "index.json",
            &canonical_json(&self.index()?),
            0o644,
        )?;
        if let Some(docker) = &self.docker {
            append(
                &mut tar,
                "manifest.json",
                docker.to_string().as_bytes(),
                0o644,
            )?;
        }
        for blob in &self.blobs {
            append(&mut tar, &blob.path(), &blob.bytes, 0o644)?;
        }
        tar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(io_err("write image archive"))?;
        Ok(())
    }

    /// The top-level index of an archive: the root, named for containerd and Docker
    /// (`io.containerd.image.name`) and for OCI layout tools (`org.opencontainers.image.ref.name`).
    fn index(&self) -> Result<oci_spec::image::ImageIndex, ArchiveError> {
        let mut root = self.root.clone();
        let mut annotations = root.annotations().clone().unwrap_or_default();
        annotations.insert(IMAGE_NAME_ANNOTATION.to_owned(), self.reference.clone());
        // The tag, as OCI layouts name their entries (`skopeo` reads `oci-archive:FILE:TAG`).
        let tag = self
            .reference
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'))
            .unwrap_or("latest");
        annotations.insert(REF_NAME.to_owned(), tag.to_owned());
        root.set_annotations(Some(annotations));
        ImageIndexBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![root])
            .build()
            .map_err(json_err("image index"))
    }

    /// Stores the image in `layout` under its name.
    pub fn store(&self, layout: &Layout) -> Result<(), LayoutError> {
        for blob in &self.blobs {
            layout.write_blob(&blob.bytes)?;
        }
        layout.tag(&self.reference, self.root.clone())
    }

    /// Stores the image in `layout` under `name` (the local store's short form of its
    /// reference), its blobs as [`Image::store`] writes them.
    pub fn store_as(&self, layout: &Layout, name: &str) -> Result<(), LayoutError> {
        for blob in &self.blobs {
            layout.write_blob(&blob.bytes)?;
        }
        layout.tag(name, self.root.clone())
    }
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

#[cfg(test)]
mod target_tests {
    use super::component_target;

    #[test]
    fn a_components_target_world_is_named_from_its_exports() {
        let target = |exports: &[&str]| {
            component_target(&exports.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            target(&["wasi:http/handler@0.3.0"]).as_deref(),
            Some("wasi:http/service@0.3.0")
        );
        assert_eq!(
            target(&["wasi:http/incoming-handler@0.2.6"]).as_deref(),
            Some("wasi:http/proxy@0.2.6")
        );
        assert_eq!(
            target(&["wasi:cli/run@0.3.0"]).as_deref(),
            Some("wasi:cli/command@0.3.0")
        );
        assert_eq!(target(&["example:lib/api@1.0.0"]), None);
        assert_eq!(target(&["wasi:cli/runner@0.2.0"]), None);
    }
}
