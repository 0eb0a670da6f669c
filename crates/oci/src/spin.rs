//! Spin's registry format, as `spin registry push` writes it: each component's Wasm a layer of
//! its own (`application/vnd.wasm.content.layer.v1+wasm`), each file a data layer
//! (`application/vnd.wasm.content.layer.v1+data`; files of 128 bytes or less are inlined in
//! the locked app instead), or a component's files together in one `tar+gzip` archive layer;
//! and the locked app (Spin's resolved manifest, JSON, referring to that content by digest) as
//! a layer of `application/vnd.fermyon.spin.application.v1+config`, or, as Spin wrote it
//! before 2.0, as the image's config. No layer is a filesystem: container runtimes unpack
//! none of it, and the app is rebuilt from the content by the runtime that runs it.

use std::collections::HashMap;
use std::io::Read;

use oci_spec::image::{
    ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageManifest, ImageManifestBuilder,
    MediaType, RootFsBuilder, SCHEMA_VERSION,
};

use crate::encoding::canonical_json;
use crate::error::{ArchiveError, json_err};
use crate::image::{Blob, Image};
use crate::layout::sha256;
use crate::limits::MAX_UNPACKED;
use crate::media::{
    SPIN_APPLICATION_MEDIA_TYPE, SPIN_ARCHIVE_MEDIA_TYPE, SPIN_DATA_MEDIA_TYPE,
    SPIN_WASM_MEDIA_TYPE,
};
use crate::platform::Platform;
use crate::wasm::WasmKind;

/// The config label Spin sets to the locked app's digest, so that two apps' configs differ.
const LOCKED_APP_DIGEST_LABEL: &str = "com.fermyon.spin.lockedAppDigest";

/// Whether `manifest` is a Spin app in Spin's registry format.
pub fn is_spin_manifest(manifest: &ImageManifest) -> bool {
    std::iter::once(manifest.config())
        .chain(manifest.layers())
        .any(|d| d.media_type().to_string() == SPIN_APPLICATION_MEDIA_TYPE)
}

/// An image in Spin's registry format, read back: the locked app, and the content its digests
/// name (archive layers unpacked into their files).
#[derive(Debug, Clone)]
pub struct SpinImage {
    /// The locked app, JSON.
    pub locked: Vec<u8>,
    content: HashMap<String, Vec<u8>>,
}

impl SpinImage {
    /// Reads the image `manifest` describes, each blob it needs (verified) from `blob`.
    pub fn read(
        manifest: &ImageManifest,
        blob: impl Fn(&Descriptor) -> Result<Vec<u8>, ArchiveError>,
    ) -> Result<SpinImage, ArchiveError> {
        let blobs = SpinImage::needed(manifest)?
            .into_iter()
            .map(|d| Ok((d, blob(d)?)))
            .collect::<Result<Vec<_>, ArchiveError>>()?;
        SpinImage::from_blobs(blobs)
    }

    /// The blobs of `manifest` the app is made of, each once: the locked app and the content
    /// layers (the OCI config of Spin 2+'s form says nothing the app needs). A layer of any
    /// other type is refused.
    pub fn needed(manifest: &ImageManifest) -> Result<Vec<&Descriptor>, ArchiveError> {
        let mut needed: Vec<&Descriptor> = Vec::new();
        for descriptor in std::iter::once(manifest.config()).chain(manifest.layers()) {
            match descriptor.media_type().to_string().as_str() {
                SPIN_APPLICATION_MEDIA_TYPE
                | SPIN_WASM_MEDIA_TYPE
                | SPIN_DATA_MEDIA_TYPE
                | SPIN_ARCHIVE_MEDIA_TYPE
                | "application/wasm" => {}
                _ if descriptor == manifest.config() => continue,
                other => {
                    return Err(ArchiveError::UnsupportedLayer {
                        digest: descriptor.digest().to_string(),
                        media_type: other.to_owned(),
                    });
                }
            }
            if !needed.iter().any(|d| d.digest() == descriptor.digest()) {
                needed.push(descriptor);
            }
        }
        Ok(needed)
    }

    /// The app from the blobs [`SpinImage::needed`] names, with their bytes.
    pub fn from_blobs(blobs: Vec<(&Descriptor, Vec<u8>)>) -> Result<SpinImage, ArchiveError> {
        let mut locked = None;
        let mut content = HashMap::new();
        let mut budget = MAX_UNPACKED;
        for (descriptor, bytes) in blobs {
            match descriptor.media_type().to_string().as_str() {
                SPIN_APPLICATION_MEDIA_TYPE => locked = Some(bytes),
                SPIN_ARCHIVE_MEDIA_TYPE => unpack_archive(&bytes, &mut content, &mut budget)
                    .map_err(|e| {
                        ArchiveError::Malformed(format!(
                            "Spin archive layer {}: {e}",
                            descriptor.digest()
                        ))
                    })?,
                _ => {
                    content.insert(descriptor.digest().to_string(), bytes);
                }
            }
        }
        let locked = locked.ok_or_else(|| {
            ArchiveError::Malformed("the Spin image has no locked app".to_owned())
        })?;
        Ok(SpinImage { locked, content })
    }

    /// The content with `digest` (`sha256:<hex>`), if the image holds it.
    pub fn content(&self, digest: &str) -> Option<&[u8]> {
        self.content.get(digest).map(Vec::as_slice)
    }
}

/// Each file of a `tar+gzip` archive layer, by its digest (as the locked app refers to it).
fn unpack_archive(
    bytes: &[u8],
    content: &mut HashMap<String, Vec<u8>>,
    budget: &mut u64,
) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for entry in archive.entries()? {
        let entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let mut file = Vec::new();
        entry.take(*budget + 1).read_to_end(&mut file)?;
        *budget = budget.checked_sub(file.len() as u64).ok_or_else(|| {
            std::io::Error::other(format!("its files exceed {MAX_UNPACKED} bytes"))
        })?;
        content.insert(sha256(&file), file);
    }
    Ok(())
}

/// Content of a Spin app for its image: a component's Wasm, or a file it reads.
#[derive(Debug, Clone)]
pub enum SpinContent {
    /// A component.
    Wasm(Vec<u8>),
    /// A file.
    Data(Vec<u8>),
}

/// Builds the image of a locked app (`locked`, JSON) and its `content`, in Spin's registry
/// format as Spin 2 and later write it: a layer per content, the locked app as the last
/// layer, and an OCI config (`wasm`/`wasip1`) labelled with the locked app's digest.
pub fn build_spin_image(
    reference: &str,
    locked: Vec<u8>,
    content: Vec<SpinContent>,
) -> Result<Image, ArchiveError> {
    let mut layers: Vec<Blob> = Vec::new();
    for piece in content {
        let blob = match piece {
            SpinContent::Wasm(bytes) => {
                Blob::new(MediaType::Other(SPIN_WASM_MEDIA_TYPE.into()), bytes)
            }
            SpinContent::Data(bytes) => {
                Blob::new(MediaType::Other(SPIN_DATA_MEDIA_TYPE.into()), bytes)
            }
        };
        if !layers.iter().any(|l| l.digest == blob.digest) {
            layers.push(blob);
        }
    }
    let locked = Blob::new(MediaType::Other(SPIN_APPLICATION_MEDIA_TYPE.into()), locked);
    let config = ImageConfigurationBuilder::default()
        .os(oci_spec::image::Os::Other("wasip1".to_owned()))
        .architecture(oci_spec::image::Arch::Wasm)
        .config(
            ConfigBuilder::default()
                .labels(HashMap::from([(
                    LOCKED_APP_DIGEST_LABEL.to_owned(),
                    locked.digest.clone(),
                )]))
                .build()
                .map_err(json_err("image config"))?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(Vec::<String>::new())
                .build()
                .map_err(json_err("image rootfs"))?,
        )
        .build()
        .map_err(json_err("image config"))?;
    let config = Blob::new(MediaType::ImageConfig, canonical_json(&config));
    layers.push(locked);
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config.descriptor())
        .layers(layers.iter().map(Blob::descriptor).collect::<Vec<_>>())
        .build()
        .map_err(json_err("image manifest"))?;
    let manifest = Blob::new(MediaType::ImageManifest, canonical_json(&manifest));
    let root = manifest.descriptor();
    let mut blobs = layers;
    blobs.extend([config, manifest]);
    Ok(Image::new(
        reference,
        WasmKind::Component,
        vec![Platform::WASIP1],
        blobs,
        root,
    ))
}
