//! Every syscall of the sandbox, on both sides: the control socket and descriptor passing,
//! starting the sandbox process, and the isolation it applies to itself.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use caps::{CapSet, Capability};
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::SANDBOX_ARG0;
use crate::protocol::{CONTROL_FD, Grant, NamespaceKind, Open, Rlimit, Setup};
use wasmcell_engine::{Access, NameFiles};

/// Why isolating the sandbox failed; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// A namespace could not be joined or created.
    #[error("cannot enter the {kind:?} namespace{}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Namespace {
        /// Which namespace.
        kind: NamespaceKind,
        /// The path joined, if any.
        path: Option<std::path::PathBuf>,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A step that needs no more detail than its name and errno.
    #[error("cannot {step}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A resource limit is unknown, or could not be set (e.g. above the current hard limit).
    #[error("cannot set {name} to {soft}:{hard}")]
    Rlimit {
        /// The limit's name.
        name: String,
        /// Soft limit asked for.
        soft: u64,
        /// Hard limit asked for.
        hard: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The seccomp filter could not be built or installed.
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(String),
}

fn step(step: &'static str) -> impl FnOnce(nix::Error) -> IsolationError {
    move |errno| IsolationError::Step {
        step,
        source: errno.into(),
    }
}

/// A connected `SOCK_SEQPACKET` pair, close-on-exec.
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends one packet, gathered from `parts`, with `fds` attached.
pub fn send_packet(socket: &OwnedFd, parts: &[IoSlice], fds: &[RawFd]) -> io::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match socket::sendmsg::<()>(
            socket.as_raw_fd(),
            parts,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::Error::EINTR) => continue,
            other => return other.map(drop).map_err(io::Error::from),
        }
    }
}

/// One packet as it arrived: a packet longer than the buffers it was read into is cut short,
/// and descriptors the receiver has no room for (its `RLIMIT_NOFILE`, or more than
/// [`MAX_PACKET_FDS`]) are closed by the kernel: both are reported, never silently lost.
pub struct Packet {
    /// How many bytes landed in the head buffer.
    pub head_len: usize,
    /// The rest of the packet, up to the limit asked for.
    pub body: Vec<u8>,
    /// The packet was longer than the head and the limit.
    pub truncated: bool,
    /// The descriptors that arrived.
    pub fds: Vec<OwnedFd>,
    /// Some descriptors did not arrive (`MSG_CTRUNC`).
    pub fds_truncated: bool,
}

/// The most descriptors one packet carries.
pub const MAX_PACKET_FDS: usize = 64;

/// Receives one packet: its first bytes into `head`, the rest (at most `max_body` bytes) into
/// a new buffer; `None` when the peer is gone. Only an error of the socket itself is an error.
pub fn recv_packet(
    socket: &OwnedFd,
    head: &mut [u8],
    max_body: usize,
) -> io::Result<Option<Packet>> {
    // Peek at the packet's length first (MSG_TRUNC reports it for SOCK_SEQPACKET): a buffer of
    // the largest packet per receive would be zeroed and kept dirty in every process.
    let len = loop {
        match socket::recv(
            socket.as_raw_fd(),
            &mut [],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        ) {
            Err(nix::Error::EINTR) => continue,
            other => break other?,
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let mut body = vec![0u8; len.saturating_sub(head.len()).min(max_body)];
    let mut iov = [
        libc::iovec {
            iov_base: head.as_mut_ptr().cast(),
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: body.as_mut_ptr().cast(),
            iov_len: body.len(),
        },
    ];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_PACKET_FDS * size_of::<RawFd>()) as u32) } as usize;
    // u64 elements keep the buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(size_of::<u64>())];
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    let received = loop {
        // SAFETY: `msg` points at the two buffers and the control buffer above, all live and
        // of the lengths given; recvmsg writes only within them.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    };
    // The descriptors are collected even when some were cut (MSG_CTRUNC, which nix refuses to
    // walk): those that did arrive are this process's now, and must be closed, not leaked.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg`'s control buffer with well-formed headers up to
    // `msg_controllen`; CMSG_FIRSTHDR/NXTHDR stay within it and CMSG_DATA points inside the
    // header they are given.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let count = ((*cmsg).cmsg_len as usize - (data as usize - cmsg as usize))
                    / size_of::<RawFd>();
                for i in 0..count {
                    let fd = data.cast::<RawFd>().add(i).read_unaligned();
                    // SCM_RIGHTS installed this descriptor in this process just now; nothing
                    // else refers to it, so it gets exactly one owner.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if received == 0 {
        return Ok(None);
    }
    let head_len = received.min(head.len());
    body.truncate(received - head_len);
    Ok(Some(Packet {
        head_len,
        body,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    }))
}

/// This process's soft limit on open descriptors (`RLIMIT_NOFILE`), for error messages.
pub fn open_file_limit() -> u64 {
    // SAFETY: rlimit is plain data; all zeroes is a valid value.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes the struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

/// Opens a grant as its [`Open`] mode says, close-on-exec (the descriptor travels by
/// `SCM_RIGHTS`, not by inheritance).
pub fn open_grant(grant: &Grant) -> io::Result<OwnedFd> {
    let mode = match grant.open {
        Open::Reach(access) => return detached_mount(&grant.path, access),
        Open::Read => OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        Open::Write => OFlag::O_RDWR | OFlag::O_NONBLOCK,
        Open::Append => OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
    };
    let fd = nix::fcntl::open(
        &grant.path,
        mode | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o640),
    )?;
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How many bytes wait in the pipe behind `fd` for its reader (`FIONREAD`).
pub fn unread_bytes(fd: &OwnedFd) -> io::Result<usize> {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer it is given.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut unread) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(unread).unwrap_or(0))
}

/// Opens `fifo` write-only without waiting, which succeeds only while some process has it
/// open for reading (or is blocked opening it): `None` when nobody does yet (`ENXIO`).
///
/// Holding this descriptor until the grant's own descriptor is open proves a client's reader
/// is attached before the guest writes; see [`crate::client::Sandbox::request`].
pub fn fifo_writer_if_read(fifo: &Path) -> io::Result<Option<OwnedFd>> {
    match nix::fcntl::open(
        fifo,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        // SAFETY: `open` returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
        Err(nix::Error::ENXIO) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// A detached copy of the mount tree at `path` (`open_tree(OPEN_TREE_CLONE)`, as a bind
/// mount is made), `nosuid`, `nodev` and `noexec`, and read-only unless `access` writes.
///
/// The copy belongs to no mount namespace: a lookup of `..` at its root stays there, so a
/// path through the descriptor cannot climb to the host's directories above it, whoever
/// builds the path (a guest's symlink, a store's file name, SQLite). Device nodes in it cannot
/// be opened, whatever their mode, and nothing in it can be written when it is read-only.
/// Needs `CAP_SYS_ADMIN`: the shim opens grants, the sandbox never does.
fn detached_mount(path: &Path, access: Access) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
    // On a kernel without the calls, say what is missing rather than "function not implemented".
    let explain = |error: io::Error, call: &str| match error.raw_os_error() {
        Some(libc::ENOSYS) => io::Error::other(format!(
            "this kernel lacks {call}, which wasmcell needs to hand a container its files (Linux 5.12 or later)"
        )),
        _ => error,
    };
    // SAFETY: open_tree reads the NUL-terminated path and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(explain(io::Error::last_os_error(), "open_tree"));
    }
    // SAFETY: the descriptor is new and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut attr_set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;
    if access == Access::ReadOnly {
        attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (of the size passed) and changes only the mounts of
    // the detached tree behind `fd`, which this function owns.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if set < 0 {
        return Err(explain(io::Error::last_os_error(), "mount_setattr"));
    }
    Ok(fd)
}

/// Starts `exe` as a sandbox with `control` as its descriptor [`CONTROL_FD`], no stdio and an
/// empty environment but the node's `SSL_CERT_FILE` (see [`trust_bundle`]). Returns its PID. The child is not waited for here: the shim's
/// reaper collects it, and the control socket tells when it is gone.
///
/// Before it executes anything, the child writes `0` (the writer itself) to each of `joins`:
/// cgroup files the caller opened that move the writer, a v1 hierarchy's `tasks` or v2's
/// `cgroup.procs`. Between fork and exec the writing thread is the whole process, so the
/// sandbox starts inside its cgroup; on v1 a thread moving itself also skips the kernel's
/// global threadgroup lock, whose RCU grace period made the shim's write of the PID to
/// `cgroup.procs` take 6-24 ms.
pub fn spawn(exe: &Path, control: OwnedFd, joins: Vec<OwnedFd>) -> io::Result<u32> {
    let mut command = Command::new(exe);
    command
        .arg0(SANDBOX_ARG0)
        .env_clear()
        .envs(std::env::var_os(CERT_FILE).map(|file| (CERT_FILE, file)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fd = control.as_raw_fd();
    let join_fds: Vec<RawFd> = joins.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs between fork and exec, so it may only make async-signal-safe
    // calls: it calls write, dup2 and fcntl on descriptors that exist in the child and
    // allocates nothing (the descriptor list was built before the fork).
    unsafe {
        command.pre_exec(move || {
            for &join in &join_fds {
                if libc::write(join, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            let result = if fd == CONTROL_FD {
                // Already in place: dup2 would be a no-op and leave close-on-exec set.
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, CONTROL_FD)
            };
            if result < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    let child = command.spawn()?;
    drop((control, joins));
    Ok(child.id())
}

/// A pidfd for process `pid`: readable once it has exited.
pub fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Closes every descriptor above the control socket that the sandbox may have inherited.
pub fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; the ones above CONTROL_FD are not owned by
    // anything in this freshly started process.
    unsafe { libc::syscall(libc::SYS_close_range, CONTROL_FD + 1, u32::MAX, 0) };
}

/// Brings up `lo` in a network namespace this process just created (it starts down), as runc
/// does for a new network namespace: servers listening on 127.0.0.1 and clients in the same
/// container reach each other.
fn loopback_up() -> nix::Result<()> {
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write `request`, which lives across the
    // calls and names an interface every network namespace has.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
            return Err(nix::Error::last());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) != 0 {
            return Err(nix::Error::last());
        }
    }
    Ok(())
}

/// Applies the setup to this process. Must run while single-threaded: unsharing a mount
/// namespace fails in a multi-threaded process, and threads created before the seccomp filter
/// would escape it.
pub fn isolate(setup: &Setup) -> Result<(), IsolationError> {
    for namespace in &setup.namespaces {
        let flag = match namespace.kind {
            NamespaceKind::Network => CloneFlags::CLONE_NEWNET,
            NamespaceKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NamespaceKind::Uts => CloneFlags::CLONE_NEWUTS,
        };
        let err = |source| IsolationError::Namespace {
            kind: namespace.kind,
            path: namespace.path.clone(),
            source,
        };
        match &namespace.path {
            Some(path) => {
                let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(err)?;
                // SAFETY: `open` returned a new descriptor that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                nix::sched::setns(fd, flag).map_err(err)?;
            }
            None => {
                nix::sched::unshare(flag).map_err(err)?;
                if namespace.kind == NamespaceKind::Network {
                    loopback_up().map_err(step("bring up the loopback interface"))?;
                }
            }
        }
    }
    // HTTP servers reset their instance slots through wasmtime's handle on /proc/self/pagemap,
    // opened once per process: open it while this process's /proc is still in view, while it
    // is still this process's (the uid change below hands /proc/self to root) and without
    // CAP_SYS_ADMIN (which would let it show physical page frames). Where the kernel lacks
    // PAGEMAP_SCAN this finds out and servers do without.
    let caps_err = |step: &'static str| {
        move |e: caps::errors::CapsError| IsolationError::Step {
            step,
            source: io::Error::other(e.to_string()),
        }
    };
    caps::drop(None, CapSet::Effective, Capability::CAP_SYS_ADMIN)
        .map_err(caps_err("drop CAP_SYS_ADMIN"))?;
    wasmcell_engine::open_pagemap();
    caps::raise(None, CapSet::Effective, Capability::CAP_SYS_ADMIN)
        .map_err(caps_err("raise CAP_SYS_ADMIN"))?;
    // A private mount namespace, so that nothing the sandbox mounts reaches the host's, and
    // nothing mounted later on the host reaches the sandbox.
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(step("unshare the mount namespace"))?;
    nix::mount::mount::<str, str, str, str>(
        None,
        "/",
        None,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(step("make the mount namespace private"))?;
    enter_own_root(setup)?;
    if let Some(hostname) = &setup.hostname {
        nix::unistd::sethostname(hostname).map_err(step("set the hostname"))?;
    }

    // While still privileged: raising a hard limit needs CAP_SYS_RESOURCE.
    for rlimit in &setup.rlimits {
        set_rlimit(rlimit)?;
    }

    // Capabilities, in the order the kernel allows: the bounding set while CAP_SETPCAP is still
    // held, then the ids while CAP_SETUID/SETGID are, then every remaining set.
    let kept: caps::CapsHashSet = if setup.bind_low_ports {
        [Capability::CAP_NET_BIND_SERVICE].into()
    } else {
        caps::CapsHashSet::new()
    };
    for cap in caps::all().difference(&kept) {
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(caps_err("drop the bounding capability set"))?;
    }
    let user = &setup.user;
    let groups: Vec<Gid> = user
        .additional_gids
        .iter()
        .copied()
        .map(Gid::from_raw)
        .collect();
    nix::unistd::setgroups(&groups).map_err(step("set the supplementary groups"))?;
    let (gid, uid) = (Gid::from_raw(user.gid), Uid::from_raw(user.uid));
    nix::unistd::setresgid(gid, gid, gid).map_err(step("set the group id"))?;
    // A kept capability must survive the change away from uid 0.
    if !kept.is_empty() {
        nix::sys::prctl::set_keepcaps(true).map_err(step("keep capabilities"))?;
    }
    nix::unistd::setresuid(uid, uid, uid).map_err(step("set the user id"))?;
    for set in [CapSet::Inheritable, CapSet::Ambient] {
        caps::clear(None, set).map_err(caps_err("clear the capability sets"))?;
    }
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &kept).map_err(caps_err("clear the capability sets"))?;
    }
    if !kept.is_empty() {
        nix::sys::prctl::set_keepcaps(false).map_err(step("keep capabilities"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(step("set no_new_privs"))?;
    install_seccomp()
}

/// Where the sandbox builds its root: a tmpfs mounted over `/tmp` in its own mount namespace
/// (the host's `/tmp` is untouched), as bubblewrap builds its root there.
const NEW_ROOT: &str = "/tmp";

/// The files the C library reads for a name lookup (`wasi:sockets`' `ip-name-lookup` goes
/// through `getaddrinfo`), read-only: the container's `/etc/hosts` and `/etc/resolv.conf` where
/// its spec binds them, else the host's, and the host's lookup configuration.
fn resolver_files(names: &NameFiles) -> [(&Path, &Path); 5] {
    fn or_host<'a>(file: &'a Option<PathBuf>, host: &'static str) -> &'a Path {
        file.as_deref().unwrap_or(Path::new(host))
    }
    [
        (Path::new("/etc/hosts"), or_host(&names.hosts, "/etc/hosts")),
        (
            Path::new("/etc/resolv.conf"),
            or_host(&names.resolv_conf, "/etc/resolv.conf"),
        ),
        (
            Path::new("/etc/nsswitch.conf"),
            Path::new("/etc/nsswitch.conf"),
        ),
        (Path::new("/etc/host.conf"), Path::new("/etc/host.conf")),
        (Path::new("/etc/gai.conf"), Path::new("/etc/gai.conf")),
    ]
}

/// Where OpenSSL's users (and rustls-native-certs) take the CA bundle from when it is set.
const CERT_FILE: &str = "SSL_CERT_FILE";

/// The node's bundle of trusted CA certificates (`SSL_CERT_FILE`, else the distribution's, as
/// OpenSSL finds it), shown read-only at its own path: the host side's TLS (a Spin app's
/// databases) then trusts in a sandbox what it trusts under `wasmcell up`. A CA directory
/// (`SSL_CERT_DIR`) is not shown: its entries are links into other host directories.
fn trust_bundle() -> Option<PathBuf> {
    // `probe` reads CERT_FILE, which the shim passed on.
    openssl_probe::probe().cert_file
}

/// Makes this process's root a fresh, read-only tmpfs holding only what the sandbox needs by
/// path, and nothing of the host's filesystem: its own descriptors at `/proc/self/fd` (where
/// every granted path leads, see [`crate::protocol::apply_grants`]), the compile cache at its
/// own path (read-only), the resolver's files and the node's CA bundle. Anything that runs in the sandbox on a
/// guest's behalf (WASI, SQLite and the other stores, Spin's file mounts) can then name no host
/// path, whatever string it is given: an absolute path lands in this empty root, and the
/// grants are detached mounts whose `..` goes nowhere (see `detached_mount`). This is what
/// runc's `pivot_root` into the container's rootfs does for a process.
fn enter_own_root(setup: &Setup) -> Result<(), IsolationError> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let sealed = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // What the new root shows, each opened before the tmpfs covers `/tmp` (a test's cache may
    // live there) and bound from its descriptor. The cache holds code the engine maps as
    // executable: it alone is not `noexec`.
    if !setup.cache_dir.is_absolute() {
        return Err(IsolationError::Step {
            step: "use the compile cache",
            source: io::Error::new(io::ErrorKind::InvalidInput, "its path is not absolute"),
        });
    }
    std::fs::create_dir_all(&setup.cache_dir).map_err(|source| IsolationError::Step {
        step: "create the compile cache",
        source,
    })?;
    let mut shown: Vec<(OwnedFd, &Path, MsFlags)> = vec![
        (
            open_path(Path::new("/proc/self/fd")).map_err(step("open /proc/self/fd"))?,
            Path::new("/proc/self/fd"),
            sealed,
        ),
        (
            open_path(&setup.cache_dir).map_err(step("open the compile cache"))?,
            &setup.cache_dir,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
    ];
    for (shown_at, source) in resolver_files(&setup.names) {
        if let Ok(fd) = open_path(source) {
            shown.push((fd, shown_at, sealed));
        }
    }
    let bundle = trust_bundle();
    // Absolute and without `..`: it is made in the new root by name, and must land there.
    let plain = |path: &&Path| {
        path.is_absolute()
            && path
                .components()
                .all(|c| !matches!(c, std::path::Component::ParentDir))
    };
    if let Some(bundle) = bundle.as_deref().filter(plain)
        && let Ok(fd) = open_path(bundle)
        // A regular file only: whatever the variable names, no device or directory is shown.
        && nix::sys::stat::fstat(fd.as_raw_fd())
            .is_ok_and(|stat| stat.st_mode & libc::S_IFMT == libc::S_IFREG)
    {
        shown.push((fd, bundle, sealed));
    }
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        sealed,
        Some("mode=0755,size=64k,nr_inodes=256"),
    )
    .map_err(step("mount the sandbox's root"))?;
    let root = Path::new(NEW_ROOT);
    for (fd, path, flags) in &shown {
        let target = root.join(path.strip_prefix("/").unwrap_or(path));
        let made = match nix::sys::stat::fstat(fd.as_raw_fd()) {
            Ok(stat) if stat.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                std::fs::create_dir_all(&target)
            }
            _ => target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::File::create(&target).map(drop)),
        };
        made.map_err(|source| IsolationError::Step {
            step: "lay out the sandbox's root",
            source,
        })?;
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount::<str, Path, str, str>(Some(source.as_str()), &target, None, MsFlags::MS_BIND, None)
            .map_err(step("bind into the sandbox's root"))?;
        mount::<str, Path, str, str>(
            None,
            &target,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | *flags,
            None,
        )
        .map_err(step("make the sandbox's root read-only"))?;
    }
    drop(shown);
    mount::<str, str, str, str>(
        None,
        NEW_ROOT,
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | sealed,
        None,
    )
    .map_err(step("make the sandbox's root read-only"))?;
    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves the new one
    // alone, and every host mount this namespace copied (the first container's rootfs among
    // them, should its mount have raced the sandbox's start) goes with it.
    nix::unistd::chdir(NEW_ROOT).map_err(step("enter the sandbox's root"))?;
    nix::unistd::pivot_root(".", ".").map_err(step("pivot into the sandbox's root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the host's root"))?;
    nix::unistd::chdir("/").map_err(step("enter the sandbox's root"))
}

/// An `O_PATH` descriptor of `path`, close-on-exec.
fn open_path(path: &Path) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_rlimit(rlimit: &Rlimit) -> Result<(), IsolationError> {
    let err = |source| IsolationError::Rlimit {
        name: rlimit.name.clone(),
        soft: rlimit.soft,
        hard: rlimit.hard,
        source,
    };
    let resource = match rlimit.name.as_str() {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unknown resource limit",
            )));
        }
    };
    let limit = libc::rlimit {
        rlim_cur: rlimit.soft,
        rlim_max: rlimit.hard,
    };
    // SAFETY: setrlimit reads the struct it is given and changes only this process's limits.
    if unsafe { libc::setrlimit(resource, &limit) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Namespace flags a guest-side `clone` must not carry: no new namespaces from inside.
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// What the engine, tokio and WASI need, and nothing else. Anything not listed fails with
/// EPERM (not a kill), so an omission degrades into an error message rather than a dead pod.
const ALLOWED_SYSCALLS: &[i64] = &[
    // memory
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_membarrier,
    // threads, signals, time
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_arch_prctl,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_prctl,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_getrlimit,
    libc::SYS_prlimit64,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getgroups,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    // descriptors and polling
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_pipe2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_lseek,
    libc::SYS_sendfile,
    libc::SYS_copy_file_range,
    libc::SYS_splice,
    // files, within the descriptors the shim granted
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_utimensat,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_flock,
    libc::SYS_fadvise64,
    libc::SYS_getcwd,
    libc::SYS_fchmod,
    // The same, in the forms glibc's unlink(), access(), mkdir() ... use on x86_64 (SQLite,
    // behind Spin's stores, calls them): the `*at` calls above with the current directory.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    // sockets, in the container's network namespace
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
];

fn install_seccomp() -> Result<(), IsolationError> {
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| IsolationError::Seccomp(e.to_string()))?;
    let err = |e: seccompiler::BackendError| IsolationError::Seccomp(e.to_string());
    let mut allowed: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED_SYSCALLS.iter().map(|&nr| (nr, vec![])).collect();
    // Threads, never namespaces.
    let no_namespaces = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(CLONE_NAMESPACES),
        0,
    )
    .map_err(err)?;
    allowed.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![no_namespaces]).map_err(err)?],
    );
    // clone3 passes its flags in memory, where a filter cannot look. The allow-list lets it
    // through and the filter below answers ENOSYS, which makes libc fall back to clone, whose
    // flags are checked above. Only one filter may answer with an errno: the kernel reports
    // the last-installed filter's errno when two do.
    allowed.insert(libc::SYS_clone3, vec![]);
    let allow_list = SeccompFilter::new(
        allowed,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(err)?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;
    // The allow-list last: it does not allow `seccomp` itself.
    for filter in [no_clone3, allow_list] {
        let program: BpfProgram = filter.try_into().map_err(err)?;
        seccompiler::apply_filter(&program).map_err(|e| IsolationError::Seccomp(e.to_string()))?;
    }
    Ok(())
}
