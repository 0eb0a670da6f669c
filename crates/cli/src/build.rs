//! `wasmcell build`: a `.wasm` into an OCI image archive.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use wasmcell_oci::{BuildOptions, Platform, build_archive};

/// Package a Wasm module or component as a container image (an OCI archive).
///
/// The image holds the binary at /<file name> with an Entrypoint naming it, like a Dockerfile
/// `COPY app.wasm /app.wasm` + `ENTRYPOINT ["/app.wasm"]`. Load it with
/// `ctr images import --all-platforms FILE` or `docker load -i FILE`.
#[derive(Args)]
pub struct BuildArgs {
    /// The .wasm file (core module or component).
    wasm: PathBuf,
    /// The image name, e.g. example.com/hello:latest.
    #[arg(long, short = 't')]
    tag: String,
    /// Where to write the OCI archive.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// The platform to declare, OS/ARCH with OS wasi|wasip1|wasip2 and ARCH wasm|wasm32
    /// [default: wasip1/wasm for modules, wasip2/wasm for components]
    #[arg(long)]
    platform: Option<Platform>,
    /// Copy a host directory into the image: HOST_DIR[:IMAGE_DIR] (repeatable; IMAGE_DIR defaults
    /// to /). For assets and config files the module reads; symlinks are kept as symlinks.
    #[arg(long, value_name = "HOST_DIR[:IMAGE_DIR]")]
    include: Vec<String>,
}

pub fn build(args: BuildArgs) -> Result<()> {
    let wasm = std::fs::read(&args.wasm)
        .with_context(|| format!("cannot read {}", args.wasm.display()))?;
    let file_name = args
        .wasm
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", args.wasm.display()))?
        .to_owned();
    let include = args
        .include
        .iter()
        .map(|spec| {
            let (host, dest) = spec.split_once(':').unwrap_or((spec, "/"));
            anyhow::ensure!(
                Path::new(host).is_dir(),
                "--include {spec}: {host} is not a directory"
            );
            Ok((PathBuf::from(host), dest.to_owned()))
        })
        .collect::<Result<_>>()?;
    let options = BuildOptions {
        reference: args.tag.clone(),
        platform: args.platform,
        file_name,
        include,
    };
    // Written beside the destination and renamed into place: never a half-written archive.
    let dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(".".as_ref());
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write to {}", dir.display()))?;
    let built = build_archive(&wasm, &options, std::io::BufWriter::new(tmp.as_file_mut()))?;
    tmp.persist(&args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "built {} ({} {}, platform {}) into {}\n  manifest {}\n  next: ctr images import --all-platforms {}",
        args.tag,
        built.kind,
        options.file_name,
        built.platform,
        args.output.display(),
        built.manifest_digest,
        args.output.display(),
    );
    Ok(())
}
