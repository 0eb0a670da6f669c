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
    let (bytes, kind) = checked(&path, read_module(spec)?)?;
    Ok((path, bytes, kind))
}

/// `bytes` (read from `path`) checked to be wasm, as [`read_wasm`] gives them: a component's
/// imports of WASI 0.3's release candidate renamed. The compile cache is keyed by what this
/// returns.
pub fn checked(path: &str, bytes: Vec<u8>) -> Result<(Vec<u8>, WasmKind), Error> {
    match FileKind::detect(&bytes) {
        FileKind::Wasm(WasmKind::Component) => {
            let mut bytes = bytes;
            alias_release_candidates(&mut bytes);
            Ok((bytes, WasmKind::Component))
        }
        FileKind::Wasm(kind) => Ok((bytes, kind)),
        other => Err(Error::NotWasm {
            path: path.to_owned(),
            kind: other,
        }),
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

/// Whether `component` exports an HTTP handler (`wasi:http/incoming-handler@0.2.x` or
/// `wasi:http/handler@0.3.x`), read from its export section before it is compiled: what a
/// tiered start asks ([`crate::codegen::CompilePolicy::Tiered`]). A binary that cannot be
/// read serves nothing here, and its compile says what is wrong with it.
pub fn serves_http(component: &[u8]) -> bool {
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload {
            Err(_) => return false,
            Ok(wasmparser::Payload::Version { .. }) => depth += 1,
            Ok(wasmparser::Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(wasmparser::Payload::ComponentExportSection(exports)) if depth == 1 => {
                for export in exports {
                    let Ok(export) = export else { return false };
                    let name = export.name.name;
                    if name.starts_with(crate::http::INCOMING_HANDLER)
                        || name.starts_with(crate::http::HANDLER)
                    {
                        return true;
                    }
                }
            }
            Ok(_) => {}
        }
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the component's own imports.
    fn imports(component: &[u8]) -> Vec<String> {
        let engine = wasmtime::Engine::new(&crate::config()).unwrap();
        let component = wasmtime::component::Component::new(&engine, component).unwrap();
        component
            .component_type()
            .imports(&engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    const BOTH: &str = r#"(component
        (import "wasi:cli/stdout@0.3.0" (instance (export "f" (func))))
        (import "wasi:cli/stdout@0.3.0-rc-2026-03-15" (instance (export "f" (func))))
        (import "wasi:cli/stdin@0.3.0-rc-2025-09-16" (instance (export "f" (func))))
        (import "acme:cli/stdout@0.3.0-rc-2026-03-15" (instance (export "f" (func))))
        (component (import "wasi:cli/exit@0.3.0-rc-2026-03-15" (func)))
    )"#;

    #[test]
    fn the_release_candidate_that_is_0_3_0_is_asked_for_as_0_3_0() {
        let mut bytes = wat::parse_str(BOTH).unwrap();
        let before = bytes.len();
        alias_release_candidates(&mut bytes);
        assert_eq!(bytes.len(), before);
        // Still a valid component (the names stay distinct), and only the WASI candidate that
        // is 0.3.0 is renamed: not an earlier one, not another package's, not a nested
        // component's import.
        assert_eq!(
            imports(&bytes),
            [
                "wasi:cli/stdout@0.3.0",
                "wasi:cli/stdout@0.3.0+rc-2026-03-15",
                "wasi:cli/stdin@0.3.0-rc-2025-09-16",
                "acme:cli/stdout@0.3.0-rc-2026-03-15",
            ]
        );
        let nested = String::from_utf8_lossy(&bytes);
        assert!(nested.contains("wasi:cli/exit@0.3.0-rc-2026-03-15"));
    }

    /// Renamed, the candidate's import resolves to what the linker defines as 0.3.0, its
    /// type still checked; not renamed, it finds nothing.
    #[test]
    fn a_renamed_import_links_to_0_3_0_and_is_type_checked() {
        let engine = wasmtime::Engine::new(&crate::config()).unwrap();
        let mut linker = wasmtime::component::Linker::<()>::new(&engine);
        linker
            .instance("wasi:cli/stdout@0.3.0")
            .unwrap()
            .func_wrap("f", |_, (): ()| Ok(()))
            .unwrap();
        let link = |wat: &str, rename: bool| {
            let mut bytes = wat::parse_str(wat).unwrap();
            if rename {
                alias_release_candidates(&mut bytes);
            }
            let component = wasmtime::component::Component::new(&engine, &bytes).unwrap();
            linker.instantiate_pre(&component).map(drop)
        };
        let candidate = r#"(component
            (import "wasi:cli/stdout@0.3.0" (instance (export "f" (func))))
            (import "wasi:cli/stdout@0.3.0-rc-2026-03-15" (instance (export "f" (func))))
        )"#;
        assert!(link(candidate, false).is_err());
        link(candidate, true).unwrap();
        let other_type = r#"(component
            (import "wasi:cli/stdout@0.3.0-rc-2026-03-15"
                (instance (export "f" (func (param "x" u32)))))
        )"#;
        assert!(link(other_type, true).is_err());
    }

    #[test]
    fn an_http_handler_is_told_from_its_own_exports_before_compiling() {
        let exporting = |name: &str| {
            wat::parse_str(format!(
                r#"(component (instance $i) (export "{name}" (instance $i)))"#
            ))
            .unwrap()
        };
        assert!(serves_http(&exporting("wasi:http/incoming-handler@0.2.3")));
        assert!(serves_http(&exporting("wasi:http/handler@0.3.0")));
        assert!(!serves_http(&exporting("wasi:cli/run@0.2.3")));
        assert!(!serves_http(&exporting("acme:http/incoming-handler@0.2.3")));
        // A nested component's export is not the component's.
        let nested = wat::parse_str(
            r#"(component (component (instance $i) (export "wasi:http/handler@0.3.0" (instance $i))))"#,
        )
        .unwrap();
        assert!(!serves_http(&nested));
        // Cut short before its export section ends.
        let whole = exporting("wasi:http/handler@0.3.0");
        let export = whole
            .windows(7)
            .position(|w| w == b"handler")
            .expect("the export's name");
        assert!(!serves_http(&whole[..export + 3]));
        assert!(!serves_http(b"\0asm not a component at all"));
    }

    #[test]
    fn a_binary_that_cannot_be_read_is_left_as_it_is() {
        let mut bytes = wat::parse_str(BOTH).unwrap();
        bytes.truncate(bytes.len() - 20);
        let before = bytes.clone();
        alias_release_candidates(&mut bytes);
        assert_eq!(bytes, before);
        let mut garbage = b"\0asm not a component at all".to_vec();
        alias_release_candidates(&mut garbage);
        assert_eq!(garbage, b"\0asm not a component at all");
    }
}
