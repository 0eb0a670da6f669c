//! `wasmcell-bench stress [SECONDS]`: the HTTP example under the shim (`ctr run -d
//! --net-host`, its output to a log file, a 1 s request deadline) loaded by wrk at c=200 for SECONDS, every tenth
//! request to `/trap` (a handler that panics) and every hundredth to `/spin` (one that loops
//! until the deadline). Every trap must answer 500, every loop 504, everything else 200; no
//! socket error but timeouts; the server's RSS after the run within 10% of its RSS after a
//! warm-up of the same mix. The baseline, in the same run: the same server under plain
//! `GET /` at c=200.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use wasmcell_e2e::{Containerd, build_image, free_port, guest, wait_http};

const CONNECTIONS: u32 = 200;
/// The request deadline (`WASMCELL_HTTP_TIMEOUT`), and how long wrk waits for an answer:
/// long enough for a loop's 504 behind a queue of others.
const DEADLINE_S: u32 = 1;
const WRK_TIMEOUT_S: u32 = 10;

/// wrk's script: the mix, and a count of requests per route and responses per status, summed
/// over wrk's threads at the end.
const MIX: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  n = 0
  sent = { ["/"] = 0, ["/trap"] = 0, ["/spin"] = 0 }
  got = {}
end
function request()
  n = n + 1
  local path = "/"
  if n % 100 == 0 then path = "/spin" elseif n % 10 == 5 then path = "/trap" end
  sent[path] = sent[path] + 1
  return wrk.format("GET", path)
end
function response(status, headers, body)
  got[status] = (got[status] or 0) + 1
end
function done(summary, latency, requests)
  local sent_total, got_total = {}, {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("sent")) do sent_total[k] = (sent_total[k] or 0) + v end
    for k, v in pairs(thread:get("got")) do got_total[k] = (got_total[k] or 0) + v end
  end
  for k, v in pairs(sent_total) do io.write(string.format("sent %s %d\n", k, v)) end
  for k, v in pairs(got_total) do io.write(string.format("status %d %d\n", k, v)) end
end
"#;

/// One wrk run's counts.
#[derive(Debug, Default)]
struct Counts {
    sent: BTreeMap<String, u64>,
    statuses: BTreeMap<u16, u64>,
    requests_per_s: f64,
    /// wrk's socket errors: connect, read, write, timeout.
    errors: [u64; 4],
}

impl Counts {
    fn sent(&self, path: &str) -> u64 {
        self.sent.get(path).copied().unwrap_or(0)
    }

    fn status(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

pub fn stress(seconds: u32) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let image = "bench.local/server:latest";
    let archive = build_image(&guest("hello-http.wasm"), image, tmp.path(), &[])?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let port = free_port()?;
    // The container's output goes to a file, as Docker's and the kubelet's logs take it: with
    // a FIFO nobody reads (plain `ctr run -d`), a guest's stderr writes wait, as under runc.
    let log = format!("file://{}", tmp.path().join("web.log").display());
    let ran = wasmcell_e2e::run(containerd.ctr_command().args([
        "run",
        "-d",
        "--log-uri",
        &log,
        "--net-host",
        "--env",
        &format!("WASMCELL_HTTP_ADDR=127.0.0.1:{port}"),
        "--env",
        &format!("WASMCELL_HTTP_TIMEOUT={DEADLINE_S}"),
        "--runtime",
        "io.containerd.wasmtime.v1",
        image,
        "web",
    ]))?;
    ensure!(ran.code == Some(0), "ctr run: {}", ran.stderr);
    let server = containerd.running("web")?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&base)?;
    let script = tmp.path().join("mix.lua");
    std::fs::write(&script, MIX)?;

    let clean = wrk(&base, None, seconds)?;
    let warm = wrk(&base, Some(&script), 10)?;
    let rss_warm = rss_kib(server)?;
    let mixed = wrk(&base, Some(&script), seconds)?;
    let rss_after = rss_kib(server)?;

    println!(
        "\nHTTP under stress: wrk -c {CONNECTIONS} for {seconds} s, {DEADLINE_S} s deadline, one run"
    );
    println!(
        "| load | requests/s of 200 | sent / | sent /trap | sent /spin | 200 | 500 | 504 | other | socket errors (connect/read/write/timeout) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, counts) in [("GET / only (baseline)", &clean), ("the mix", &mixed)] {
        let other: u64 = counts
            .statuses
            .iter()
            .filter(|(s, _)| ![200, 500, 504].contains(*s))
            .map(|(_, n)| n)
            .sum();
        let ok_share = counts.status(200) as f64 / counts.statuses.values().sum::<u64>() as f64;
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} | {} | {} | {other} | {} |",
            counts.requests_per_s * ok_share,
            counts.sent("/"),
            counts.sent("/trap"),
            counts.sent("/spin"),
            counts.status(200),
            counts.status(500),
            counts.status(504),
            counts.errors.map(|e| e.to_string()).join("/"),
        );
    }
    let ratio = mixed.requests_per_s * mixed.status(200) as f64
        / mixed.statuses.values().sum::<u64>() as f64
        / clean.requests_per_s;
    println!(
        "\n200s per second under the mix: {ratio:.2}x of GET / alone (the loops hold the CPU)"
    );
    println!(
        "server (sandbox) RSS: {rss_warm} KiB after the warm-up, {rss_after} KiB after the run ({:+.1}%)",
        (rss_after as f64 / rss_warm as f64 - 1.0) * 100.0
    );
    for counts in [&warm, &mixed] {
        check(counts)?;
    }
    ensure!(
        (rss_after as f64) <= rss_warm as f64 * 1.10,
        "the server grew more than 10% over the run: {rss_warm} -> {rss_after} KiB"
    );
    Ok(())
}

/// Every answer is the one its route must give. Requests still in flight when wrk stops (at
/// most one per connection) were sent but never answered, and wrk calls `request()` once more
/// before the run to check that what it returns parses (`script_verify_request`): no status
/// may exceed its route's count, and all of them together fall short by at most the
/// connections and that one.
fn check(counts: &Counts) -> Result<()> {
    let unexpected: Vec<_> = counts
        .statuses
        .keys()
        .filter(|s| ![200, 500, 504].contains(*s))
        .collect();
    ensure!(unexpected.is_empty(), "unexpected statuses: {counts:?}");
    let mut unanswered = 0;
    for (path, status) in [("/", 200), ("/trap", 500), ("/spin", 504)] {
        let (sent, got) = (counts.sent(path), counts.status(status));
        ensure!(
            got <= sent,
            "{path}: {got} answered {status}, {sent} sent: {counts:?}"
        );
        unanswered += sent - got;
    }
    ensure!(
        unanswered <= u64::from(CONNECTIONS) + 1,
        "{unanswered} requests unanswered, more than wrk's {CONNECTIONS} connections hold: {counts:?}"
    );
    let [connect, read, write, _timeout] = counts.errors;
    ensure!(
        connect + read + write == 0,
        "wrk saw socket errors: {counts:?}"
    );
    Ok(())
}

/// wrk at c=200 against `base`, with `script` (the mix) or plain `GET /`.
fn wrk(base: &str, script: Option<&std::path::Path>, seconds: u32) -> Result<Counts> {
    let mut command = Command::new("wrk");
    command
        .args(["-t", "2", "-c", &CONNECTIONS.to_string()])
        .args(["-d", &format!("{seconds}s")])
        .args(["--timeout", &format!("{WRK_TIMEOUT_S}s")]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let out = command
        .arg(format!("{base}/"))
        .output()
        .context("run wrk (scripts/setup.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {text}");
    let mut counts = Counts::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["sent", path, n] => {
                counts.sent.insert((*path).to_owned(), n.parse()?);
            }
            ["status", status, n] => {
                counts.statuses.insert(status.parse()?, n.parse()?);
            }
            ["Requests/sec:", rate] => counts.requests_per_s = rate.parse()?,
            // "Socket errors: connect 0, read 0, write 0, timeout 12"
            [
                "Socket",
                "errors:",
                "connect",
                c,
                "read",
                r,
                "write",
                w,
                "timeout",
                t,
            ] => {
                let number = |s: &str| s.trim_end_matches(',').parse::<u64>();
                counts.errors = [number(c)?, number(r)?, number(w)?, number(t)?];
            }
            _ => {}
        }
    }
    if script.is_none() {
        // Without the script wrk counts only what is not 2xx/3xx.
        let total: u64 = text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in "))
            .context("no request count in wrk's output")?
            .0
            .parse()?;
        let failed: u64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
            .map_or(Ok(0), |n| n.trim().parse())?;
        ensure!(failed == 0, "GET / answered other than 200:\n{text}");
        counts.sent.insert("/".to_owned(), total);
        counts.statuses.insert(200, total);
    }
    Ok(counts)
}

/// The resident set of `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}
