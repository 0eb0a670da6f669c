//! Spin apps in containers: an image whose rootfs holds `/spin.toml`, under a spin runtime
//! name, runs as `spin up` would run that directory, with the container's environment for
//! `SPIN_VARIABLE_*` and its grants for everything else.

use std::path::Path;

use oci_spec::runtime::Spec;
use wasmcell_engine::{Stdio, WorkloadSpec};
use wasmcell_spin::RuntimeConfigSource;

use crate::error::Error;
use crate::spec;

/// Where a container's components' files are copied to be granted read-only: in its bundle,
/// so they go with it.
const STAGING: &str = "spin-files";

/// Reads the app in the container's rootfs (mounted) and builds its workload.
pub fn workload(oci: &Spec, bundle: &Path, stdio: Stdio) -> Result<WorkloadSpec, Error> {
    let rootfs = spec::rootfs_path(Some(oci), bundle);
    let env = oci
        .process()
        .as_ref()
        .map(spec::environment)
        .unwrap_or_default();
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let staging = bundle.join(STAGING);
    let app = wasmcell_spin::load(&rootfs, RuntimeConfigSource::Beside, &lookup, &staging)
        .map_err(Error::SpinApp)?;
    Ok(spec::spin_workload(oci, bundle, stdio, app)?)
}
