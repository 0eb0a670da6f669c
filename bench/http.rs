//! `wasmcell-bench http [SECONDS]`: the HTTP example's `GET /` under load (wrk, concurrency 1
//! and 50), served by the shim under containerd, by `wasmcell run`, by `wasmtime serve -Scli`
//! (the engine's own server; `$WASMTIME_CLI`, see scripts/wasmtime-cli.sh) and by a native
//! Rust hyper server (the limit), one after another in one run.

use std::convert::Infallible;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::Full;
use wasmcell_e2e::{Background, Containerd, build_image, free_port, guest, wait_http, wasmcell};

/// One server's figures at one concurrency.
struct Load {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub fn http(seconds: u32) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let hello = guest("hello-http.wasm");
    let mut rows: Vec<(String, Vec<Load>)> = Vec::new();
    let mut measure = |name: &str, port: u16| -> Result<()> {
        let url = format!("http://127.0.0.1:{port}/");
        wait_http(&url)?;
        let loads = [1, 50]
            .into_iter()
            .map(|connections| wrk(&url, connections, seconds))
            .collect::<Result<_>>()?;
        rows.push((name.to_owned(), loads));
        Ok(())
    };

    match std::env::var_os("WASMTIME_CLI") {
        Some(wasmtime) => {
            let port = free_port()?;
            let server = Background::spawn(
                Command::new(wasmtime)
                    .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
                    .arg(&hello),
            )?;
            measure("wasmtime serve -Scli (baseline)", port)?;
            drop(server);
        }
        None => {
            println!("(no $WASMTIME_CLI: run through bench/run.sh for the wasmtime serve baseline)")
        }
    }

    let port = free_port()?;
    let server = Background::spawn(
        Command::new(wasmcell())
            .args(["run", "-p", &format!("127.0.0.1:{port}:8080")])
            .arg(&hello),
    )?;
    measure("wasmcell run", port)?;
    drop(server);

    let containerd = Containerd::start()?;
    containerd.import(&build_image(
        &hello,
        "bench.local/hello-http:latest",
        tmp.path(),
        &[],
    )?)?;
    let port = free_port()?;
    let addr = format!("WASMCELL_HTTP_ADDR=127.0.0.1:{port}");
    let run = [
        "run",
        "-d",
        "--net-host",
        "--env",
        &addr,
        "--runtime",
        "io.containerd.wasmtime.v1",
        "bench.local/hello-http:latest",
        "web",
    ];
    let ran = wasmcell_e2e::run(containerd.ctr_command().args(run))?;
    ensure!(ran.code == Some(0), "ctr run: {}", ran.stderr);
    measure("wasmcell shim (ctr run -d --net-host)", port)?;
    drop(containerd);

    let port = free_port()?;
    let server = Background::spawn(
        Command::new(std::env::current_exe()?).args(["native-http", &port.to_string()]),
    )?;
    measure("native Rust hyper (the limit)", port)?;
    drop(server);

    // Ratios only against the baseline: without it, none.
    let baseline = rows
        .first()
        .filter(|(name, _)| name.ends_with("(baseline)"))
        .map(|(_, loads)| loads[1].requests_per_s);
    println!("\nHTTP GET / of the hello-http example, wrk {seconds} s per row, one run");
    println!(
        "| {:<40} | {:>10} | {:>9} | {:>9} | {:>10} | {:>9} | {:>9} | {:>8} |",
        "server", "c=1 req/s", "p50", "p99", "c=50 req/s", "p50", "p99", "c=50 ×"
    );
    println!(
        "|{:-<42}|{:->12}|{:->11}|{:->11}|{:->12}|{:->11}|{:->11}|{:->10}|",
        "", "", "", "", "", "", "", ""
    );
    for (name, loads) in &rows {
        let ratio = baseline.map_or(String::from("-"), |b| {
            format!("{:.2}x", loads[1].requests_per_s / b)
        });
        println!(
            "| {name:<40} | {:>10.0} | {:>6.2} ms | {:>6.2} ms | {:>10.0} | {:>6.2} ms | {:>6.2} ms | {ratio:>8} |",
            loads[0].requests_per_s,
            loads[0].p50_ms,
            loads[0].p99_ms,
            loads[1].requests_per_s,
            loads[1].p50_ms,
            loads[1].p99_ms,
        );
    }
    Ok(())
}

/// `wrk` against `url`: threads never exceed connections (wrk refuses that).
fn wrk(url: &str, connections: u32, seconds: u32) -> Result<Load> {
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
