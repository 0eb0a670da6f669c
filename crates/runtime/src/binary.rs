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
/// bytes (a component's imports of WASI 0.3's release candidate renamed, see
/// [`alias_release_candidates`]) and its kind.
pub fn read_wasm(spec: &WorkloadSpec) -> Result<(String, Vec<u8>, WasmKind), Error> {
    let path = match &spec.module {
        ModuleSource::File(file) => file.display().to_string(),
        ModuleSource::Rootfs { path, .. } => path.clone(),
    };
    let bytes = read_module(spec)?;
    match FileKind::detect(&bytes) {
        FileKind::Wasm(WasmKind::Component) => {
            let mut bytes = bytes;
            alias_release_candidates(&mut bytes);
            Ok((path, bytes, WasmKind::Component))
        }
        FileKind::Wasm(kind) => Ok((path, bytes, kind)),
        other => Err(Error::NotWasm { path, kind: other }),
    }
}

/// The WASI release candidates whose interfaces are WASI 0.3.0's, type for type, under an
/// earlier name: Spin's SDKs for Spin 4 (spin-sdk 5 for Python among them) import each WASI
/// interface twice, as `@0.3.0` and as `@0.3.0-rc-2026-03-15`. Earlier candidates differ
/// from 0.3.0 and are not here: a component importing one fails to link, naming it.
pub const SAME_AS_0_3_0: [&str; 1] = ["0.3.0-rc-2026-03-15"];

/// Makes `component`'s imports of a WASI release candidate that is 0.3.0 under another name
/// ([`SAME_AS_0_3_0`]) ask for 0.3.0, in place: `wasi:cli/stdout@0.3.0-rc-2026-03-15` becomes
/// `wasi:cli/stdout@0.3.0+rc-2026-03-15`. A version's build metadata (after `+`) does not
/// count in semver, so wasmtime's linker resolves the import to its `@0.3.0` definition, and
/// the name stays distinct from the same component's own import of `@0.3.0`. The linker still
/// checks every function's type against the import's, so a candidate that differed would
/// fail to link, not misbehave. One byte per import changes and nothing moves, so no section
/// is re-encoded. Only the component's own imports are renamed (a nested component's are
/// satisfied inside it); a binary that cannot be read is left as it is, for the compiler to
/// report.
pub fn alias_release_candidates(component: &mut [u8]) {
    let mut dashes = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload {
            Err(_) => return,
            Ok(wasmparser::Payload::Version { .. }) => depth += 1,
            Ok(wasmparser::Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(wasmparser::Payload::ComponentImportSection(imports)) if depth == 1 => {
                for import in imports {
                    let Ok(import) = import else { return };
                    let name = import.name.name;
                    let Some((interface, version)) = name.rsplit_once('@') else {
                        continue;
                    };
                    if interface.starts_with("wasi:") && SAME_AS_0_3_0.contains(&version) {
                        // The name borrows from `component`: its `-` after `0.3.0` is at
                        // this offset.
                        let at = name.as_ptr() as usize - component.as_ptr() as usize;
                        dashes.push(at + interface.len() + "@0.3.0".len());
                    }
                }
            }
            Ok(_) => {}
        }
    }
    for dash in dashes {
        debug_assert_eq!(component[dash], b'-');
        component[dash] = b'+';
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
