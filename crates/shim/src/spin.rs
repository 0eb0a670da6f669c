//! Spin apps in containers: an image whose rootfs holds `/spin.toml`, or an image in Spin's
//! registry format, under a spin runtime name, runs as `spin up` would run it, with the container's environment for
//! `SPIN_VARIABLE_*` and its grants for everything else.

use std::path::Path;

use oci_spec::runtime::Spec;
use wasmcell_engine::{Stdio, WorkloadSpec};
use wasmcell_oci::SpinImage;
use wasmcell_spin::RuntimeConfigSource;

use crate::error::Error;
use crate::runtime::App;
use crate::spec;

/// Where a container's components' files are copied to be granted read-only: in its bundle,
/// so they go with it.
const STAGING: &str = "spin-files";

/// Reads the app in the container's rootfs (mounted), or from its image in Spin's registry
/// format (`image`; its content is then written into the rootfs, which the image left empty),
/// and builds its workload.
pub fn workload(
    oci: &Spec,
    bundle: &Path,
    stdio: Stdio,
    image: Option<&SpinImage>,
) -> Result<WorkloadSpec, Error> {
    let rootfs = spec::rootfs_path(Some(oci), bundle);
    let env = spec::process_environment(oci);
    let lookup = |name: &str| spec::variable(&env, name);
    let staging = bundle.join(STAGING);
    let config = RuntimeConfigSource::Beside;
    let app = match image {
        Some(image) => wasmcell_spin::load_locked(
            &rootfs,
            &image.locked,
            &|digest| image.content(digest).map(<[u8]>::to_vec),
            config,
            &lookup,
            &staging,
        ),
        None => wasmcell_spin::load(&rootfs, config, &lookup, &staging),
    }
    .map_err(|message| Error::App {
        app: App::Spin,
        message,
    })?;
    Ok(spec::spin_workload(oci, bundle, stdio, app)?)
}
