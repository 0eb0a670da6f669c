//! `echo-server tcp ADDR`: accepts connections on ADDR and echoes each back until it closes.
//! `echo-server udp ADDR`: echoes every datagram to its sender.
//! `echo-server connect ADDR`: sends `ping` to ADDR and prints the reply.
//!
//! Built for wasm32-wasip2, where std::net is wasi:sockets: it works where the container's
//! network is granted and fails (with the error printed) where it is not.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: echo-server tcp|udp|connect ADDR");
        return ExitCode::from(2);
    };
    let result = match mode.as_str() {
        "tcp" => tcp(addr),
        "udp" => udp(addr),
        "connect" => connect(addr),
        other => Err(std::io::Error::other(format!("unknown mode {other}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("echo-server {mode} {addr}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn tcp(addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("listening on tcp {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let mut stream = stream?;
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n])?;
        }
    }
    Ok(())
}

fn udp(addr: &str) -> std::io::Result<()> {
    let socket = UdpSocket::bind(addr)?;
    println!("listening on udp {}", socket.local_addr()?);
    let mut buf = [0u8; 4096];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], from)?;
    }
}

fn connect(addr: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(b"ping")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    println!("reply: {reply}");
    Ok(())
}
