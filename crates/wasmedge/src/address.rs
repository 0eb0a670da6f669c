//! Socket addresses as the WasmEdge ABI lays them out in guest memory.
//!
//! A `wasi_address { buf: u32, buf_len: u32 }` points at the IP address; the port travels as a
//! separate argument. `buf_len` says the layout: 4 (IPv4 octets), 16 (IPv6 octets) or 128 (an
//! address storage: family as a little-endian u16, then the octets), the last being what newer
//! guests (`wasmedge_wasi_socket` 0.5) pass where the host writes an address back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::memory::{Errno, Mem};

/// Address family codes of the ABI.
pub(crate) const INET4: u8 = 1;
pub(crate) const INET6: u8 = 2;

/// The size of an address storage.
const STORAGE: u32 = 128;

/// Reads the `wasi_address` at `ptr` and the port into a socket address.
pub(crate) fn read(mem: &Mem<'_>, ptr: u32, port: u32) -> Result<SocketAddr, Errno> {
    let (buf, len) = (mem.u32(ptr)?, mem.u32(ptr + 4)?);
    let bytes = mem.bytes(buf, len)?;
    let ip = match len {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")),
        STORAGE => match u16::from_le_bytes([bytes[0], bytes[1]]) as u8 {
            INET4 => IpAddr::from(<[u8; 4]>::try_from(&bytes[2..6]).expect("4 bytes")),
            INET6 => IpAddr::from(<[u8; 16]>::try_from(&bytes[2..18]).expect("16 bytes")),
            _ => return Err(Errno::AFNOSUPPORT),
        },
        _ => return Err(Errno::INVAL),
    };
    let port = u16::try_from(port).map_err(|_| Errno::INVAL)?;
    Ok(SocketAddr::new(ip, port))
}

/// Writes `addr`'s IP into the `wasi_address` at `ptr`: as an address storage when its buffer is
/// one, otherwise as bare octets (the buffer must hold them). Returns the family code.
pub(crate) fn write(mem: &mut Mem<'_>, ptr: u32, addr: SocketAddr) -> Result<u8, Errno> {
    let (buf, len) = (mem.u32(ptr)?, mem.u32(ptr + 4)?);
    mem.bytes(buf, len)?;
    let (family, octets) = family_and_octets(addr.ip());
    if len == STORAGE {
        mem.set_u16(buf, u16::from(family))?;
        mem.write(buf + 2, &octets)?;
    } else if (len as usize) < octets.len() {
        return Err(Errno::INVAL);
    } else {
        mem.write(buf, &octets)?;
    }
    Ok(family)
}

fn family_and_octets(ip: IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => (INET4, v4.octets().to_vec()),
        IpAddr::V6(v6) => (INET6, v6.octets().to_vec()),
    }
}

/// An address in the shape of a Linux `sockaddr` without its family (the `sa_data` a
/// `sock_getaddrinfo` result carries): port in network order, then the IPv4 address, or for
/// IPv6 the flow info, address and scope id. 14 bytes for IPv4, 26 for IPv6.
pub(crate) fn sa_data(addr: SocketAddr) -> Vec<u8> {
    let mut data = addr.port().to_be_bytes().to_vec();
    match addr {
        SocketAddr::V4(v4) => {
            data.extend_from_slice(&v4.ip().octets());
            data.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(v6) => {
            data.extend_from_slice(&v6.flowinfo().to_be_bytes());
            data.extend_from_slice(&v6.ip().octets());
            data.extend_from_slice(&v6.scope_id().to_be_bytes());
        }
    }
    data
}

/// Whether `ip` is of the family a name lookup's hints ask for (any for `Unspec`).
pub(crate) fn family_matches(family: u8, ip: IpAddr) -> bool {
    match family {
        INET4 => ip.is_ipv4(),
        INET6 => ip.is_ipv6(),
        _ => true,
    }
}

/// The loopback addresses, for `localhost` when no hosts file names it.
pub(crate) fn loopback() -> [IpAddr; 2] {
    [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_with_address(bytes: &[u8]) -> Vec<u8> {
        let mut memory = vec![0u8; 256];
        memory[0..4].copy_from_slice(&16u32.to_le_bytes());
        memory[4..8].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        memory[16..16 + bytes.len()].copy_from_slice(bytes);
        memory
    }

    #[test]
    fn reads_every_layout() {
        let mut memory = memory_with_address(&[127, 0, 0, 1]);
        let addr = read(&Mem(&mut memory), 0, 8080).unwrap();
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());

        let mut memory = memory_with_address(&Ipv6Addr::LOCALHOST.octets());
        assert_eq!(
            read(&Mem(&mut memory), 0, 1).unwrap(),
            "[::1]:1".parse().unwrap()
        );

        let mut storage = vec![0u8; 128];
        storage[0] = INET4;
        storage[2..6].copy_from_slice(&[10, 0, 0, 2]);
        let mut memory = memory_with_address(&storage);
        assert_eq!(
            read(&Mem(&mut memory), 0, 53).unwrap(),
            "10.0.0.2:53".parse().unwrap()
        );
    }

    #[test]
    fn bad_addresses_are_errnos() {
        let mut memory = memory_with_address(&[1, 2, 3]);
        assert_eq!(read(&Mem(&mut memory), 0, 80), Err(Errno::INVAL));
        let mut memory = memory_with_address(&[127, 0, 0, 1]);
        assert_eq!(read(&Mem(&mut memory), 0, 70000), Err(Errno::INVAL));
        let mut storage = vec![0u8; 128];
        storage[0] = 9;
        let mut memory = memory_with_address(&storage);
        assert_eq!(read(&Mem(&mut memory), 0, 80), Err(Errno::AFNOSUPPORT));
        // The buffer pointer runs past the end of memory.
        let mut memory = memory_with_address(&[127, 0, 0, 1]);
        memory[0..4].copy_from_slice(&254u32.to_le_bytes());
        assert_eq!(read(&Mem(&mut memory), 0, 80), Err(Errno::FAULT));
    }

    #[test]
    fn writes_storage_or_octets() {
        let mut memory = memory_with_address(&[0; 128]);
        let family = write(&mut Mem(&mut memory), 0, "10.1.2.3:9".parse().unwrap()).unwrap();
        assert_eq!(family, INET4);
        assert_eq!(&memory[16..22], &[INET4, 0, 10, 1, 2, 3]);

        let mut memory = memory_with_address(&[0; 4]);
        let v6 = "[::1]:9".parse().unwrap();
        assert_eq!(write(&mut Mem(&mut memory), 0, v6), Err(Errno::INVAL));
    }

    #[test]
    fn sa_data_is_a_sockaddr_without_family() {
        assert_eq!(
            sa_data("1.2.3.4:80".parse().unwrap()),
            [0, 80, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(sa_data("[::1]:80".parse().unwrap()).len(), 26);
    }
}
