//! A hostile Spin component on the network (issue 24, point 4): a component that skips Spin's
//! outbound interfaces for raw `wasi:sockets` reaches only what its `allowed_outbound_hosts`
//! grant, as in Spin: a TCP connect or UDP datagram goes to an address and port an entry
//! (CIDR ranges included) names, nothing listens, no name is looked up. The guest is
//! guests/spin-http's socket routes; the test's own listeners on 127.0.0.1 say what reached
//! them.

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmcell_e2e::{
    Background, Containerd, build_spin_image, curl, free_port, guest, wait_for, wait_http, wasmcell,
};

/// A Spin app in `dir` of one component, guests/spin-http, granted `hosts`.
fn app(dir: &Path, hosts: &[String]) -> Result<PathBuf> {
    let app = dir.join("app");
    std::fs::create_dir_all(&app)?;
    std::fs::copy(
        guest("spin/shop/spin_http.wasm"),
        app.join("spin_http.wasm"),
    )?;
    let manifest = format!(
        "spin_manifest_version = 2\n\
         [application]\nname = \"egress\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n\
         [component.web]\nsource = \"spin_http.wasm\"\nallowed_outbound_hosts = {hosts:?}\n"
    );
    std::fs::write(app.join("spin.toml"), manifest)?;
    Ok(app)
}

/// `wasmcell up` of `app` on a free loopback port, its stderr in `log`; its base URL.
fn up(app: &Path, log: &Path) -> Result<(Background, String)> {
    let port = free_port()?;
    let server = Background::spawn_logging(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(app.join("spin.toml"))
            .args(["--listen", &format!("127.0.0.1:{port}")]),
        std::fs::File::create(log)?,
    )?;
    let base = format!("http://127.0.0.1:{port}");
    // A manifest refused at load is the failure to show.
    wait_http(&format!("{base}/env"))
        .with_context(|| std::fs::read_to_string(log).unwrap_or_default())?;
    Ok((server, base))
}

/// A TCP listener of the test's on 127.0.0.1: what a guest's connect reached.
struct Listener(TcpListener);

impl Listener {
    fn new() -> Result<Listener> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Ok(Listener(listener))
    }

    fn addr(&self) -> Result<String> {
        Ok(self.0.local_addr()?.to_string())
    }

    /// The line the first connection sent, or `None` when nothing connected. Asked after the
    /// guest answered: a connect it made is in the backlog by then.
    fn received(&self) -> Result<Option<String>> {
        match self.0.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut line = String::new();
                BufReader::new(stream).read_line(&mut line)?;
                Ok(Some(line))
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

/// A UDP socket of the test's on 127.0.0.1: what a guest's datagram reached.
fn udp_peer() -> Result<(UdpSocket, String)> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_nonblocking(true)?;
    let addr = socket.local_addr()?.to_string();
    Ok((socket, addr))
}

/// The datagram `socket` got, or `None`. Asked after the guest answered: loopback delivers a
/// datagram before its send returns.
fn datagram(socket: &UdpSocket) -> Result<Option<String>> {
    let mut buf = [0; 64];
    match socket.recv(&mut buf) {
        Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
        Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// `GET base/route?target`: the status and body.
fn ask(base: &str, route: &str, target: &str) -> Result<(u16, String)> {
    let reply = curl(&[&format!("{base}/{route}?{target}")])?;
    Ok((reply.status, reply.body))
}

/// Waits for `log` to hold `line`: the server writes its diagnostics off the request's path.
fn wait_logged(log: &Path, line: &str) -> Result<()> {
    wait_for(&format!("{line:?} in {}", log.display()), || {
        Ok(std::fs::read_to_string(log)?.contains(line))
    })
}

#[test]
fn a_spin_component_with_no_allowed_hosts_opens_no_socket() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = app(tmp.path(), &[])?;
    let log = tmp.path().join("up.log");
    let (_server, base) = up(&app, &log)?;

    let listener = Listener::new()?;
    let target = listener.addr()?;
    let (status, body) = ask(&base, "tcp", &target)?;
    assert_eq!(status, 502, "{body}");
    assert!(body.to_lowercase().contains("permission denied"), "{body}");
    assert_eq!(
        listener.received()?,
        None,
        "the connect reached the listener"
    );
    wait_logged(
        &log,
        &format!("add \"tcp://{target}\" to allowed_outbound_hosts in [component.web]"),
    )?;

    let (peer, peer_addr) = udp_peer()?;
    let (status, body) = ask(&base, "udp", &peer_addr)?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(datagram(&peer)?, None, "the datagram reached the peer");

    // No name lookup, and nothing listens.
    let (status, body) = ask(&base, "lookup", "localhost")?;
    assert_eq!(status, 502, "{body}");
    let port = free_port()?;
    let (status, body) = ask(&base, "listen", &format!("127.0.0.1:{port}"))?;
    assert_eq!(status, 502, "{body}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    Ok(())
}

#[test]
fn a_spin_components_sockets_reach_the_cidr_ranges_it_is_granted_and_nothing_else() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let granted = Listener::new()?;
    let other = Listener::new()?;
    let (peer, peer_addr) = udp_peer()?;
    let (stranger, stranger_addr) = udp_peer()?;
    let granted_port = granted.0.local_addr()?.port();
    let peer_port = peer.local_addr()?.port();
    let app = app(
        tmp.path(),
        &[
            format!("*://127.0.0.0/24:{granted_port}"),
            format!("udp://127.0.0.1:{peer_port}"),
        ],
    )?;
    let log = tmp.path().join("up.log");
    let (_server, base) = up(&app, &log)?;

    let (status, body) = ask(&base, "tcp", &granted.addr()?)?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        granted.received()?.as_deref(),
        Some("hello from the guest\n")
    );
    // Another port of the same address is not granted.
    let (status, body) = ask(&base, "tcp", &other.addr()?)?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(other.received()?, None, "the connect reached the listener");

    let (status, body) = ask(&base, "udp", &peer_addr)?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(datagram(&peer)?.as_deref(), Some("hello from the guest\n"));
    let (status, body) = ask(&base, "udp", &stranger_addr)?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(datagram(&stranger)?, None, "the datagram reached the peer");

    // A grant to connect is no grant to accept: neither the granted address, nor the
    // wildcard bind a client socket makes, listens.
    for addr in [format!("127.0.0.1:{granted_port}"), "0.0.0.0:0".to_owned()] {
        let (status, body) = ask(&base, "listen", &addr)?;
        assert_eq!(status, 502, "listen on {addr}: {body}");
    }
    Ok(())
}

#[test]
fn ctr_runs_a_spin_component_whose_raw_connect_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = app(tmp.path(), &["https://example.com".to_owned()])?;
    let archive = build_spin_image(&app, "example.com/egress:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let log = tmp.path().join("egress.log");
    let port = free_port()?;
    containerd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            "io.containerd.spin.v2",
            "--net-host",
            "--log-uri",
            &format!("file://{}", log.display()),
            "--env",
            &format!("SPIN_HTTP_LISTEN_ADDR=127.0.0.1:{port}"),
            "example.com/egress:1",
            "egress",
        ])?
        .success()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/env"))?;

    // The container shares the host's network, and the component may reach example.com
    // over HTTPS: still no socket of its own to the host's loopback.
    let listener = Listener::new()?;
    let target = listener.addr()?;
    let (status, body) = ask(&base, "tcp", &target)?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        listener.received()?,
        None,
        "the connect reached the listener"
    );
    wait_logged(&log, &format!("outbound request to tcp://{target} denied"))?;
    Ok(())
}
