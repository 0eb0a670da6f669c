//! Reading Wasm images back, from an OCI archive (an OCI layout in a tar, as `ctr images
//! import`, `docker load` and `wasmcell run` read it) or from the local store, in either format
//! (see [`crate::image`]).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::error::{ArchiveError, io_err, json_err};
use crate::layout::{Layout, sha256};
use crate::limits::{MAX_DOCUMENT, MAX_LAYERS, MAX_SPIN_LAYERS, MAX_UNPACKED};
use crate::media::{TITLE_ANNOTATION, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPES};
use crate::platform::Platform;
use crate::spin::{SpinImage, is_spin_manifest};

/// Whether a layer is the Wasm binary itself rather than a tar.
pub fn is_wasm_layer(media_type: &MediaType) -> bool {
    WASM_LAYER_MEDIA_TYPES.contains(&media_type.to_string().as_str())
}

/// The entry of `index` for `wanted`, or without one the first entry of a Wasm platform (an
/// entry with no platform counts: an index of one image need not say). When none fits, the
/// platforms the index has, for the error.
pub fn wasm_entry<'a>(
    index: &'a ImageIndex,
    wanted: Option<&Platform>,
) -> Result<&'a Descriptor, Vec<String>> {
    let platform_of = |d: &Descriptor| {
        d.platform()
            .as_ref()
            .map(|p| (p.os().to_string(), p.architecture().to_string()))
    };
    index
        .manifests()
        .iter()
        .find(|d| match (platform_of(d), wanted) {
            (Some((os, arch)), Some(wanted)) => {
                Platform::new(&os, &arch).is_ok_and(|p| p == *wanted)
            }
            (Some((os, arch)), None) => Platform::new(&os, &arch).is_ok(),
            (None, wanted) => wanted.is_none(),
        })
        .ok_or_else(|| {
            index
                .manifests()
                .iter()
                .filter_map(platform_of)
                .map(|(os, arch)| format!("{os}/{arch}"))
                .collect()
        })
}

/// An image read back: what `wasmcell run` needs to build a container from it.
#[derive(Debug)]
pub struct ImageContents {
    /// The image's platform.
    pub platform: Platform,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: String,
    layers: Vec<(Descriptor, Vec<u8>)>,
    spin: Option<SpinImage>,
}

impl ImageContents {
    /// `Entrypoint` followed by `Cmd`, as a container would run them.
    pub fn command(&self) -> (Vec<String>, Vec<String>) {
        (self.entrypoint.clone(), self.cmd.clone())
    }

    /// The image's environment, as `KEY=VALUE` strings.
    pub fn env(&self) -> Vec<String> {
        self.env.clone()
    }

    /// The image's working directory, `/` when unset.
    pub fn working_dir(&self) -> String {
        self.working_dir.clone()
    }

    /// The Spin app of an image in Spin's registry format (whose layers are not a filesystem:
    /// it unpacks to nothing).
    pub fn spin_app(&self) -> Option<&SpinImage> {
        self.spin.as_ref()
    }

    /// Unpacks every layer, in order, into `dir`: tar layers are applied beneath it with their
    /// whiteouts (see [`crate::unpack`]), a Wasm layer is written at `/<its title>`. At most
    /// [`MAX_UNPACKED`] bytes in all.
    pub fn unpack(&self, dir: &Path) -> Result<(), ArchiveError> {
        self.unpack_at_most(dir, MAX_UNPACKED)
    }

    /// [`ImageContents::unpack`] with another bound.
    pub fn unpack_at_most(&self, dir: &Path, max: u64) -> Result<(), ArchiveError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
            .map_err(io_err(format!("open {}", dir.display())))?;
        let mut budget = max;
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
                media_type if is_wasm_layer(media_type) => {
                    // Replaced beneath the root, never written through: an earlier layer may
                    // have put a link to a host file at that name.
                    let name = title(descriptor);
                    crate::unpack::remove(&root, Path::new(&name))
                        .and_then(|()| root.write(&name, bytes))
                        .map_err(io_err(format!("write /{name} in {}", dir.display())))?;
                    continue;
                }
                other => {
                    return Err(ArchiveError::UnsupportedLayer {
                        digest,
                        media_type: other.to_string(),
                    });
                }
            };
            crate::unpack::apply_layer(&root, reader, &digest, &mut budget)?;
        }
        Ok(())
    }

    /// The bytes of the binary the entrypoint names, if a layer holds it: what the compile
    /// cache keys its artifact by.
    pub fn entry_module(&self) -> Option<Vec<u8>> {
        let path = self
            .entrypoint
            .first()?
            .split('#')
            .next()?
            .trim_start_matches('/')
            .to_owned();
        self.layers
            .iter()
            .rev()
            .find_map(|(descriptor, bytes)| match descriptor.media_type() {
                media_type if is_wasm_layer(media_type) => {
                    (title(descriptor) == path).then(|| bytes.clone())
                }
                MediaType::ImageLayer => {
                    let mut tar = tar::Archive::new(bytes.as_slice());
                    tar.entries().ok()?.flatten().find_map(|mut entry| {
                        let name = entry
                            .path()
                            .ok()?
                            .to_string_lossy()
                            .trim_start_matches("./")
                            .to_owned();
                        let mut module = Vec::new();
                        (name == path && entry.read_to_end(&mut module).is_ok()).then_some(module)
                    })
                }
                _ => None,
            })
    }

    /// Reads the Wasm image `index` leads to (the first manifest of a Wasm platform, through
    /// nested indexes), fetching and verifying each blob with `blob`. `image` names it in
    /// errors.
    fn select(
        image: &str,
        mut index: ImageIndex,
        blob: impl Fn(&Descriptor) -> Result<Vec<u8>, ArchiveError>,
    ) -> Result<ImageContents, ArchiveError> {
        for _ in 0..MAX_INDEX_DEPTH {
            let descriptor = wasm_entry(&index, None)
                .map_err(|found| ArchiveError::NoWasmPlatform {
                    archive: image.to_owned(),
                    found: found.join(", "),
                })?
                .clone();
            check_document(&descriptor)?;
            let bytes = blob(&descriptor)?;
            if *descriptor.media_type() == MediaType::ImageIndex {
                index = ImageIndex::from_reader(bytes.as_slice())
                    .map_err(json_err("nested image index"))?;
                continue;
            }
            let manifest =
                ImageManifest::from_reader(bytes.as_slice()).map_err(json_err("image manifest"))?;
            return ImageContents::of_manifest(image, &manifest, &blob);
        }
        Err(ArchiveError::IndexTooDeep {
            image: image.to_owned(),
            max: MAX_INDEX_DEPTH,
        })
    }

    fn of_manifest(
        image: &str,
        manifest: &ImageManifest,
        blob: &impl Fn(&Descriptor) -> Result<Vec<u8>, ArchiveError>,
    ) -> Result<ImageContents, ArchiveError> {
        check_manifest(manifest)?;
        if is_spin_manifest(manifest) {
            return Ok(ImageContents {
                platform: Platform::WASIP1,
                entrypoint: Vec::new(),
                cmd: Vec::new(),
                env: Vec::new(),
                working_dir: "/".to_owned(),
                layers: Vec::new(),
                spin: Some(SpinImage::read(manifest, blob)?),
            });
        }
        let config_bytes = blob(manifest.config())?;
        let layers = manifest
            .layers()
            .iter()
            .map(|d| Ok((d.clone(), blob(d)?)))
            .collect::<Result<Vec<_>, ArchiveError>>()?;
        let wrong_platform = |os: &str, arch: &str| ArchiveError::NoWasmPlatform {
            archive: image.to_owned(),
            found: format!("{os}/{arch}"),
        };
        match manifest.config().media_type() {
            MediaType::ImageConfig => {
                let config = ImageConfiguration::from_reader(config_bytes.as_slice())
                    .map_err(json_err("image config"))?;
                let (os, arch) = (config.os().to_string(), config.architecture().to_string());
                let platform = Platform::new(&os, &arch).map_err(|_| wrong_platform(&os, &arch))?;
                let process = config.config().as_ref();
                Ok(ImageContents {
                    platform,
                    entrypoint: process
                        .and_then(|c| c.entrypoint().clone())
                        .unwrap_or_default(),
                    cmd: process.and_then(|c| c.cmd().clone()).unwrap_or_default(),
                    env: process.and_then(|c| c.env().clone()).unwrap_or_default(),
                    working_dir: process
                        .and_then(|c| c.working_dir().clone())
                        .filter(|dir| !dir.is_empty())
                        .unwrap_or_else(|| "/".to_owned()),
                    layers,
                    spin: None,
                })
            }
            MediaType::Other(t) if t == WASM_CONFIG_MEDIA_TYPE => {
                let [(layer, _)] = layers.as_slice() else {
                    return Err(ArchiveError::ArtifactLayers {
                        image: image.to_owned(),
                        layers: layers.len(),
                    });
                };
                let config: serde_json::Value = serde_json::from_slice(&config_bytes)
                    .map_err(|e| ArchiveError::Malformed(format!("Wasm config: {e}")))?;
                let field = |name: &str| config[name].as_str().unwrap_or_default().to_owned();
                let (os, arch) = (field("os"), field("architecture"));
                let platform = Platform::new(&os, &arch).map_err(|_| wrong_platform(&os, &arch))?;
                Ok(ImageContents {
                    platform,
                    entrypoint: vec![format!("/{}", title(layer))],
                    cmd: vec![],
                    env: vec![],
                    working_dir: "/".to_owned(),
                    layers,
                    spin: None,
                })
            }
            other => Err(ArchiveError::ConfigMediaType {
                image: image.to_owned(),
                media_type: other.to_string(),
            }),
        }
    }

    /// Reads the image `reference` names in the local store.
    pub fn from_layout(layout: &Layout, reference: &str) -> Result<ImageContents, ArchiveError> {
        let root = layout
            .resolve(reference)?
            .ok_or_else(|| ArchiveError::NotAnArchive {
                archive: layout.root().display().to_string(),
                reason: format!("it has no image {reference}"),
            })?;
        let index = oci_spec::image::ImageIndexBuilder::default()
            .schema_version(oci_spec::image::SCHEMA_VERSION)
            .manifests(vec![root])
            .build()
            .map_err(json_err("image index"))?;
        ImageContents::select(reference, index, |d| {
            Ok(layout.read_blob(d.digest().as_ref())?)
        })
    }
}

/// How deep image indexes may nest: one index in another is common, more is not.
const MAX_INDEX_DEPTH: usize = 8;

/// Refuses a document descriptor larger than [`MAX_DOCUMENT`], before it is fetched.
fn check_document(descriptor: &Descriptor) -> Result<(), ArchiveError> {
    if descriptor.size() > MAX_DOCUMENT {
        return Err(ArchiveError::TooLarge {
            what: format!("{} {}", descriptor.media_type(), descriptor.digest()),
            limit: MAX_DOCUMENT,
        });
    }
    Ok(())
}

/// What an image's manifest may ask for before anything it names is fetched: a config of at
/// most [`MAX_DOCUMENT`] bytes, at most [`MAX_LAYERS`] layers, [`MAX_UNPACKED`] bytes of them.
pub fn check_manifest(manifest: &ImageManifest) -> Result<(), ArchiveError> {
    check_document(manifest.config())?;
    let layers = manifest.layers();
    // Spin's format has a layer per file, up to Spin's own bound.
    let max = if is_spin_manifest(manifest) {
        MAX_SPIN_LAYERS
    } else {
        MAX_LAYERS
    };
    if layers.len() > max {
        return Err(ArchiveError::TooManyLayers {
            layers: layers.len(),
            max,
        });
    }
    let total: u64 = layers.iter().map(|l| l.size()).fold(0, u64::saturating_add);
    if total > MAX_UNPACKED {
        return Err(ArchiveError::TooLarge {
            what: "the image's layers".to_owned(),
            limit: MAX_UNPACKED,
        });
    }
    Ok(())
}

/// The file name a Wasm layer is written as: its title, if it is a plain file name.
fn title(layer: &Descriptor) -> String {
    layer
        .annotations()
        .as_ref()
        .and_then(|a| a.get(TITLE_ANNOTATION))
        .filter(|t| !t.is_empty() && !t.contains('/') && *t != "." && *t != "..")
        .cloned()
        .unwrap_or_else(|| "app.wasm".to_owned())
}

/// An OCI image archive on disk.
pub struct Archive;

impl Archive {
    /// Reads the archive at `path` and selects its Wasm image, verifying every blob it uses.
    pub fn read(path: &Path) -> Result<ImageContents, ArchiveError> {
        let shown = path.display().to_string();
        let files = Archive::files(path)?;
        let index = files.index()?;
        ImageContents::select(&shown, index, |d| {
            let bytes = files
                .read(&blob_path(d.digest().as_ref()), d.size())?
                .ok_or_else(|| ArchiveError::NotAnArchive {
                    archive: shown.clone(),
                    reason: format!("blob {} is missing", d.digest()),
                })?;
            if sha256(&bytes) != d.digest().as_ref() {
                return Err(ArchiveError::DigestMismatch {
                    archive: shown.clone(),
                    digest: d.digest().to_string(),
                });
            }
            Ok(bytes)
        })
    }

    /// The regular files in the archive, by path: where each is, not its bytes, which are read
    /// when asked for (an archive's blobs are only read once a descriptor asks for them, and a
    /// document only if it is small enough).
    pub fn files(path: &Path) -> Result<ArchiveFiles, ArchiveError> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(io_err(format!("open {shown}")))?;
        let mut entries = HashMap::new();
        let mut tar = tar::Archive::new(&file);
        for entry in tar.entries().map_err(io_err(format!("read {shown}")))? {
            let entry = entry.map_err(io_err(format!("read {shown}")))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(io_err(format!("read {shown}")))?;
            let name = name.to_string_lossy().trim_start_matches("./").to_owned();
            entries.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(ArchiveFiles {
            file,
            shown,
            entries,
        })
    }

    /// The blob `digest` names among an archive's `files`, checked against that digest.
    pub fn blob(files: &ArchiveFiles, digest: &str) -> Result<Vec<u8>, ArchiveError> {
        let digest = digest.to_owned();
        let bytes = files
            .read(&blob_path(&digest), MAX_UNPACKED)?
            .ok_or_else(|| ArchiveError::NotAnArchive {
                archive: files.shown.clone(),
                reason: format!("blob {digest} is missing"),
            })?;
        if sha256(&bytes) != digest {
            return Err(ArchiveError::DigestMismatch {
                archive: files.shown.clone(),
                digest,
            });
        }
        Ok(bytes)
    }
}

/// Where an OCI layout keeps the blob `digest` (`sha256:HEX`): `blobs/sha256/HEX`.
fn blob_path(digest: &str) -> String {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("", ""));
    format!("blobs/{algorithm}/{hex}")
}

/// An open OCI archive and where its files are in it.
pub struct ArchiveFiles {
    file: std::fs::File,
    shown: String,
    entries: HashMap<String, (u64, u64)>,
}

impl ArchiveFiles {
    /// The bytes of the file `name`, if the archive has it; refused if larger than `max`.
    pub fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, ArchiveError> {
        use std::os::unix::fs::FileExt;
        let Some(&(position, size)) = self.entries.get(name) else {
            return Ok(None);
        };
        if size > max {
            return Err(ArchiveError::TooLarge {
                what: format!("{name} in {}", self.shown),
                limit: max,
            });
        }
        let mut bytes = vec![0; size as usize];
        self.file
            .read_exact_at(&mut bytes, position)
            .map_err(io_err(format!("read {name} in {}", self.shown)))?;
        Ok(Some(bytes))
    }

    /// The archive's `index.json`, read if it is no larger than a document may be.
    pub fn index(&self) -> Result<ImageIndex, ArchiveError> {
        let bytes =
            self.read("index.json", MAX_DOCUMENT)?
                .ok_or_else(|| ArchiveError::NotAnArchive {
                    archive: self.shown.clone(),
                    reason: "it has no index.json".to_owned(),
                })?;
        ImageIndex::from_reader(bytes.as_slice()).map_err(json_err("index.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{BuildOptions, Format, Image, build_image};
    use crate::layout::REF_NAME;
    use crate::media::IMAGE_NAME_ANNOTATION;
    use crate::wasm::WasmKind;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn options(platforms: &[&str], format: Format) -> BuildOptions {
        BuildOptions {
            reference: "example.com/hello:v1".into(),
            platforms: platforms.iter().map(|p| p.parse().unwrap()).collect(),
            file_name: "app.wasm".into(),
            include: vec![],
            format,
        }
    }

    fn build(
        wasm: &[u8],
        platforms: &[&str],
        format: Format,
    ) -> (tempfile::TempDir, std::path::PathBuf, Image) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        let image = build_image(wasm, &options(platforms, format)).unwrap();
        image
            .write_archive(std::fs::File::create(&path).unwrap())
            .unwrap();
        (dir, path, image)
    }

    /// Issue 24: a Wasm layer was written at its title with `std::fs`, through whatever an
    /// earlier layer had put there: a link to any host file.
    #[test]
    fn a_wasm_layer_replaces_a_link_an_earlier_layer_left_at_its_name() {
        let host = tempfile::tempdir().unwrap();
        let aimed = host.path().join("pwned");
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        tar.append_link(&mut header, "app.wasm", &aimed).unwrap();
        let layer = tar.into_inner().unwrap();
        let descriptor = |media_type: MediaType, bytes: &[u8], title: Option<&str>| {
            let mut d = Descriptor::new(
                media_type,
                bytes.len() as u64,
                crate::layout::sha256(bytes)
                    .parse::<oci_spec::image::Digest>()
                    .unwrap(),
            );
            d.set_annotations(title.map(|t| [(TITLE_ANNOTATION.to_owned(), t.to_owned())].into()));
            d
        };
        let contents = ImageContents {
            platform: Platform::WASIP1,
            entrypoint: vec!["/app.wasm".to_owned()],
            cmd: vec![],
            env: vec![],
            working_dir: "/".to_owned(),
            layers: vec![
                (
                    descriptor(MediaType::ImageLayer, &layer, None),
                    layer.clone(),
                ),
                (
                    descriptor(
                        MediaType::Other("application/wasm".into()),
                        MODULE,
                        Some("app.wasm"),
                    ),
                    MODULE.to_vec(),
                ),
            ],
            spin: None,
        };
        let rootfs = host.path().join("rootfs");
        contents.unpack(&rootfs).unwrap();
        assert!(!aimed.exists(), "written through the link");
        assert_eq!(std::fs::read(rootfs.join("app.wasm")).unwrap(), MODULE);
    }

    #[test]
    fn built_image_reads_back_with_entrypoint_and_layer() {
        // The image format declares what Docker's guide types; the artifact its own OS names.
        for (format, platform) in [
            (Format::Image, Platform::WASI),
            (Format::Artifact, Platform::WASIP1),
        ] {
            let (dir, path, image) = build(MODULE, &[], format);
            assert_eq!(
                (image.platforms[0], image.kind),
                (platform, WasmKind::Module)
            );
            let read = Archive::read(&path).unwrap();
            assert_eq!(read.platform, platform);
            assert_eq!(read.command(), (vec!["/app.wasm".to_owned()], vec![]));
            let rootfs = dir.path().join("rootfs");
            read.unpack(&rootfs).unwrap();
            assert_eq!(
                std::fs::read(rootfs.join("app.wasm")).unwrap(),
                MODULE,
                "{format:?}"
            );
        }
    }

    #[test]
    fn components_default_to_wasi_or_wasip2_and_platform_is_selectable() {
        assert_eq!(
            build(COMPONENT, &[], Format::Image).2.platforms,
            [Platform::WASI]
        );
        assert_eq!(
            build(COMPONENT, &[], Format::Artifact).2.platforms,
            [Platform::WASIP2]
        );
        let (_dir, path, _) = build(MODULE, &["wasi/wasm32"], Format::Image);
        assert_eq!(
            Archive::read(&path).unwrap().platform.to_string(),
            "wasi/wasm32"
        );
    }

    #[test]
    fn two_platforms_make_one_index_either_platform_finds() {
        let (_dir, path, image) = build(MODULE, &["wasi/wasm32", "wasip1/wasm"], Format::Image);
        assert_eq!(*image.root.media_type(), MediaType::ImageIndex);
        let files = Archive::files(&path).unwrap();
        let nested = Archive::blob(&files, image.root.digest().as_ref()).unwrap();
        let nested = ImageIndex::from_reader(nested.as_slice()).unwrap();
        let platforms: Vec<_> = nested
            .manifests()
            .iter()
            .map(|d| d.platform().as_ref().unwrap().os().to_string())
            .collect();
        assert_eq!(platforms, ["wasi", "wasip1"]);
        assert_eq!(
            Archive::read(&path).unwrap().platform.to_string(),
            "wasi/wasm32"
        );
    }

    #[test]
    fn the_artifact_has_the_cncf_config_and_one_wasm_layer() {
        let (_dir, path, image) = build(MODULE, &[], Format::Artifact);
        let files = Archive::files(&path).unwrap();
        let manifest = Archive::blob(&files, image.root.digest().as_ref()).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.wasm.config.v0+json"
        );
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
        assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
        let config = manifest["config"]["digest"].as_str().unwrap();
        let config = Archive::blob(&files, config).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(config["os"], "wasip1");
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["layerDigests"][0], manifest["layers"][0]["digest"]);
        assert!(config.get("component").is_none());
    }

    #[test]
    fn index_names_the_image_for_containerd_and_docker() {
        let (_dir, path, _) = build(MODULE, &[], Format::Image);
        let files = Archive::files(&path).unwrap();
        let read = |name| files.read(name, MAX_DOCUMENT).unwrap();
        assert!(read("oci-layout").is_some() && read("manifest.json").is_some());
        let index: serde_json::Value =
            serde_json::from_slice(&read("index.json").unwrap()).unwrap();
        let manifest = &index["manifests"][0];
        assert_eq!(
            manifest["annotations"][IMAGE_NAME_ANNOTATION],
            "example.com/hello:v1"
        );
        assert_eq!(manifest["annotations"][REF_NAME], "v1");
        assert_eq!(manifest["platform"]["os"], "wasi");
    }

    #[test]
    fn included_directories_keep_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let assets = dir.path().join("assets");
        std::fs::create_dir_all(assets.join("sub")).unwrap();
        std::fs::write(assets.join("sub/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", assets.join("escape")).unwrap();
        let mut opts = options(&[], Format::Image);
        opts.include = vec![(assets, "/static".into())];
        let path = dir.path().join("image.tar");
        let image = build_image(MODULE, &opts).unwrap();
        image
            .write_archive(std::fs::File::create(&path).unwrap())
            .unwrap();
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
        opts.format = Format::Artifact;
        assert!(matches!(
            build_image(MODULE, &opts),
            Err(ArchiveError::IncludeInArtifact)
        ));
    }

    #[test]
    fn builds_are_reproducible() {
        for format in [Format::Image, Format::Artifact] {
            assert_eq!(
                build(MODULE, &[], format).2.root.digest(),
                build(MODULE, &[], format).2.root.digest()
            );
        }
    }

    #[test]
    fn non_wasm_input_is_refused_with_what_it_is() {
        let err = build_image(b"\x7fELF....", &options(&[], Format::Image)).unwrap_err();
        assert!(
            err.to_string()
                .contains("app.wasm is a native ELF executable"),
            "{err}"
        );
    }

    #[test]
    fn the_store_round_trips_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path().join("store")).unwrap();
        for format in [Format::Image, Format::Artifact] {
            let image = build_image(MODULE, &options(&[], format)).unwrap();
            image.store(&layout).unwrap();
            let read = ImageContents::from_layout(&layout, "example.com/hello:v1").unwrap();
            assert_eq!(read.command().0, ["/app.wasm"]);
        }
    }

    #[test]
    fn corrupted_blob_is_detected() {
        let (dir, path, _) = build(MODULE, &[], Format::Image);
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

    #[test]
    fn images_asking_too_much_are_refused_before_their_blobs_are_read() {
        use oci_spec::image::{ImageIndexBuilder, ImageManifestBuilder, SCHEMA_VERSION};
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path().join("store")).unwrap();
        let digest = |bytes: &[u8]| sha256(bytes).parse::<oci_spec::image::Digest>().unwrap();
        let store = |media_type: MediaType, bytes: Vec<u8>| {
            layout.write_blob(&bytes).unwrap();
            Descriptor::new(media_type, bytes.len() as u64, digest(&bytes))
        };
        let config = store(MediaType::ImageConfig, b"{}".to_vec());
        let layer = Descriptor::new(MediaType::ImageLayer, 1, digest(b"x"));
        let manifest = |config: Descriptor, layers: Vec<Descriptor>| {
            let manifest = ImageManifestBuilder::default()
                .schema_version(SCHEMA_VERSION)
                .media_type(MediaType::ImageManifest)
                .config(config)
                .layers(layers)
                .build()
                .unwrap();
            store(
                MediaType::ImageManifest,
                serde_json::to_vec(&manifest).unwrap(),
            )
        };
        let read = |name: &str, root: Descriptor| {
            layout.tag(name, root).unwrap();
            ImageContents::from_layout(&layout, name).unwrap_err()
        };

        let many = read(
            "many:1",
            manifest(config.clone(), vec![layer.clone(); 10_000]),
        );
        assert!(
            matches!(many, ArchiveError::TooManyLayers { layers: 10_000, .. }),
            "{many}"
        );

        let huge = Descriptor::new(MediaType::ImageConfig, 100 << 20, digest(b"huge"));
        let huge = read("huge:1", manifest(huge, vec![layer.clone()]));
        assert!(matches!(huge, ArchiveError::TooLarge { .. }), "{huge}");

        let mut root = manifest(config, vec![layer]);
        for _ in 0..12 {
            let index = ImageIndexBuilder::default()
                .schema_version(SCHEMA_VERSION)
                .media_type(MediaType::ImageIndex)
                .manifests(vec![root])
                .build()
                .unwrap();
            root = store(MediaType::ImageIndex, serde_json::to_vec(&index).unwrap());
        }
        let deep = read("deep:1", root);
        assert!(matches!(deep, ArchiveError::IndexTooDeep { .. }), "{deep}");
    }
}
