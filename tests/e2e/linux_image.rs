//! Linux (native) images for the baselines and the negative tests: the runc pods' pause image,
//! busybox, an ELF where a Wasm runtime expects Wasm; and hand-made Wasm images holding what no
//! image builder of ours would write (device nodes, FIFOs, hostile manifests). Registries
//! holding such images are out of reach here, so they are made from files on this machine and
//! written as OCI archives that `ctr images import` and `docker load` read.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The static pause program the harness builds (tests/e2e/pause.c): what a runc pod's sandbox
/// container runs.
pub const PAUSE_BINARY: &str = env!("WASMCELL_E2E_PAUSE");

/// The reference of the pause image [`pause_image`] writes; CRI's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "wasmcell.test/pause:1";

/// The reference of the image [`busybox_image`] writes.
pub const BUSYBOX_IMAGE: &str = "wasmcell.test/busybox:1";

/// One file of a Linux image's single layer.
struct File {
    path: String,
    contents: Contents,
}

enum Contents {
    File {
        bytes: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
    /// A character device (major, minor) or, with `None`, a FIFO.
    Special(Option<(u32, u32)>),
}

/// A one-layer image, linux/amd64 unless [`LinuxImage::platform`] says otherwise.
pub struct LinuxImage {
    reference: String,
    platform: (String, String),
    files: Vec<File>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

impl LinuxImage {
    /// An empty image named `reference`.
    pub fn new(reference: &str) -> LinuxImage {
        LinuxImage {
            reference: reference.to_owned(),
            platform: ("linux".to_owned(), "amd64".to_owned()),
            files: Vec::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
        }
    }

    /// Adds the executable at host path `from` as `path` in the image.
    pub fn executable(self, path: &str, from: &Path) -> Result<LinuxImage> {
        let bytes = std::fs::read(from).with_context(|| format!("read {}", from.display()))?;
        Ok(self.file(path, bytes, 0o755))
    }

    /// Adds a file with these contents and mode.
    pub fn file(mut self, path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> LinuxImage {
        self.files.push(File {
            path: path.to_owned(),
            contents: Contents::File {
                bytes: bytes.into(),
                mode,
            },
        });
        self
    }

    /// Adds a symbolic link `path` -> `target`.
    pub fn symlink(mut self, path: &str, target: &str) -> LinuxImage {
        self.files.push(File {
            path: path.to_owned(),
            contents: Contents::Symlink(target.to_owned()),
        });
        self
    }

    /// Adds a character device node `path` (0666) with these numbers, as an image layer can
    /// hold one (`/dev/zero` is 1, 5).
    pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> LinuxImage {
        self.files.push(File {
            path: path.to_owned(),
            contents: Contents::Special(Some((major, minor))),
        });
        self
    }

    /// Adds a FIFO `path`.
    pub fn fifo(mut self, path: &str) -> LinuxImage {
        self.files.push(File {
            path: path.to_owned(),
            contents: Contents::Special(None),
        });
        self
    }

    /// Sets the image's platform, e.g. `wasip1`, `wasm`.
    pub fn platform(mut self, os: &str, architecture: &str) -> LinuxImage {
        self.platform = (os.to_owned(), architecture.to_owned());
        self
    }

    /// Sets the image's `Entrypoint`.
    pub fn entrypoint(mut self, args: &[&str]) -> LinuxImage {
        self.entrypoint = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Sets the image's `Cmd`.
    pub fn cmd(mut self, args: &[&str]) -> LinuxImage {
        self.cmd = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Writes the image as an OCI archive at `archive`.
    pub fn write(&self, archive: &Path) -> Result<()> {
        let layer = self.layer()?;
        let (os, architecture) = &self.platform;
        let config = serde_json::to_vec(&json!({
            "architecture": architecture,
            "os": os,
            "config": {"Entrypoint": self.entrypoint, "Cmd": self.cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
        }))?;
        let tag = self.reference.rsplit_once(':').map_or("latest", |(_, t)| t);
        let mut root = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
        root["platform"] = json!({"os": os, "architecture": architecture});
        root["annotations"] = json!({
            "io.containerd.image.name": self.reference,
            "org.opencontainers.image.ref.name": tag,
        });
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [root],
        }))?;
        let mut tar = tar::Builder::new(std::fs::File::create(archive)?);
        append(
            &mut tar,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            0o644,
        )?;
        append(&mut tar, "index.json", &index, 0o644)?;
        for blob in [&layer, &config, &manifest] {
            let name = format!("blobs/sha256/{}", hex(blob));
            append(&mut tar, &name, blob, 0o644)?;
        }
        tar.finish()?;
        Ok(())
    }

    fn layer(&self) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut dirs: Vec<&str> = self
            .files
            .iter()
            .filter_map(|f| Some(f.path.trim_start_matches('/').rsplit_once('/')?.0))
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
        }
        for file in &self.files {
            let path = file.path.trim_start_matches('/');
            match &file.contents {
                Contents::File { bytes, mode } => append(&mut tar, path, bytes, *mode)?,
                Contents::Symlink(target) => {
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)?;
                }
                Contents::Special(device) => {
                    let mut header = tar::Header::new_gnu();
                    header.set_mode(0o666);
                    header.set_size(0);
                    match device {
                        Some((major, minor)) => {
                            header.set_entry_type(tar::EntryType::Char);
                            header.set_device_major(*major)?;
                            header.set_device_minor(*minor)?;
                        }
                        None => header.set_entry_type(tar::EntryType::Fifo),
                    }
                    tar.append_data(&mut header, path, std::io::empty())?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }
}

fn append<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(mode);
    header.set_size(bytes.len() as u64);
    tar.append_data(&mut header, path, bytes)?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(bytes))
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": digest(bytes), "size": bytes.len()})
}

/// The pause image (`/pause`, the harness's static pause program) as an archive in `dir`.
pub fn pause_image(dir: &Path) -> Result<PathBuf> {
    let archive = dir.join("pause.tar");
    LinuxImage::new(PAUSE_IMAGE)
        .executable("/pause", Path::new(PAUSE_BINARY))?
        .entrypoint(&["/pause"])
        .write(&archive)?;
    Ok(archive)
}

/// Debian's static busybox as an image (`/bin/busybox`, with `echo`, `sh`, `sleep` and `httpd`
/// linked to it, and a page for httpd in `/www`; `Cmd` echoes a greeting), as an archive in
/// `dir`: the runc baseline of the benchmarks.
pub fn busybox_image(dir: &Path) -> Result<PathBuf> {
    let archive = dir.join("busybox.tar");
    LinuxImage::new(BUSYBOX_IMAGE)
        .executable("/bin/busybox", Path::new("/bin/busybox"))
        .context("busybox (run scripts/setup.sh, which installs busybox-static)")?
        .symlink("/bin/echo", "busybox")
        .symlink("/bin/sh", "busybox")
        .symlink("/bin/sleep", "busybox")
        .symlink("/bin/httpd", "busybox")
        .file("/www/index.html", "Hello from busybox httpd\n", 0o644)
        .cmd(&["/bin/echo", "Hello from busybox"])
        .write(&archive)?;
    Ok(archive)
}
