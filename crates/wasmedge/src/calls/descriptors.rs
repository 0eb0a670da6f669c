//! The preview 1 calls that may name a socket: a socket's are served here, any other
//! descriptor's by wasmtime-wasi's own function.

use super::sockets::NONBLOCK;
use super::*;
use crate::memory::status;
use crate::socket::Kind;

pub(crate) async fn fd_read(
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

pub(crate) async fn fd_write(
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

pub(crate) async fn fd_close(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
) -> wasmtime::Result<i32> {
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
pub(crate) const SOCKET_DGRAM: u8 = 5;
pub(crate) const SOCKET_STREAM: u8 = 6;

pub(crate) async fn fd_fdstat_get(
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

pub(crate) async fn fd_fdstat_set_flags(
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
