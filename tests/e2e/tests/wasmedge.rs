//! Apps written for WasmEdge (its socket extension of WASI preview 1): an HTTP server built with
//! `tokio_wasi` + `hyper_wasi`, TCP and UDP over `wasmedge_wasi_socket`, name lookups, and the
//! ABI's bad inputs; under `wasmcell run`, `ctr run --runtime io.containerd.wasmedge.v1` and
//! Docker.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use nix::sys::signal::Signal;
use wasmcell_e2e::{
    Background, Containerd, Docker, build_image, containerd_with, curl, free_port, guest, run,
    wait_for, wait_http, wasmcell,
};

const GREETING: &str = "Hello from a WasmEdge-style server\n";
const WASMEDGE: &str = "io.containerd.wasmedge.v1";

/// `GET /`, `POST /echo` with a content type, and a 404, as a user checks the server.
fn assert_serves_echo(base: &str) -> Result<()> {
    let greeting = curl(&[&format!("{base}/")])?;
    assert_eq!((greeting.status, greeting.body.as_str()), (200, GREETING));
    let echoed = curl(&[
        &format!("{base}/echo"),
        "-d",
        r#"{"message":"Hello"}"#,
        "-H",
        "Content-type: application/json",
    ])?;
    assert_eq!(echoed.status, 200, "{echoed:?}");
    assert_eq!(echoed.body, r#"{"message":"Hello"}"#);
    assert_eq!(echoed.content_type, "application/json", "{echoed:?}");
    assert_eq!(curl(&[&format!("{base}/nope")])?.status, 404);
    Ok(())
}

/// Eight clients at once, each sending five requests over one kept-alive connection.
fn assert_serves_concurrent_keepalive_clients(base: &str) -> Result<()> {
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{base}/");
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(
                    url.trim_start_matches("http://").trim_end_matches('/'),
                )?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut replies = 0;
                for _ in 0..5 {
                    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")?;
                    let mut reply = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !String::from_utf8_lossy(&reply).contains(GREETING) {
                        let n = stream.read(&mut buf)?;
                        ensure!(n > 0, "connection closed after {replies} replies");
                        reply.extend_from_slice(&buf[..n]);
                    }
                    replies += 1;
                }
                Ok::<_, anyhow::Error>(replies)
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().expect("client thread")?, 5);
    }
    Ok(())
}

#[test]
fn wasmcell_run_serves_a_tokio_wasi_hyper_server() -> Result<()> {
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Background::spawn(
        Command::new(wasmcell())
            .args(["run", "--net", "--env", &format!("PORT={port}")])
            .arg(guest("wasmedge-http.wasm")),
    )?;
    wait_http(&format!("{base}/"))?;
    assert_serves_echo(&base)?;
    assert_serves_concurrent_keepalive_clients(&base)?;
    // SIGTERM ends it: a command cannot drain, so it stops at once, as a process would
    // (terminate waits at most 10 s).
    let status = server.terminate()?;
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status:?}");
    Ok(())
}

#[test]
fn the_socket_abi_answers_bad_input_with_wasmedges_errnos() -> Result<()> {
    let out = run(Command::new(wasmcell())
        .args(["run", "--net"])
        .arg(guest("wasmedge-socket.wasm"))
        .arg("abuse"))?
    .success()?;
    for line in [
        "open-bad-family errno 28",            // EINVAL
        "open-fd-out-of-bounds errno 21",      // EFAULT
        "bind-3-byte-address errno 28",        // EINVAL
        "bind-address-out-of-bounds errno 21", // EFAULT
        "send-buffer-out-of-bounds errno 21",  // EFAULT
        "send-unconnected errno 64",           // EPIPE
        "listen-on-stdout errno 57",           // ENOTSOCK
        "accept-on-stderr errno 57",           // ENOTSOCK
        "close errno 0",
        "close-again errno 8",        // EBADF
        "listen-after-close errno 8", // EBADF
        "abuse done",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in {out:?}");
    }

    // Without --net there is no network: the socket is refused, nothing else changes.
    let out = run(Command::new(wasmcell())
        .arg("run")
        .arg(guest("wasmedge-socket.wasm"))
        .args(["tcp-client", "127.0.0.1:9", "x"]))?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    Ok(())
}

#[test]
fn polls_mix_sockets_files_and_clocks_and_ipv6_works() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("file"), "data")?;
    let out = run(Command::new(wasmcell())
        .args(["run", "--net", "--dir"])
        .arg(format!("{}:/data", tmp.path().display()))
        .arg(guest("wasmedge-socket.wasm"))
        .args(["poll", "/data/file"]))?
    .success()?;
    // Userdata 1 is the socket, 2 the file, 3 the clock.
    for line in [
        "poll file socket clock: [2]",
        "poll idle socket: [3]",
        "epoll idle socket: [3]",
        "poll socket with data: [1]",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in {out:?}");
    }

    let port = free_port()?;
    let addr = format!("[::1]:{port}");
    let _server = Background::spawn(
        Command::new(wasmcell())
            .args(["run", "--net"])
            .arg(guest("wasmedge-socket.wasm"))
            .args(["udp-server", &addr]),
    )?;
    let mut reply = String::new();
    wait_for("the IPv6 UDP echo server", || {
        let out = run(Command::new(wasmcell())
            .args(["run", "--net"])
            .arg(guest("wasmedge-socket.wasm"))
            .args(["udp-client", &addr, "over ipv6"]))?;
        reply = out.stdout;
        Ok(out.code == Some(0))
    })?;
    assert_eq!(reply.trim(), format!("udp reply from {addr}: over ipv6"));
    Ok(())
}

#[test]
fn a_module_importing_what_we_lack_is_refused_with_every_missing_import() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let module = tmp.path().join("nn.wasm");
    std::fs::write(
        &module,
        wat::parse_str(
            r#"(module
                (import "wasi_snapshot_preview1" "sock_open" (func (param i32 i32 i32) (result i32)))
                (import "wasi_snapshot_preview1" "sock_recv_from" (func (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
                (import "wasi_ephemeral_nn" "load" (func (param i32 i32 i32 i32 i32) (result i32)))
                (import "wasmedge_process" "wasmedge_process_run" (func (result i32)))
                (memory (export "memory") 1)
                (func (export "_start")))"#,
        )?,
    )?;
    let out = run(Command::new(wasmcell()).arg("run").arg(&module))?;
    assert_eq!(out.code, Some(125), "{out:?}");
    for missing in [
        "wasi_ephemeral_nn::load",
        "wasmedge_process::wasmedge_process_run",
        "WasmEdge plugins",
    ] {
        assert!(out.stderr.contains(missing), "no {missing:?} in {out:?}");
    }
    // Both WasmEdge functions are provided (the older, seven-parameter `sock_recv_from` too).
    assert!(
        !out.stderr.contains("sock_open") && !out.stderr.contains("sock_recv_from"),
        "{out:?}"
    );
    Ok(())
}

/// `ctr run --runtime io.containerd.wasmedge.v1 OPTS... IMAGE ID ARGS...`.
fn run_wasmedge(
    containerd: &Containerd,
    opts: &[&str],
    image: &str,
    id: &str,
    args: &[&str],
) -> Result<wasmcell_e2e::Ran> {
    let mut all = vec!["run", "--runtime", WASMEDGE];
    all.extend_from_slice(opts);
    all.extend_from_slice(&[image, id]);
    all.extend_from_slice(args);
    containerd.ctr(&all)
}

#[test]
fn the_wasmedge_runtime_serves_http_tcp_and_udp_under_containerd() -> Result<()> {
    let (_tmp, containerd) = containerd_with(
        &[],
        &[
            ("wasmedge-http.wasm", "example.com/wasmedge-http:latest"),
            ("wasmedge-socket.wasm", "example.com/wasmedge-socket:latest"),
        ],
    )?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let env = format!("PORT={port}");
    run_wasmedge(
        &containerd,
        &["-d", "--net-host", "--env", &env],
        "example.com/wasmedge-http:latest",
        "web",
        &[],
    )?
    .success()?;
    wait_http(&format!("{base}/"))?;
    assert_serves_echo(&base)?;
    assert_serves_concurrent_keepalive_clients(&base)?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGTERM", "web"])?
        .success()?;
    containerd.wait_status("web", "STOPPED")?;
    containerd.ctr(&["task", "delete", "web"])?.success()?;

    // A TCP and a UDP echo server, and their clients, each a container.
    let socket = "example.com/wasmedge-socket:latest";
    let mut replies = Vec::new();
    for proto in ["tcp", "udp"] {
        let port = free_port()?.to_string();
        let server = [&format!("{proto}-server"), port.as_str()];
        let args = [&["/wasmedge-socket.wasm"][..], &server[..]].concat();
        run_wasmedge(&containerd, &["-d", "--net-host"], socket, proto, &args)?.success()?;
        // Retried until the server is up (a datagram sent before is lost; the client gives up).
        let (client, to, message) = (
            format!("{proto}-client"),
            format!("127.0.0.1:{port}"),
            format!("over {proto}"),
        );
        let args = ["/wasmedge-socket.wasm", &client, &to, &message];
        let mut reply = String::new();
        wait_for(&format!("the {proto} echo server"), || {
            let out = run_wasmedge(&containerd, &["--rm", "--net-host"], socket, &client, &args)?;
            reply = out.stdout;
            Ok(out.code == Some(0))
        })?;
        replies.push((port, reply));
    }
    assert_eq!(replies[0].1.trim(), "tcp reply: over tcp");
    // The sender's IPv4 address prints as 0.0.0.0: wasmedge_wasi_socket 0.5 reads it back from
    // a buffer it declared immutable, so the compiler folds those reads to its zeros (the IPv6
    // test shows the host writes the address). The port and the data arrive.
    let (udp, reply) = &replies[1];
    assert!(
        reply.trim().ends_with(&format!(":{udp}: over udp")),
        "{reply:?}"
    );
    for id in ["tcp", "udp"] {
        containerd
            .ctr(&["task", "kill", "-s", "SIGKILL", id])?
            .success()?;
    }
    Ok(())
}

#[test]
fn wasmedge_sockets_live_in_the_containers_namespace_and_names_come_from_its_files() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc)?;
    std::fs::write(etc.join("hosts"), "10.20.30.40 wasmcell-db\n")?;
    // A name server only the image's resolv.conf names (on a loopback address of its own).
    std::fs::write(
        etc.join("resolv.conf"),
        format!("nameserver {DNS_SERVER}\n"),
    )?;
    let include = format!("{}:/etc", etc.display());
    let archive = build_image(
        &guest("wasmedge-socket.wasm"),
        "example.com/names:latest",
        tmp.path(),
        &["--include", &include],
    )?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;

    // A name from the image's /etc/hosts.
    let out = run_wasmedge(
        &containerd,
        &["--rm"],
        "example.com/names:latest",
        "lookup",
        &["/wasmedge-socket.wasm", "lookup", "wasmcell-db"],
    )?
    .success()?;
    assert_eq!(out.stdout.trim(), "wasmcell-db has address 10.20.30.40");

    // A name from the image's name server, which runs in the container's own network
    // namespace: a container to hold the namespace, the server in it, a lookup exec'd in it.
    run_wasmedge(
        &containerd,
        &["-d"],
        "example.com/names:latest",
        "anchor",
        &["/wasmedge-socket.wasm", "tcp-server", "7000"],
    )?
    .success()?;
    let pid = containerd.running("anchor")?;
    dns_server_in(pid, "db.wasmcell.test", [10, 9, 8, 7])?;
    let out = containerd
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "lookup",
            "anchor",
            "/wasmedge-socket.wasm",
            "lookup",
            "db.wasmcell.test",
        ])?
        .success()?;
    assert_eq!(out.stdout.trim(), "db.wasmcell.test has address 10.9.8.7");
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "anchor"])?
        .success()?;

    // A server on the host's loopback is out of reach from the container's own namespace,
    // and within reach from the host's (--net-host).
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let server = std::thread::spawn(move || -> Result<String> {
        let (mut stream, _) = listener.accept()?;
        let mut got = String::new();
        stream.read_to_string(&mut got)?;
        stream.write_all(b"host says hi")?;
        Ok(got)
    });
    let args = [
        "/wasmedge-socket.wasm",
        "tcp-client",
        addr.as_str(),
        "from inside",
    ];
    let out = run_wasmedge(
        &containerd,
        &["--rm"],
        "example.com/names:latest",
        "isolated",
        &args,
    )?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("Connection refused"), "{out:?}");
    let out = run_wasmedge(
        &containerd,
        &["--rm", "--net-host"],
        "example.com/names:latest",
        "hostnet",
        &args,
    )?
    .success()?;
    assert_eq!(out.stdout.trim(), "tcp reply: host says hi");
    assert_eq!(server.join().expect("server thread")?, "from inside");
    Ok(())
}

/// The loopback address the test's name server listens on (port 53, as resolv.conf implies).
const DNS_SERVER: &str = "127.0.0.77";

/// A name server on `DNS_SERVER:53` in the network namespace of process `pid`, answering
/// `name`'s A query with `ip` (other questions get an empty answer), serving from a thread of
/// its own (a thread can enter another network namespace) until the test process ends.
fn dns_server_in(pid: u32, name: &str, ip: [u8; 4]) -> Result<()> {
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let name = name.to_owned();
    let (bound, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let serving = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
            .and_then(|()| std::net::UdpSocket::bind((DNS_SERVER, 53)));
        let serving = match serving {
            Ok(socket) => {
                let _ = bound.send(Ok(()));
                socket
            }
            Err(error) => {
                let _ = bound.send(Err(error));
                return;
            }
        };
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = serving.recv_from(&mut buf) {
            let query = &buf[..n];
            // The question: labels from byte 12, then the type and class.
            let mut at = 12;
            let mut labels = Vec::new();
            while at < n && query[at] != 0 {
                let len = query[at] as usize;
                labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + len]).into_owned());
                at += 1 + len;
            }
            let question_end = at + 5;
            if question_end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([query[at + 1], query[at + 2]]);
            let answer = labels.join(".").eq_ignore_ascii_case(&name) && qtype == 1;
            let mut reply = query[..question_end].to_vec();
            reply[2] = 0x81; // a response, recursion desired
            reply[3] = 0x80; // recursion available, no error
            reply[6..8].copy_from_slice(&u16::from(answer).to_be_bytes());
            reply[8..12].copy_from_slice(&[0, 0, 0, 0]);
            if answer {
                // A pointer to the question's name, type A, class IN, TTL 60, 4 bytes.
                reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                reply.extend_from_slice(&ip);
            }
            let _ = serving.send_to(&reply, from);
        }
    });
    Ok(ready.recv()??)
}

#[test]
fn docker_runs_a_wasmedge_app_with_the_wasmedge_runtime() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let docker = Docker::start_bridged()?;
    let tag = "example.com/wasmedge-http:latest";
    let archive = build_image(
        &guest("wasmedge-http.wasm"),
        tag,
        tmp.path(),
        &["--platform", "wasi/wasm32"],
    )?;
    docker.load(&archive)?;
    let port = free_port()?;
    let publish = format!("{port}:8080");
    let runtime = format!("--runtime={WASMEDGE}");
    let run = [
        "run",
        "-dp",
        &publish,
        "--name=wasmedge-example",
        &runtime,
        "--platform=wasi/wasm32",
        tag,
    ];
    let id = docker.docker(&run)?.success()?.stdout.trim().to_owned();
    let base = format!("http://localhost:{port}");
    wait_http(&format!("{base}/"))?;
    assert_serves_echo(&base)?;
    assert_serves_concurrent_keepalive_clients(&base.replace("localhost", "127.0.0.1"))?;
    wait_for("the server's line in docker logs", || {
        Ok(docker
            .docker(&["logs", &id])?
            .stdout
            .contains("listening on 0.0.0.0:8080"))
    })?;
    // SIGTERM stops it (128 + 15), not docker's SIGKILL after its 10 s (137).
    assert_eq!(docker.stop(&id)?, "143");
    docker.docker(&["rm", &id])?.success()?;
    let left = docker.docker(&["ps", "--all", "--quiet"])?.success()?;
    assert!(left.stdout.trim().is_empty(), "{left:?}");
    Ok(())
}
