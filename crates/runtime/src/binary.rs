//! Reading the binary a workload names: from the host, or from inside an image's rootfs as
//! hostile input.

use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use wasmcell_oci::rootfs;
use wasmcell_oci::{FileKind, WasmKind};
use wasmcell_workload::{ModuleSource, WorkloadSpec};

use crate::error::Error;

/// Reads the binary the spec names and checks it is wasm: its path (as the user wrote it), its
/// bytes and its kind.
pub fn read_wasm(spec: &WorkloadSpec) -> Result<(String, Vec<u8>, WasmKind), Error> {
    let path = match &spec.module {
        ModuleSource::File(file) => file.display().to_string(),
        ModuleSource::Rootfs { path, .. } => path.clone(),
    };
    let bytes = read_module(spec)?;
    match FileKind::detect(&bytes) {
        FileKind::Wasm(kind) => Ok((path, bytes, kind)),
        other => Err(Error::NotWasm { path, kind: other }),
    }
}

/// Reads the binary the spec names. Inside a rootfs it is the image's, read as hostile input:
/// resolved with the same capability rules the guest's own opens follow (no `..` above the
/// root, no absolute symlinks), a regular file (a device or FIFO is refused before it is
/// read), and at most [`rootfs::MAX_MODULE_SIZE`].
pub fn read_module(spec: &WorkloadSpec) -> Result<Vec<u8>, Error> {
    match &spec.module {
        ModuleSource::File(file) => std::fs::read(file).map_err(|source| Error::ReadEntrypoint {
            path: file.display().to_string(),
            root: None,
            source: source.into(),
        }),
        ModuleSource::Rootfs { root, path } => {
            let err = |source: rootfs::ReadError| Error::ReadEntrypoint {
                path: path.clone(),
                root: Some(root.clone()),
                source,
            };
            let relative = if path.starts_with('/') {
                Path::new(path.trim_start_matches('/')).to_owned()
            } else {
                Path::new(spec.cwd.trim_start_matches('/')).join(path)
            };
            let dir =
                Dir::open_ambient_dir(root, ambient_authority()).map_err(|e| err(e.into()))?;
            rootfs::read_regular(&dir, &relative, rootfs::MAX_MODULE_SIZE).map_err(err)
        }
    }
}
