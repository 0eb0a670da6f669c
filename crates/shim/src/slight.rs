//! SpiderLightning apps in containers: an image whose rootfs holds `/slightfile.toml` runs
//! `/app.wasm` under a slight runtime name as slight's own shim ran it (the entrypoint is not
//! used), with the capabilities the slightfile declares and the container's environment for
//! `configs.envvars` and the secrets' key.

use std::path::Path;

use oci_spec::runtime::Spec;
use wasmcell_engine::{Stdio, WorkloadSpec};

use crate::error::Error;
use crate::runtime::App;
use crate::spec;

/// Reads the app in the container's (mounted) rootfs and builds its workload.
pub fn workload(oci: &Spec, bundle: &Path, stdio: Stdio) -> Result<WorkloadSpec, Error> {
    let rootfs = spec::rootfs_path(Some(oci), bundle);
    let env = spec::process_environment(oci);
    let lookup = |name: &str| spec::variable(&env, name);
    let app = wasmcell_slight::load(&rootfs, &lookup).map_err(|e| Error::App {
        app: App::SpiderLightning,
        message: e.to_string(),
    })?;
    Ok(spec::slight_workload(oci, bundle, stdio, app)?)
}
