//! The socket calls: open, bind, listen, accept, connect, send, receive, shut down, addresses
//! and options.

use std::net::SocketAddr;

use super::*;
use crate::address;
use crate::memory::{Errno, status};
use crate::socket::SocketOption;
use wasmcell_workload::Network;

pub(crate) async fn sock_open(
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

pub(crate) async fn sock_bind(
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

pub(crate) async fn sock_listen(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    backlog: u32,
) -> wasmtime::Result<i32> {
    Ok(status(socket(caller, fd).and_then(|s| s.listen(backlog))))
}

pub(crate) async fn sock_accept(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    fd_out: u32,
) -> wasmtime::Result<i32> {
    Ok(status(accept(caller, fd, 0, fd_out).await))
}

/// Preview 1's `sock_accept(fd, flags, *fd)`, for a module of this ABI importing that type:
/// `flags` may make the new socket non-blocking.
pub(crate) async fn sock_accept_with_flags(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    flags: u32,
    fd_out: u32,
) -> wasmtime::Result<i32> {
    Ok(status(accept(caller, fd, flags, fd_out).await))
}

/// `fdflags` bit for a non-blocking descriptor.
pub(crate) const NONBLOCK: u32 = 1 << 2;

pub(crate) async fn accept(
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

pub(crate) async fn sock_connect(
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
pub(crate) const RECV_PEEK: u32 = 1;
/// `roflags` bit: the datagram was longer than the buffers.
pub(crate) const RECV_DATA_TRUNCATED: u16 = 1;

/// Receives into the iovecs at `iovs`, writing the length to `len_out` and (but for `fd_read`)
/// the `roflags` to `flags_out`; returns the sender.
pub(crate) async fn receive(
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

pub(crate) async fn sock_recv(
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
pub(crate) async fn receive_from(
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
pub(crate) async fn sock_recv_from(
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
pub(crate) async fn sock_recv_from_without_port(
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
pub(crate) async fn send(
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

pub(crate) async fn sock_send(
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
pub(crate) async fn sock_send_to(
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

pub(crate) async fn sock_shutdown(
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
pub(crate) async fn sock_address<const PEER: bool>(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    addr: u32,
    port: u32,
) -> wasmtime::Result<i32> {
    Ok(status(address_of(caller, fd, PEER, addr, None, port)))
}

/// `sock_getlocaladdr` and (`PEER`) `sock_getpeeraddr`, four-parameter form.
pub(crate) async fn sock_address_typed<const PEER: bool>(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
    addr: u32,
    ty: u32,
    port: u32,
) -> wasmtime::Result<i32> {
    Ok(status(address_of(caller, fd, PEER, addr, Some(ty), port)))
}

pub(crate) async fn sock_getsockopt(
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

pub(crate) async fn sock_setsockopt(
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
