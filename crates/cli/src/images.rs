//! `wasmcell push`, `pull`, `images` and `rmi`: the local image store (an OCI image layout) and
//! registries.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use wasmcell_engine::CompileCache;
use wasmcell_oci::layout::{ref_name, sha256};
use wasmcell_oci::media::IMAGE_NAME_ANNOTATION;
use wasmcell_oci::{Archive, ImageContents, Layout, Platform};
use wasmcell_registry::{Registry, RegistryError, parse_reference};

/// How to reach a registry.
#[derive(Args, Clone, Default)]
pub struct RegistryArgs {
    /// Speak plain HTTP to the registry (loopback registries, 127.0.0.1:5000 and
    /// localhost:5000, always are, as with Docker).
    #[arg(long)]
    pub insecure: bool,
}

/// The local image store: `$WASMCELL_STORE`, else `/var/lib/wasmcell/images` for root, else
/// `$XDG_DATA_HOME/wasmcell/images` or `~/.local/share/wasmcell/images`.
pub fn store() -> Result<Layout> {
    let dir = if let Some(dir) = std::env::var_os("WASMCELL_STORE") {
        PathBuf::from(dir)
    } else if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/lib/wasmcell/images")
    } else {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
            .unwrap_or_else(std::env::temp_dir)
            .join("wasmcell/images")
    };
    Ok(Layout::open(dir)?)
}

/// A runtime for the registry client's requests.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Push an image to a registry.
///
/// SOURCE is an OCI archive (`wasmcell build -o app.tar`, `docker save`), an OCI layout
/// directory, or a name in the local store; REF where it goes, e.g.
/// `127.0.0.1:5000/hello:latest` (defaults to SOURCE when that is a stored name).
#[derive(Args)]
pub struct PushArgs {
    /// An archive file, an OCI layout directory, or a stored image name.
    source: String,
    /// The reference to push to.
    reference: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn push(args: PushArgs) -> Result<()> {
    let path = Path::new(&args.source);
    let target = match (&args.reference, path.exists()) {
        (Some(reference), _) => reference.clone(),
        (None, false) => stored_name(&store()?, &args.source)?,
        // An archive or layout goes where the name it holds says, never to Docker Hub under
        // its file name.
        (None, true) => own_name(path).with_context(|| {
            format!(
                "{} names no registry to push to (Docker Hub is never pushed to unasked): give the reference, `wasmcell push {} REGISTRY/NAME:TAG`",
                args.source, args.source
            )
        })?,
    };
    let target = target.as_str();
    let reference = parse_reference(target)?;
    let registry = Registry::new(&reference, args.registry.insecure);
    let runtime = runtime()?;
    if path.is_file() {
        let files = Archive::files(path)?;
        let root = only_entry(&files.index()?, &args.source)?;
        let blob = |digest: &str| Archive::blob(&files, digest).map_err(|e| not_found(target, e));
        runtime.block_on(registry.push(&reference, &root, &blob))?;
    } else {
        let (layout, root) = if path.is_dir() {
            let layout = Layout::open(path)?;
            let root = only_entry(&layout.index()?, &args.source)?;
            (layout, root)
        } else {
            let layout = store()?;
            let name = stored_name(&layout, &args.source)?;
            let root = layout.resolve(&name)?.with_context(|| {
                format!("{} is neither a file, a directory nor an image in the local store (`wasmcell images`)", args.source)
            })?;
            (layout, root)
        };
        let blob = |digest: &str| layout.read_blob(digest).map_err(|e| not_found(target, e));
        runtime.block_on(registry.push(&reference, &root, &blob))?;
    }
    println!("pushed {reference}");
    Ok(())
}

/// The name an archive or layout gives its one image (containerd's and Docker's annotation),
/// when it names a registry other than Docker Hub's: one a build named for where it goes.
fn own_name(path: &Path) -> Option<String> {
    let index = match path.is_dir() {
        true => Layout::open(path).ok()?.index().ok()?,
        false => Archive::files(path).ok()?.index().ok()?,
    };
    let [entry] = index.manifests().as_slice() else {
        return None;
    };
    let annotations = entry.annotations().as_ref()?;
    let name = annotations.get(IMAGE_NAME_ANNOTATION)?;
    let registry = parse_reference(name).ok()?.resolve_registry().to_owned();
    let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"].contains(&registry.as_str());
    (!hub).then(|| name.clone())
}

fn not_found(reference: &str, cause: impl std::fmt::Display) -> RegistryError {
    RegistryError::NotWasm {
        reference: reference.to_owned(),
        reason: format!("a blob to push cannot be read: {cause}"),
    }
}

/// The one image an archive or layout names, without its annotations.
fn only_entry(index: &ImageIndex, source: &str) -> Result<Descriptor> {
    match index.manifests().as_slice() {
        [entry] => {
            let mut entry = entry.clone();
            entry.set_annotations(None);
            Ok(entry)
        }
        entries => bail!(
            "{source} holds {} images; push needs exactly one",
            entries.len()
        ),
    }
}

/// Pull an image from a registry into the local store.
///
/// Only the Wasm image is fetched (the first Wasm platform of a multi-platform index, or the
/// one `--platform` names). Every blob is checked against its digest; an interrupted pull
/// resumes where it stopped when run again. The Wasm binaries it holds are then compiled into
/// the compile cache, so its first run starts warm (as root, the cache the shims on this node
/// use: `wasmcell pull` ahead of `ctr run` or a pod warms their first start too).
#[derive(Args)]
pub struct PullArgs {
    /// The image, e.g. 127.0.0.1:5000/hello:latest.
    reference: String,
    /// The platform to pull from a multi-platform image, e.g. wasip1/wasm.
    #[arg(long)]
    platform: Option<Platform>,
    /// Do not compile the image's Wasm binaries ahead of its first run.
    #[arg(long)]
    no_compile: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn pull(args: PullArgs) -> Result<()> {
    let name = crate::names::familiar(&args.reference)?;
    let descriptor = pull_into_store(&args.reference, args.platform.as_ref(), &args.registry)?;
    println!("pulled {name} ({})", descriptor.digest());
    if !args.no_compile {
        let image = ImageContents::from_layout(&store()?, &name)?;
        crate::precompile::image(&image, &name)?;
    }
    Ok(())
}

/// Pulls `reference` into the store and names it there by `reference` as written.
pub fn pull_into_store(
    reference: &str,
    platform: Option<&Platform>,
    registry: &RegistryArgs,
) -> Result<Descriptor> {
    let name = crate::names::familiar(reference)?;
    let parsed = parse_reference(reference)?;
    let store = store()?;
    let client = Registry::new(&parsed, registry.insecure);
    let descriptor = runtime()?.block_on(client.pull(&parsed, &store, platform))?;
    if parsed.whole() != name {
        // Kept under its familiar name alone (`myapp:latest`, not
        // `docker.io/library/myapp:latest`), as `docker images` shows it.
        store.rename(&parsed.whole(), &name)?;
    }
    Ok(descriptor)
}

/// List the images in the local store.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  wasmcell images\n  wasmcell rmi $(wasmcell images -q)     # remove every image\n  wasmcell images --format json | jq -r .Repository"
)]
pub struct ImagesArgs {
    /// Print only the images' names, one a line (what `rmi` takes, as `docker images -q`
    /// prints what `docker rmi` takes).
    #[arg(long, short = 'q')]
    quiet: bool,
    /// `table`, or `json`: one JSON object a line per image, as `docker images --format json`
    /// prints them (Repository, Tag, Digest, Size, and Platform, Format and Bytes).
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

/// `images --format`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

pub fn images(args: ImagesArgs) -> Result<()> {
    let store = store()?;
    let table = args.format == ListFormat::Table && !args.quiet;
    if table {
        println!(
            "{:<48} {:<24} {:<9} {:<19} {:>10}",
            "REFERENCE", "PLATFORM", "FORMAT", "DIGEST", "SIZE"
        );
    }
    for entry in store.index()?.manifests() {
        let name = ref_name(entry).unwrap_or("<none>");
        if args.quiet {
            // What `rmi` takes: an image with no name has nothing to give it.
            if ref_name(entry).is_some() {
                println!("{name}");
            }
            continue;
        }
        let (platform, format, size) =
            describe(&store, entry).unwrap_or_else(|_| ("?".into(), "?".into(), 0));
        let digest = entry.digest().to_string();
        if table {
            println!(
                "{name:<48} {platform:<24} {format:<9} {:<19} {:>10}",
                digest.get(..19).unwrap_or(&digest),
                human(size)
            );
            continue;
        }
        // Docker's split: a digest after `@`, else the tag after the last `:` that is not
        // the registry's port.
        let (repository, tag) = match (name.split_once('@'), name.rsplit_once(':')) {
            (Some((repository, _)), _) => (repository, ""),
            (None, Some((repository, tag))) if !tag.contains('/') => (repository, tag),
            _ => (name, ""),
        };
        let line = serde_json::json!({
            "Repository": repository,
            "Tag": tag,
            "Digest": digest,
            "Size": human(size),
            "Bytes": size,
            "Platform": platform,
            "Format": format,
        });
        println!("{line}");
    }
    Ok(())
}

/// An entry's platform(s), format and total size (of what is stored).
fn describe(store: &Layout, entry: &Descriptor) -> Result<(String, String, u64)> {
    let bytes = store.read_blob(entry.digest().as_ref())?;
    if *entry.media_type() == MediaType::ImageIndex {
        let index = ImageIndex::from_reader(bytes.as_slice())?;
        let (mut platforms, mut format, mut size) = (Vec::new(), String::new(), entry.size());
        for child in index.manifests() {
            let Ok((platform, kind, bytes)) = describe(store, child) else {
                continue;
            };
            platforms.push(platform);
            format = kind;
            size += bytes;
        }
        return Ok((platforms.join(","), format, size));
    }
    let manifest = ImageManifest::from_reader(bytes.as_slice())?;
    let format = match manifest.config().media_type() {
        MediaType::ImageConfig => "image",
        _ => "artifact",
    };
    let size = entry.size()
        + manifest.config().size()
        + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
    let platform = entry
        .platform()
        .as_ref()
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .or_else(|| {
            ImageContents::from_layout(store, ref_name(entry)?)
                .ok()
                .map(|i| i.platform.to_string())
        })
        .unwrap_or_default();
    Ok((platform, format.to_owned(), size))
}

/// A size for people: "1.5 GiB", "12.3 MiB".
pub(crate) fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The name `written` has in the local store: its familiar form (`myapp` is `myapp:latest`),
/// or, for a name stored before names were normalised, as written.
pub(crate) fn stored_name(store: &Layout, written: &str) -> Result<String> {
    let familiar = crate::names::familiar(written)?;
    if store.resolve(&familiar)?.is_none() && store.resolve(written)?.is_some() {
        return Ok(written.to_owned());
    }
    Ok(familiar)
}

/// Remove images from the local store.
///
/// Blobs no other image uses are deleted, and so are the compiled forms of binaries no other
/// stored image holds.
#[derive(Args)]
pub struct RmiArgs {
    /// The images to remove.
    #[arg(required = true)]
    references: Vec<String>,
}

pub fn rmi(args: RmiArgs) -> Result<()> {
    let store = store()?;
    let cache = CompileCache::new(CompileCache::default_dir());
    for written in &args.references {
        let reference = &stored_name(&store, written)?;
        let module = ImageContents::from_layout(&store, reference)
            .ok()
            .and_then(|image| image.entry_module())
            .map(|bytes| sha256(&bytes));
        let Some((_, blobs)) = store.remove(reference)? else {
            bail!("no image {reference} in the local store (`wasmcell images` lists them)");
        };
        let still_used = store.index()?.manifests().iter().any(|entry| {
            ref_name(entry)
                .and_then(|name| ImageContents::from_layout(&store, name).ok())
                .and_then(|image| image.entry_module())
                .is_some_and(|bytes| Some(sha256(&bytes)) == module)
        });
        let compiled = match module {
            Some(module) if !still_used => cache.forget(&module[7..])?,
            _ => 0,
        };
        println!(
            "removed {reference} ({} blobs, {compiled} compiled artifacts freed)",
            blobs.len()
        );
    }
    Ok(())
}
