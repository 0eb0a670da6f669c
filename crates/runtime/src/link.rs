//! Why a module does not link, in terms a user can act on: every import the linker lacks, or
//! wasmtime's reason; and what a module exports, for a wrong entry function.

use wasmtime::{ExternType, Linker};

use crate::error::Error;

/// Why `module` does not link with `linker` (which provides what `provided` says): every
/// import it lacks, or wasmtime's reason.
pub fn link_error<T: 'static>(
    linker: &Linker<T>,
    module: &wasmtime::Module,
    path: &str,
    source: wasmtime::Error,
    provided: &'static str,
) -> Error {
    match missing_imports(linker, module) {
        imports if imports.is_empty() => Error::Link {
            path: path.to_owned(),
            source,
        },
        imports => Error::MissingImports {
            path: path.to_owned(),
            imports: imports.join(", "),
            provided,
        },
    }
}

/// The imports of `module` that `linker` does not define, as `module::name (func ...)`. Defining
/// an import that is already there fails when shadowing is off, which is the test.
pub fn missing_imports<T: 'static>(linker: &Linker<T>, module: &wasmtime::Module) -> Vec<String> {
    let mut probe = linker.clone();
    probe.allow_shadowing(false);
    module
        .imports()
        .filter(|import| match import.ty() {
            ExternType::Func(ty) => probe
                .func_new(import.module(), import.name(), ty, |_, _, _| Ok(()))
                .is_ok(),
            // WASI defines functions only.
            _ => true,
        })
        .map(|import| {
            let ty = match import.ty() {
                ExternType::Func(ty) => ty.to_string(),
                other => format!("{other:?}"),
            };
            format!("{}::{} {ty}", import.module(), import.name())
        })
        .collect()
}

/// The functions `module` exports, as ` (it exports `a`, `b`)`, or nothing if none.
pub fn exported_functions(module: &wasmtime::Module) -> String {
    let names: Vec<_> = module
        .exports()
        .filter(|e| matches!(e.ty(), ExternType::Func(_)))
        .map(|e| format!("`{}`", e.name()))
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (it exports {})", names.join(", "))
    }
}
