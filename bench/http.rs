//! `wasmcell-bench http [SECONDS]`: the HTTP example's `GET /` under load (wrk, concurrency 1
//! and 50), served by the shim under containerd, by `wasmcell run`, by `wasmtime serve -Scli`
//! (the engine's own server; `$WASMTIME_CLI`, see scripts/wasmtime-cli.sh) and by a native
//! Rust hyper server (the limit), one after another in one run. Each row also gives the time
//! from starting the server (the command, or `ctr run -d`) to its first 200.
//!
//! `wasmcell-bench spin [SECONDS]`: what Spin's layer costs: the same component (the HTTP
//! example) served plainly by `wasmcell run` (the baseline), as a Spin app's one route by
//! `wasmcell up`, alone under the shim's wasmtime runtime, and as a Spin app under its spin
//! runtime.
//!
//! `wasmcell-bench slight [SECONDS]`: a SpiderLightning app's router against the same plain
//! baseline.
//!
//! `wasmcell-bench wasmedge-http [SECONDS]`: the same load on `guests/wasmedge-http` (tokio_wasi
//! and hyper_wasi over WasmEdge's socket ABI) under `wasmcell run` and the shim's wasmedge
//! runtime, against the same source built natively (`$WASMEDGE_HTTP_NATIVE`, built by
//! bench/run.sh): the limit, and the ratio's baseline.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::Full;
use wasmcell_e2e::{Background, Containerd, build_image, free_port, guest, wasmcell};

/// One server's figures at one concurrency.
pub(crate) struct Load {
    pub(crate) requests_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// Servers' figures, a row each, measured one after another: from the start of the command
/// that starts the server (`wasmcell run`, `ctr run -d`) to its first 200, then the loads.
struct Rows {
    seconds: u32,
    /// The path the next rows are measured at (`/`, unless an app serves elsewhere).
    path: &'static str,
    rows: Vec<(String, Duration, [Load; 2])>,
}

impl Rows {
    fn new(seconds: u32) -> Rows {
        Rows {
            seconds,
            path: "/",
            rows: Vec::new(),
        }
    }

    /// Waits for the first 200 of the server on `port`, started at `started`, then loads it at
    /// concurrency 1 and 50.
    fn measure(&mut self, name: &str, port: u16, started: Instant) -> Result<()> {
        let ready = first_200(port, self.path, started)?;
        let url = format!("http://127.0.0.1:{port}{}", self.path);
        let loads = [wrk(&url, 1, self.seconds)?, wrk(&url, 50, self.seconds)?];
        self.rows.push((name.to_owned(), ready, loads));
        Ok(())
    }

    /// Serves `wasm` with `wasmcell run -p` and measures it.
    fn measure_wasmcell_run(&mut self, name: &str, wasm: &std::path::Path) -> Result<()> {
        self.measure_wasmcell_run_with(name, wasm, &[])
    }

    /// The same, the guest's environment holding `env` (`NAME=VALUE`s, e.g. HTTP settings).
    fn measure_wasmcell_run_with(
        &mut self,
        name: &str,
        wasm: &std::path::Path,
        env: &[&str],
    ) -> Result<()> {
        let port = free_port()?;
        let mut run = Command::new(wasmcell());
        run.args(["run", "-p", &format!("127.0.0.1:{port}:8080")]);
        for pair in env {
            run.args(["-e", pair]);
        }
        self.measure_spawned(name, port, run.arg(wasm)).map(drop)
    }

    /// Starts `command`, a server on `port`, and measures it; it serves until the returned
    /// handle is dropped.
    fn measure_spawned(
        &mut self,
        name: &str,
        port: u16,
        command: &mut Command,
    ) -> Result<Background> {
        let started = Instant::now();
        let server = Background::spawn(command)?;
        self.measure(name, port, started)?;
        Ok(server)
    }

    /// The table, with each row's c=50 throughput as a ratio of the row named `baseline` (none
    /// without it: a ratio is only against a baseline from the same run).
    fn print(&self, title: &str, baseline: &str) {
        let base = self
            .rows
            .iter()
            .find(|(name, _, _)| name == baseline)
            .map(|(_, _, loads)| loads[1].requests_per_s);
        println!("\n{title}, wrk {} s per row, one run", self.seconds);
        println!(
            "| {:<44} | {:>10} | {:>10} | {:>9} | {:>9} | {:>10} | {:>9} | {:>9} | {:>8} |",
            "server", "start→200", "c=1 req/s", "p50", "p99", "c=50 req/s", "p50", "p99", "c=50 ×"
        );
        println!(
            "|{:-<46}|{:->12}|{:->12}|{:->11}|{:->11}|{:->12}|{:->11}|{:->11}|{:->10}|",
            "", "", "", "", "", "", "", "", ""
        );
        for (name, ready, loads) in &self.rows {
            let ratio = base.map_or(String::from("-"), |b| {
                format!("{:.2}x", loads[1].requests_per_s / b)
            });
            println!(
                "| {name:<44} | {:>7.1} ms | {:>10.0} | {:>6.2} ms | {:>6.2} ms | {:>10.0} | {:>6.2} ms | {:>6.2} ms | {ratio:>8} |",
                ready.as_secs_f64() * 1000.0,
                loads[0].requests_per_s,
                loads[0].p50_ms,
                loads[0].p99_ms,
                loads[1].requests_per_s,
                loads[1].p50_ms,
                loads[1].p99_ms,
            );
        }
    }
}

/// Starts the image in `archive` (named `image`) under a fresh containerd with `runtime`, in
/// the host's network, and measures it; `env` tells the guest where to listen.
fn measure_shim(
    rows: &mut Rows,
    name: &str,
    (archive, image): (&std::path::Path, &str),
    runtime: &str,
    env: impl FnOnce(u16) -> String,
) -> Result<()> {
    let containerd = Containerd::start()?;
    containerd.import(archive)?;
    let port = free_port()?;
    let env = env(port);
    let started = Instant::now();
    let run = [
        "run",
        "-d",
        "--net-host",
        "--env",
        &env,
        "--runtime",
        runtime,
        image,
        "web",
    ];
    let ran = wasmcell_e2e::run(containerd.ctr_command().args(run))?;
    ensure!(ran.code == Some(0), "ctr run: {}", ran.stderr);
    rows.measure(name, port, started)
}

const WASMTIME_SERVE: &str = "wasmtime serve -Scli (baseline)";

pub fn http(seconds: u32) -> Result<()> {
    let hello = guest("hello-http.wasm");
    let mut rows = Rows::new(seconds);
    match std::env::var_os("WASMTIME_CLI") {
        Some(wasmtime) => {
            let port = free_port()?;
            let mut serve = Command::new(wasmtime);
            serve
                .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
                .arg(&hello);
            rows.measure_spawned(WASMTIME_SERVE, port, &mut serve)?;
        }
        None => {
            println!("(no $WASMTIME_CLI: run through bench/run.sh for the wasmtime serve baseline)")
        }
    }

    rows.measure_wasmcell_run("wasmcell run", &hello)?;

    let tmp = tempfile::tempdir()?;
    let image = "bench.local/server:latest";
    let archive = build_image(&hello, image, tmp.path(), &[])?;
    measure_shim(
        &mut rows,
        "wasmcell shim (ctr run -d --net-host)",
        (&archive, image),
        "io.containerd.wasmtime.v1",
        |port| format!("WASMCELL_HTTP_ADDR=127.0.0.1:{port}"),
    )?;

    let port = free_port()?;
    let mut native = Command::new(std::env::current_exe()?);
    native.args(["native-http", &port.to_string()]);
    let _server = rows.measure_spawned("native Rust hyper (the limit)", port, &mut native)?;

    // The same greeting from a WASI 0.3 handler (guests/p3-http, GET /hello), against the
    // 0.2 rows above and, where the engine's CLI takes its flags, `wasmtime serve` with 0.3.
    rows.path = "/hello";
    let p3 = guest("p3-http.wasm");
    rows.measure_wasmcell_run("wasmcell run, WASI 0.3 handler", &p3)?;
    rows.measure_wasmcell_run_with(
        "wasmcell run, 0.3, 16 requests per instance",
        &p3,
        &["WASMCELL_HTTP_INSTANCE_CONCURRENCY=16"],
    )?;
    if let Some(wasmtime) = std::env::var_os("WASMTIME_CLI") {
        let port = free_port()?;
        let mut serve = Command::new(wasmtime);
        serve
            .args(["serve", "-Scli", "-Sp3", "-Wcomponent-model-async"])
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .arg(&p3);
        if let Err(error) =
            rows.measure_spawned("wasmtime serve -Sp3, WASI 0.3 handler", port, &mut serve)
        {
            println!("(wasmtime serve did not serve the 0.3 handler: {error:#})");
        }
    }
    rows.print(
        "HTTP GET of the hello examples (0.2: /, 0.3: /hello)",
        WASMTIME_SERVE,
    );
    Ok(())
}

const PLAIN: &str = "wasmcell run, plain wasi:http (baseline)";

pub fn spin(seconds: u32) -> Result<()> {
    let hello = guest("hello-http.wasm");
    let tmp = tempfile::tempdir()?;
    let app = tmp.path().join("app");
    std::fs::create_dir(&app)?;
    std::fs::copy(&hello, app.join("hello-http.wasm"))?;
    std::fs::write(
        app.join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"bench\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"hello\"\n\
         [component.hello]\nsource = \"hello-http.wasm\"\n",
    )?;
    let mut rows = Rows::new(seconds);
    rows.measure_wasmcell_run(PLAIN, &hello)?;

    let port = free_port()?;
    let mut up = Command::new(wasmcell());
    up.args(["up", "-f"])
        .arg(&app)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    rows.measure_spawned("wasmcell up, a Spin app routing to it", port, &mut up)?;

    let archive = tmp.path().join("app.tar");
    let image = "bench.local/spin:latest";
    let built = wasmcell_e2e::run(
        Command::new(wasmcell())
            .env("WASMCELL_STORE", tmp.path().join("store"))
            .args(["build", "--spin"])
            .arg(app.join("spin.toml"))
            .args(["--tag", image, "--output"])
            .arg(&archive),
    )?;
    ensure!(
        built.code == Some(0),
        "wasmcell build --spin: {}",
        built.stderr
    );
    // The component alone under the shim too: what Spin's layer adds to a container's start.
    let plain = "bench.local/plain:latest";
    let plain_archive = build_image(&hello, plain, tmp.path(), &[])?;
    measure_shim(
        &mut rows,
        "the component alone under the shim (wasmtime.v1)",
        (&plain_archive, plain),
        "io.containerd.wasmtime.v1",
        |port| format!("WASMCELL_HTTP_ADDR=127.0.0.1:{port}"),
    )?;
    measure_shim(
        &mut rows,
        "the Spin app under the shim (spin.v2)",
        (&archive, image),
        "io.containerd.spin.v2",
        |port| format!("SPIN_HTTP_LISTEN_ADDR=127.0.0.1:{port}"),
    )?;
    rows.print(
        "HTTP GET / of the hello-http component, plain and as a Spin app",
        PLAIN,
    );
    Ok(())
}

/// `wasmcell-bench slight [SECONDS]`: what a SpiderLightning app's server costs: the slight
/// router app's `GET /hello` (a core module, an instance per request through wit-bindgen 0.2's
/// ABI) under `wasmcell run --slightfile` and the shim's slight runtime, against the HTTP
/// example served plainly (a component on the pooling engine: the baseline) in the same run.
pub fn slight(seconds: u32) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = tmp.path().join("app");
    std::fs::create_dir(&app)?;
    std::fs::copy(guest("slight-http.wasm"), app.join("app.wasm"))?;
    std::fs::write(
        app.join("slightfile.toml"),
        "specversion = \"0.2\"\n[[capability]]\nresource = \"http\"\nname = \"api\"\n",
    )?;
    let mut rows = Rows::new(seconds);
    rows.measure_wasmcell_run(PLAIN, &guest("hello-http.wasm"))?;

    rows.path = "/hello";
    let port = free_port()?;
    let mut run = Command::new(wasmcell());
    run.args(["run", "--slightfile"])
        .arg(app.join("slightfile.toml"))
        .args(["-e", &format!("WASMCELL_HTTP_ADDR=127.0.0.1:{port}")])
        .arg(app.join("app.wasm"));
    rows.measure_spawned("wasmcell run --slightfile, slight router", port, &mut run)?;

    let image = "bench.local/slight:latest";
    let include = format!("{}:/", app.display());
    let archive = build_image(
        &app.join("app.wasm"),
        image,
        tmp.path(),
        &["--include", &include],
    )?;
    measure_shim(
        &mut rows,
        "the slight app under the shim (slight.v1)",
        (&archive, image),
        "io.containerd.slight.v1",
        |port| format!("WASMCELL_HTTP_ADDR=127.0.0.1:{port}"),
    )?;
    rows.print(
        "HTTP GET of the plain HTTP example, and /hello of the slight router app",
        PLAIN,
    );
    Ok(())
}

const NATIVE: &str = "the same server, native (the limit, baseline)";

pub fn wasmedge_http(seconds: u32) -> Result<()> {
    let server = guest("wasmedge-http.wasm");
    let mut rows = Rows::new(seconds);
    match std::env::var_os("WASMEDGE_HTTP_NATIVE") {
        Some(native) => {
            let port = free_port()?;
            let mut native = Command::new(native);
            native.env("PORT", port.to_string());
            rows.measure_spawned(NATIVE, port, &mut native)?;
        }
        None => {
            println!("(no $WASMEDGE_HTTP_NATIVE: run through bench/run.sh for the native baseline)")
        }
    }

    let port = free_port()?;
    let mut run = Command::new(wasmcell());
    run.args(["run", "--net", "--env", &format!("PORT={port}")])
        .arg(&server);
    rows.measure_spawned("wasmcell run --net", port, &mut run)?;

    let tmp = tempfile::tempdir()?;
    let image = "bench.local/server:latest";
    let archive = build_image(&server, image, tmp.path(), &[])?;
    measure_shim(
        &mut rows,
        "wasmcell shim (wasmedge runtime, --net-host)",
        (&archive, image),
        "io.containerd.wasmedge.v1",
        |port| format!("PORT={port}"),
    )?;
    rows.print(
        "HTTP GET / of guests/wasmedge-http (tokio_wasi + hyper_wasi)",
        NATIVE,
    );
    Ok(())
}

/// How long after `started` the server on `port` first answers `GET path` with 200, polling
/// every millisecond with a plain HTTP/1.0 request (no process spawned per try).
pub(crate) fn first_200(port: u16, path: &str, started: Instant) -> Result<Duration> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let answers = || -> std::io::Result<bool> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut status = [0u8; 12];
        stream.read_exact(&mut status)?;
        Ok(status.ends_with(b" 200"))
    };
    while started.elapsed() < Duration::from_secs(60) {
        if answers().unwrap_or(false) {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    anyhow::bail!("the server on port {port} did not answer 200 within 60 s")
}

/// `wrk` against `url`: threads never exceed connections (wrk refuses that).
pub(crate) fn wrk(url: &str, connections: u32, seconds: u32) -> Result<Load> {
    let threads = connections.min(2);
    let out = Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
        ])
        .args(["-d", &format!("{seconds}s"), url])
        .output()
        .context("run wrk (scripts/setup.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {text}");
    ensure!(
        !text.contains("Non-2xx"),
        "wrk saw error responses from {url}:\n{text}"
    );
    let field = |prefix: &str| -> Result<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("no {prefix:?} in wrk's output:\n{text}"))
    };
    Ok(Load {
        requests_per_s: field("Requests/sec:")?.parse()?,
        p50_ms: millis(field("50%")?)?,
        p99_ms: millis(field("99%")?)?,
    })
}

/// wrk's latencies: `812.00us`, `1.52ms`, `1.01s`.
fn millis(value: &str) -> Result<f64> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("latency {value}"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        other => anyhow::bail!("latency unit {other}"),
    })
}

/// `wasmcell-bench native-http PORT`: the same greeting from hyper on tokio, as fast as Rust
/// serves it; what a Wasm server's figures are measured against.
pub fn native(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"Hello from a Wasm container!\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
