//! A WASI 0.3 command: exports `wasi:cli/run@0.3.0` (an async `run`) and does everything through
//! the 0.3.0 imports, with wit-bindgen's async support (streams, futures, async calls).
//!
//! The first argument after the program name picks what it does:
//! - `hello`: "hello from wasi 0.3" on stdout, "to stderr" on stderr.
//! - `env NAME`: NAME's value (or `unset`), then every argument (program name included) on one
//!   line, joined by spaces.
//! - `cwd`: `wasi:cli/environment@0.3.0#get-initial-cwd`, or `none`.
//! - `exit N`: `wasi:cli/exit@0.3.0#exit-with-code(N)`.
//! - `fail`: `run` returns `Err`.
//! - `fs`: in the first preopen, writes `p3.txt`, reads it back, lists the directory (sorted
//!   names), tries `../outside` and prints the error code it gets, then "fs ok".
//! - `cat`: copies stdin to stdout.
//! - `sleep MS`: `wasi:clocks/monotonic-clock@0.3.0#wait-for`, then "slept".
//! - `connect IP:PORT`: TCP through `wasi:sockets@0.3.0`, sends "ping\n" and prints the first
//!   line it reads back (or the error code).
//! - `alloc MIB`: touches MIB MiB of fresh memory, then prints "allocated" (for memory limits).
//! - `spin`: prints "spinning", then computes forever without a host call (for CPU quotas and
//!   signals: only the engine's epoch checks can stop it).
//! - anything else: usage on stderr, `Err`.
//!
//! Error codes print as their WIT names (`not-permitted`, `connection-refused`, ...).
//! stdout and stderr are each one `write-via-stream` stream for the whole run. Rust's std is
//! still linked (allocator, panics), so the component may also import some `@0.2.x` interfaces
//! through wasi-libc; everything this code calls is 0.3.0.

wit_bindgen::generate!({ path: "wit", world: "p3-cli", generate_all });

use std::net::SocketAddr;

use wasi::cli::types::ErrorCode as CliError;
use wasi::cli::{environment, exit, stderr, stdin, stdout};
use wasi::clocks::monotonic_clock;
use wasi::filesystem::preopens;
use wasi::filesystem::types::{Descriptor, DescriptorFlags, OpenFlags, PathFlags};
use wasi::sockets::types::{
    IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress, TcpSocket,
};
use wit_bindgen::{FutureReader, StreamReader, StreamResult, StreamWriter};

struct Cli;

export!(Cli);

impl exports::wasi::cli::run::Guest for Cli {
    async fn run() -> Result<(), ()> {
        let mut out = Output::new(stdout::write_via_stream);
        let mut err = Output::new(stderr::write_via_stream);
        let args = environment::get_arguments();
        let words: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
        let result = match words.as_slice() {
            ["hello"] => {
                out.write("hello from wasi 0.3\n").await;
                err.write("to stderr\n").await;
                Ok(())
            }
            ["env", name, ..] => {
                let value = environment::get_environment()
                    .into_iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value);
                out.write(format!("{}\n", value.as_deref().unwrap_or("unset")))
                    .await;
                out.write(format!("{}\n", args.join(" "))).await;
                Ok(())
            }
            ["cwd"] => {
                let cwd = environment::get_initial_cwd();
                out.write(format!("{}\n", cwd.as_deref().unwrap_or("none")))
                    .await;
                Ok(())
            }
            ["exit", code] => match code.parse::<u8>() {
                Ok(code) => {
                    out.finish().await;
                    err.finish().await;
                    exit::exit_with_code(code);
                    unreachable!("exit-with-code returned");
                }
                Err(_) => usage(&mut err).await,
            },
            ["fail"] => {
                err.write("failing on purpose\n").await;
                Err(())
            }
            ["fs"] => fs(&mut out, &mut err).await,
            ["cat"] => cat(&mut out, &mut err).await,
            ["sleep", ms] => match ms.parse::<u64>() {
                Ok(ms) => {
                    monotonic_clock::wait_for(ms * 1_000_000).await;
                    out.write("slept\n").await;
                    Ok(())
                }
                Err(_) => usage(&mut err).await,
            },
            ["alloc", mib] => match mib.parse::<usize>() {
                Ok(mib) => {
                    let memory = vec![1u8; mib << 20];
                    out.write(format!("allocated {}\n", memory.len() >> 20)).await;
                    Ok(())
                }
                Err(_) => usage(&mut err).await,
            },
            ["spin"] => {
                out.write("spinning\n").await;
                let mut x = 1u64;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            ["connect", addr] => match addr.parse::<SocketAddr>() {
                Ok(addr) => connect(addr, &mut out).await,
                Err(_) => usage(&mut err).await,
            },
            _ => usage(&mut err).await,
        };
        out.finish().await;
        err.finish().await;
        result
    }
}

async fn usage(err: &mut Output) -> Result<(), ()> {
    err.write(
        "usage: p3-cli hello | env NAME | cwd | exit N | fail | fs | cat | sleep MS | connect IP:PORT | alloc MIB | spin\n",
    )
    .await;
    Err(())
}

/// stdout or stderr: the writable end of the stream handed to `write-via-stream`, and the future
/// that reports how writing it out went.
struct Output {
    stream: StreamWriter<u8>,
    done: FutureReader<Result<(), CliError>>,
}

impl Output {
    fn new(write_via_stream: fn(StreamReader<u8>) -> FutureReader<Result<(), CliError>>) -> Self {
        let (stream, reader) = wit_stream::new();
        let done = write_via_stream(reader);
        Output { stream, done }
    }

    async fn write(&mut self, data: impl AsRef<[u8]>) {
        // What comes back is what the host did not take (it closed its end); nothing to do then.
        self.stream.write_all(data.as_ref().to_vec()).await;
    }

    /// Closes the stream, then waits until the host has written it all out.
    async fn finish(self) {
        let Output { stream, done } = self;
        drop(stream);
        let _ = done.await;
    }
}

/// An error code's WIT name, from its Debug form: `ErrorCode::NotPermitted` -> `not-permitted`.
fn wit_name(error: impl std::fmt::Debug) -> String {
    let debug = format!("{error:?}");
    let name = debug.rsplit("::").next().unwrap_or(&debug);
    let (name, payload) = match name.find('(') {
        Some(at) => name.split_at(at),
        None => (name, ""),
    };
    let mut kebab = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                kebab.push('-');
            }
            kebab.push(c.to_ascii_lowercase());
        } else {
            kebab.push(c);
        }
    }
    kebab + payload
}

/// Reads all of a stream, then the future that tells whether it ended cleanly.
async fn read_all<T: 'static, E: 'static>(
    stream: StreamReader<T>,
    result: FutureReader<Result<(), E>>,
) -> Result<Vec<T>, E> {
    let items = stream.collect().await;
    result.await.map(|()| items)
}

async fn fs(out: &mut Output, err: &mut Output) -> Result<(), ()> {
    let Some((dir, name)) = preopens::get_directories().into_iter().next() else {
        err.write("fs: no preopened directory\n").await;
        return Err(());
    };
    out.write(format!("preopen: {name}\n")).await;
    if let Err(error) = fs_steps(&dir, out).await {
        err.write(format!("fs: {}\n", wit_name(error))).await;
        return Err(());
    }
    // Outside the preopen: the host must refuse.
    match dir
        .open_at(
            PathFlags::empty(),
            "../outside".into(),
            OpenFlags::empty(),
            DescriptorFlags::READ,
        )
        .await
    {
        Ok(_) => out.write("../outside: opened\n").await,
        Err(error) => {
            out.write(format!("../outside: {}\n", wit_name(error)))
                .await
        }
    }
    out.write("fs ok\n").await;
    Ok(())
}

async fn fs_steps(
    dir: &Descriptor,
    out: &mut Output,
) -> Result<(), wasi::filesystem::types::ErrorCode> {
    let file = dir
        .open_at(
            PathFlags::empty(),
            "p3.txt".into(),
            OpenFlags::CREATE | OpenFlags::TRUNCATE,
            DescriptorFlags::READ | DescriptorFlags::WRITE,
        )
        .await?;
    let (mut writer, reader) = wit_stream::new();
    let written = file.write_via_stream(reader, 0);
    writer.write_all(b"written by wasi 0.3\n".to_vec()).await;
    drop(writer);
    written.await?;

    let (stream, result) = file.read_via_stream(0);
    let text = read_all(stream, result).await?;
    out.write(b"read: ").await;
    out.write(text).await;

    let (entries, result) = dir.read_directory();
    let mut names: Vec<String> = read_all(entries, result)
        .await?
        .into_iter()
        .map(|entry| entry.name)
        .collect();
    names.sort();
    for name in names {
        out.write(format!("{name}\n")).await;
    }
    Ok(())
}

async fn cat(out: &mut Output, err: &mut Output) -> Result<(), ()> {
    let (mut input, result) = stdin::read_via_stream();
    loop {
        let (status, chunk) = input.read(Vec::with_capacity(16 * 1024)).await;
        if !chunk.is_empty() {
            out.write(chunk).await;
        }
        match status {
            StreamResult::Complete(_) => {}
            StreamResult::Dropped | StreamResult::Cancelled => break,
        }
    }
    drop(input);
    match result.await {
        Ok(()) => Ok(()),
        Err(error) => {
            err.write(format!("stdin: {}\n", wit_name(error))).await;
            Err(())
        }
    }
}

async fn connect(addr: SocketAddr, out: &mut Output) -> Result<(), ()> {
    match ping(addr).await {
        Ok(line) => {
            out.write(format!("{line}\n")).await;
            Ok(())
        }
        Err(error) => {
            out.write(format!("connect: {}\n", wit_name(error))).await;
            Err(())
        }
    }
}

/// Connects, sends "ping\n" and returns the first line that comes back.
async fn ping(addr: SocketAddr) -> Result<String, wasi::sockets::types::ErrorCode> {
    let (family, remote) = match addr {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            let address = Ipv4SocketAddress {
                port: v4.port(),
                address: (a, b, c, d),
            };
            (IpAddressFamily::Ipv4, IpSocketAddress::Ipv4(address))
        }
        SocketAddr::V6(v6) => {
            let s = v6.ip().segments();
            let address = Ipv6SocketAddress {
                port: v6.port(),
                flow_info: v6.flowinfo(),
                address: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
                scope_id: v6.scope_id(),
            };
            (IpAddressFamily::Ipv6, IpSocketAddress::Ipv6(address))
        }
    };
    let socket = TcpSocket::create(family)?;
    socket.connect(remote).await?;

    let (mut writer, reader) = wit_stream::new();
    let sent = socket.send(reader);
    let (mut input, received) = socket.receive();
    writer.write_all(b"ping\n".to_vec()).await;

    let mut reply = Vec::new();
    while !reply.contains(&b'\n') {
        let (status, chunk) = input.read(Vec::with_capacity(1024)).await;
        reply.extend_from_slice(&chunk);
        if !matches!(status, StreamResult::Complete(_)) {
            break;
        }
    }
    drop(input);
    drop(writer);
    sent.await?;
    let _ = received.await;
    let line = reply.split(|&b| b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(line).into_owned())
}
