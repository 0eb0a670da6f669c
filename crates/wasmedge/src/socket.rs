//! A guest's sockets: host sockets, opened by the process that runs the guest and so inside the
//! container's network namespace, and numbered in a range of descriptors of their own.
//!
//! Every host socket is non-blocking and registered with the tokio reactor; whether the guest
//! sees it as blocking is a flag of ours (`fd_fdstat_set_flags`), so a guest blocked in
//! `sock_accept` or `sock_recv` waits on the reactor and never holds a thread.

use std::collections::BTreeMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::address::{INET4, INET6};
use super::memory::Errno;

/// The most one receive returns: a short read, as POSIX allows, bounds the copy.
const MAX_RECV: usize = 256 << 10;

/// The first descriptor number of a socket. WASI's own descriptors (stdio, preopens, open files)
/// are numbered from 0 upwards by wasmtime-wasi, lowest free first, so the two never meet unless
/// a guest holds 65536 files open at once.
pub(crate) const FIRST_FD: u32 = 1 << 16;

/// Stream or datagram, with the ABI's codes for `sock_open` and `SO_TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Datagram = 1,
    Stream = 2,
}

/// One guest socket.
pub(crate) struct GuestSocket {
    /// The descriptor's registration with the reactor, made at its first wait. Not at open: a
    /// stream socket that neither listens nor connects yet reports a hang-up, which tokio keeps
    /// for good, so a listener registered early would always look ready. Declared before
    /// `socket` so that it is dropped (deregistered) before the descriptor closes.
    io: OnceLock<AsyncFd<RawFd>>,
    socket: Socket,
    kind: Kind,
    /// `O_NONBLOCK` as the guest set it.
    nonblocking: AtomicBool,
    /// `SO_RCVTIMEO` and `SO_SNDTIMEO` as the guest set them: the host socket never blocks, so
    /// they bound our waits instead.
    timeouts: Mutex<[Option<Duration>; 2]>,
}

impl GuestSocket {
    /// `sock_open`: a new socket of `family` (1 IPv4, 2 IPv6) and `kind` (1 datagram, 2 stream).
    pub(crate) fn open(family: u8, kind: u8) -> Result<GuestSocket, Errno> {
        let domain = match family {
            INET4 => Domain::IPV4,
            INET6 => Domain::IPV6,
            _ => return Err(Errno::INVAL),
        };
        let (ty, kind) = match kind {
            1 => (Type::DGRAM, Kind::Datagram),
            2 => (Type::STREAM, Kind::Stream),
            _ => return Err(Errno::INVAL),
        };
        let socket = Socket::new(domain, ty.nonblocking().cloexec(), None)?;
        GuestSocket::wrap(socket, kind)
    }

    fn wrap(socket: Socket, kind: Kind) -> Result<GuestSocket, Errno> {
        socket.set_nonblocking(true)?;
        if kind == Kind::Stream {
            // The ABI has no TCP-level options, so a guest could never turn Nagle off: with it
            // on, a server that writes headers and body in two sends waits out the client's
            // delayed ACK (40 ms) on every response.
            socket.set_tcp_nodelay(true)?;
        }
        Ok(GuestSocket {
            io: OnceLock::new(),
            socket,
            kind,
            nonblocking: AtomicBool::new(false),
            timeouts: Mutex::new([None, None]),
        })
    }

    /// The reactor's view of the socket, registering it on first use. A store makes one host
    /// call at a time, so there is no race to register twice.
    fn io(&self) -> Result<&AsyncFd<RawFd>, Errno> {
        if let Some(io) = self.io.get() {
            return Ok(io);
        }
        // SAFETY: the descriptor stays open, the same socket, for as long as the registration
        // lives: `socket` is dropped after `io` (field order).
        let io = unsafe { AsyncFd::register(self.socket.as_raw_fd()) }
            .map_err(|error| Errno::from(error.into_parts().1))?;
        Ok(self.io.get_or_init(|| io))
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    pub(crate) fn is_nonblocking(&self) -> bool {
        self.nonblocking.load(Ordering::Relaxed)
    }

    pub(crate) fn set_nonblocking(&self, nonblocking: bool) {
        self.nonblocking.store(nonblocking, Ordering::Relaxed);
    }

    pub(crate) fn bind(&self, addr: SocketAddr) -> Result<(), Errno> {
        Ok(self.socket.bind(&addr.into())?)
    }

    pub(crate) fn listen(&self, backlog: u32) -> Result<(), Errno> {
        if self.kind != Kind::Stream {
            return Err(Errno::NOTSUP);
        }
        Ok(self.socket.listen(backlog.min(i32::MAX as u32) as i32)?)
    }

    pub(crate) async fn accept(&self) -> Result<GuestSocket, Errno> {
        let (socket, _) = self
            .op(Interest::READABLE, |socket| socket.accept())
            .await?;
        GuestSocket::wrap(socket, Kind::Stream)
    }

    /// `sock_connect`: a non-blocking guest gets `EINPROGRESS` and polls for writability, as
    /// with a native socket; a blocking one waits here for the outcome.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<(), Errno> {
        match self.socket.connect(&addr.into()) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                if self.is_nonblocking() {
                    return Err(Errno::INPROGRESS);
                }
                let wait = self.io()?.ready(Interest::WRITABLE);
                drop(self.bounded(1, wait).await??);
                match self.socket.take_error()? {
                    Some(error) => Err(error.into()),
                    None => Ok(()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Receives up to `len` bytes (`MSG_PEEK` when `peek`): what the stream has, or one
    /// datagram, saying whether it was longer than `len` and who sent it. The caller copies the
    /// bytes into guest memory: the copy is small next to the syscall, and guest memory is never
    /// borrowed across a wait.
    pub(crate) async fn recv(
        &self,
        len: usize,
        peek: bool,
    ) -> Result<(Vec<u8>, bool, Option<SocketAddr>), Errno> {
        let mut flags = if peek { libc::MSG_PEEK } else { 0 };
        if self.kind == Kind::Datagram {
            // Returns a datagram's whole length even when it did not fit.
            flags |= libc::MSG_TRUNC;
        }
        let mut buf = vec![MaybeUninit::<u8>::uninit(); len.min(MAX_RECV)];
        let (n, from) = self
            .op(Interest::READABLE, |socket| {
                socket.recv_from_with_flags(&mut buf, flags)
            })
            .await?;
        let received = n.min(buf.len());
        let data = buf[..received]
            .iter()
            // SAFETY: the kernel initialised the first `received` bytes.
            .map(|byte| unsafe { byte.assume_init() })
            .collect();
        Ok((data, n > received, from.as_socket()))
    }

    /// Sends `data` (to `to`, for a datagram socket that names a destination); returns how much
    /// was sent.
    pub(crate) async fn send(&self, data: &[u8], to: Option<SocketAddr>) -> Result<usize, Errno> {
        let to = to.map(SockAddr::from);
        self.op(Interest::WRITABLE, |socket| match &to {
            Some(to) => socket.send_to_with_flags(data, to, libc::MSG_NOSIGNAL),
            None => socket.send_with_flags(data, libc::MSG_NOSIGNAL),
        })
        .await
    }

    /// `sock_shutdown`: `how` is 1 (read), 2 (write) or 3 (both).
    pub(crate) fn shutdown(&self, how: u32) -> Result<(), Errno> {
        let how = match how {
            1 => Shutdown::Read,
            2 => Shutdown::Write,
            3 => Shutdown::Both,
            _ => return Err(Errno::INVAL),
        };
        Ok(self.socket.shutdown(how)?)
    }

    pub(crate) fn local_addr(&self) -> Result<SocketAddr, Errno> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or(Errno::AFNOSUPPORT)
    }

    pub(crate) fn peer_addr(&self) -> Result<SocketAddr, Errno> {
        self.socket
            .peer_addr()?
            .as_socket()
            .ok_or(Errno::AFNOSUPPORT)
    }

    /// `sock_getsockopt` at `SOL_SOCKET`: the value's bytes as Linux lays them out, which for
    /// the ints, `linger` and `timeval` the ABI carries is also the guest's layout.
    pub(crate) fn get_option(&self, option: SocketOption) -> Result<Vec<u8>, Errno> {
        let socket = &self.socket;
        let int = |value: i32| Ok(value.to_le_bytes().to_vec());
        match option {
            SocketOption::TYPE => int(self.kind as i32),
            SocketOption::ERROR => int(match socket.take_error()? {
                Some(error) => i32::from(Errno::from(error).0),
                None => 0,
            }),
            SocketOption::RECEIVE_TIMEOUT | SocketOption::SEND_TIMEOUT => {
                let timeout = self.timeouts.lock().expect("timeouts")[option.timeout_index()];
                let timeout = timeout.unwrap_or_default();
                let mut value = (timeout.as_secs() as i64).to_le_bytes().to_vec();
                value.extend_from_slice(&i64::from(timeout.subsec_micros()).to_le_bytes());
                Ok(value)
            }
            _ => raw_getsockopt(socket, option.linux_name()),
        }
    }

    /// `sock_setsockopt` at `SOL_SOCKET`.
    pub(crate) fn set_option(&self, option: SocketOption, value: &[u8]) -> Result<(), Errno> {
        match option {
            SocketOption::TYPE | SocketOption::ERROR | SocketOption::ACCEPT_CONN => {
                Err(Errno::NOPROTOOPT)
            }
            SocketOption::RECEIVE_TIMEOUT | SocketOption::SEND_TIMEOUT => {
                let value: [u8; 16] = value.try_into().map_err(|_| Errno::INVAL)?;
                let secs = i64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
                let micros = i64::from_le_bytes(value[8..].try_into().expect("8 bytes"));
                if secs < 0 || !(0..1_000_000).contains(&micros) {
                    return Err(Errno::INVAL);
                }
                let timeout =
                    Duration::from_secs(secs as u64) + Duration::from_micros(micros as u64);
                self.timeouts.lock().expect("timeouts")[option.timeout_index()] =
                    (!timeout.is_zero()).then_some(timeout);
                Ok(())
            }
            _ => raw_setsockopt(&self.socket, option.linux_name(), value),
        }
    }

    /// Whether the socket is ready for `interest`, registering `cx` to be woken when it is.
    pub(crate) fn poll_ready(&self, interest: Interest, cx: &mut Context<'_>) -> Poll<bool> {
        let io = match self.io() {
            Ok(io) => io,
            // Not registrable: report it ready, and the guest's next call gets the error.
            Err(_) => return Poll::Ready(true),
        };
        let ready = if interest.is_readable() {
            io.poll_read_ready(cx)
        } else {
            io.poll_write_ready(cx)
        };
        ready.map(|guard| match guard {
            Ok(guard) => guard.ready().is_read_closed() || guard.ready().is_write_closed(),
            Err(_) => true,
        })
    }

    /// Runs the non-blocking `f` until it does not report `WouldBlock`, waiting for the reactor
    /// between tries; a non-blocking guest gets `EAGAIN` instead of a wait.
    async fn op<R>(
        &self,
        interest: Interest,
        mut f: impl FnMut(&Socket) -> io::Result<R>,
    ) -> Result<R, Errno> {
        let index = if interest.is_readable() { 0 } else { 1 };
        loop {
            match self.try_op(interest, &mut f) {
                Err(Errno::AGAIN) if !self.is_nonblocking() => {}
                result => return result,
            }
            // The guard is dropped without clearing readiness: the next try decides.
            drop(self.bounded(index, self.io()?.ready(interest)).await??);
        }
    }

    /// Waits for `wait`, up to the guest's receive (`index` 0) or send (1) timeout, after which
    /// the operation fails with `EAGAIN` as on Linux.
    async fn bounded<T>(
        &self,
        index: usize,
        wait: impl Future<Output = io::Result<T>>,
    ) -> Result<Result<T, Errno>, Errno> {
        let timeout = self.timeouts.lock().expect("timeouts")[index];
        match timeout {
            Some(timeout) => match tokio::time::timeout(timeout, wait).await {
                Ok(result) => Ok(result.map_err(Errno::from)),
                Err(_elapsed) => Err(Errno::AGAIN),
            },
            None => Ok(wait.await.map_err(Errno::from)),
        }
    }

    /// One non-blocking try of `f`. When the reactor knows the socket is ready, through its
    /// guard, so that a `WouldBlock` clears that readiness; when it does not (yet), directly.
    fn try_op<R>(
        &self,
        interest: Interest,
        f: &mut impl FnMut(&Socket) -> io::Result<R>,
    ) -> Result<R, Errno> {
        let io = self.io()?;
        let mut cx = Context::from_waker(Waker::noop());
        let ready = if interest.is_readable() {
            io.poll_read_ready(&mut cx)
        } else {
            io.poll_write_ready(&mut cx)
        };
        let result = match ready {
            Poll::Ready(Ok(mut guard)) => match guard.try_io(|_| f(&self.socket)) {
                Ok(result) => result,
                Err(_would_block) => return Err(Errno::AGAIN),
            },
            Poll::Ready(Err(error)) => Err(error),
            Poll::Pending => f(&self.socket),
        };
        result.map_err(Errno::from)
    }
}

/// A `SOL_SOCKET` option of the ABI, by its code (0-14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketOption(u8);

impl SocketOption {
    const TYPE: SocketOption = SocketOption(1);
    const ERROR: SocketOption = SocketOption(2);
    const RECEIVE_TIMEOUT: SocketOption = SocketOption(11);
    const SEND_TIMEOUT: SocketOption = SocketOption(12);
    const ACCEPT_CONN: SocketOption = SocketOption(13);

    /// Linux's name for each code, in the ABI's order.
    const LINUX: [libc::c_int; 15] = [
        libc::SO_REUSEADDR,
        libc::SO_TYPE,
        libc::SO_ERROR,
        libc::SO_DONTROUTE,
        libc::SO_BROADCAST,
        libc::SO_SNDBUF,
        libc::SO_RCVBUF,
        libc::SO_KEEPALIVE,
        libc::SO_OOBINLINE,
        libc::SO_LINGER,
        libc::SO_RCVLOWAT,
        libc::SO_RCVTIMEO,
        libc::SO_SNDTIMEO,
        libc::SO_ACCEPTCONN,
        libc::SO_BINDTODEVICE,
    ];

    /// The option a guest names: level 0 (`SOL_SOCKET`) and a code, or `EINVAL`.
    pub(crate) fn of(level: u32, name: u32) -> Result<SocketOption, Errno> {
        if level != 0 || name as usize >= Self::LINUX.len() {
            return Err(Errno::INVAL);
        }
        Ok(SocketOption(name as u8))
    }

    fn timeout_index(self) -> usize {
        if self == SocketOption::RECEIVE_TIMEOUT {
            0
        } else {
            1
        }
    }

    fn linux_name(self) -> libc::c_int {
        Self::LINUX[usize::from(self.0)]
    }
}

/// The largest option value: an interface name (`IFNAMSIZ`) or a `timeval`, with room.
const MAX_OPTION: usize = 64;

fn raw_getsockopt(socket: &Socket, name: libc::c_int) -> Result<Vec<u8>, Errno> {
    let mut value = vec![0u8; MAX_OPTION];
    let mut len = MAX_OPTION as libc::socklen_t;
    // SAFETY: `value` has `len` writable bytes and the kernel writes at most that many.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error().into());
    }
    value.truncate(len as usize);
    Ok(value)
}

fn raw_setsockopt(socket: &Socket, name: libc::c_int, value: &[u8]) -> Result<(), Errno> {
    if value.len() > MAX_OPTION {
        return Err(Errno::INVAL);
    }
    // SAFETY: the kernel reads `value.len()` bytes from `value`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(())
}

/// A guest's sockets by descriptor number.
#[derive(Default)]
pub(crate) struct SocketTable {
    sockets: BTreeMap<u32, Arc<GuestSocket>>,
}

impl SocketTable {
    /// Numbers `socket` with the lowest free descriptor from [`FIRST_FD`].
    pub(crate) fn insert(&mut self, socket: GuestSocket) -> u32 {
        let mut fd = FIRST_FD;
        for &used in self.sockets.keys() {
            if used != fd {
                break;
            }
            fd += 1;
        }
        self.sockets.insert(fd, Arc::new(socket));
        fd
    }

    pub(crate) fn get(&self, fd: u32) -> Option<Arc<GuestSocket>> {
        self.sockets.get(&fd).cloned()
    }

    /// The socket `fd` names, or the errno WasmEdge gives for that descriptor: `ENOTSOCK` for
    /// a WASI descriptor (a file, a directory, stdio), `EBADF` for a closed socket.
    pub(crate) fn socket(&self, fd: u32) -> Result<Arc<GuestSocket>, Errno> {
        match self.get(fd) {
            Some(socket) => Ok(socket),
            None if fd < FIRST_FD => Err(Errno::NOTSOCK),
            None => Err(Errno::BADF),
        }
    }

    pub(crate) fn remove(&mut self, fd: u32) -> Option<Arc<GuestSocket>> {
        self.sockets.remove(&fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> GuestSocket {
        GuestSocket::open(INET4, Kind::Stream as u8).unwrap()
    }

    #[test]
    fn descriptors_start_above_wasis_and_reuse_the_lowest_closed() {
        let mut table = SocketTable::default();
        let (a, b, c) = (
            table.insert(stream()),
            table.insert(stream()),
            table.insert(stream()),
        );
        assert_eq!((a, b, c), (FIRST_FD, FIRST_FD + 1, FIRST_FD + 2));
        assert!(table.remove(b).is_some());
        assert!(table.remove(b).is_none(), "closed twice");
        assert_eq!(table.insert(stream()), b);
        assert_eq!(table.insert(stream()), FIRST_FD + 3);
    }

    #[test]
    fn a_descriptor_that_is_no_socket_has_wasmedges_errno() {
        let mut table = SocketTable::default();
        let fd = table.insert(GuestSocket::open(INET6, Kind::Datagram as u8).unwrap());
        assert_eq!(table.socket(fd).unwrap().kind(), Kind::Datagram);
        // stdio, a preopen, an open file: WASI's, not a socket.
        assert_eq!(table.socket(3).err(), Some(Errno::NOTSOCK));
        table.remove(fd);
        assert_eq!(table.socket(fd).err(), Some(Errno::BADF));
        assert!(table.get(fd).is_none());
    }

    #[test]
    fn sock_open_refuses_unknown_families_and_kinds() {
        assert_eq!(GuestSocket::open(3, 2).err(), Some(Errno::INVAL));
        assert_eq!(GuestSocket::open(INET4, 3).err(), Some(Errno::INVAL));
        let datagram = GuestSocket::open(INET4, Kind::Datagram as u8).unwrap();
        assert_eq!(datagram.listen(1).err(), Some(Errno::NOTSUP));
    }

    #[test]
    fn socket_options_as_the_guest_sees_them() {
        let socket = stream();
        let so_type = SocketOption::of(0, 1).unwrap();
        assert_eq!(socket.get_option(so_type).unwrap(), 2i32.to_le_bytes());
        assert_eq!(
            socket.set_option(so_type, &[0; 4]).err(),
            Some(Errno::NOPROTOOPT)
        );
        assert_eq!(SocketOption::of(1, 1).err(), Some(Errno::INVAL));
        assert_eq!(SocketOption::of(0, 15).err(), Some(Errno::INVAL));
        // A timeout is kept (the host socket never blocks) and read back as a timeval.
        let receive = SocketOption::of(0, 11).unwrap();
        let mut timeval = 2i64.to_le_bytes().to_vec();
        timeval.extend(500_000i64.to_le_bytes());
        socket.set_option(receive, &timeval).unwrap();
        assert_eq!(socket.get_option(receive).unwrap(), timeval);
        let mut bad = 0i64.to_le_bytes().to_vec();
        bad.extend(1_000_000i64.to_le_bytes());
        assert_eq!(socket.set_option(receive, &bad).err(), Some(Errno::INVAL));
    }

    #[tokio::test]
    async fn a_stream_connects_over_loopback_and_carries_bytes_both_ways() {
        let listener = stream();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = stream();
        client.connect(addr).await.unwrap();
        let server = listener.accept().await.unwrap();
        assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
        assert_eq!(client.send(b"ping", None).await, Ok(4));
        let (peeked, _, _) = server.recv(4, true).await.unwrap();
        assert_eq!(peeked, b"ping");
        let (data, truncated, _) = server.recv(16, false).await.unwrap();
        assert_eq!((data.as_slice(), truncated), (&b"ping"[..], false));
        server.send(b"pong", None).await.unwrap();
        assert_eq!(client.recv(4, false).await.unwrap().0, b"pong");
    }

    #[tokio::test]
    async fn a_datagram_longer_than_asked_is_cut_and_says_so() {
        let receiver = GuestSocket::open(INET4, Kind::Datagram as u8).unwrap();
        receiver.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let sender = GuestSocket::open(INET4, Kind::Datagram as u8).unwrap();
        sender.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = receiver.local_addr().unwrap();
        sender.send(b"0123456789", Some(to)).await.unwrap();
        let (data, truncated, from) = receiver.recv(4, false).await.unwrap();
        assert_eq!((data.as_slice(), truncated), (&b"0123"[..], true));
        assert_eq!(from, Some(sender.local_addr().unwrap()));
    }
}
