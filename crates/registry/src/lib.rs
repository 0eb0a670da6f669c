//! OCI distribution for wasmcell: pushing images to registries and pulling them into the local
//! store ([`wasmcell_oci::Layout`]), through `oci-client`.
//!
//! - Pulls are verified: every manifest against the digest that named it, every blob against
//!   its descriptor's digest and size, as it streams into the store, where only verified blobs
//!   land (see `Layout::incoming`). An interrupted download resumes from where it stopped.
//! - Wasm images are checked before anything is downloaded: a Wasm platform, and for a CNCF
//!   artifact exactly one layer and a config of a known media type.
//! - Credentials come from the Docker config file (`$DOCKER_CONFIG/config.json` or
//!   `~/.docker/config.json`, `auths`); loopback registries and `--insecure` ones are spoken to
//!   over plain HTTP, as Docker does.
//! - Transfers show progress bars on a terminal.
#![deny(missing_docs)]

use std::collections::HashSet;
use std::io;
use std::str::FromStr;

use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use wasmcell_oci::archive::{is_wasm_layer, wasm_entry};
use wasmcell_oci::layout::sha256;
use wasmcell_oci::media::WASM_CONFIG_MEDIA_TYPE;
use wasmcell_oci::{Layout, LayoutError, Platform};

/// Errors talking to a registry. Each names the reference and the cause.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error("{reference} is not an image reference: {reason}")]
    Reference {
        /// What was given.
        reference: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The registry refused or failed a request: said once, as Docker says it
    /// (`manifest unknown: 127.0.0.1:5000/app:latest`), not as the client library's error
    /// envelope, which repeats its cause.
    #[error("{}", said(.cause, .reference))]
    Distribution {
        /// The image.
        reference: String,
        /// What the client library reported (not a `source`: [`said`] has said what it holds).
        cause: OciDistributionError,
    },
    /// A blob download stopped before its end.
    #[error(
        "{reference}: the download of {digest} stopped after {have} of {size} bytes ({source}); run the pull again to resume it"
    )]
    Interrupted {
        /// The image.
        reference: String,
        /// The blob.
        digest: String,
        /// Bytes received.
        have: u64,
        /// Bytes expected.
        size: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Content that does not match what named it.
    #[error("{reference}: {what}; nothing of it was stored")]
    Mismatch {
        /// The image.
        reference: String,
        /// What did not match.
        what: String,
    },
    /// The image is not one wasmcell can run.
    #[error("{reference}: {reason}")]
    NotWasm {
        /// The image.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The local store failed.
    #[error("{reference}: {source}")]
    Store {
        /// The image.
        reference: String,
        /// The cause.
        #[source]
        source: LayoutError,
    },
}

/// What a registry error says to the user: the registry's own messages (`manifest unknown`),
/// or what stood in the way of reaching it, with the way out where there is one.
fn said(cause: &OciDistributionError, reference: &str) -> String {
    match cause {
        OciDistributionError::RegistryError { envelope, .. } if !envelope.errors.is_empty() => {
            let messages: Vec<&str> = envelope.errors.iter().map(|e| e.message.as_str()).collect();
            format!("{}: {reference}", messages.join("; "))
        }
        OciDistributionError::ServerError { code, message, .. } => {
            format!(
                "{reference}: the registry answered {code} {}",
                message.trim()
            )
        }
        OciDistributionError::UnauthorizedError { .. } => format!(
            "{reference}: not authorized: log in to the registry (`docker login`; credentials are read from Docker's config.json)"
        ),
        OciDistributionError::RequestError(error) => {
            // reqwest's own layers each repeat the URL: the innermost cause is what happened.
            let mut innermost: &dyn std::error::Error = error;
            while let Some(next) = innermost.source() {
                innermost = next;
            }
            format!(
                "{reference}: cannot reach its registry: {innermost} (is it running? one not on loopback speaks HTTPS unless --insecure)"
            )
        }
        other => format!("{reference}: {other}"),
    }
}

/// Parses an image reference (`[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`).
pub fn parse_reference(text: &str) -> Result<Reference, RegistryError> {
    Reference::from_str(text).map_err(|e| RegistryError::Reference {
        reference: text.to_owned(),
        reason: e.to_string(),
    })
}

/// The manifest media types a pull accepts.
const ACCEPTED: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A connection to one registry, with its credentials.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
}

impl Registry {
    /// A client for the registry of `reference`; plain HTTP for loopback registries and when
    /// `insecure`.
    pub fn new(reference: &Reference, insecure: bool) -> Registry {
        // rustls on ring; a second install (another Registry) is refused and harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = reference.resolve_registry().to_owned();
        let protocol = if insecure || is_loopback(&registry) {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        Registry {
            client: Client::new(ClientConfig {
                protocol,
                // One PUT per blob: the chunked upload's small PATCHes made a 50 MB push six
                // times slower than skopeo's.
                use_monolithic_push: true,
                ..ClientConfig::default()
            }),
            auth: credentials(&registry),
        }
    }

    fn distribution(reference: &Reference) -> impl FnOnce(OciDistributionError) -> RegistryError {
        let reference = reference.whole();
        move |cause| RegistryError::Distribution { reference, cause }
    }

    /// Pushes the image rooted at `root` (a manifest, or an index of manifests) as `reference`,
    /// reading blobs with `blob`; blobs the registry has are not sent again.
    pub async fn push(
        &self,
        reference: &Reference,
        root: &Descriptor,
        blob: &dyn Fn(&str) -> Result<Vec<u8>, RegistryError>,
    ) -> Result<(), RegistryError> {
        let bars = MultiProgress::new();
        let root_bytes = blob(root.digest().as_ref())?;
        if *root.media_type() == MediaType::ImageIndex {
            let index = ImageIndex::from_reader(root_bytes.as_slice()).map_err(|e| {
                RegistryError::NotWasm {
                    reference: reference.whole(),
                    reason: format!("its index is not valid: {e}"),
                }
            })?;
            for child in index.manifests() {
                let digest = child.digest().to_string();
                let target = reference.clone_with_digest(digest.clone());
                self.push_manifest(&target, child, &blob(&digest)?, blob, &bars)
                    .await?;
            }
        }
        self.push_manifest(reference, root, &root_bytes, blob, &bars)
            .await
    }

    /// Pushes one manifest's config and layers, then the manifest (or index) itself.
    async fn push_manifest(
        &self,
        target: &Reference,
        descriptor: &Descriptor,
        bytes: &[u8],
        blob: &dyn Fn(&str) -> Result<Vec<u8>, RegistryError>,
        bars: &MultiProgress,
    ) -> Result<(), RegistryError> {
        if *descriptor.media_type() == MediaType::ImageManifest {
            let manifest =
                ImageManifest::from_reader(bytes).map_err(|e| RegistryError::NotWasm {
                    reference: target.whole(),
                    reason: format!("its manifest is not valid: {e}"),
                })?;
            let mut pushed = HashSet::new();
            for part in std::iter::once(manifest.config()).chain(manifest.layers()) {
                let digest = part.digest().to_string();
                if !pushed.insert(digest.clone()) {
                    continue;
                }
                if self
                    .client
                    .blob_exists(target, &digest)
                    .await
                    .map_err(Registry::distribution(target))?
                {
                    log_blob(bars, &digest, "Layer already exists");
                    continue;
                }
                let bar = bars.add(transfer_bar(&digest, part.size(), "push"));
                let data = blob(&digest)?;
                self.client
                    .push_blob(target, data, &digest)
                    .await
                    .map_err(Registry::distribution(target))?;
                bar.finish();
                log_blob(bars, &digest, "Pushed");
            }
        }
        let content_type = descriptor
            .media_type()
            .to_string()
            .parse()
            .expect("a media type is a valid header value");
        self.client
            .push_manifest_raw(target, bytes.to_vec(), content_type)
            .await
            .map_err(Registry::distribution(target))?;
        Ok(())
    }

    /// Pulls `reference` into `layout` and names it there: the manifest of `platform`, or of
    /// the first Wasm platform, in an index. Returns the manifest's descriptor.
    pub async fn pull(
        &self,
        reference: &Reference,
        layout: &Layout,
        platform: Option<&Platform>,
    ) -> Result<Descriptor, RegistryError> {
        let whole = reference.whole();
        let mismatch = |what: String| RegistryError::Mismatch {
            reference: whole.clone(),
            what,
        };
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &ACCEPTED)
            .await
            .map_err(Registry::distribution(reference))?;
        // What the reference or the registry (Docker-Content-Digest) says it is, against what
        // arrived.
        for wanted in [reference.digest(), Some(digest.as_str())]
            .into_iter()
            .flatten()
        {
            if sha256(&bytes) != wanted {
                return Err(mismatch(format!(
                    "the manifest hashes to {}, not {wanted} as it was named",
                    sha256(&bytes)
                )));
            }
        }
        let is_index = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some());
        let (bytes, descriptor) = if is_index {
            let index =
                ImageIndex::from_reader(&bytes[..]).map_err(|e| RegistryError::NotWasm {
                    reference: whole.clone(),
                    reason: format!("its index is not valid: {e}"),
                })?;
            let entry = wasm_entry(&index, platform).cloned().map_err(|found| {
                let found = found.join(", ");
                RegistryError::NotWasm {
                reference: whole.clone(),
                reason: match platform {
                    Some(p) => format!("it has no {p} image; its platforms are {found}"),
                    None => format!(
                        "it has no Wasm image; its platforms are {found}; build one with `wasmcell build`"
                    ),
                },
            }
            })?;
            let digest = entry.digest().to_string();
            let (manifest, _) = self
                .client
                .pull_manifest_raw(
                    &reference.clone_with_digest(digest.clone()),
                    &self.auth,
                    &ACCEPTED,
                )
                .await
                .map_err(Registry::distribution(reference))?;
            if sha256(&manifest) != digest || manifest.len() as u64 != entry.size() {
                return Err(mismatch(format!(
                    "its index lists manifest {digest} ({} bytes), the registry sent {} ({} bytes)",
                    entry.size(),
                    sha256(&manifest),
                    manifest.len()
                )));
            }
            (manifest.to_vec(), entry)
        } else {
            let descriptor = Descriptor::new(
                MediaType::ImageManifest,
                bytes.len() as u64,
                digest_of(&sha256(&bytes)),
            );
            (bytes.to_vec(), descriptor)
        };
        let manifest =
            ImageManifest::from_reader(bytes.as_slice()).map_err(|e| RegistryError::NotWasm {
                reference: whole.clone(),
                reason: format!("its manifest is not valid: {e}"),
            })?;
        check_runnable(&whole, &manifest)?;

        let bars = MultiProgress::new();
        for part in std::iter::once(manifest.config()).chain(manifest.layers()) {
            self.download(reference, layout, part, &bars).await?;
        }
        let store = |source| RegistryError::Store {
            reference: whole.clone(),
            source,
        };
        layout.write_blob(&bytes).map_err(store)?;
        layout.tag(&whole, descriptor.clone()).map_err(store)?;
        Ok(descriptor)
    }

    /// Streams one blob into the store, resuming a partial download, verifying it at the end.
    async fn download(
        &self,
        reference: &Reference,
        layout: &Layout,
        part: &Descriptor,
        bars: &MultiProgress,
    ) -> Result<(), RegistryError> {
        let digest = part.digest().to_string();
        let whole = reference.whole();
        let store = |source| RegistryError::Store {
            reference: whole.clone(),
            source,
        };
        if layout.has_blob(&digest) {
            log_blob(bars, &digest, "Already exists");
            return Ok(());
        }
        let mut incoming = layout.incoming(part).map_err(store)?;
        let bar = bars.add(transfer_bar(&digest, part.size(), "pull"));
        bar.set_position(incoming.offset());
        if incoming.remaining() > 0 {
            let mut stream = if incoming.offset() > 0 {
                match self
                    .client
                    .pull_blob_stream_partial(reference, &digest.as_str(), incoming.offset(), None)
                    .await
                    .map_err(Registry::distribution(reference))?
                {
                    BlobResponse::Partial(stream) => stream,
                    // The registry ignored the range: start over.
                    BlobResponse::Full(stream) => {
                        incoming.restart().map_err(store)?;
                        bar.set_position(0);
                        stream
                    }
                }
            } else {
                self.client
                    .pull_blob_stream(reference, &digest.as_str())
                    .await
                    .map_err(Registry::distribution(reference))?
            };
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    // oci-client checks the digest at the end of the stream too: what arrived is
                    // wrong, not incomplete, so it is dropped rather than kept to resume.
                    Err(source) if source.get_ref().is_some_and(|e| e.is::<DigestError>()) => {
                        incoming.discard();
                        return Err(RegistryError::Mismatch {
                            reference: whole.clone(),
                            what: format!("blob {digest} does not match its content ({source})"),
                        });
                    }
                    Err(source) => {
                        return Err(RegistryError::Interrupted {
                            reference: whole.clone(),
                            digest: digest.clone(),
                            have: incoming.offset(),
                            size: part.size(),
                            source,
                        });
                    }
                };
                incoming.write(&chunk).map_err(store)?;
                bar.inc(chunk.len() as u64);
            }
        }
        if incoming.remaining() > 0 {
            return Err(RegistryError::Interrupted {
                reference: whole.clone(),
                digest: digest.clone(),
                have: incoming.offset(),
                size: part.size(),
                source: io::Error::from(io::ErrorKind::UnexpectedEof),
            });
        }
        incoming.finish().map_err(store)?;
        bar.finish();
        log_blob(bars, &digest, "Pull complete");
        Ok(())
    }
}

/// Refuses, before any download, what wasmcell cannot run: a config of another media type,
/// an artifact that is not exactly one Wasm layer.
fn check_runnable(reference: &str, manifest: &ImageManifest) -> Result<(), RegistryError> {
    let not_wasm = |reason: String| RegistryError::NotWasm {
        reference: reference.to_owned(),
        reason,
    };
    // Before anything is downloaded: a 10,000-layer manifest or a 100 MB config is refused.
    wasmcell_oci::archive::check_manifest(manifest).map_err(|e| not_wasm(e.to_string()))?;
    match manifest.config().media_type() {
        MediaType::ImageConfig => Ok(()),
        MediaType::Other(t) if t == "application/vnd.docker.container.image.v1+json" => Ok(()),
        // Spin's registry format as Spin 1 wrote it: the locked app as the config.
        MediaType::Other(t) if t == wasmcell_oci::media::SPIN_APPLICATION_MEDIA_TYPE => Ok(()),
        MediaType::Other(t) if t == WASM_CONFIG_MEDIA_TYPE => match manifest.layers().as_slice() {
            [layer] if is_wasm_layer(layer.media_type()) => Ok(()),
            [layer] => Err(not_wasm(format!(
                "its Wasm artifact's layer has media type {}, not application/wasm",
                layer.media_type()
            ))),
            layers => Err(not_wasm(format!(
                "it is a Wasm artifact with {} layers; it must have exactly one, the binary",
                layers.len()
            ))),
        },
        other => Err(not_wasm(format!(
            "its config has media type {other}: neither an OCI image config nor {WASM_CONFIG_MEDIA_TYPE}"
        ))),
    }
}

fn digest_of(digest: &str) -> oci_spec::image::Digest {
    digest.parse().expect("a sha256 digest we computed")
}

/// Without a terminal (the bars hidden, as in CI logs), one line per blob as Docker prints it:
/// `1a1e6b3dda49: Pull complete`.
fn log_blob(bars: &MultiProgress, digest: &str, status: &str) {
    if bars.is_hidden() {
        eprintln!("{}: {status}", digest.get(7..19).unwrap_or(digest));
    }
}

/// A progress bar for one blob; hidden when stderr is not a terminal.
fn transfer_bar(digest: &str, size: u64, verb: &str) -> ProgressBar {
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let short = digest.get(7..19).unwrap_or(digest);
    bar.set_message(format!("{verb} {short}"));
    bar
}

/// Registries Docker treats as insecure without being told: the loopback ones.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(bracketed),
        None => registry.rsplit_once(':').map_or(registry, |(host, _)| host),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The credentials the Docker config file holds for `registry` (`auths`: `auth` as base64
/// `user:password`, or `username` and `password`); anonymous without them. Credential helpers
/// (`credsStore`) are not consulted.
fn credentials(registry: &str) -> RegistryAuth {
    use base64::Engine as _;
    let path = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".docker"))
        })
        .map(|dir| dir.join("config.json"));
    let Some(config) = path
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
    else {
        return RegistryAuth::Anonymous;
    };
    let keys = [
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        if registry == "docker.io" || registry == "index.docker.io" {
            "https://index.docker.io/v1/".to_owned()
        } else {
            registry.to_owned()
        },
    ];
    let Some(entry) = keys.iter().find_map(|key| config["auths"].get(key)) else {
        return RegistryAuth::Anonymous;
    };
    if let Some(decoded) = entry["auth"]
        .as_str()
        .and_then(|auth| base64::engine::general_purpose::STANDARD.decode(auth).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        && let Some((user, password)) = decoded.split_once(':')
    {
        return RegistryAuth::Basic(user.to_owned(), password.to_owned());
    }
    match (entry["username"].as_str(), entry["password"].as_str()) {
        (Some(user), Some(password)) => RegistryAuth::Basic(user.to_owned(), password.to_owned()),
        _ => RegistryAuth::Anonymous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        for registry in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(registry), "{registry}");
        }
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn credentials_come_from_the_docker_config() {
        let dir = tempfile_dir();
        std::fs::write(
            dir.join("config.json"),
            r#"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcmV0"}, "ghcr.io": {"username": "bob", "password": "pw"}}}"#,
        )
        .unwrap();
        // SAFETY: this test is the only one in this binary reading DOCKER_CONFIG.
        unsafe { std::env::set_var("DOCKER_CONFIG", &dir) };
        assert!(
            matches!(credentials("127.0.0.1:5000"), RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret")
        );
        assert!(matches!(credentials("ghcr.io"), RegistryAuth::Basic(u, _) if u == "bob"));
        assert!(matches!(credentials("quay.io"), RegistryAuth::Anonymous));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmcell-registry-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
