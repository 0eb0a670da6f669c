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
mod memory;
mod names;
mod poll;
mod socket;

use std::net::SocketAddr;

use wasmtime::{Caller, Extern, ExternType, Linker, Memory, Module, ValType};
use wasmtime_wasi::p1::WasiP1Ctx;

use memory::{Errno, Mem, status};
use names::Names;
use socket::{GuestSocket, Kind, SocketOption, SocketTable};
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
        ("poll_oneoff", 4) | ("epoll_oneoff", 4) => host!(poll::poll_oneoff, a, b, c, d),
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

type Host<'a, T> = Caller<'a, T>;

/// The guest's memory: looked up by name at the first call of a store, not at every call.
pub(crate) fn guest_memory(caller: &mut Host<'_, impl WasmEdgeView>) -> Option<Memory> {
    if let Some(memory) = caller.data_mut().wasmedge().and_then(|state| state.memory) {
        return Some(memory);
    }
    let memory = caller.get_export("memory").and_then(Extern::into_memory)?;
    if let Some(state) = caller.data_mut().wasmedge() {
        state.memory = Some(memory);
    }
    Some(memory)
}

/// Runs `f` with the guest's memory and this ABI's state.
fn with<R>(
    caller: &mut Host<'_, impl WasmEdgeView>,
    f: impl FnOnce(&mut Mem<'_>, &mut WasmEdge) -> Result<R, Errno>,
) -> Result<R, Errno> {
    let memory = guest_memory(caller).ok_or(Errno::FAULT)?;
    let (bytes, state) = memory.data_and_store_mut(&mut *caller);
    let state = state.wasmedge().ok_or(Errno::NOTSUP)?;
    f(&mut Mem(bytes), state)
}

/// The socket `fd` names.
fn socket(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
) -> Result<std::sync::Arc<GuestSocket>, Errno> {
    with(caller, |_, state| state.sockets.socket(fd))
}

/// Calls wasmtime-wasi's own preview 1 function (for a descriptor that is not a socket) as
/// its linker would: with the store's WASI context and the guest's memory.
macro_rules! wasi {
    ($caller:expr, $function:ident($($arg:expr),*) $(.$await:tt)?) => {{
        let caller = &mut *$caller;
        let memory = crate::guest_memory(caller)
            .ok_or_else(|| wasmtime::format_err!("missing required memory export"))?;
        let (bytes, state) = memory.data_and_store_mut(&mut *caller);
        let mut memory = wiggle::GuestMemory::Unshared(bytes);
        wasmtime_wasi::p1::wasi_snapshot_preview1::$function(
            state.wasi(),
            &mut memory,
            $($arg as i32),*
        ) $(.$await)?
    }};
}
pub(crate) use wasi;

fn is_socket(caller: &mut Host<'_, impl WasmEdgeView>, fd: u32) -> bool {
    caller
        .data_mut()
        .wasmedge()
        .is_some_and(|state| state.sockets.get(fd).is_some())
}

async fn sock_open(
    caller: &mut Host<'_, impl WasmEdgeView>,
    family: u32,
    kind: u32,
    fd_out: u32,
) -> wasmtime::Result<i32> {
    Ok(status(with(caller, |mem, state| {
        if state.network == Network::None {
            return Err(Errno::ACCES);
        }
        let family = u8::try_from(family).map_err(|_| Errno::INVAL)?;
        let kind = u8::try_from(kind).map_err(|_| Errno::INVAL)?;
        mem.bytes_mut(fd_out, 4)?;
        let fd = state.sockets.insert(GuestSocket::open(family, kind)?);
        mem.set_u32(fd_out, fd)
    })))
}

async fn sock_bind(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    addr: u32,
    port: u32,
) -> wasmtime::Result<i32> {
    Ok(status(with(caller, |mem, state| {
        let addr = address::read(mem, addr, port)?;
        state.sockets.socket(fd)?.bind(addr)
    })))
}

async fn sock_listen(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    backlog: u32,
) -> wasmtime::Result<i32> {
    Ok(status(socket(caller, fd).and_then(|s| s.listen(backlog))))
}

async fn sock_accept(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    fd_out: u32,
) -> wasmtime::Result<i32> {
    Ok(status(accept(caller, fd, 0, fd_out).await))
}

/// Preview 1's `sock_accept(fd, flags, *fd)`, for a module of this ABI importing that type:
/// `flags` may make the new socket non-blocking.
async fn sock_accept_with_flags(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    flags: u32,
    fd_out: u32,
) -> wasmtime::Result<i32> {
    Ok(status(accept(caller, fd, flags, fd_out).await))
}

/// `fdflags` bit for a non-blocking descriptor.
const NONBLOCK: u32 = 1 << 2;

async fn accept(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    flags: u32,
    fd_out: u32,
) -> Result<(), Errno> {
    let listener = with(caller, |mem, state| {
        mem.bytes_mut(fd_out, 4)?;
        state.sockets.socket(fd)
    })?;
    let accepted = listener.accept().await?;
    accepted.set_nonblocking(flags & NONBLOCK != 0);
    with(caller, |mem, state| {
        let fd = state.sockets.insert(accepted);
        mem.set_u32(fd_out, fd)
    })
}

async fn sock_connect(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    addr: u32,
    port: u32,
) -> wasmtime::Result<i32> {
    let result = async {
        let (socket, addr) = with(caller, |mem, state| {
            Ok((state.sockets.socket(fd)?, address::read(mem, addr, port)?))
        })?;
        socket.connect(addr).await
    };
    Ok(status(result.await))
}

/// `riflags` bit: peek, leaving the data queued.
const RECV_PEEK: u32 = 1;
/// `roflags` bit: the datagram was longer than the buffers.
const RECV_DATA_TRUNCATED: u16 = 1;

/// Receives into the iovecs at `iovs`, writing the length to `len_out` and (but for `fd_read`)
/// the `roflags` to `flags_out`; returns the sender.
async fn receive(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    (iovs, count): (u32, u32),
    flags: u32,
    len_out: u32,
    flags_out: Option<u32>,
) -> Result<Option<SocketAddr>, Errno> {
    let (socket, capacity) = with(caller, |mem, state| {
        let iovecs = mem.iovecs(iovs, count)?;
        mem.bytes_mut(len_out, 4)?;
        if let Some(flags_out) = flags_out {
            mem.bytes_mut(flags_out, 2)?;
        }
        let capacity = iovecs.iter().map(|&(_, len)| len as usize).sum();
        Ok((state.sockets.socket(fd)?, capacity))
    })?;
    let (data, truncated, from) = socket.recv(capacity, flags & RECV_PEEK != 0).await?;
    with(caller, |mem, _| {
        let mut rest = &data[..];
        for (buf, len) in mem.iovecs(iovs, count)? {
            let n = rest.len().min(len as usize);
            mem.write(buf, &rest[..n])?;
            rest = &rest[n..];
        }
        mem.set_u32(len_out, data.len() as u32)?;
        match flags_out {
            Some(flags_out) => {
                mem.set_u16(flags_out, if truncated { RECV_DATA_TRUNCATED } else { 0 })
            }
            None => Ok(()),
        }
    })?;
    Ok(from)
}

async fn sock_recv(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    iovs: u32,
    count: u32,
    flags: u32,
    len_out: u32,
    flags_out: u32,
) -> wasmtime::Result<i32> {
    let result = receive(caller, fd, (iovs, count), flags, len_out, Some(flags_out)).await;
    Ok(status(result.map(drop)))
}

/// `sock_recv_from`: receives, then writes the sender's address at `addr` and, in the
/// eight-parameter form, its port at `port_out`. The older seven-parameter form has no port and
/// takes bare 4- or 16-byte addresses only.
async fn receive_from(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    iovs: (u32, u32),
    (addr, port_out): (u32, Option<u32>),
    flags: u32,
    (len_out, flags_out): (u32, u32),
) -> Result<(), Errno> {
    with(caller, |mem, _| {
        let (buf, len) = (mem.u32(addr)?, mem.u32(addr + 4)?);
        match port_out {
            Some(port_out) => mem.bytes_mut(port_out, 2).map(drop)?,
            None if len != 4 && len != 16 => return Err(Errno::INVAL),
            None => {}
        }
        mem.bytes_mut(buf, len).map(drop)
    })?;
    let Some(from) = receive(caller, fd, iovs, flags, len_out, Some(flags_out)).await? else {
        return Ok(());
    };
    with(caller, |mem, _| {
        address::write(mem, addr, from)?;
        match port_out {
            Some(port_out) => mem.set_u16(port_out, from.port()),
            None => Ok(()),
        }
    })
}

#[allow(clippy::too_many_arguments)] // The ABI's signature.
async fn sock_recv_from(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    iovs: u32,
    count: u32,
    addr: u32,
    flags: u32,
    port_out: u32,
    len_out: u32,
    flags_out: u32,
) -> wasmtime::Result<i32> {
    let address = (addr, Some(port_out));
    let result = receive_from(
        caller,
        fd,
        (iovs, count),
        address,
        flags,
        (len_out, flags_out),
    );
    Ok(status(result.await))
}

/// The older, seven-parameter `sock_recv_from`: the sender's address only, no port.
#[allow(clippy::too_many_arguments)] // The ABI's signature.
async fn sock_recv_from_without_port(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    iovs: u32,
    count: u32,
    addr: u32,
    flags: u32,
    len_out: u32,
    flags_out: u32,
) -> wasmtime::Result<i32> {
    let address = (addr, None);
    let result = receive_from(
        caller,
        fd,
        (iovs, count),
        address,
        flags,
        (len_out, flags_out),
    );
    Ok(status(result.await))
}

/// Sends the iovecs at `iovs` (to `to`); writes how much was sent to `len_out`.
async fn send(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    (iovs, count): (u32, u32),
    to: Option<(u32, u32)>,
    len_out: u32,
) -> Result<(), Errno> {
    let (socket, data, to) = with(caller, |mem, state| {
        mem.bytes_mut(len_out, 4)?;
        let to = to
            .map(|(addr, port)| address::read(mem, addr, port))
            .transpose()?;
        Ok((state.sockets.socket(fd)?, mem.gather(iovs, count)?, to))
    })?;
    let sent = socket.send(&data, to).await?;
    with(caller, |mem, _| mem.set_u32(len_out, sent as u32))
}

async fn sock_send(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    iovs: u32,
    count: u32,
    _flags: u32,
    len_out: u32,
) -> wasmtime::Result<i32> {
    Ok(status(send(caller, fd, (iovs, count), None, len_out).await))
}

#[allow(clippy::too_many_arguments)] // The ABI's signature.
async fn sock_send_to(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    iovs: u32,
    count: u32,
    addr: u32,
    port: u32,
    _flags: u32,
    len_out: u32,
) -> wasmtime::Result<i32> {
    Ok(status(
        send(caller, fd, (iovs, count), Some((addr, port)), len_out).await,
    ))
}

async fn sock_shutdown(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    how: u32,
) -> wasmtime::Result<i32> {
    Ok(status(socket(caller, fd).and_then(|s| s.shutdown(how))))
}

/// Writes the local (or, with `peer`, the remote) address to `addr` and its port to `port_out`, and for the older, four
/// parameter form the IP version (4 or 6) to `type_out`.
fn address_of(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    peer: bool,
    addr: u32,
    type_out: Option<u32>,
    port_out: u32,
) -> Result<(), Errno> {
    with(caller, |mem, state| {
        let socket = state.sockets.socket(fd)?;
        let found = if peer {
            socket.peer_addr()?
        } else {
            socket.local_addr()?
        };
        mem.bytes_mut(port_out, 4)?;
        if let Some(type_out) = type_out {
            mem.bytes_mut(type_out, 4)?;
            mem.set_u32(type_out, if found.is_ipv4() { 4 } else { 6 })?;
        } else if mem.u32(addr + 4)? != 128 {
            // The three-parameter form writes an address storage only.
            return Err(Errno::INVAL);
        }
        address::write(mem, addr, found)?;
        mem.set_u32(port_out, u32::from(found.port()))
    })
}

/// `sock_getlocaladdr` and (`PEER`) `sock_getpeeraddr`, three-parameter form.
async fn sock_address<const PEER: bool>(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    addr: u32,
    port: u32,
) -> wasmtime::Result<i32> {
    Ok(status(address_of(caller, fd, PEER, addr, None, port)))
}

/// `sock_getlocaladdr` and (`PEER`) `sock_getpeeraddr`, four-parameter form.
async fn sock_address_typed<const PEER: bool>(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    addr: u32,
    ty: u32,
    port: u32,
) -> wasmtime::Result<i32> {
    Ok(status(address_of(caller, fd, PEER, addr, Some(ty), port)))
}

async fn sock_getsockopt(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    level: u32,
    name: u32,
    value: u32,
    size: u32,
) -> wasmtime::Result<i32> {
    Ok(status(with(caller, |mem, state| {
        let option = SocketOption::of(level, name)?;
        let capacity = mem.u32(size)?;
        mem.bytes_mut(value, capacity)?;
        let found = state.sockets.socket(fd)?.get_option(option)?;
        let n = found.len().min(capacity as usize);
        mem.write(value, &found[..n])?;
        mem.set_u32(size, n as u32)
    })))
}

async fn sock_setsockopt(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    level: u32,
    name: u32,
    value: u32,
    size: u32,
) -> wasmtime::Result<i32> {
    Ok(status(with(caller, |mem, state| {
        let option = SocketOption::of(level, name)?;
        let value = mem.bytes(value, size)?.to_vec();
        state.sockets.socket(fd)?.set_option(option, &value)
    })))
}

/// The layout of a `wasi_addrinfo` (packed to 4 bytes): flags u16 @0, family u8 @2, socktype
/// u8 @3, protocol u8 @4, addrlen u32 @8, addr ptr @12, canonname ptr @16, canonnamelen u32
/// @20, next ptr @24. Its `addr` points at a `wasi_sockaddr`: family u8 @0, sa_data_len u32
/// @4, sa_data ptr @8.
mod addrinfo {
    pub(super) const FAMILY: u32 = 2;
    pub(super) const SOCKTYPE: u32 = 3;
    pub(super) const PROTOCOL: u32 = 4;
    pub(super) const ADDRLEN: u32 = 8;
    pub(super) const ADDR: u32 = 12;
    pub(super) const CANONNAMELEN: u32 = 20;
    pub(super) const NEXT: u32 = 24;
    pub(super) const SA_DATA_LEN: u32 = 4;
    pub(super) const SA_DATA: u32 = 8;
}

#[allow(clippy::too_many_arguments)] // The ABI's signature.
async fn sock_getaddrinfo(
    caller: &mut Host<'_, impl WasmEdgeView>,
    node: u32,
    node_len: u32,
    service: u32,
    service_len: u32,
    hints: u32,
    res: u32,
    max: u32,
    res_len: u32,
) -> wasmtime::Result<i32> {
    let result = async {
        let text = |mem: &Mem<'_>, ptr, len| -> Result<String, Errno> {
            let bytes = mem.bytes(ptr, len)?;
            let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
            String::from_utf8(bytes.to_vec()).map_err(|_| Errno::AI_NONAME)
        };
        let (node, service, family, socktype) = with(caller, |mem, state| {
            if state.network == Network::None {
                return Err(Errno::ACCES);
            }
            mem.bytes_mut(res_len, 4)?;
            Ok((
                text(mem, node, node_len)?,
                text(mem, service, service_len)?,
                mem.u8(hints + addrinfo::FAMILY)?,
                mem.u8(hints + addrinfo::SOCKTYPE)?,
            ))
        })?;
        if node.is_empty() && service.is_empty() {
            return Err(Errno::AI_NONAME);
        }
        if max < 1 {
            return Err(Errno::AI_MEMORY);
        }
        if family > address::INET6 {
            return Err(Errno::AI_FAMILY);
        }
        let socktype = match socktype {
            0 | 2 => Kind::Stream,
            1 => Kind::Datagram,
            _ => return Err(Errno::AI_SOCKTYPE),
        };
        let port = names::service_port(&service)?;
        let ips = if node.is_empty() {
            address::loopback().to_vec()
        } else {
            let resolver = with(caller, |_, state| Ok(state.names.resolver()))?;
            names::lookup(&resolver, &node, family).await?
        };
        with(caller, |mem, _| {
            let mut entry = mem.u32(res)?;
            let mut written = 0;
            for ip in ips.iter().take(max as usize) {
                if entry == 0 {
                    break;
                }
                let addr = SocketAddr::new(*ip, port);
                let data = address::sa_data(addr);
                let sockaddr = mem.u32(entry + addrinfo::ADDR)?;
                let capacity = mem.u32(sockaddr + addrinfo::SA_DATA_LEN)?;
                if (capacity as usize) < data.len() {
                    // An IPv6 address does not fit the guest's 14-byte buffers.
                    continue;
                }
                let family = if ip.is_ipv4() {
                    address::INET4
                } else {
                    address::INET6
                };
                mem.write(mem.u32(sockaddr + addrinfo::SA_DATA)?, &data)?;
                mem.set_u8(sockaddr, family)?;
                mem.set_u32(sockaddr + addrinfo::SA_DATA_LEN, data.len() as u32)?;
                mem.set_u8(entry + addrinfo::FAMILY, family)?;
                mem.set_u8(entry + addrinfo::SOCKTYPE, socktype as u8)?;
                let protocol = if socktype == Kind::Stream { 1 } else { 2 };
                mem.set_u8(entry + addrinfo::PROTOCOL, protocol)?;
                // sizeof(struct sockaddr_in) or sockaddr_in6, as the C library says.
                mem.set_u32(entry + addrinfo::ADDRLEN, data.len() as u32 + 2)?;
                mem.set_u32(entry + addrinfo::CANONNAMELEN, 0)?;
                written += 1;
                entry = mem.u32(entry + addrinfo::NEXT)?;
            }
            mem.set_u32(res_len, written)
        })
    };
    Ok(status(result.await))
}

async fn fd_read(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    iovs: u32,
    count: u32,
    len_out: u32,
) -> wasmtime::Result<i32> {
    if !is_socket(caller, fd) {
        return wasi!(caller, fd_read(fd, iovs, count, len_out).await);
    }
    let result = receive(caller, fd, (iovs, count), 0, len_out, None).await;
    Ok(status(result.map(drop)))
}

async fn fd_write(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    iovs: u32,
    count: u32,
    len_out: u32,
) -> wasmtime::Result<i32> {
    if !is_socket(caller, fd) {
        return wasi!(caller, fd_write(fd, iovs, count, len_out).await);
    }
    Ok(status(send(caller, fd, (iovs, count), None, len_out).await))
}

async fn fd_close(caller: &mut Host<'_, impl WasmEdgeView>, fd: u32) -> wasmtime::Result<i32> {
    let removed = caller
        .data_mut()
        .wasmedge()
        .and_then(|state| state.sockets.remove(fd));
    match removed {
        Some(_) => Ok(0),
        None => wasi!(caller, fd_close(fd).await),
    }
}

/// `filetype` codes of the sockets in an `fdstat`.
const SOCKET_DGRAM: u8 = 5;
const SOCKET_STREAM: u8 = 6;

async fn fd_fdstat_get(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    out: u32,
) -> wasmtime::Result<i32> {
    if !is_socket(caller, fd) {
        return wasi!(caller, fd_fdstat_get(fd, out).await);
    }
    Ok(status(with(caller, |mem, state| {
        let socket = state.sockets.socket(fd)?;
        mem.bytes_mut(out, 24)?;
        let filetype = match socket.kind() {
            Kind::Datagram => SOCKET_DGRAM,
            Kind::Stream => SOCKET_STREAM,
        };
        mem.set_u8(out, filetype)?;
        mem.set_u8(out + 1, 0)?;
        mem.set_u16(
            out + 2,
            if socket.is_nonblocking() {
                NONBLOCK as u16
            } else {
                0
            },
        )?;
        mem.set_u32(out + 4, 0)?;
        // Every right preview 1 defines (bits 0-29): sockets are not restricted by rights.
        mem.set_u64(out + 8, (1 << 30) - 1)?;
        mem.set_u64(out + 16, (1 << 30) - 1)
    })))
}

async fn fd_fdstat_set_flags(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    flags: u32,
) -> wasmtime::Result<i32> {
    if !is_socket(caller, fd) {
        return wasi!(caller, fd_fdstat_set_flags(fd, flags));
    }
    Ok(status(socket(caller, fd).map(|socket| {
        socket.set_nonblocking(flags & NONBLOCK != 0);
    })))
}

/// [`address::read`] over a bare slice, for the fuzz target.
#[cfg(fuzzing)]
pub fn read_address(memory: &mut [u8], ptr: u32, port: u32) -> Option<std::net::SocketAddr> {
    address::read(&memory::Mem(memory), ptr, port).ok()
}
