//! Wasm layers that are not tars. Images built by runwasi's and wasm-pkg's tools carry the
//! binary itself as a layer (`application/wasm`, `application/vnd.wasm.content.layer.v1+wasm`,
//! `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`); containerd does not unpack
//! those, so such a container's rootfs has no entrypoint file. The shim then reads the layer
//! from containerd's content store (its gRPC API, at the address containerd gave the shim) and
//! writes it into the container's rootfs where the entrypoint names it. An image in Spin's
//! registry format is read the same way, every layer, for the Spin runtime to rebuild the app.

use std::io::Write;
use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
use containerd_client::tonic::Request;
use containerd_client::{Client, with_namespace};
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use wasmcell_oci::SpinImage;
use wasmcell_oci::archive::{check_manifest, is_wasm_layer, wasm_entry};
use wasmcell_oci::layout::sha256;
use wasmcell_oci::spin::is_spin_manifest;

/// Why a Wasm layer could not be brought into the rootfs.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the Wasm content of container {container}'s image from containerd: {reason}")]
pub struct ContentError {
    container: String,
    reason: String,
}

/// containerd's content store, as this shim's containers' images see it.
#[derive(Debug, Clone)]
pub struct ImageContent {
    /// containerd's gRPC socket.
    address: String,
    namespace: String,
}

impl ImageContent {
    /// The content store behind `address` (the shim's `-address`), in `namespace`.
    pub fn new(address: String, namespace: String) -> ImageContent {
        ImageContent { address, namespace }
    }

    /// Writes the Wasm layer of container `id`'s image at `entry` (relative to `rootfs`) if
    /// the rootfs does not have that file and the image has exactly one such layer. Returns
    /// whether it wrote it; an image without Wasm layers is left to fail as any other would.
    pub async fn materialize(
        &self,
        id: &str,
        rootfs: &Path,
        entry: &str,
    ) -> Result<bool, ContentError> {
        let entry = entry.trim_start_matches('/');
        let root =
            Dir::open_ambient_dir(rootfs, ambient_authority()).map_err(|e| self.error(id, e))?;
        if entry.is_empty() || root.exists(entry) || self.address.is_empty() {
            return Ok(false);
        }
        let Some(wasm) = self.wasm_layer(id).await? else {
            return Ok(false);
        };
        if let Some(parent) = Path::new(entry)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            root.create_dir_all(parent).map_err(|e| self.error(id, e))?;
        }
        let mut file = root
            .create(entry)
            .map_err(|e| self.error(id, format!("write /{entry} in the rootfs: {e}")))?;
        file.write_all(&wasm).map_err(|e| self.error(id, e))?;
        tracing::info!(
            container = id,
            entry,
            bytes = wasm.len(),
            "wasm layer written into the rootfs"
        );
        Ok(true)
    }

    fn error(&self, container: &str, reason: impl std::fmt::Display) -> ContentError {
        ContentError {
            container: container.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The bytes of the image's one Wasm layer, verified; `None` when it has none.
    async fn wasm_layer(&self, id: &str) -> Result<Option<Vec<u8>>, ContentError> {
        let Some((client, image, manifest)) = self.manifest(id).await? else {
            return Ok(None);
        };
        let layers: Vec<_> = manifest
            .layers()
            .iter()
            .filter(|l| is_wasm_layer(l.media_type()))
            .collect();
        match layers.as_slice() {
            [] => Ok(None),
            [layer] => Ok(Some(
                self.read(&client, layer.digest().as_ref())
                    .await
                    .map_err(|e| self.error(id, e))?,
            )),
            many => Err(self.error(
                id,
                format!(
                    "image {image} has {} Wasm layers; one binary per image",
                    many.len()
                ),
            )),
        }
    }

    /// The Spin app of container `id`'s image if the image is in Spin's registry format: its
    /// locked app and every layer, read (and verified) from the content store.
    pub async fn spin_image(&self, id: &str) -> Result<Option<SpinImage>, ContentError> {
        if self.address.is_empty() {
            return Ok(None);
        }
        let Some((client, _, manifest)) = self.manifest(id).await? else {
            return Ok(None);
        };
        if !is_spin_manifest(&manifest) {
            return Ok(None);
        }
        check_manifest(&manifest).map_err(|e| self.error(id, e))?;
        let needed = SpinImage::needed(&manifest).map_err(|e| self.error(id, e))?;
        let mut blobs = Vec::with_capacity(needed.len());
        for descriptor in needed {
            let bytes = self.read(&client, descriptor.digest().as_ref()).await;
            blobs.push((descriptor, bytes.map_err(|e| self.error(id, e))?));
        }
        let image = SpinImage::from_blobs(blobs).map_err(|e| self.error(id, e))?;
        tracing::info!(
            container = id,
            layers = manifest.layers().len(),
            "Spin app read from the content store"
        );
        Ok(Some(image))
    }

    /// The manifest of container `id`'s image (through an index, the Wasm platform's), with
    /// the client that read it and the image's name; `None` for a container without an image.
    async fn manifest(
        &self,
        id: &str,
    ) -> Result<Option<(Client, String, ImageManifest)>, ContentError> {
        let err = |e: &dyn std::fmt::Display| self.error(id, e);
        let client = Client::from_path(&self.address)
            .await
            .map_err(|e| err(&e))?;
        let container = client
            .containers()
            .get(with_namespace!(
                GetContainerRequest { id: id.to_owned() },
                self.namespace
            ))
            .await
            .map_err(|e| err(&e))?
            .into_inner()
            .container
            .ok_or_else(|| err(&"containerd returned no container"))?;
        if container.image.is_empty() {
            return Ok(None);
        }
        let image = client
            .images()
            .get(with_namespace!(
                GetImageRequest {
                    name: container.image.clone()
                },
                self.namespace
            ))
            .await
            .map_err(|e| err(&e))?
            .into_inner()
            .image
            .and_then(|image| image.target)
            .ok_or_else(|| err(&format!("image {} has no target", container.image)))?;
        let mut target = (image.media_type, image.digest);
        for _ in 0..4 {
            let bytes = self.read(&client, &target.1).await.map_err(|e| err(&e))?;
            if target.0 == MediaType::ImageIndex.to_string() {
                let index = ImageIndex::from_reader(bytes.as_slice()).map_err(|e| err(&e))?;
                let Ok(wasm) = wasm_entry(&index, None) else {
                    return Ok(None);
                };
                target = (wasm.media_type().to_string(), wasm.digest().to_string());
                continue;
            }
            let manifest = ImageManifest::from_reader(bytes.as_slice()).map_err(|e| err(&e))?;
            return Ok(Some((client, container.image, manifest)));
        }
        Err(err(&"image indexes nest too deep"))
    }

    /// A blob from the content store, checked against its digest.
    async fn read(&self, client: &Client, digest: &str) -> Result<Vec<u8>, String> {
        let request = ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        };
        let mut stream = client
            .content()
            .read(with_namespace!(request, self.namespace))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(|e| e.to_string())? {
            bytes.extend_from_slice(&chunk.data);
        }
        if sha256(&bytes) != digest {
            return Err(format!(
                "blob {digest} in the content store does not match its digest"
            ));
        }
        Ok(bytes)
    }
}
