//! `sock_getaddrinfo`: names looked up as the container's files say.

use std::net::SocketAddr;

use super::*;
use crate::memory::{Errno, status};
use crate::socket::Kind;
use crate::{address, names};
use wasmcell_workload::Network;

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
pub(crate) async fn sock_getaddrinfo(
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
