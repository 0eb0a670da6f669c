//! WasmEdge's socket extension of WASI preview 1, on wasmtime.
//!
//! Guests built with `wasmedge_wasi_socket`, `tokio_wasi` or `hyper_wasi` import `sock_open`,
//! `sock_bind`, `sock_accept(fd, *fd)` and friends from `wasi_snapshot_preview1`, where wasmtime
//! has no such functions (or, for `sock_accept`, one with another type). A module that imports
//! any of them is linked against this module's definitions on top of wasmtime-wasi's preview 1,
//! whichever runtime name runs it: the rest of its WASI calls go to wasmtime-wasi, except those
//! that may name a socket (`fd_read`, `fd_write`, `fd_close`, `fd_fdstat_*`, `poll_oneoff`),
//! which serve sockets here and hand every other descriptor to wasmtime-wasi's own function.
//! Where WasmEdge versions gave a function two types, the one the module imports is linked.

#![deny(missing_docs)]

mod address;
mod calls;
mod memory;
mod names;
mod socket;

use wasmtime::{Caller, ExternType, Linker, Memory, Module, ValType};
use wasmtime_wasi::p1::WasiP1Ctx;

use calls::*;
use names::Names;
use socket::SocketTable;
use wasmcell_runtime::state::ModuleState;
use wasmcell_workload::{Network, WorkloadSpec};

const WASI: &str = "wasi_snapshot_preview1";

/// The functions only WasmEdge's ABI has: importing one of them selects it.
const EXTENSION: [&str; 12] = [
    "sock_open",
    "sock_bind",
    "sock_listen",
    "sock_connect",
    "sock_recv_from",
    "sock_send_to",
    "sock_getlocaladdr",
    "sock_getpeeraddr",
    "sock_getsockopt",
    "sock_setsockopt",
    "sock_getaddrinfo",
    "epoll_oneoff",
];

/// Whether `module` is built for WasmEdge's sockets: it imports a function only that ABI has,
/// or `sock_accept` with WasmEdge's two parameters (preview 1's has three).
pub fn wanted_by(module: &Module) -> bool {
    module.imports().any(|import| {
        import.module() == WASI
            && match (import.name(), import.ty()) {
                ("sock_accept", ExternType::Func(ty)) => ty.params().len() == 2,
                (name, _) => EXTENSION.contains(&name),
            }
    })
}

/// `base` (wasmtime-wasi's preview 1) with this ABI's functions defined over it, each in the
/// type `module` imports. An import of a type we do not have is left undefined, so linking
/// reports it with the others missing.
pub fn linker<T: WasmEdgeView>(base: &Linker<T>, module: &Module) -> wasmtime::Result<Linker<T>> {
    let mut linker = base.clone();
    linker.allow_shadowing(true);
    for import in module.imports().filter(|import| import.module() == WASI) {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let all_i32 = ty.params().all(|p| matches!(p, ValType::I32))
            && ty.results().len() == 1
            && ty.results().all(|r| matches!(r, ValType::I32));
        if all_i32 {
            define(&mut linker, import.name(), ty.params().len())?;
        }
    }
    Ok(linker)
}

/// Defines `name` taking `arity` i32s, if this ABI has that function in that type.
fn define<T: WasmEdgeView>(
    linker: &mut Linker<T>,
    name: &str,
    arity: usize,
) -> wasmtime::Result<()> {
    // Each host function is an async fn of the caller and its i32 arguments (as u32: pointers,
    // descriptors and lengths are unsigned) returning the guest's errno.
    macro_rules! host {
        ($f:path, $($arg:ident),+) => {{
            linker.func_wrap_async(
                WASI,
                name,
                |mut caller: Caller<'_, T>, ($($arg,)+): ($(host!(@i32 $arg),)+)| {
                    Box::new(async move {
                        $f(&mut caller, $($arg as u32),+).await
                    })
                },
            )?;
        }};
        (@i32 $arg:ident) => { i32 };
    }
    match (name, arity) {
        ("sock_open", 3) => host!(sock_open, a, b, c),
        ("sock_bind", 3) => host!(sock_bind, a, b, c),
        ("sock_listen", 2) => host!(sock_listen, a, b),
        ("sock_accept", 2) => host!(sock_accept, a, b),
        ("sock_accept", 3) => host!(sock_accept_with_flags, a, b, c),
        ("sock_connect", 3) => host!(sock_connect, a, b, c),
        ("sock_recv", 6) => host!(sock_recv, a, b, c, d, e, f),
        ("sock_recv_from", 7) => host!(sock_recv_from_without_port, a, b, c, d, e, f, g),
        ("sock_recv_from", 8) => host!(sock_recv_from, a, b, c, d, e, f, g, h),
        ("sock_send", 5) => host!(sock_send, a, b, c, d, e),
        ("sock_send_to", 7) => host!(sock_send_to, a, b, c, d, e, f, g),
        ("sock_shutdown", 2) => host!(sock_shutdown, a, b),
        ("sock_getlocaladdr", 3) => host!(sock_address::<false>, a, b, c),
        ("sock_getlocaladdr", 4) => host!(sock_address_typed::<false>, a, b, c, d),
        ("sock_getpeeraddr", 3) => host!(sock_address::<true>, a, b, c),
        ("sock_getpeeraddr", 4) => host!(sock_address_typed::<true>, a, b, c, d),
        ("sock_getsockopt", 5) => host!(sock_getsockopt, a, b, c, d, e),
        ("sock_setsockopt", 5) => host!(sock_setsockopt, a, b, c, d, e),
        ("sock_getaddrinfo", 8) => host!(sock_getaddrinfo, a, b, c, d, e, f, g, h),
        ("fd_read", 4) => host!(fd_read, a, b, c, d),
        ("fd_write", 4) => host!(fd_write, a, b, c, d),
        ("fd_close", 1) => host!(fd_close, a),
        ("fd_fdstat_get", 2) => host!(fd_fdstat_get, a, b),
        ("fd_fdstat_set_flags", 2) => host!(fd_fdstat_set_flags, a, b),
        ("poll_oneoff", 4) | ("epoll_oneoff", 4) => host!(poll_oneoff, a, b, c, d),
        _ => {}
    }
    Ok(())
}

/// A store's sockets and name lookups.
pub struct WasmEdge {
    sockets: SocketTable,
    names: Names,
    network: Network,
    /// The guest's exported memory, once looked up.
    memory: Option<Memory>,
}

impl WasmEdge {
    /// The extension's state for one instance of `spec`'s module: no sockets yet, names
    /// resolved as the container's files say.
    pub fn new(spec: &WorkloadSpec) -> WasmEdge {
        WasmEdge {
            sockets: SocketTable::default(),
            names: Names::new(spec),
            network: spec.network,
            memory: None,
        }
    }
}

/// A store whose module may use WasmEdge's sockets: where the extension's state and the
/// module's WASI preview 1 context are, as wasmtime-wasi's preview 1 takes `|s| &mut s.wasi`.
pub trait WasmEdgeView: Send + 'static {
    /// The module's WasmEdge state; `None` for a module that does not use the extension.
    fn wasmedge(&mut self) -> Option<&mut WasmEdge>;
    /// The module's WASI preview 1 context, which serves every descriptor that is not a socket.
    fn wasi(&mut self) -> &mut WasiP1Ctx;
}

/// The store state of a plain core module: WasmEdge's sockets where the module was built for
/// them.
pub type WasmEdgeState = ModuleState<Option<Box<WasmEdge>>>;

impl WasmEdgeView for WasmEdgeState {
    fn wasmedge(&mut self) -> Option<&mut WasmEdge> {
        self.host.as_deref_mut()
    }

    fn wasi(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }
}

/// [`address::read`] over a bare slice, for the fuzz target.
#[cfg(fuzzing)]
pub fn read_address(memory: &mut [u8], ptr: u32, port: u32) -> Option<std::net::SocketAddr> {
    address::read(&memory::Mem(memory), ptr, port).ok()
}
