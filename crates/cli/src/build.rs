//! `wasmcell build`: a `.wasm`, or a Spin app, into an OCI image.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use wasmcell_oci::{
    BuildOptions, Format, ImageContents, Layout, Platform, SpinContent, build_app_image,
    build_image, build_spin_image,
};
use wasmcell_registry::{Registry, parse_reference};

use crate::images::{RegistryArgs, store};

/// Package a Wasm module or component as a container image.
///
/// Two formats: `image` (default), a Docker-compatible image holding the binary at /<file name>
/// with an Entrypoint naming it, like a Dockerfile `COPY app.wasm /app.wasm` +
/// `ENTRYPOINT ["/app.wasm"]`, which every container runtime can unpack; and `artifact`, the CNCF
/// Wasm OCI artifact (the binary as its one `application/wasm` layer, a
/// `application/vnd.wasm.config.v0+json` config).
///
/// With --spin, the positional names a Spin app's spin.toml: with `--format image` its
/// directory becomes the image's one layer (platform wasi/wasm, as a Dockerfile `COPY . /`
/// makes it, less the local stores `wasmcell up` keeps in `.spin/`); with `--format artifact`, the image is in Spin's registry format, as `spin
/// registry push` makes it (the locked app, each component and file a layer). The spin
/// runtimes and `wasmcell up IMAGE` run both.
///
/// Where it goes: an OCI archive (`-o app.tar`: `ctr images import --all-platforms app.tar`,
/// `docker load -i app.tar`), an OCI layout directory (`-o dir/`), a registry (`--push`), and
/// always the local store (`wasmcell images`, `wasmcell run REF`).
#[derive(Args)]
pub struct BuildArgs {
    /// The .wasm file (core module or component), or with --spin the app's spin.toml.
    wasm: PathBuf,
    /// Build a Spin app: the positional is its spin.toml (see --format for the two kinds of
    /// image).
    #[arg(long, conflicts_with = "include")]
    spin: bool,
    /// The image name, e.g. example.com/hello:latest.
    #[arg(long, short = 't')]
    tag: String,
    /// Also write the image to FILE as an OCI archive, or into DIR/ (a trailing slash, or an
    /// existing directory) as an OCI layout.
    #[arg(long, short = 'o', value_name = "FILE|DIR/")]
    output: Option<PathBuf>,
    /// image (Docker-compatible) or artifact (CNCF Wasm OCI artifact; with --spin, Spin's
    /// registry format).
    #[arg(long, value_enum, default_value_t = FormatArg::Image)]
    format: FormatArg,
    /// The platform to declare, OS/ARCH with OS wasi|wasip1|wasip2|wasip3 and ARCH wasm|wasm32;
    /// repeat it for one index that any of them pulls
    /// [default: wasi/wasm, as Docker's guide types it; for an artifact wasip1/wasm for
    /// modules, wasip2/wasm for components]
    #[arg(long)]
    platform: Vec<Platform>,
    /// Copy a host directory into the image: HOST_DIR[:IMAGE_DIR] (repeatable; IMAGE_DIR defaults
    /// to /). For assets and config files the module reads; symlinks are kept as symlinks.
    /// Image format only.
    #[arg(long, value_name = "HOST_DIR[:IMAGE_DIR]")]
    include: Vec<String>,
    /// Push the image to its registry (the tag names it).
    #[arg(long)]
    push: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Do not compile the image's Wasm binaries into the compile cache ahead of its first run.
    #[arg(long)]
    no_compile: bool,
}

/// The `--format` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Image,
    Artifact,
}

pub fn build(mut args: BuildArgs) -> Result<()> {
    // Checked and kept as Docker names it (`myapp` is `myapp:latest`), before any work.
    args.tag = crate::names::familiar(&args.tag)?;
    // In the image itself (the name containerd and Docker import it under) the full name, as
    // containerd names every image: `docker.io/library/myapp:latest` for `myapp`.
    let full = parse_reference(&args.tag)?.whole();
    let format = match args.format {
        FormatArg::Image => Format::Image,
        FormatArg::Artifact => Format::Artifact,
    };
    if args.spin {
        let dir = spin_app_dir(&args.wasm)?;
        let options = BuildOptions {
            reference: full.clone(),
            platforms: args.platform.clone(),
            file_name: wasmcell_spin::MANIFEST.to_owned(),
            include: Vec::new(),
            format,
        };
        let image = match format {
            Format::Image => build_app_image(
                &dir,
                wasmcell_spin::MANIFEST,
                &[wasmcell_spin::LOCAL_STATE],
                &options,
            )?,
            Format::Artifact => spin_registry_image(&dir, &full)?,
        };
        let what = format!("Spin app {}", dir.display());
        return deliver(&args, &image, &what, Workload::SpinApp);
    }
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
        reference: full,
        platforms: args.platform.clone(),
        file_name,
        include,
        format,
    };
    let image = build_image(&wasm, &options)?;
    let workload = match wasmcell_engine::serves_http(&wasm) {
        true => Workload::Server,
        false => Workload::Command,
    };
    let what = format!("{} {}", image.kind, options.file_name);
    deliver(&args, &image, &what, workload)
}

/// What an image runs, for the commands `build` suggests.
#[derive(Clone, Copy)]
enum Workload {
    Command,
    /// A component exporting a wasi:http handler.
    Server,
    SpinApp,
}

/// The app in `dir` locked, in Spin's registry format (as `spin registry push` makes it).
fn spin_registry_image(dir: &Path, tag: &str) -> Result<wasmcell_oci::Image> {
    let locked =
        wasmcell_spin::lock(dir).map_err(|why| anyhow::anyhow!("{}: {why}", dir.display()))?;
    let content = locked
        .content
        .into_iter()
        .map(|(kind, bytes)| match kind {
            wasmcell_spin::ContentKind::Wasm => SpinContent::Wasm(bytes),
            wasmcell_spin::ContentKind::Data => SpinContent::Data(bytes),
        })
        .collect();
    Ok(build_spin_image(tag, locked.json, content)?)
}

/// The directory of a Spin app, checked: its manifest parses and every component's source is
/// there, so a broken app fails here rather than in a container.
fn spin_app_dir(manifest: &Path) -> Result<PathBuf> {
    anyhow::ensure!(
        manifest
            .file_name()
            .is_some_and(|n| n == wasmcell_spin::MANIFEST),
        "--spin {}: give the app's {}",
        manifest.display(),
        wasmcell_spin::MANIFEST
    );
    let dir = manifest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let parsed = wasmcell_spin::Manifest::parse(&text, &manifest.display().to_string())?;
    for (id, component) in &parsed.components {
        if let wasmcell_spin::manifest::SourceDecl::Path(source) = &component.source {
            anyhow::ensure!(
                dir.join(source).is_file(),
                "{}: [component.{id}] source `{source}` is not in the app's directory: build the app first",
                manifest.display(),
            );
        }
    }
    Ok(dir)
}

/// Stores the image locally, writes or pushes it as the flags say, and prints the commands
/// that run what it made.
fn deliver(
    args: &BuildArgs,
    image: &wasmcell_oci::Image,
    what: &str,
    workload: Workload,
) -> Result<()> {
    let store = store()?;
    image.store_as(&store, &args.tag)?;
    let platforms: Vec<_> = image.platforms.iter().map(ToString::to_string).collect();
    println!(
        "built {} ({what}, platform {}) into the local store\n  {} {}",
        args.tag,
        platforms.join(", "),
        image.root.media_type(),
        image.root.digest(),
    );
    if let Some(output) = &args.output {
        if output.is_dir() || output.as_os_str().to_string_lossy().ends_with('/') {
            image.store(&Layout::open(output)?)?;
            println!("  and into the OCI layout {}", output.display());
        } else {
            write_archive(image, output)?;
            println!("  and into {}", output.display());
        }
    }
    if args.push {
        let reference = parse_reference(&args.tag)?;
        let registry = Registry::new(&reference, args.registry.insecure);
        let blob = |digest: &str| {
            let found = image.blobs.iter().find(|b| b.digest == digest);
            Ok(found.expect("the image's own blobs").bytes.clone())
        };
        crate::images::runtime()?.block_on(registry.push(&reference, &image.root, &blob))?;
        println!("  and pushed to {reference}");
    }
    if !args.no_compile {
        let built = ImageContents::from_layout(&store, &args.tag)?;
        crate::precompile::image(&built, &args.tag)?;
    }
    print!("{}", next_steps(args, &platforms[0], workload));
    Ok(())
}

/// The commands that run the image just built, as they must be typed: `wasmcell` always; for
/// the image format, `ctr` and `docker` after loading the archive (`-o`) or, for Docker, from
/// the registry it was pushed to. The CNCF artifact is for registries and `wasmcell`: ctr and
/// Docker cannot run one.
fn next_steps(args: &BuildArgs, platform: &str, workload: Workload) -> String {
    let tag = &args.tag;
    // ctr takes names as containerd keeps them, whole; docker and wasmcell take the short form.
    let whole = parse_reference(tag).map_or_else(|_| tag.clone(), |r| r.whole());
    let (wasmcell, runtime, publish) = match workload {
        Workload::Command => (
            format!("wasmcell run {tag}"),
            "io.containerd.wasmtime.v1",
            "",
        ),
        Workload::Server => (
            format!("wasmcell run -p 8080:8080 {tag}"),
            "io.containerd.wasmtime.v1",
            "-p 8080:8080 ",
        ),
        Workload::SpinApp => (
            format!("wasmcell up {tag}"),
            "io.containerd.spin.v2",
            "-p 8080:80 ",
        ),
    };
    let mut steps = format!("run it:\n  {wasmcell}\n");
    let image_format = matches!(args.format, FormatArg::Image);
    let archive = args
        .output
        .as_ref()
        .filter(|o| !(o.is_dir() || o.as_os_str().to_string_lossy().ends_with('/')));
    if let (true, Some(archive)) = (image_format, archive) {
        let id = tag
            .rsplit('/')
            .next()
            .and_then(|last| last.split([':', '@']).next())
            .unwrap_or("app");
        let detach = match workload {
            Workload::Command => "--rm",
            _ => "-d --net-host",
        };
        let archive = archive.display();
        steps.push_str(&format!(
            "  ctr images import --all-platforms {archive}\n  ctr run {detach} --runtime {runtime} {whole} {id}\n  docker load -i {archive}\n"
        ));
    }
    if image_format && (archive.is_some() || args.push) {
        let detach = match workload {
            Workload::Command => "--rm ",
            _ => "-d ",
        };
        steps.push_str(&format!(
            "  docker run {detach}{publish}--runtime={runtime} --platform={platform} {tag}\n"
        ));
    }
    steps
}

/// Writes `image` to `path` as an OCI archive: beside it first, then renamed into place, never
/// a half-written archive.
fn write_archive(image: &wasmcell_oci::Image, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(".".as_ref());
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write to {}", dir.display()))?;
    image.write_archive(std::io::BufWriter::new(tmp.as_file_mut()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
