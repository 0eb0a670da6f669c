//! What the Spin linker provides, by import name, and the imports of a component it does not
//! provide, read from the binary before it is compiled: an app importing something wasmcell
//! does not link fails `create` in milliseconds, not after a compile that takes 10-40 s for a
//! Python or JavaScript component.

use wasmparser::{
    ComponentAlias, ComponentExternalKind, ComponentOuterAliasKind, ComponentType,
    ComponentTypeRef, InstanceTypeDeclaration, Parser, Payload,
};

/// WASI 0.2's packages, every one of which the linker provides (any 0.2 patch version, as it
/// matches them).
const WASI: [&str; 7] = [
    "io",
    "clocks",
    "random",
    "filesystem",
    "sockets",
    "cli",
    "http",
];

/// WASI 0.3's packages, which the linker provides at 0.3.0.
const WASI3: [&str; 6] = ["clocks", "random", "filesystem", "sockets", "cli", "http"];

/// Spin 4's async packages at 3.0.0, each with one interface of its own name
/// (`spin:redis/redis@3.0.0`).
const SPIN4: [&str; 5] = ["key-value", "variables", "redis", "mqtt", "mysql"];

/// `fermyon:spin@2.0.0`'s interfaces: Spin 2's platform.
const SPIN2: [&str; 9] = [
    "key-value",
    "variables",
    "sqlite",
    "redis",
    "llm",
    "mqtt",
    "postgres",
    "mysql",
    "rdbms-types",
];

/// What wasmcell provides Spin components, for messages.
pub(crate) const PROVIDED: &str = "wasmcell provides WASI 0.2 and 0.3.0 (and 0.3.0-rc-2026-03-15, which is 0.3.0), wasi:http, fermyon:spin@2.0.0 (key-value, variables, sqlite, redis, llm, mqtt, postgres, mysql), spin:sqlite@3.1.0, spin:postgres@3.0.0 and @4.2.0, Spin 4's spin:key-value, variables, redis, mqtt and mysql @3.0.0, wasi:keyvalue@0.2.0-draft2 and wasi:config@0.2.0-draft-2024-09-27";

/// Whether the Spin linker defines the import `name` (`package:name/interface@version`).
pub(crate) fn provided(name: &str) -> bool {
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let (package, interface) = path.split_once('/').unwrap_or((path, ""));
    match package.split_once(':') {
        Some(("wasi", "keyvalue")) => {
            ["store", "atomics", "batch"].contains(&interface) && version == "0.2.0-draft2"
        }
        Some(("wasi", "config")) => interface == "store" && version == "0.2.0-draft-2024-09-27",
        // Any 0.2 patch version, and 0.3.0 (also as the release candidate that is it, renamed
        // to `0.3.0+rc-...` when the binary was read).
        Some(("wasi", package)) => {
            // A prerelease, that is: a `-` before any build metadata (`+...`).
            let release = !version.split('+').next().unwrap_or(version).contains('-');
            (WASI.contains(&package) && version.starts_with("0.2.") && release)
                || (WASI3.contains(&package) && version.starts_with("0.3.") && release)
        }
        Some(("fermyon", "spin")) => SPIN2.contains(&interface) && version == "2.0.0",
        Some(("spin", "sqlite")) => interface == "sqlite" && ["3.0.0", "3.1.0"].contains(&version),
        Some(("spin", "postgres")) => {
            interface == "postgres" && ["3.0.0", "4.0.0", "4.1.0", "4.2.0"].contains(&version)
        }
        Some(("spin", package)) => {
            SPIN4.contains(&package) && interface == package && version == "3.0.0"
        }
        _ => false,
    }
}

/// The names of `component`'s imports the linker does not provide. An instance of types alone
/// needs no definition and is left out. Reads the binary only (its top-level import and type
/// sections); a binary it cannot read yields nothing, for the compiler to report.
pub(crate) fn unprovided(component: &[u8]) -> Vec<String> {
    // For each index of the component's type space: whether it is an instance type that
    // exports types alone. Only the sections that add component types at the top level count.
    let mut types_only: Vec<bool> = Vec::new();
    let mut unprovided = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        let Ok(payload) = payload else {
            return Vec::new();
        };
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            _ if depth != 1 => {}
            Payload::ComponentTypeSection(types) => {
                for ty in types {
                    let Ok(ty) = ty else { return Vec::new() };
                    types_only.push(match ty {
                        ComponentType::Instance(decls) => decls.iter().all(|decl| {
                            !matches!(decl, InstanceTypeDeclaration::Export { ty, .. }
                                if !matches!(ty, ComponentTypeRef::Type(_)))
                        }),
                        _ => false,
                    });
                }
            }
            Payload::ComponentAliasSection(aliases) => {
                for alias in aliases {
                    let Ok(alias) = alias else { return Vec::new() };
                    let adds_type = matches!(
                        alias,
                        ComponentAlias::InstanceExport {
                            kind: ComponentExternalKind::Type,
                            ..
                        } | ComponentAlias::Outer {
                            kind: ComponentOuterAliasKind::Type,
                            ..
                        }
                    );
                    if adds_type {
                        types_only.push(false);
                    }
                }
            }
            Payload::ComponentExportSection(exports) => {
                for export in exports {
                    let Ok(export) = export else {
                        return Vec::new();
                    };
                    if export.kind == ComponentExternalKind::Type {
                        types_only.push(false);
                    }
                }
            }
            Payload::ComponentImportSection(imports) => {
                for import in imports {
                    let Ok(import) = import else {
                        return Vec::new();
                    };
                    match import.ty {
                        ComponentTypeRef::Type(_) => types_only.push(false),
                        ComponentTypeRef::Instance(index)
                            if types_only.get(index as usize) == Some(&true) => {}
                        _ if provided(import.name.name) => {}
                        _ => unprovided.push(import.name.name.to_owned()),
                    }
                }
            }
            _ => {}
        }
    }
    unprovided
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_platforms_are_provided_and_nothing_else() {
        for name in [
            "wasi:http/types@0.2.6",
            "wasi:cli/environment@0.2.0",
            "fermyon:spin/llm@2.0.0",
            "fermyon:spin/mqtt@2.0.0",
            "fermyon:spin/postgres@2.0.0",
            "fermyon:spin/mysql@2.0.0",
            "spin:postgres/postgres@3.0.0",
            "spin:postgres/postgres@4.0.0",
            "spin:sqlite/sqlite@3.0.0",
            "spin:sqlite/sqlite@3.1.0",
            "spin:postgres/postgres@4.2.0",
            "spin:mqtt/mqtt@3.0.0",
            "spin:key-value/key-value@3.0.0",
            "wasi:keyvalue/batch@0.2.0-draft2",
            "wasi:http/types@0.3.0",
            "wasi:cli/stdout@0.3.0+rc-2026-03-15",
        ] {
            assert!(provided(name), "{name}");
        }
        for name in [
            "wasi:nn/inference@0.2.0-rc-2024-10-28",
            "wasi:http/handler@0.3.0-rc-2026-03-15",
            "wasi:io/streams@0.3.0",
            "spin:postgres/postgres@5.0.0",
            "spin:mqtt/mqtt@4.0.0",
            "spin:mqtt/redis@3.0.0",
            "fermyon:spin/llm@3.0.0",
            "acme:widgets/frob",
        ] {
            assert!(!provided(name), "{name}");
        }
    }

    fn component(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).unwrap()
    }

    #[test]
    fn a_components_unprovided_imports_are_named_before_compiling() {
        let bytes = component(
            r#"(component
                (import "fermyon:spin/llm@2.0.0" (instance (export "infer" (func))))
                (import "acme:widgets/frob@1.0.0" (instance (export "frob" (func))))
                (type $only-types (instance (export "t" (type (sub resource)))))
                (import "acme:widgets/types@1.0.0" (instance (type $only-types)))
                (import "wasi:nn/inference@0.2.0-rc-2024-10-28" (func))
            )"#,
        );
        assert_eq!(
            unprovided(&bytes),
            [
                "acme:widgets/frob@1.0.0",
                "wasi:nn/inference@0.2.0-rc-2024-10-28"
            ]
        );
    }

    #[test]
    fn imports_of_nested_components_are_theirs_not_the_apps() {
        let bytes = component(
            r#"(component
                (component (import "acme:inner/x@1.0.0" (func)))
                (import "wasi:cli/stdout@0.2.0" (instance (export "get-stdout" (func))))
            )"#,
        );
        assert!(unprovided(&bytes).is_empty());
        assert!(unprovided(b"not wasm").is_empty());
    }
}
