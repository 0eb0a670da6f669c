//! Sockets through `wasmedge_wasi_socket`, as WasmEdge's examples use them. One mode per run:
//!
//! - `tcp-server PORT`: echoes each connection's bytes back, one connection after another;
//! - `tcp-client HOST:PORT MESSAGE`: sends MESSAGE, prints the reply;
//! - `udp-server PORT`: echoes each datagram to its sender;
//! - `udp-client HOST:PORT MESSAGE`: sends MESSAGE as one datagram, prints the reply (or
//!   fails after a second without one);
//! - `lookup NAME`: prints the IPv4 addresses of NAME (`sock_getaddrinfo`);
//! - `poll FILE`: `poll_oneoff` and `epoll_oneoff` over a UDP socket, FILE and a clock
//!   together, printing which subscriptions each call reported;
//! - `abuse`: calls the ABI with bad inputs and prints each errno.

use std::io::{Read, Write};
use std::net::SocketAddr;

use wasmedge_wasi_socket::{TcpListener, TcpStream, UdpSocket, nslookup};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let result = match arg(1) {
        "tcp-server" => tcp_server(arg(2)),
        "tcp-client" => tcp_client(arg(2), arg(3)),
        "udp-server" => udp_server(arg(2)),
        "udp-client" => udp_client(arg(2), arg(3)),
        "lookup" => lookup(arg(2)),
        "poll" => poll(arg(2)),
        "abuse" => {
            abuse();
            Ok(())
        }
        other => {
            eprintln!("unknown mode {other:?}");
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn address(text: &str) -> std::io::Result<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let (host, port) = text.rsplit_once(':').unwrap_or((text, "0"));
    let port: u16 = port.parse().unwrap_or(0);
    let found = nslookup(host, "http")?;
    let ip = found.first().ok_or(std::io::ErrorKind::NotFound)?.ip();
    Ok(SocketAddr::new(ip, port))
}

/// A server's bind address: `PORT` (any IPv4 address) or `IP:PORT`.
fn bind_address(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], text.parse().unwrap_or(0))))
}

fn tcp_server(addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(bind_address(addr), false)?;
    println!("tcp listening on {}", listener.local_addr()?);
    loop {
        let (mut stream, peer) = listener.accept(false)?;
        println!("tcp connection from {peer}");
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n])?;
        }
    }
}

fn tcp_client(addr: &str, message: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(address(addr)?)?;
    stream.write_all(message.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    println!("tcp reply: {reply}");
    Ok(())
}

fn udp_server(addr: &str) -> std::io::Result<()> {
    let socket = UdpSocket::bind(bind_address(addr))?;
    println!("udp listening on {addr}");
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], from)?;
    }
}

fn udp_client(addr: &str, message: &str) -> std::io::Result<()> {
    let to = address(addr)?;
    let any: SocketAddr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .unwrap();
    let socket = UdpSocket::bind(any)?;
    // A datagram sent before the server is up is lost: give up on the reply after a while.
    socket
        .as_ref()
        .set_recv_timeout(Some(std::time::Duration::from_secs(1)))?;
    socket.send_to(message.as_bytes(), to)?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf)?;
    println!(
        "udp reply from {from}: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    Ok(())
}

fn lookup(name: &str) -> std::io::Result<()> {
    for addr in nslookup(name, "http")? {
        println!("{name} has address {}", addr.ip());
    }
    Ok(())
}

/// A preview 1 `subscription`: userdata, then a tagged union at offset 8 whose contents start
/// at 16 (a clock: id, timeout, precision, flags; a descriptor: its number).
fn subscription(userdata: u64, tag: u8, fd_or_clock: u32, timeout_ns: u64) -> [u8; 48] {
    let mut bytes = [0u8; 48];
    bytes[0..8].copy_from_slice(&userdata.to_le_bytes());
    bytes[8] = tag;
    bytes[16..20].copy_from_slice(&fd_or_clock.to_le_bytes());
    bytes[24..32].copy_from_slice(&timeout_ns.to_le_bytes());
    bytes
}

/// Polls with `poll_oneoff` (or `epoll_oneoff`) and returns the userdata of the events, sorted.
fn poll_once(subscriptions: &[[u8; 48]], epoll: bool) -> Vec<u64> {
    let mut events = vec![[0u8; 32]; subscriptions.len()];
    let mut n = 0u32;
    let errno = unsafe {
        let (sub, ev, len) = (
            subscriptions.as_ptr().cast(),
            events.as_mut_ptr().cast(),
            subscriptions.len() as u32,
        );
        if epoll {
            epoll_oneoff(sub, ev, len, &mut n)
        } else {
            poll_oneoff(sub, ev, len, &mut n)
        }
    };
    assert_eq!(errno, 0, "poll failed");
    let mut found: Vec<u64> = events[..n as usize]
        .iter()
        .map(|e| u64::from_le_bytes(e[0..8].try_into().unwrap()))
        .collect();
    found.sort();
    found
}

fn poll(file: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const CLOCK: u8 = 0;
    const FD_READ: u8 = 1;
    const MONOTONIC: u32 = 1;
    let socket = UdpSocket::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap())?;
    let file = std::fs::File::open(file)?;
    let (sock_fd, file_fd) = (socket.as_raw_fd() as u32, file.as_raw_fd() as u32);
    let second = 1_000_000_000;
    // A regular file is always ready; the socket has nothing; the clock has not fired.
    let all = [
        subscription(1, FD_READ, sock_fd, 0),
        subscription(2, FD_READ, file_fd, 0),
        subscription(3, CLOCK, MONOTONIC, 5 * second),
    ];
    println!("poll file socket clock: {:?}", poll_once(&all, false));
    let idle = [
        subscription(1, FD_READ, sock_fd, 0),
        subscription(3, CLOCK, MONOTONIC, second / 20),
    ];
    println!("poll idle socket: {:?}", poll_once(&idle, false));
    println!("epoll idle socket: {:?}", poll_once(&idle, true));
    let me = socket.as_ref().get_local()?;
    socket.send_to(b"ping", me)?;
    let waiting = [
        subscription(1, FD_READ, sock_fd, 0),
        subscription(3, CLOCK, MONOTONIC, 5 * second),
    ];
    println!("poll socket with data: {:?}", poll_once(&waiting, false));
    Ok(())
}

#[repr(C)]
struct WasiAddress {
    buf: *const u8,
    size: usize,
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn sock_open(family: u8, kind: u8, fd: *mut u32) -> u32;
    fn sock_bind(fd: u32, addr: *mut WasiAddress, port: u32) -> u32;
    fn sock_listen(fd: u32, backlog: u32) -> u32;
    fn sock_accept(fd: u32, new_fd: *mut u32) -> u32;
    fn sock_send(fd: u32, iovs: *const WasiAddress, count: u32, flags: u16, sent: *mut u32) -> u32;
    fn poll_oneoff(subscriptions: *const u8, events: *mut u8, count: u32, n: *mut u32) -> u32;
    fn epoll_oneoff(subscriptions: *const u8, events: *mut u8, count: u32, n: *mut u32) -> u32;
}

/// Bad inputs, each printed as `CASE errno N` (0 for none).
fn abuse() {
    let report = |case: &str, errno: u32| println!("{case} errno {errno}");
    unsafe {
        let mut fd = 0u32;
        report("open-bad-family", sock_open(7, 2, &mut fd));
        report(
            "open-fd-out-of-bounds",
            sock_open(1, 2, usize::MAX as *mut u32),
        );
        assert_eq!(sock_open(1, 2, &mut fd), 0);
        let octets = [1u8, 2, 3];
        let mut addr = WasiAddress {
            buf: octets.as_ptr(),
            size: 3,
        };
        report("bind-3-byte-address", sock_bind(fd, &mut addr, 80));
        let mut addr = WasiAddress {
            buf: (usize::MAX - 2) as *const u8,
            size: 4,
        };
        report("bind-address-out-of-bounds", sock_bind(fd, &mut addr, 80));
        let iov = WasiAddress {
            buf: (usize::MAX - 8) as *const u8,
            size: 64,
        };
        let mut sent = 0;
        report(
            "send-buffer-out-of-bounds",
            sock_send(fd, &iov, 1, 0, &mut sent),
        );
        report(
            "send-unconnected",
            sock_send(
                fd,
                &WasiAddress {
                    buf: octets.as_ptr(),
                    size: 3,
                },
                1,
                0,
                &mut sent,
            ),
        );
        report("listen-on-stdout", sock_listen(1, 5));
        let mut new_fd = 0;
        report("accept-on-stderr", sock_accept(2, &mut new_fd));
        report("close", wasi_close(fd));
        report("close-again", wasi_close(fd));
        report("listen-after-close", sock_listen(fd, 5));
    }
    println!("abuse done");
}

fn wasi_close(fd: u32) -> u32 {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn fd_close(fd: u32) -> u32;
    }
    unsafe { fd_close(fd) }
}
