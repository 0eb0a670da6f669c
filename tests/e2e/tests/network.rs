//! WASI 0.2 sockets for command components: TCP listen/accept/connect and UDP, where the
//! network is granted (a container's network namespace; `wasmcell run --net`) and nowhere else.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmcell_e2e::{Background, containerd_with, free_port, guest, run, wait_for, wasmcell};

/// Connects to `addr` once something listens there, sends `message` and returns the echo.
fn tcp_echo(addr: &str, message: &[u8]) -> Result<Vec<u8>> {
    let mut stream = None;
    wait_for(&format!("a listener on {addr}"), || {
        stream = TcpStream::connect(addr).ok();
        Ok(stream.is_some())
    })?;
    let mut stream = stream.expect("connected");
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(message)?;
    let mut echo = vec![0; message.len()];
    stream.read_exact(&mut echo)?;
    Ok(echo)
}

fn echo_server(args: &[&str]) -> Result<Background> {
    Background::spawn(Command::new(wasmcell()).arg("run").args(args))
}

#[test]
fn wasmcell_run_gives_sockets_only_with_net() -> Result<()> {
    let server = guest("echo-server.wasm");
    let server = server.to_str().context("utf-8 path")?;

    // No --net: binding is refused, and the guest says so.
    let port = free_port()?;
    let refused =
        run(Command::new(wasmcell()).args(["run", server, "tcp", &format!("127.0.0.1:{port}")]))?;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("Permission denied"), "{refused:?}");

    // TCP: listen and accept.
    let tcp = format!("127.0.0.1:{}", free_port()?);
    let _tcp_server = echo_server(&["--net", server, "tcp", &tcp])?;
    assert_eq!(tcp_echo(&tcp, b"over tcp")?, b"over tcp");

    // UDP.
    let udp = format!("127.0.0.1:{}", free_port()?);
    let _udp_server = echo_server(&["--net", server, "udp", &udp])?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 64];
    wait_for("a UDP echo", || {
        client.send_to(b"over udp", &udp)?;
        Ok(client.recv_from(&mut buf).is_ok())
    })?;
    assert_eq!(&buf[..8], b"over udp");

    // TCP connect, to a listener of the test's.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let target = listener.local_addr()?.to_string();
    let peer = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut got = String::new();
        stream.read_to_string(&mut got)?;
        stream.write_all(got.to_uppercase().as_bytes())
    });
    let connected =
        run(Command::new(wasmcell()).args(["run", "--net", server, "connect", &target]))?;
    assert_eq!(
        (connected.code, connected.stdout.as_str()),
        (Some(0), "reply: PING\n"),
        "{connected:?}"
    );
    peer.join().expect("peer thread")?;
    Ok(())
}

#[test]
fn a_component_serves_its_own_port_in_the_containers_network() -> Result<()> {
    let (_tmp, containerd) =
        containerd_with(&[], &[("echo-server.wasm", "example.com/echo:latest")])?;
    // The host's network (--net-host) is the container's here.
    let addr = format!("127.0.0.1:{}", free_port()?);
    containerd
        .run_wasm(
            &["-d", "--net-host"],
            "example.com/echo:latest",
            "echo-host",
            &["/echo-server.wasm", "tcp", &addr],
        )?
        .success()?;
    assert_eq!(tcp_echo(&addr, b"hello, container")?, b"hello, container");

    // Its own network namespace: reachable from inside it.
    containerd
        .run_wasm(
            &["-d"],
            "example.com/echo:latest",
            "echo-own",
            &["/echo-server.wasm", "tcp", "0.0.0.0:7000"],
        )?
        .success()?;
    let pid = containerd.running("echo-own")?;
    // bash's /dev/tcp: a client every machine has.
    let client = "exec 3<>/dev/tcp/127.0.0.1/7000 && printf inside >&3 && head -c 6 <&3";
    let mut echoed = String::new();
    wait_for("the echo server in the namespace", || {
        let out = run(Command::new("nsenter").args([
            "--net",
            &format!("--target={pid}"),
            "bash",
            "-c",
            client,
        ]))?;
        echoed = out.stdout;
        Ok(out.code == Some(0))
    })?;
    assert_eq!(echoed, "inside");
    for id in ["echo-host", "echo-own"] {
        containerd
            .ctr(&["task", "kill", "-s", "SIGKILL", id])?
            .success()?;
    }
    Ok(())
}
