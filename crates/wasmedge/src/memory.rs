//! The guest's side of every call: WASI errno values and bounds-checked access to linear memory.
//! A pointer or length a guest gets wrong is `EFAULT` for that call, as under WasmEdge; it never
//! reaches the host as a panic.

use std::io;

/// A WASI preview 1 errno, plus WasmEdge's extension for name lookups (`EAI_*` as 77-87).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Errno(pub(crate) u16);

impl Errno {
    pub(crate) const ACCES: Errno = Errno(2);
    pub(crate) const AFNOSUPPORT: Errno = Errno(5);
    pub(crate) const AGAIN: Errno = Errno(6);
    pub(crate) const BADF: Errno = Errno(8);
    pub(crate) const FAULT: Errno = Errno(21);
    pub(crate) const INPROGRESS: Errno = Errno(26);
    pub(crate) const INVAL: Errno = Errno(28);
    pub(crate) const IO: Errno = Errno(29);
    pub(crate) const NOPROTOOPT: Errno = Errno(50);
    pub(crate) const NOTSOCK: Errno = Errno(57);
    pub(crate) const NOTSUP: Errno = Errno(58);
    pub(crate) const AI_AGAIN: Errno = Errno(78);
    pub(crate) const AI_FAMILY: Errno = Errno(81);
    pub(crate) const AI_MEMORY: Errno = Errno(82);
    pub(crate) const AI_NONAME: Errno = Errno(84);
    pub(crate) const AI_SERVICE: Errno = Errno(85);
    pub(crate) const AI_SOCKTYPE: Errno = Errno(86);

    /// The WASI errno of a host OS error (Linux numbering in, WASI numbering out).
    pub(crate) fn of_os(code: i32) -> Errno {
        let wasi = match code {
            libc::E2BIG => 1,
            libc::EACCES => 2,
            libc::EADDRINUSE => 3,
            libc::EADDRNOTAVAIL => 4,
            libc::EAFNOSUPPORT => 5,
            libc::EAGAIN => 6,
            libc::EALREADY => 7,
            libc::EBADF => 8,
            libc::ECONNABORTED => 13,
            libc::ECONNREFUSED => 14,
            libc::ECONNRESET => 15,
            libc::EDESTADDRREQ => 17,
            libc::EFAULT => 21,
            libc::EHOSTUNREACH => 23,
            libc::EINPROGRESS => 26,
            libc::EINTR => 27,
            libc::EINVAL => 28,
            libc::EISCONN => 30,
            libc::EMFILE => 33,
            libc::EMSGSIZE => 35,
            libc::ENETDOWN => 38,
            libc::ENETRESET => 39,
            libc::ENETUNREACH => 40,
            libc::ENFILE => 41,
            libc::ENOBUFS => 42,
            libc::ENODEV => 43,
            libc::ENOMEM => 48,
            libc::ENOPROTOOPT => 50,
            libc::ENOSYS => 52,
            libc::ENOTCONN => 53,
            libc::ENOTSOCK => 57,
            libc::EOPNOTSUPP => 58,
            libc::EPERM => 63,
            libc::EPIPE => 64,
            libc::EPROTONOSUPPORT => 66,
            libc::EPROTOTYPE => 67,
            libc::ETIMEDOUT => 73,
            _ => 29,
        };
        Errno(wasi)
    }
}

impl From<io::Error> for Errno {
    fn from(error: io::Error) -> Errno {
        match error.raw_os_error() {
            Some(code) => Errno::of_os(code),
            None if error.kind() == io::ErrorKind::WouldBlock => Errno::AGAIN,
            None => Errno::IO,
        }
    }
}

/// What a host function returns to the guest: 0 or the errno.
pub(crate) fn status(result: Result<(), Errno>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(Errno(errno)) => i32::from(errno),
    }
}

/// A guest's linear memory for the length of one host call.
pub(crate) struct Mem<'a>(pub(crate) &'a mut [u8]);

impl Mem<'_> {
    fn range(&self, ptr: u32, len: u32) -> Result<std::ops::Range<usize>, Errno> {
        let start = ptr as usize;
        let end = start.checked_add(len as usize).ok_or(Errno::FAULT)?;
        if end > self.0.len() {
            return Err(Errno::FAULT);
        }
        Ok(start..end)
    }

    pub(crate) fn bytes(&self, ptr: u32, len: u32) -> Result<&[u8], Errno> {
        Ok(&self.0[self.range(ptr, len)?])
    }

    pub(crate) fn bytes_mut(&mut self, ptr: u32, len: u32) -> Result<&mut [u8], Errno> {
        let range = self.range(ptr, len)?;
        Ok(&mut self.0[range])
    }

    fn array<const N: usize>(&self, ptr: u32) -> Result<[u8; N], Errno> {
        Ok(self
            .bytes(ptr, N as u32)?
            .try_into()
            .expect("length checked"))
    }

    pub(crate) fn u8(&self, ptr: u32) -> Result<u8, Errno> {
        Ok(self.array::<1>(ptr)?[0])
    }

    pub(crate) fn u16(&self, ptr: u32) -> Result<u16, Errno> {
        Ok(u16::from_le_bytes(self.array(ptr)?))
    }

    pub(crate) fn u32(&self, ptr: u32) -> Result<u32, Errno> {
        Ok(u32::from_le_bytes(self.array(ptr)?))
    }

    pub(crate) fn u64(&self, ptr: u32) -> Result<u64, Errno> {
        Ok(u64::from_le_bytes(self.array(ptr)?))
    }

    pub(crate) fn write(&mut self, ptr: u32, bytes: &[u8]) -> Result<(), Errno> {
        self.bytes_mut(ptr, bytes.len() as u32)?
            .copy_from_slice(bytes);
        Ok(())
    }

    pub(crate) fn set_u8(&mut self, ptr: u32, value: u8) -> Result<(), Errno> {
        self.write(ptr, &[value])
    }

    pub(crate) fn set_u16(&mut self, ptr: u32, value: u16) -> Result<(), Errno> {
        self.write(ptr, &value.to_le_bytes())
    }

    pub(crate) fn set_u32(&mut self, ptr: u32, value: u32) -> Result<(), Errno> {
        self.write(ptr, &value.to_le_bytes())
    }

    pub(crate) fn set_u64(&mut self, ptr: u32, value: u64) -> Result<(), Errno> {
        self.write(ptr, &value.to_le_bytes())
    }

    /// The `(buf, len)` pairs of a WASI iovec array, each checked to lie in memory.
    pub(crate) fn iovecs(&self, ptr: u32, count: u32) -> Result<Vec<(u32, u32)>, Errno> {
        // WasmEdge's limit, and Linux's IOV_MAX.
        if count > 1024 {
            return Err(Errno::INVAL);
        }
        (0..count)
            .map(|i| {
                let at = ptr.checked_add(i * 8).ok_or(Errno::FAULT)?;
                let (buf, len) = (self.u32(at)?, self.u32(at + 4)?);
                self.range(buf, len)?;
                Ok((buf, len))
            })
            .collect()
    }

    /// All of an iovec array's bytes, in order: one datagram must be sent whole.
    pub(crate) fn gather(&self, ptr: u32, count: u32) -> Result<Vec<u8>, Errno> {
        let mut data = Vec::new();
        for (buf, len) in self.iovecs(ptr, count)? {
            data.extend_from_slice(self.bytes(buf, len)?);
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_bounds_is_efault_never_a_panic() {
        let mut bytes = vec![0u8; 16];
        let mut mem = Mem(&mut bytes);
        assert_eq!(mem.u32(13), Err(Errno::FAULT));
        assert_eq!(mem.u32(u32::MAX), Err(Errno::FAULT));
        assert_eq!(mem.bytes(8, u32::MAX), Err(Errno::FAULT));
        assert_eq!(mem.set_u64(9, 1), Err(Errno::FAULT));
        mem.set_u32(0, 8).unwrap();
        mem.set_u32(4, 100).unwrap();
        // An iovec whose buffer runs past the end.
        assert_eq!(mem.iovecs(0, 1), Err(Errno::FAULT));
        mem.set_u32(4, 8).unwrap();
        assert_eq!(mem.iovecs(0, 1), Ok(vec![(8, 8)]));
        assert_eq!(mem.iovecs(0, 5000), Err(Errno::INVAL));
    }

    #[test]
    fn os_errors_map_to_wasi_numbering() {
        assert_eq!(Errno::of_os(libc::EAGAIN), Errno::AGAIN);
        assert_eq!(Errno::of_os(libc::ECONNREFUSED), Errno(14));
        assert_eq!(Errno::of_os(libc::EADDRINUSE), Errno(3));
        assert_eq!(Errno::of_os(9999), Errno::IO);
    }
}
