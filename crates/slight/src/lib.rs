//! SpiderLightning (`slight`) apps as plain data: `slightfile.toml` resolved into a
//! [`SlightApp`], the capabilities a core module built against slight's interfaces is granted.
//! The shim reads one from a container's rootfs and `wasmcell run --slightfile` from a file;
//! the engine runs it. Nothing here knows wasmtime or containerd.
#![deny(missing_docs)]

mod app;
pub mod slightfile;

use std::path::Path;

use wasmcell_oci::rootfs::{self, ReadError};

pub use app::{Configs, Grant, SECRETS_KEY, SlightApp, Store, encrypt_secret};
pub use slightfile::{CapabilityName, Resource, Slightfile, SlightfileError};

/// The slightfile's name at the root of an app's directory (or a container's rootfs).
pub const SLIGHTFILE: &str = "slightfile.toml";

/// The module slight runs, beside the slightfile; the image's entrypoint is not used.
pub const APP: &str = "app.wasm";

/// Why an app cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The slightfile cannot be read at all.
    #[error("cannot read {file}: {source}")]
    Read {
        /// Its name as the user knows it.
        file: String,
        /// Why.
        source: ReadError,
    },
    /// The slightfile is wrong.
    #[error(transparent)]
    Slightfile(#[from] SlightfileError),
    /// There is no module beside it.
    #[error(
        "{app} is missing: SpiderLightning runs /{APP} beside /{SLIGHTFILE} (the image's entrypoint is not used); copy the module there"
    )]
    MissingApp {
        /// Its name as the user knows it.
        app: String,
    },
}

/// Reads `slightfile.toml` at the root of `dir` (a container's rootfs, never through a symlink
/// out of it) and resolves it with the container's environment (`env`), checking that
/// `app.wasm` is there.
pub fn load(dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<SlightApp, Error> {
    let shown = format!("/{SLIGHTFILE}");
    let read = |source: ReadError| Error::Read {
        file: shown.clone(),
        source,
    };
    let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .map_err(|e| read(e.into()))?;
    let text = rootfs::read_config(&root, Path::new(SLIGHTFILE)).map_err(read)?;
    let file = Slightfile::parse(&text, &shown)?;
    let app = SlightApp::resolve(&file, &shown, env)?;
    if !root.metadata(APP).is_ok_and(|m| m.is_file()) {
        return Err(Error::MissingApp {
            app: format!("/{APP}"),
        });
    }
    Ok(app)
}

/// Reads the slightfile at `path` (a file given on the command line) and resolves it with the
/// app's environment (`env`).
pub fn from_file(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<SlightApp, Error> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        file: shown.clone(),
        source: source.into(),
    })?;
    let file = Slightfile::parse(&text, &shown)?;
    Ok(SlightApp::resolve(&file, &shown, env)?)
}
