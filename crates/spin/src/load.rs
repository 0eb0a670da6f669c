//! Reading an app from its directory: what the shim does with a container's rootfs and
//! `wasmcell up` with a directory on the host.

use std::path::Path;

use wasmcell_oci::rootfs::{self, ReadError};

use crate::app::{App, Resolve, open_dir, stage_files};
use crate::manifest::Manifest;
use crate::runtime_config::RuntimeConfig;
use crate::{MANIFEST, RUNTIME_CONFIG};

/// Where an app's runtime config comes from.
pub enum RuntimeConfigSource<'a> {
    /// `runtime-config.toml` in the app's directory, if there is one.
    Beside,
    /// A file the user named (`--runtime-config-file`).
    File(&'a Path),
}

/// Whether `dir` holds a Spin app: a `spin.toml` at its root (a link counts: it is never
/// followed, but it marks the image as an app).
pub fn is_app(dir: &Path) -> bool {
    dir.join(MANIFEST).symlink_metadata().is_ok()
}

/// Reads `spin.toml` and the runtime config in `dir` (never through a link out of it),
/// resolves the app with `env`'s `SPIN_VARIABLE_*`, and stages each component's files under
/// `staging`. Errors name the file, and the line where there is one.
pub fn load(
    dir: &Path,
    runtime_config: RuntimeConfigSource<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    staging: &Path,
) -> Result<App, String> {
    let root = open_dir(dir, "the app's directory")?;
    let text = rootfs::read_config(&root, Path::new(MANIFEST))
        .map_err(|e| format!("cannot read {MANIFEST}: {e}"))?;
    let manifest = Manifest::parse(&text, MANIFEST).map_err(|e| e.to_string())?;
    resolve(manifest, &root, dir, runtime_config, env, staging)
}

/// [`load`] for a locked app (`json`, from an image in Spin's registry format) whose content
/// `content` gives by digest: the content is written into `dir` first (see
/// [`crate::locked::unlock`]), then the app is read from there as from a `spin.toml`.
pub fn load_locked(
    dir: &Path,
    json: &[u8],
    content: &dyn Fn(&str) -> Option<Vec<u8>>,
    runtime_config: RuntimeConfigSource<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    staging: &Path,
) -> Result<App, String> {
    let manifest = crate::locked::unlock(dir, json, content)?;
    resolve(
        manifest,
        &open_dir(dir, "the app's directory")?,
        dir,
        runtime_config,
        env,
        staging,
    )
}

/// The text of the app's optional `file` (`None` if there is none): a regular file of at most
/// [`rootfs::MAX_CONFIG_SIZE`], as everything an image holds is read.
fn read_config(root: &cap_std::fs::Dir, file: &str) -> Result<Option<String>, String> {
    match rootfs::read_config(root, Path::new(file)) {
        Ok(text) => Ok(Some(text)),
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {file}: {e}")),
    }
}

/// Resolves `manifest` with its runtime config and stages its components' files.
fn resolve(
    manifest: Manifest,
    root: &cap_std::fs::Dir,
    dir: &Path,
    runtime_config: RuntimeConfigSource<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    staging: &Path,
) -> Result<App, String> {
    let runtime_config = match runtime_config {
        RuntimeConfigSource::File(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            RuntimeConfig::parse(&text, &file.display().to_string())?
        }
        RuntimeConfigSource::Beside => match read_config(root, RUNTIME_CONFIG)? {
            Some(text) => RuntimeConfig::parse(&text, RUNTIME_CONFIG)?,
            None => RuntimeConfig::default(),
        },
    };
    let mut app = App::resolve(
        manifest,
        Resolve {
            env,
            runtime_config,
        },
    )?;
    stage_files(&mut app, dir, staging)?;
    Ok(app)
}
