//! `wasmcell-bench cold [N] [SECONDS]`: how real apps start: the Python (componentize-py, Spin
//! SDK 3) and JavaScript (ComponentizeJS, Spin's JS SDK) Spin apps in `guests/`, 37 and 12 MB
//! components, served by `wasmcell up`. For each, the median of N starts (3 by default) of:
//! - **cold, tiered** (the default policy) from an empty compile cache: the first 200 on
//!   baseline code, and when the server moved to the optimised code;
//! - **cold, optimized** (`--compile optimized`): what a miss cost before tiering, and still
//!   costs a command;
//! - **changed**: the app rebuilt with its code unchanged and its digest changed (a custom
//!   section appended, as a one-line source change leaves the interpreter's code as it was),
//!   tiered and `--compile optimized`: its optimised code compiled from its function cache;
//! - **warm**: the optimised code in the cache;
//!
//! each with the server's resident memory 2 s after its first 200 (and, cold, after the
//! switch), then the warm server's throughput and p99 at concurrency 10 (wrk, SECONDS).
//! Ratios are against the warm start of the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use wasmcell_e2e::{Background, free_port, guest, wasmcell};

use crate::http::{first_200, wrk};
use crate::stress::rss_kib;

/// One start's figures.
struct Start {
    first_200: Duration,
    /// Resident memory 2 s after the first 200.
    rss_kib: u64,
    /// When it moved to optimised code, and its resident memory 2 s after.
    switched: Option<(Duration, u64)>,
}

pub fn cold(n: usize, seconds: u32) -> Result<()> {
    for app in ["python-kv", "js-kv"] {
        let dir = guest(&format!("spin/{app}"));
        ensure!(
            dir.join("spin.toml").exists(),
            "{} is not built (scripts/build-guests.sh builds it from PyPI and npm)",
            dir.display()
        );
        measure(app, &dir, n.max(1), seconds)?;
    }
    Ok(())
}

fn measure(name: &str, original: &Path, n: usize, seconds: u32) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // A copy whose component the rows change in place: a rebuild at the same path is the same
    // app, whose function cache its compiles share.
    let app = tmp.path().join("app");
    copy_app(original, &app)?;
    let component_bytes = std::fs::read(component(original)?)?;
    let mut rows: Vec<(&str, Vec<Start>)> = vec![
        ("cold, tiered (first 200 on baseline code)", Vec::new()),
        ("cold, --compile optimized", Vec::new()),
        ("changed digest, same code, tiered", Vec::new()),
        ("changed digest, same code, --compile optimized", Vec::new()),
        ("warm (optimised code cached)", Vec::new()),
    ];
    for round in 0..n {
        std::fs::write(component(&app)?, &component_bytes)?;
        let cache = tmp.path().join(format!("cache-{round}"));
        rows[0].1.push(start(&app, &cache, &[], true)?);
        let optimized = tmp.path().join(format!("optimized-{round}"));
        rows[1]
            .1
            .push(start(&app, &optimized, &["--compile", "optimized"], false)?);
        // Rebuilt twice, each time with one more custom section: the same code.
        append_custom_section(&app, 2 * round)?;
        rows[2].1.push(start(&app, &cache, &[], true)?);
        append_custom_section(&app, 2 * round + 1)?;
        let blocking = ["--compile", "optimized"];
        rows[3].1.push(start(&app, &cache, &blocking, false)?);
        std::fs::write(component(&app)?, &component_bytes)?;
        rows[4].1.push(start(&app, &cache, &[], false)?);
    }
    let warm = median(rows[4].1.iter().map(|s| s.first_200.as_secs_f64()));
    let warm_rss = median(rows[4].1.iter().map(|s| s.rss_kib as f64));
    println!(
        "\n{name}: wasmcell up, {} MB component, n = {n} each, interleaved",
        component_size(original)? >> 20
    );
    println!(
        "| {:<48} | {:>9} | {:>7} | {:>9} | {:>7} | {:>11} | {:>11} |",
        "start", "first 200", "× warm", "RSS MiB", "× warm", "optimised @", "RSS after"
    );
    println!(
        "|{:-<50}|{:->11}|{:->9}|{:->11}|{:->9}|{:->13}|{:->13}|",
        "", "", "", "", "", "", ""
    );
    for (what, starts) in &rows {
        let first = median(starts.iter().map(|s| s.first_200.as_secs_f64()));
        let rss = median(starts.iter().map(|s| s.rss_kib as f64));
        let switched: Vec<_> = starts.iter().filter_map(|s| s.switched).collect();
        let (at, after) = if switched.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                format!(
                    "{:.2} s",
                    median(switched.iter().map(|(at, _)| at.as_secs_f64()))
                ),
                format!(
                    "{:.0} MiB",
                    median(switched.iter().map(|(_, rss)| *rss as f64)) / 1024.0
                ),
            )
        };
        println!(
            "| {what:<48} | {:>7.2} s | {:>6.1}x | {:>9.0} | {:>6.2}x | {at:>11} | {after:>11} |",
            first,
            first / warm,
            rss / 1024.0,
            rss / warm_rss,
        );
    }
    // Warm throughput of the big component: every request a fresh instance.
    let cache = tmp.path().join("cache-0");
    let port = free_port()?;
    let state = tempfile::tempdir()?;
    let _server = Background::spawn(&mut up(&app, &cache, state.path(), port, &[]))?;
    first_200(port, "/hello", Instant::now())?;
    let load = wrk(&format!("http://127.0.0.1:{port}/hello"), 10, seconds)?;
    println!(
        "warm, c=10 for {seconds} s: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        load.requests_per_s, load.p50_ms, load.p99_ms
    );
    Ok(())
}

/// `wasmcell up` of `app` on `port`, compiling through `cache`, its stores in `state`.
fn up(app: &Path, cache: &Path, state: &Path, port: u16, extra: &[&str]) -> Command {
    let mut command = Command::new(wasmcell());
    command
        .args(["up", "-f"])
        .arg(app)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--cache-dir"])
        .arg(cache)
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .env("WASMCELL_LOG", "wasmcell_runtime::http=info");
    command
}

/// One start of `app` through `cache`; with `switch`, waits (60 s at most) for the server to
/// say it moved to optimised code.
fn start(app: &Path, cache: &Path, extra: &[&str], switch: bool) -> Result<Start> {
    let state = tempfile::tempdir()?;
    let log = state.path().join("stderr");
    let port = free_port()?;
    let started = Instant::now();
    let server = Background::spawn_logging(
        &mut up(app, cache, &state.path().join("state"), port, extra),
        std::fs::File::create(&log)?,
    )?;
    let first_200 = first_200(port, "/hello", started)?;
    std::thread::sleep(Duration::from_secs(2));
    let resident = rss_kib(server.id())?;
    let switched = if switch {
        loop {
            let said = std::fs::read_to_string(&log)?;
            if said.contains("serving on optimised code") {
                let at = started.elapsed();
                std::thread::sleep(Duration::from_secs(2));
                break Some((at, rss_kib(server.id())?));
            }
            if said.contains("compile cache hit") || started.elapsed() > Duration::from_secs(60) {
                // Started on optimised code (a digest seen before), or never moved.
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        None
    };
    Ok(Start {
        first_200,
        rss_kib: resident,
        switched,
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The component an app's manifest names (its one `source`).
fn component(app: &Path) -> Result<PathBuf> {
    let manifest = std::fs::read_to_string(app.join("spin.toml"))?;
    let source = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("source = "))
        .context("no source in spin.toml")?
        .trim_matches('"');
    Ok(app.join(source))
}

fn component_size(app: &Path) -> Result<u64> {
    Ok(std::fs::metadata(component(app)?)?.len())
}

/// A copy of the app's manifest and component in `to`.
fn copy_app(app: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(app)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Appends a custom section naming `round` to the app's component: a new digest, the same code.
fn append_custom_section(app: &Path, round: usize) -> Result<()> {
    let path = component(app)?;
    let mut bytes = std::fs::read(&path)?;
    let previous = round.checked_sub(1).map(custom_section);
    if let Some(previous) = previous.filter(|previous| bytes.ends_with(previous)) {
        // Drop the previous section: 1 id byte, 1 size byte, then the contents.
        bytes.truncate(bytes.len() - previous.len());
    }
    bytes.extend(custom_section(round));
    std::fs::write(&path, bytes)?;
    Ok(())
}

fn custom_section(round: usize) -> Vec<u8> {
    let name = b"wasmcell-bench";
    let body = format!("round {round}");
    let mut contents = vec![name.len() as u8];
    contents.extend(name);
    contents.extend(body.as_bytes());
    let mut section = vec![0u8, contents.len() as u8];
    section.extend(contents);
    section
}
