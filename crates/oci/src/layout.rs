//! A local image store: an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`),
//! the format `skopeo`, `oras` and containerd's exporter use, so anything can read it.
//!
//! Blobs are content-addressed and verified: one is written under a temporary name while its
//! digest is computed, and renamed into place only when digest and size match, so a corrupted
//! or truncated download is never stored. A partial download is kept apart (`ingest/<hex>`, as
//! containerd keeps its own) and resumed. The index names manifests by reference (`org.opencontainers.image.ref.name`);
//! every change to it holds a lock, so concurrent pulls and removals do not lose entries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType, SCHEMA_VERSION};
use sha2::{Digest as _, Sha256};

/// The annotation naming an index entry (OCI image layout).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// An I/O error.
    #[error("image store {root}: {what}")]
    Io {
        /// The store.
        root: String,
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The index is not valid JSON.
    #[error("image store {root}: index.json is not valid")]
    Index {
        /// The store.
        root: String,
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// Downloaded content does not match its descriptor.
    #[error("{what} {expected} does not match its content ({found}); it was not stored")]
    Mismatch {
        /// What was being stored.
        what: String,
        /// The digest (and size) the descriptor promised.
        expected: String,
        /// What arrived.
        found: String,
    },
    /// A digest this store cannot address.
    #[error("unsupported digest {0}: only sha256 is supported")]
    Digest(String),
}

/// An OCI image layout directory used as a store.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens the store at `root`, creating it if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Layout, LayoutError> {
        let layout = Layout { root: root.into() };
        fs::create_dir_all(layout.root.join("blobs/sha256"))
            .map_err(layout.io("create the store"))?;
        let marker = layout.root.join("oci-layout");
        if !marker.exists() {
            layout.write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(layout)
    }

    /// Where the store lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(&self, what: impl Into<String>) -> impl FnOnce(io::Error) -> LayoutError {
        let (root, what) = (self.root.display().to_string(), what.into());
        move |source| LayoutError::Io { root, what, source }
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
        let dir = path.parent().unwrap_or(&self.root);
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(self.io("write"))?;
        tmp.write_all(bytes).map_err(self.io("write"))?;
        tmp.persist(path)
            .map_err(|e| e.error)
            .map_err(self.io(format!("write {}", path.display())))?;
        Ok(())
    }

    /// The path of the blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, LayoutError> {
        match digest.split_once(':') {
            Some(("sha256", hex))
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok(self.root.join("blobs/sha256").join(hex))
            }
            _ => Err(LayoutError::Digest(digest.to_owned())),
        }
    }

    /// Whether the blob is stored.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Reads a stored blob, checking it against its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(self.io(format!("read blob {digest}")))?;
        let found = sha256(&bytes);
        if found != digest {
            return Err(LayoutError::Mismatch {
                what: "stored blob".to_owned(),
                expected: digest.to_owned(),
                found,
            });
        }
        Ok(bytes)
    }

    /// Stores `bytes` as a blob, returning its digest.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<String, LayoutError> {
        let digest = sha256(bytes);
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            self.write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Starts (or resumes) storing the blob `descriptor` names.
    pub fn incoming(&self, descriptor: &Descriptor) -> Result<Incoming, LayoutError> {
        let digest = descriptor.digest().to_string();
        let path = self.blob_path(&digest)?;
        let partial = self.root.join("ingest").join(&digest[7..]);
        fs::create_dir_all(self.root.join("ingest")).map_err(self.io("create ingest"))?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&partial)
            .map_err(self.io(format!("write blob {digest}")))?;
        // What an earlier, interrupted download left: hashed again, continued after.
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(self.io("read a partial blob"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            have += n as u64;
        }
        if have > descriptor.size() {
            drop(file);
            let _ = fs::remove_file(&partial);
            return self.incoming(descriptor);
        }
        Ok(Incoming {
            layout: self.clone(),
            file,
            hasher,
            have,
            partial,
            path,
            digest,
            size: descriptor.size(),
        })
    }

    fn lock(&self) -> Result<File, LayoutError> {
        let file = File::create(self.root.join("index.json.lock")).map_err(self.io("lock"))?;
        file.lock().map_err(self.io("lock the index"))?;
        Ok(file)
    }

    /// The index: every named manifest.
    pub fn index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.root.join("index.json");
        if !path.exists() {
            return Ok(empty_index());
        }
        let file = File::open(&path).map_err(self.io("read index.json"))?;
        ImageIndex::from_reader(file).map_err(|source| LayoutError::Index {
            root: self.root.display().to_string(),
            source,
        })
    }

    fn save(&self, index: &ImageIndex) -> Result<(), LayoutError> {
        let bytes = serde_json::to_vec_pretty(index).expect("an index serializes");
        self.write_atomic(&self.root.join("index.json"), &bytes)
    }

    /// The descriptor `reference` names, if any.
    pub fn resolve(&self, reference: &str) -> Result<Option<Descriptor>, LayoutError> {
        Ok(self
            .index()?
            .manifests()
            .iter()
            .find(|d| ref_name(d) == Some(reference))
            .cloned())
    }

    /// Names `descriptor` (whose blobs are stored) `reference`, replacing what it named.
    pub fn tag(&self, reference: &str, descriptor: Descriptor) -> Result<(), LayoutError> {
        let _lock = self.lock()?;
        self.save_named(self.index()?, reference, descriptor, None)
    }

    /// Renames what `from` names to `to` (replacing what `to` named), collecting nothing: a
    /// pull in progress beside it keeps its blobs.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), LayoutError> {
        let _lock = self.lock()?;
        let index = self.index()?;
        let named = index.manifests().iter().find(|d| ref_name(d) == Some(from));
        match named.cloned() {
            Some(descriptor) => self.save_named(index, to, descriptor, Some(from)),
            None => Ok(()),
        }
    }

    /// Saves `index` with `descriptor` named `reference`, in place of what had that name (and
    /// of the entry named `replaced`). The caller holds the lock.
    fn save_named(
        &self,
        mut index: ImageIndex,
        reference: &str,
        mut descriptor: Descriptor,
        replaced: Option<&str>,
    ) -> Result<(), LayoutError> {
        let mut annotations = descriptor.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME.to_owned(), reference.to_owned());
        descriptor.set_annotations(Some(annotations));
        let mut manifests: Vec<_> = index
            .manifests()
            .iter()
            .filter(|d| {
                ref_name(d) != Some(reference) && (replaced.is_none() || ref_name(d) != replaced)
            })
            .cloned()
            .collect();
        manifests.push(descriptor);
        index.set_manifests(manifests);
        self.save(&index)
    }

    /// Removes the name `reference`, then every blob no name reaches. Returns the removed
    /// descriptor and the digests of the removed blobs, or `None` if nothing had that name.
    pub fn remove(
        &self,
        reference: &str,
    ) -> Result<Option<(Descriptor, Vec<String>)>, LayoutError> {
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let Some(removed) = index
            .manifests()
            .iter()
            .find(|d| ref_name(d) == Some(reference))
            .cloned()
        else {
            return Ok(None);
        };
        let kept: Vec<_> = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d) != Some(reference))
            .cloned()
            .collect();
        index.set_manifests(kept);
        self.save(&index)?;
        let collected = self.collect_garbage(&index)?;
        Ok(Some((removed, collected)))
    }

    /// Deletes the blobs that `index` does not reach. Partial downloads stay, to resume.
    fn collect_garbage(&self, index: &ImageIndex) -> Result<Vec<String>, LayoutError> {
        let mut reachable = std::collections::HashSet::new();
        let mut pending: Vec<Descriptor> = index.manifests().clone();
        while let Some(descriptor) = pending.pop() {
            let digest = descriptor.digest().to_string();
            if !reachable.insert(digest.clone()) {
                continue;
            }
            let Ok(bytes) = self.read_blob(&digest) else {
                continue;
            };
            match descriptor.media_type() {
                MediaType::ImageIndex => {
                    if let Ok(nested) = ImageIndex::from_reader(bytes.as_slice()) {
                        pending.extend(nested.manifests().iter().cloned());
                    }
                }
                MediaType::ImageManifest => {
                    if let Ok(manifest) =
                        oci_spec::image::ImageManifest::from_reader(bytes.as_slice())
                    {
                        reachable.insert(manifest.config().digest().to_string());
                        for layer in manifest.layers() {
                            reachable.insert(layer.digest().to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        let mut removed = Vec::new();
        let dir = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&dir).map_err(self.io("list blobs"))? {
            let entry = entry.map_err(self.io("list blobs"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            if !reachable.contains(&digest) {
                fs::remove_file(entry.path()).map_err(self.io(format!("remove {name}")))?;
                removed.push(digest);
            }
        }
        Ok(removed)
    }
}

/// A blob being stored: bytes are appended as they arrive and hashed; [`Incoming::finish`]
/// stores it only if it matches its descriptor.
pub struct Incoming {
    layout: Layout,
    file: File,
    hasher: Sha256,
    have: u64,
    partial: PathBuf,
    path: PathBuf,
    digest: String,
    size: u64,
}

impl Incoming {
    /// How many bytes are already here (from an earlier attempt): where to resume.
    pub fn offset(&self) -> u64 {
        self.have
    }

    /// The bytes still missing.
    pub fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.have)
    }

    /// Drops what arrived, for good: it is known to be wrong.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.partial);
    }

    /// Drops what arrived so far, to download from the start.
    pub fn restart(&mut self) -> Result<(), LayoutError> {
        self.file
            .set_len(0)
            .map_err(self.layout.io(format!("restart blob {}", self.digest)))?;
        self.hasher = Sha256::new();
        self.have = 0;
        Ok(())
    }

    /// Appends the next bytes. More than the descriptor's size fails at once.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), LayoutError> {
        self.have += bytes.len() as u64;
        if self.have > self.size {
            let _ = fs::remove_file(&self.partial);
            return Err(LayoutError::Mismatch {
                what: "blob".to_owned(),
                expected: format!("{} ({} bytes)", self.digest, self.size),
                found: format!("more than {} bytes", self.size),
            });
        }
        self.hasher.update(bytes);
        self.file
            .write_all(bytes)
            .map_err(self.layout.io(format!("write blob {}", self.digest)))
    }

    /// Stores the blob if its size and digest match; otherwise removes what arrived.
    pub fn finish(self) -> Result<(), LayoutError> {
        let found = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if self.have != self.size || found != self.digest {
            let _ = fs::remove_file(&self.partial);
            return Err(LayoutError::Mismatch {
                what: "blob".to_owned(),
                expected: format!("{} ({} bytes)", self.digest, self.size),
                found: format!("{found} ({} bytes)", self.have),
            });
        }
        self.file
            .sync_all()
            .map_err(self.layout.io(format!("write blob {}", self.digest)))?;
        fs::rename(&self.partial, &self.path)
            .map_err(self.layout.io(format!("store blob {}", self.digest)))
    }
}

/// The reference an index entry is named by.
pub fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn empty_index() -> ImageIndex {
    ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::<Descriptor>::new())
        .build()
        .expect("an empty index is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(bytes: &[u8]) -> Descriptor {
        Descriptor::new(
            MediaType::Other("application/wasm".into()),
            bytes.len() as u64,
            sha256(bytes).parse::<oci_spec::image::Digest>().unwrap(),
        )
    }

    #[test]
    fn a_blob_is_stored_only_when_it_matches_and_resumes_after_an_interruption() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let good = b"0123456789".to_vec();
        let d = descriptor(&good);

        // Interrupted after 4 bytes: nothing stored, the 4 bytes kept for the next attempt.
        let mut first = layout.incoming(&d).unwrap();
        first.write(&good[..4]).unwrap();
        drop(first);
        assert!(!layout.has_blob(d.digest().as_ref()));
        let mut second = layout.incoming(&d).unwrap();
        assert_eq!(second.offset(), 4);
        second.write(&good[4..]).unwrap();
        second.finish().unwrap();
        assert_eq!(layout.read_blob(d.digest().as_ref()).unwrap(), good);

        // Content that lies about its digest is refused and leaves nothing behind.
        let lie = descriptor(b"what the manifest says");
        let mut incoming = layout.incoming(&lie).unwrap();
        incoming.write(b"something else arrives!").unwrap_err();
        let mut incoming = layout.incoming(&lie).unwrap();
        incoming.write(b"what the manifest sayz").unwrap();
        assert!(matches!(
            incoming.finish(),
            Err(LayoutError::Mismatch { .. })
        ));
        assert!(!layout.has_blob(lie.digest().as_ref()));
        let left: Vec<_> = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let partials: Vec<_> = fs::read_dir(dir.path().join("ingest")).unwrap().collect();
        assert!(partials.is_empty(), "{partials:?}");
    }

    #[test]
    fn tags_replace_and_removal_collects_unreachable_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let layer = layout.write_blob(b"layer").unwrap();
        let config = layout.write_blob(b"{}").unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/wasm", "digest": layer, "size": 5}],
        })
        .to_string();
        let digest = layout.write_blob(manifest.as_bytes()).unwrap();
        let d = Descriptor::new(
            MediaType::ImageManifest,
            manifest.len() as u64,
            digest.parse::<oci_spec::image::Digest>().unwrap(),
        );
        layout.tag("example.com/a:1", d.clone()).unwrap();
        layout.tag("example.com/a:1", d.clone()).unwrap();
        layout.tag("example.com/b:1", d).unwrap();
        assert_eq!(layout.index().unwrap().manifests().len(), 2);
        assert!(layout.resolve("example.com/a:1").unwrap().is_some());

        let (_, removed) = layout.remove("example.com/a:1").unwrap().unwrap();
        assert!(removed.is_empty(), "b still uses every blob: {removed:?}");
        let (_, mut removed) = layout.remove("example.com/b:1").unwrap().unwrap();
        removed.sort();
        let mut expected = vec![layer, config, digest];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(layout.remove("example.com/b:1").unwrap().is_none());
    }
}
