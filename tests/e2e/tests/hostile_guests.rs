//! Hostile guests against a real shim (issue 24): what a guest or an image tries, and, seen from
//! the host, that the promise held. SQLite as a guest-facing API (no file but the component's
//! database, statements ended at the request's deadline), stores in read-only places, and the
//! memory limit as the total of a store's memories and tables.

use std::path::{Path, PathBuf};

use anyhow::Result;
use wasmcell_e2e::{
    Containerd, build_image, build_spin_image, curl, free_port, spin_app, wait_http,
};

const SPIN: &str = "io.containerd.spin.v2";

/// Puts containers in one shim and one sandbox, as CRI does for a pod.
const GROUP: &str = "io.kubernetes.cri.sandbox-id=pod1";

/// A private containerd with the Spin test app `shop` imported as `example.com/shop:1`, its
/// stores as `runtime_config` says (Spin's defaults, in the rootfs, if `None`).
fn shop(tmp: &Path, runtime_config: Option<&str>) -> Result<Containerd> {
    let app = spin_app("shop", tmp)?;
    if let Some(config) = runtime_config {
        std::fs::write(app.join("runtime-config.toml"), config)?;
    }
    let archive = build_spin_image(&app, "example.com/shop:1", tmp)?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    Ok(containerd)
}

/// `ctr run -d` of the shop as `id` with `opts`, on a free port, its output in `log`; its base
/// URL once it serves.
fn run_shop(containerd: &Containerd, id: &str, opts: &[&str], log: &Path) -> Result<String> {
    let port = free_port()?;
    let listen = format!("SPIN_HTTP_LISTEN_ADDR=127.0.0.1:{port}");
    let log_uri = format!("file://{}", log.display());
    let mut args = vec![
        "run",
        "-d",
        "--runtime",
        SPIN,
        "--net-host",
        "--log-uri",
        &log_uri,
        "--env",
        &listen,
    ];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["example.com/shop:1", id]);
    containerd.ctr(&args)?.success()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/health"))?;
    Ok(base)
}

/// The shop's `POST /sql`: the body run as one statement on its `default` database.
fn sql(base: &str, statement: &str) -> Result<wasmcell_e2e::Reply> {
    curl(&["--data-binary", statement, &format!("{base}/sql")])
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => found.extend(files_under(&path)),
            _ => found.push(path),
        }
    }
    found
}

/// Issue 24: a component granted only its `default` database created root-owned files anywhere
/// on the host with `ATTACH DATABASE` and `VACUUM INTO`.
#[test]
fn r24_a_components_sql_makes_no_file_on_the_host() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let containerd = shop(tmp.path(), None)?;
    let log = tmp.path().join("shop.log");
    let base = run_shop(&containerd, "shop", &[], &log)?;
    let host = tmp.path().join("host");
    std::fs::create_dir(&host)?;
    let at = |name: &str| host.join(name).display().to_string();

    for statement in [
        format!("ATTACH DATABASE '{}' AS x", at("attached.db")),
        format!("ATTACH 'file:{}?mode=rwc' AS x", at("uri.db")),
        format!("VACUUM INTO '{}'", at("copy.db")),
        format!("PRAGMA temp_store_directory = '{}'", host.display()),
        "PRAGMA temp_store = FILE".to_owned(),
        format!("SELECT load_extension('{}')", at("evil.so")),
    ] {
        let reply = sql(&base, &statement)?;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (500, "Error::AccessDenied\n"),
            "{statement}"
        );
    }
    assert_eq!(files_under(&host), Vec::<PathBuf>::new());
    // Why, where the operator looks.
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        logged.contains("component web: SQLite statement not allowed: ATTACH"),
        "{logged}"
    );
    // The database itself is as usable as before.
    assert_eq!(sql(&base, "SELECT 40 + 2")?.body, "42\n");
    let orders = curl(&["--data-binary", "tea", &format!("{base}/orders")])?;
    assert_eq!((orders.status, orders.body.as_str()), (200, "1 tea\n"));
    containerd.remove("shop")
}

/// Issue 24: a recursive CTE held the server's threads: no 504, and every other request timed
/// out.
#[test]
fn r24_a_runaway_query_ends_at_the_deadline_and_the_server_serves_on() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let containerd = shop(tmp.path(), None)?;
    let log = tmp.path().join("shop.log");
    let base = run_shop(
        &containerd,
        "shop",
        &["--env", "WASMCELL_HTTP_TIMEOUT=3"],
        &log,
    )?;
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                   SELECT count(*) FROM c";
    let runaway = {
        let base = base.clone();
        std::thread::spawn(move || sql(&base, endless))
    };
    // Served meanwhile, on however many threads the server has.
    for _ in 0..5 {
        let hello = curl(&[&format!("{base}/hello")])?;
        assert_eq!(hello.status, 200, "{hello:?}");
    }
    let runaway = runaway.join().expect("the request thread")?;
    assert_eq!(runaway.status, 504, "{runaway:?}");
    // Its statement was interrupted: the database is free for the next request.
    assert_eq!(sql(&base, "SELECT 40 + 2")?.body, "42\n");
    containerd.remove("shop")
}

/// Issue 24: key-value and SQLite files were created and written in a volume mounted `ro` and in
/// a `--read-only` rootfs.
#[test]
fn r24_stores_in_read_only_places_are_never_written() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let containerd = shop(
        tmp.path(),
        Some(
            "[key_value_store.default]\ntype = \"spin\"\npath = \"/data/kv.db\"\n\
             [sqlite_database.default]\ntype = \"spin\"\npath = \"/data/app.db\"\n",
        ),
    )?;
    let volume = tmp.path().join("volume");
    std::fs::create_dir(&volume)?;
    let log = tmp.path().join("shop.log");
    let mount = |options: &str| {
        format!(
            "type=bind,src={},dst=/data,options=rbind:{options}",
            volume.display()
        )
    };
    let ro = mount("ro");
    let put = |base: &str, value: &str| {
        curl(&[
            "-X",
            "PUT",
            "--data-binary",
            value,
            &format!("{base}/kv/color"),
        ])
    };

    // Empty and read-only: nothing is created.
    let base = run_shop(&containerd, "empty", &["--mount", &ro], &log)?;
    let refused = put(&base, "red")?;
    assert_eq!(refused.status, 500, "{refused:?}");
    assert!(
        refused.body.contains("/data/kv.db") && refused.body.contains("/data is mounted read-only"),
        "{refused:?}"
    );
    let orders = curl(&["--data-binary", "tea", &format!("{base}/orders")])?;
    assert_eq!(orders.status, 500, "{orders:?}");
    assert_eq!(files_under(&volume), Vec::<PathBuf>::new());
    containerd.remove("empty")?;

    // Written once where it may be, then read where it is read-only.
    let base = run_shop(&containerd, "writer", &["--mount", &mount("rw")], &log)?;
    assert_eq!(put(&base, "blue")?.status, 201);
    curl(&["--data-binary", "tea", &format!("{base}/orders")])?;
    containerd.remove("writer")?;
    let snapshot = |dir: &Path| -> Result<Vec<(PathBuf, Vec<u8>)>> {
        let mut files = files_under(dir);
        files.sort();
        files
            .into_iter()
            .map(|f| Ok((f.clone(), std::fs::read(&f)?)))
            .collect()
    };
    let before = snapshot(&volume)?;
    let base = run_shop(&containerd, "reader", &["--mount", &ro], &log)?;
    assert_eq!(curl(&[&format!("{base}/kv/color")])?.body, "blue");
    let refused = put(&base, "red")?;
    assert_eq!(refused.status, 500, "{refused:?}");
    assert!(
        refused.body.contains("/data is mounted read-only"),
        "{refused:?}"
    );
    let write = sql(&base, "INSERT INTO orders (item) VALUES ('cake')")?;
    assert_eq!(write.status, 500, "{write:?}");
    assert!(write.body.contains("read-only"), "{write:?}");
    assert_eq!(sql(&base, "SELECT item FROM orders")?.body, "tea\n");
    assert_eq!(curl(&[&format!("{base}/kv/color")])?.body, "blue");
    containerd.remove("reader")?;
    assert_eq!(snapshot(&volume)?, before);

    // A `--read-only` rootfs: Spin's default stores (in the app's directory) are not made.
    let defaults = tempfile::tempdir()?;
    let containerd = shop(defaults.path(), None)?;
    let base = run_shop(&containerd, "rofs", &["--read-only"], &log)?;
    let refused = put(&base, "red")?;
    assert_eq!(refused.status, 500, "{refused:?}");
    assert!(
        refused.body.contains("/ is mounted read-only"),
        "{refused:?}"
    );
    let made: Vec<PathBuf> = files_under(containerd.dir())
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("sqlite_key_value"))
        .collect();
    assert_eq!(made, Vec::<PathBuf>::new());
    containerd.remove("rofs")
}

/// A module that grows, by export: `memories` 8 memories to 48 MiB each; `table` a table to
/// 40M elements; `both` a memory to 40 MiB and a table to 2M elements (32 MiB counted). Each
/// traps if a growth fails, so only the limiter can end it with 137.
fn growing_module() -> Result<Vec<u8>> {
    let grow = |what: &str| format!("(if (i32.lt_s ({what}) (i32.const 0)) (then unreachable))");
    let memories: String = (0..8).map(|i| format!("(memory $m{i} 0)\n")).collect();
    let grow_memories: String = (0..8)
        .map(|i| grow(&format!("memory.grow $m{i} (i32.const 768)")))
        .collect();
    let wat = format!(
        r#"(module
            {memories}
            (table $t 0 funcref)
            (func (export "memories") {grow_memories})
            (func (export "table") {table})
            (func (export "both") {memory} {small_table}))"#,
        table = grow("table.grow $t (ref.null func) (i32.const 40000000)"),
        memory = grow("memory.grow $m0 (i32.const 640)"),
        small_table = grow("table.grow $t (ref.null func) (i32.const 2000000)"),
    );
    Ok(wat::parse_str(wat)?)
}

/// Issue 24: with a 64 MiB limit a grouped container grew 8 memories of 48 MiB each, or a
/// 40M-element table, and exited 0.
#[test]
fn r24_a_stores_memories_and_tables_together_end_it_with_137_and_an_oom_event() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let wasm = tmp.path().join("limits.wasm");
    std::fs::write(&wasm, growing_module()?)?;
    let containerd = Containerd::start()?;
    containerd.import(&build_image(
        &wasm,
        "example.com/limits:1",
        tmp.path(),
        &[],
    )?)?;
    let events = containerd.events()?;
    let limit = ["--memory-limit", "67108864"];

    let runs: [(&str, &str, Vec<&str>, &str); 5] = [
        (
            "mems-grouped",
            "memories",
            [&["--annotation", GROUP][..], &limit].concat(),
            "exceeded its memory limit of 67108864 bytes",
        ),
        (
            "mems-alone",
            "memories",
            limit.to_vec(),
            "exceeded its memory limit of 67108864 bytes",
        ),
        (
            "table-limited",
            "table",
            limit.to_vec(),
            "exceeded its memory limit of 67108864 bytes",
        ),
        (
            "mem-and-table",
            "both",
            limit.to_vec(),
            "exceeded its memory limit of 67108864 bytes",
        ),
        // No limit at all: tables are still bounded.
        ("table-unlimited", "table", vec![], "past 10000000 elements"),
    ];
    for (id, export, opts, reason) in &runs {
        let mut opts = opts.clone();
        opts.push("--rm");
        let entry = format!("/limits.wasm#{export}");
        let out = containerd.run_wasm(&opts, "example.com/limits:1", id, &[&entry])?;
        assert_eq!(out.code, Some(137), "{id}: {out:?}");
        assert!(out.stderr.contains(reason), "{id}: {out:?}");
    }

    let ids: Vec<&str> = runs.iter().map(|(id, ..)| *id).collect();
    Containerd::assert_oom_events(events, &ids)
}
