//! Linking the imports of apps built on the canonical ABI (slight's, Spin 1's): each a function of
//! `i32`s over a core module's store.

/// Defines `$name` of import module `$module` as `$f(caller, i32, ...)`: every function of
/// this ABI here takes only `i32`s (pointers, lengths, handles and the return area) and
/// returns nothing, or traps. With `request` for the arguments, the import takes a `request`
/// record (see `Abi::outgoing`) and a return area: `$f(caller, record, ret)`.
macro_rules! define {
    ($linker:expr, $module:expr, $name:expr, $f:path, request) => {
        $linker.func_wrap_async(
            $module,
            $name,
            |mut caller: wasmtime::Caller<'_, _>,
             (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, ret): (
                i32, i32, i32, i32, i32, i32, i32, i32, i32, i32, i32,
            )| {
                let record = [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9];
                Box::new(async move { $f(&mut caller, record, ret).await })
            },
        )?
    };
    ($linker:expr, $module:expr, $name:expr, $f:path, $($arg:ident),+) => {
        $linker.func_wrap_async(
            $module,
            $name,
            |mut caller: wasmtime::Caller<'_, _>, ($($arg,)+): ($(define!(@i32 $arg),)+)| {
                Box::new(async move { $f(&mut caller, $($arg),+).await })
            },
        )?
    };
    (@i32 $arg:ident) => { i32 };
}
pub(crate) use define;
