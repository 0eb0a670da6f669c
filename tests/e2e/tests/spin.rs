//! Spin apps, unmodified (components built with Spin's own SDK, `spin.toml` as Spin reads it):
//! under the spin runtime names through containerd, Docker and Kubernetes' CRI, and under
//! `wasmcell up`.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Result;
use wasmcell_e2e::cri::Cri;
use wasmcell_e2e::{
    Containerd, Docker, MariaDb, Mosquitto, Postgres, Redis, Registry, Up, build_spin_image, curl,
    free_port, run_spin_detached, spin_app, start_spin_detached, upstream, wait_for, wait_http,
    wasmcell,
};

const SPIN: &str = "io.containerd.spin.v2";

/// Checks what the shop app serves at `base` as Spin serves it: routes, Spin's headers,
/// variables, static responses, files, key-value, SQLite, a private component, and outbound
/// requests only to the allowed host.
fn assert_serves_shop(base: &str, greeting: &str, env: &str) -> Result<()> {
    let hello = curl(&[&format!("{base}/hello")])?;
    assert_eq!(hello.status, 200, "{hello:?}");
    let lines: Vec<&str> = hello.body.lines().collect();
    assert_eq!(lines[0], format!("{greeting}, Spin!"), "{hello:?}");
    for expected in [
        format!("spin-full-url: {base}/hello"),
        "spin-path-info: /hello".to_owned(),
        "spin-matched-route: /...".to_owned(),
        "spin-component-route: ".to_owned(),
        "spin-base-path: /".to_owned(),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "no {expected:?} in {hello:?}"
        );
    }
    assert!(
        hello.body.contains("spin-client-addr: 127.0.0.1:"),
        "{hello:?}"
    );

    // The longest route wins; the static response needs no component.
    let admin = curl(&[&format!("{base}/admin/users/7")])?;
    assert_eq!(
        (admin.status, admin.body.as_str()),
        (200, "admin: /users/7\n")
    );
    let health = curl(&[&format!("{base}/health")])?;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    // Key-value and SQLite, across requests (each a fresh instance).
    let put = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "blue",
        &format!("{base}/kv/color"),
    ])?;
    assert_eq!(put.status, 201, "{put:?}");
    let got = curl(&[&format!("{base}/kv/color")])?;
    assert_eq!((got.status, got.body.as_str()), (200, "blue"));
    assert_eq!(curl(&[&format!("{base}/kv/missing")])?.status, 404);
    curl(&["--data-binary", "tea", &format!("{base}/orders")])?;
    let orders = curl(&["--data-binary", "cake", &format!("{base}/orders")])?;
    assert_eq!(orders.body, "1 tea\n2 cake\n", "{orders:?}");

    // Its files, and nothing else of the image or the host; its environment, exactly.
    let notice = curl(&[&format!("{base}/files/assets/notice.txt")])?;
    assert_eq!(notice.body, "Open every day from nine to five.\n");
    for hidden in ["spin.toml", "spin_http.wasm", "etc/passwd"] {
        let reply = curl(&[&format!("{base}/files/{hidden}")])?;
        assert_eq!(reply.status, 404, "/{hidden} is visible: {reply:?}");
    }
    assert_eq!(curl(&[&format!("{base}/env")])?.body, env);

    // The private component: no route reaches it, the app itself does.
    let private = curl(&[&format!("{base}/private")])?;
    assert_eq!(
        (private.status, private.body.as_str()),
        (200, "private: the secret is 42\n")
    );

    // Another component needs its `http://ID.spin.internal` entry, as in Spin.
    let chained = curl(&[&format!("{base}/fetch?http://admin.spin.internal/x")])?;
    assert_eq!(chained.status, 502, "{chained:?}");

    // Outbound: the allowed host, and a denial for any other.
    let port = upstream("from upstream")?;
    let allowed = curl(&[&format!("{base}/fetch?http://127.0.0.1:{port}/x")])?;
    assert_eq!(
        (allowed.status, allowed.body.as_str()),
        (200, "from upstream")
    );
    let denied = curl(&[&format!("{base}/fetch?http://localhost:{port}/x")])?;
    assert_eq!(denied.status, 502, "{denied:?}");
    // A denial is `outgoing-handler.handle`'s own error, as Spin answers it (its conformance
    // suite's outbound-wasi-http-no-perms); an allowed request is a response to come.
    for denied in [
        format!("http://localhost:{port}/x"),
        "http://admin.spin.internal/x".to_owned(),
    ] {
        let handled = curl(&[&format!("{base}/handle?{denied}")])?;
        assert_eq!(handled.status, 500, "{denied}: {handled:?}");
        assert!(handled.body.contains("HttpRequestDenied"), "{handled:?}");
    }
    let accepted = curl(&[&format!("{base}/handle?http://127.0.0.1:{port}/x")])?;
    assert_eq!(
        (accepted.status, accepted.body.as_str()),
        (200, "handle accepted it\n")
    );
    Ok(())
}

/// `clients` threads at once, each sending `requests` requests to the admin component (which
/// logs each on stdout and stderr) on connections of their own; the paths, each answered 200.
fn serve_concurrently(base: &str, clients: usize, requests: usize) -> Result<Vec<String>> {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://").to_owned();
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let address = address.clone();
            std::thread::spawn(move || -> Result<Vec<String>> {
                let mut paths = Vec::new();
                for n in 0..requests {
                    let path = format!("/admin/c/{client}/{n}");
                    let mut stream = std::net::TcpStream::connect(&address)?;
                    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
                    write!(
                        stream,
                        "GET {path} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"
                    )?;
                    let mut reply = String::new();
                    stream.read_to_string(&mut reply)?;
                    anyhow::ensure!(reply.starts_with("HTTP/1.1 200"), "{path}: {reply}");
                    paths.push(path);
                }
                Ok(paths)
            })
        })
        .collect();
    let mut paths = Vec::new();
    for thread in threads {
        paths.extend(thread.join().expect("client thread")?);
    }
    Ok(paths)
}

#[test]
fn ctr_runs_a_spin_app_with_its_stores_in_a_volume() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    // The stores in a volume, so a second container finds the first one's data.
    std::fs::write(
        app.join("runtime-config.toml"),
        "[key_value_store.default]\ntype = \"spin\"\npath = \"/data/kv.db\"\n\
         [sqlite_database.default]\ntype = \"spin\"\npath = \"/data/app.db\"\n",
    )?;
    let archive = build_spin_image(&app, "example.com/shop:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let volume = tmp.path().join("volume");
    std::fs::create_dir(&volume)?;
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        volume.display()
    );
    let log = tmp.path().join("shop.log");

    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let run = |id: &str| {
        containerd
            .ctr(&[
                "run",
                "-d",
                "--runtime",
                SPIN,
                "--net-host",
                "--mount",
                &mount,
                "--log-uri",
                &format!("file://{}", log.display()),
                "--env",
                &format!("SPIN_HTTP_LISTEN_ADDR=127.0.0.1:{port}"),
                "--env",
                "SPIN_VARIABLE_GREETING=Howdy",
                "--env",
                "WASMCELL_HTTP_MAX_BODY=33554432",
                "example.com/shop:1",
                id,
            ])?
            .success()
    };
    run("shop")?;
    wait_http(&format!("{base}/health"))?;
    // The container's environment is for the app's variables, not its components.
    assert_serves_shop(&base, "Howdy", "ROLE=web\n")?;
    // Requests served at once all log to the container's streams (a FIFO each): none fails,
    // no line is lost.
    let paths = serve_concurrently(&base, 8, 25)?;
    wait_for("every request's lines in the log", || {
        let logged = std::fs::read_to_string(&log)?;
        Ok(paths.iter().all(|path| {
            logged.contains(&format!("admin out: {path}\n"))
                && logged.contains(&format!("admin err: {path}\n"))
        }))
    })
    .map_err(|e| {
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        let missing: Vec<_> = paths
            .iter()
            .filter(|path| !logged.contains(&format!("admin err: {path}\n")))
            .collect();
        anyhow::anyhow!("{e}: {} missing: {missing:?}\n{logged}", missing.len())
    })?;
    // The denied request is explained where the operator looks.
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        logged.contains("outbound request to http://localhost:")
            && logged.contains("allowed_outbound_hosts in [component.web]"),
        "{logged}"
    );
    assert!(
        volume.join("kv.db").is_file(),
        "the store is not in the volume"
    );
    // A value larger than a store takes is the guest's error, not the host's trouble.
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; 17 << 20])?;
    let body = format!("@{}", big.display());
    let put = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        &body,
        &format!("{base}/kv/big"),
    ])?;
    assert_eq!(put.status, 500, "{put:?}");
    assert!(
        put.body.contains("larger than a key-value store takes"),
        "{put:?}"
    );
    assert_eq!(curl(&[&format!("{base}/kv/color")])?.body, "blue");

    // SIGTERM: the server drains and exits 0.
    containerd
        .ctr(&["task", "kill", "-s", "SIGTERM", "shop"])?
        .success()?;
    containerd.wait_status("shop", "STOPPED")?;
    let deleted = containerd.ctr(&["task", "delete", "shop"])?.success()?;
    assert!(!deleted.stderr.contains("non-zero"), "{deleted:?}");
    containerd
        .ctr(&["container", "delete", "shop"])?
        .success()?;

    // A new container on the same volume has the data.
    run("shop-again")?;
    wait_http(&format!("{base}/health"))?;
    assert_eq!(curl(&[&format!("{base}/kv/color")])?.body, "blue");
    let orders = curl(&[&format!("{base}/orders")])?;
    assert_eq!(orders.body, "1 tea\n2 cake\n");
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "shop-again"])?
        .success()?;
    containerd.wait_status("shop-again", "STOPPED")?;
    Ok(())
}

#[test]
fn a_spin_apps_redis_trigger_and_redis_store_use_a_real_redis() -> Result<()> {
    let redis = Redis::start()?;
    let tmp = tempfile::tempdir()?;
    let app = spin_app("listener", tmp.path())?;
    keep_default_store_in(&redis, &app)?;
    let up = Up::start(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(app.join("spin.toml"))
            .env("SPIN_VARIABLE_REDIS_ADDRESS", redis.url()),
        "/kv/none",
    )?;
    let base = up.base.clone();
    for message in ["first", "second"] {
        let published = redis.cli(&["PUBLISH", "messages", message])?.success()?;
        assert_eq!(
            published.stdout.trim(),
            "1",
            "nobody subscribed: {published:?}"
        );
        wait_for("the message to be stored", || {
            Ok(curl(&[&format!("{base}/kv/last")])?.body == message)
        })?;
    }
    // The store is the Redis server's keys, as Spin's Redis key-value store keeps them.
    assert_eq!(redis.cli(&["GET", "last"])?.stdout.trim(), "second");
    assert_eq!(curl(&[&format!("{base}/kv/count")])?.body, "2");

    let out = up.stop()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("message 2: 6 bytes"), "{stdout}");
    Ok(())
}

#[test]
fn wasmcell_up_serves_an_app_from_its_directory() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    let up = Up::start(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(&app)
            .args(["--env", "SPIN_VARIABLE_GREETING=Hi"]),
        "/health",
    )?;
    let base = up.base.clone();
    // --env is every component's, as with `spin up`.
    assert_serves_shop(&base, "Hi", "ROLE=web\nSPIN_VARIABLE_GREETING=Hi\n")?;
    // Spin's default stores, in .spin/ in the app's directory.
    assert!(app.join(".spin/sqlite_key_value.db").is_file());
    let out = up.stop()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("web: {base}/...")), "{stderr}");
    assert!(
        stderr.contains("outbound request to http://localhost:"),
        "{stderr}"
    );
    Ok(())
}

/// `spin up`'s flags: `--key-value` sets keys in the default store and `--sqlite` runs
/// statements (inline and from `@FILE`) against the default database before the app starts,
/// both in `--state-dir` instead of `.spin/`; `--quiet` silences the components' output and
/// `--follow ID` all but ID's. A flag for a store no component uses is an
/// error that says what to add.
#[test]
fn wasmcell_up_seeds_the_default_store_and_database_as_spin_up_does() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    let migration = tmp.path().join("migration.sql");
    std::fs::write(
        &migration,
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL);\n\
         INSERT INTO orders (item) VALUES ('bread');\n",
    )?;
    let from_file = format!("@{}", migration.display());
    let state = tmp.path().join("state");
    let up = Up::start(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(&app)
            .arg("--state-dir")
            .arg(&state)
            .args(["--key-value", "color=red", "--key-value", "size=a=b"])
            .args(["--sqlite", &from_file])
            .args(["--sqlite", "INSERT INTO orders (item) VALUES ('jam')"])
            .arg("--quiet"),
        "/health",
    )?;
    let base = up.base.clone();
    let got = curl(&[&format!("{base}/kv/color")])?;
    assert_eq!((got.status, got.body.as_str()), (200, "red"));
    // Only the first `=` splits, as in Spin.
    assert_eq!(curl(&[&format!("{base}/kv/size")])?.body, "a=b");
    let orders = curl(&["--data-binary", "tea", &format!("{base}/orders")])?;
    assert_eq!(orders.body, "1 bread\n2 jam\n3 tea\n", "{orders:?}");
    // A denied request's line would be on stderr without --quiet.
    let denied = curl(&[&format!("{base}/fetch?http://localhost:1/x")])?;
    assert_eq!(denied.status, 502, "{denied:?}");
    curl(&[&format!("{base}/log")])?;
    let out = up.stop()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("serving Spin app shop"), "{stderr}");
    assert!(!stderr.contains("outbound request"), "{stderr}");
    assert!(!stderr.contains("web err"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("web out"));
    // --state-dir: the default store and database are there, not in .spin/.
    assert!(state.join("sqlite_key_value.db").is_file());
    assert!(state.join("sqlite_db.db").is_file());
    assert!(!app.join(".spin").exists());

    // --follow: only the named component's output is printed (and one the app has not is
    // refused, naming those it has).
    let up = Up::start(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(&app)
            .args(["--follow", "admin"]),
        "/health",
    )?;
    curl(&[&format!("{}/log", up.base)])?;
    curl(&[&format!("{}/admin/log", up.base)])?;
    let paths = serve_concurrently(&up.base, 4, 10)?;
    let out = up.stop()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("admin out: /admin/log"), "{stdout}");
    assert!(stderr.contains("admin err: /admin/log"), "{stderr}");
    // Requests served at once print whole lines, none lost.
    for path in &paths {
        assert!(stdout.contains(&format!("admin out: {path}\n")), "{stdout}");
        assert!(stderr.contains(&format!("admin err: {path}\n")), "{stderr}");
    }
    assert!(!stdout.contains("web out"), "{stdout}");
    assert!(!stderr.contains("web err"), "{stderr}");
    let unknown = wasmcell_e2e::run(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(&app)
            .args(["--follow", "nope"]),
    )?;
    assert_ne!(unknown.code, Some(0));
    assert!(
        unknown
            .stderr
            .contains("--follow nope: the app has no such component; its components are"),
        "{unknown:?}"
    );

    // An app whose component uses no store: the flag says what is missing.
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare)?;
    std::fs::copy(app.join("spin_http.wasm"), bare.join("spin_http.wasm"))?;
    std::fs::write(
        bare.join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"bare\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = \"spin_http.wasm\"\n",
    )?;
    let refused = wasmcell_e2e::run(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(&bare)
            .args(["--key-value", "a=b"]),
    )?;
    assert_ne!(refused.code, Some(0));
    assert!(
        refused
            .stderr
            .contains("no component of the app uses the default key-value store"),
        "{refused:?}"
    );
    Ok(())
}

/// Outbound MQTT (`fermyon:spin/mqtt@2.0.0`) against a real broker (Debian's mosquitto): a
/// component publishes where `allowed_outbound_hosts` grants (`mqtt://HOST:*`), and the
/// message reaches a subscriber; an address not granted is `connection-failed` naming it, as
/// Spin's conformance suite expects, and a broker that is not there fails `open`.
#[test]
fn a_spin_component_publishes_to_a_real_mqtt_broker() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    let broker = wasmcell_e2e::Mosquitto::start()?;
    let up = Up::start(
        Command::new(wasmcell()).args(["up", "-f"]).arg(&app),
        "/health",
    )?;
    let base = up.base.clone();
    let address = format!("{}?client_id=spintest", broker.url());
    let received = broker.receive("telemetry", 2, || {
        for message in ["Eureka!", "again"] {
            let published = curl(&["--data-binary", message, &format!("{base}/mqtt?{address}")])?;
            anyhow::ensure!(
                (published.status, published.body.as_str()) == (200, "published\n"),
                "{published:?}"
            );
        }
        Ok(())
    })?;
    assert_eq!(received, "Eureka!\nagain\n");

    let denied = "mqtt://localhost:1883?client_id=spintest";
    let refused = curl(&["--data-binary", "x", &format!("{base}/mqtt?{denied}")])?;
    assert_eq!(refused.status, 502, "{refused:?}");
    assert_eq!(
        refused.body,
        format!("Error::ConnectionFailed(\"address {denied} is not permitted\")\n")
    );
    // Granted, nothing listening.
    let absent = format!("mqtt://127.0.0.1:{}?client_id=t", free_port()?);
    let failed = curl(&["--data-binary", "x", &format!("{base}/mqtt?{absent}")])?;
    assert_eq!(failed.status, 502, "{failed:?}");
    assert!(failed.body.contains("cannot connect to"), "{failed:?}");
    up.stop()?;
    Ok(())
}

#[test]
fn docker_runs_a_spin_app_on_port_80_published() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    let archive = build_spin_image(&app, "example.com/shop:docker", tmp.path())?;
    let docker = Docker::start_bridged()?;
    docker.load(&archive)?;
    let port = free_port()?;
    docker
        .docker(&[
            "run",
            "-d",
            "--name",
            "shop",
            "--runtime",
            SPIN,
            "--platform",
            "wasi/wasm",
            "-p",
            &format!("127.0.0.1:{port}:80"),
            "example.com/shop:docker",
        ])?
        .success()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/health"))?;
    let hello = curl(&[&format!("{base}/hello")])?;
    assert!(hello.body.starts_with("Hello, Spin!\n"), "{hello:?}");
    let put = curl(&["-X", "PUT", "--data-binary", "7", &format!("{base}/kv/n")])?;
    assert_eq!(put.status, 201, "{put:?}");
    assert_eq!(curl(&[&format!("{base}/kv/n")])?.body, "7");
    assert_eq!(docker.stop("shop")?, "0");
    Ok(())
}

/// Writes a one-off app with `manifest` and the shop's component, and builds its image.
fn broken_app(dir: &Path, name: &str, manifest: &str) -> Result<std::path::PathBuf> {
    let app = dir.join(name);
    std::fs::create_dir_all(&app)?;
    std::fs::copy(
        wasmcell_e2e::guest("spin/shop/spin_http.wasm"),
        app.join("spin_http.wasm"),
    )?;
    // A component importing an interface no Spin platform has.
    let unknown = wat::parse_str(
        r#"(component (import "acme:widgets/frob@1.0.0" (instance (export "frob" (func)))))"#,
    )?;
    std::fs::write(app.join("unknown.wasm"), unknown)?;
    std::fs::write(app.join("spin.toml"), manifest)?;
    // Built as a user's Dockerfile would (COPY . /), past the checks of `wasmcell build --spin`.
    let include = format!("{}:/", app.display());
    wasmcell_e2e::build_image(
        &app.join("spin_http.wasm"),
        &format!("example.com/{name}:1"),
        dir,
        &["--include", &include],
    )
}

#[test]
fn broken_spin_apps_fail_create_naming_the_problem() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let containerd = Containerd::start()?;
    let cases = [
        (
            "missing",
            "spin_manifest_version = 2\n[application]\nname = \"m\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = \"missing.wasm\"\n",
            "[component.web] cannot read its source `missing.wasm`",
        ),
        (
            "syntax",
            "spin_manifest_version = 2\n[application]\nname = \"s\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = web\n",
            "spin.toml line 6",
        ),
        (
            "unknown",
            "spin_manifest_version = 2\n[application]\nname = \"u\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"frob\"\n[component.frob]\nsource = \"unknown.wasm\"\n",
            "[component.frob] imports what wasmcell does not provide: acme:widgets/frob@1.0.0",
        ),
        (
            "required",
            "spin_manifest_version = 2\n[application]\nname = \"r\"\n[variables]\ntoken = { required = true }\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = \"spin_http.wasm\"\n",
            "token",
        ),
    ];
    for (name, manifest, expected) in cases {
        let archive = broken_app(tmp.path(), name, manifest)?;
        containerd.import(&archive)?;
        let ran = containerd.ctr(&[
            "run",
            "--runtime",
            SPIN,
            &format!("example.com/{name}:1"),
            name,
        ])?;
        assert_ne!(ran.code, Some(0), "{name}: {ran:?}");
        assert!(
            ran.stderr.contains(expected),
            "{name}: no {expected:?} in {}",
            ran.stderr
        );
        // The shim is still there for the next container.
        containerd.ctr(&["container", "delete", name]).ok();
    }
    Ok(())
}

/// The wrong tool for a Spin app, or the Spin tool for a plain image, points at the right one
/// (issue 30, point 3): `wasmcell run` of a Spin app image or of a Spin component, a Spin image
/// under the wasmtime runtime, and `wasmcell up` of an image that is not a Spin app.
#[test]
fn the_wrong_tool_for_an_app_points_at_the_right_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    let spin_image = build_spin_image(&app, "example.com/shop:wrong", tmp.path())?;
    let store = tmp.path().join("store");
    let wasmcell_cmd = |args: &[&str]| {
        wasmcell_e2e::run(
            Command::new(wasmcell())
                .env("WASMCELL_STORE", &store)
                .env("WASMCELL_CACHE_DIR", tmp.path().join("cache"))
                .args(args),
        )
    };
    let spin_image = spin_image.to_str().expect("utf-8 path");
    let ran = wasmcell_cmd(&["run", spin_image])?;
    assert_eq!(ran.code, Some(125), "{ran:?}");
    assert!(
        ran.stderr.contains("is a Spin app: `wasmcell up ")
            && ran.stderr.contains("io.containerd.spin.v2"),
        "{ran:?}"
    );
    let component = app.join("spin_http.wasm");
    let ran = wasmcell_cmd(&["run", component.to_str().expect("utf-8 path")])?;
    assert_eq!(ran.code, Some(125), "{ran:?}");
    assert!(
        ran.stderr.contains("is a Spin component (it imports spin:")
            && ran.stderr.contains("`wasmcell up`"),
        "{ran:?}"
    );
    let hello = wasmcell_e2e::build_image(
        &wasmcell_e2e::guest("hello.wasm"),
        "example.com/hello:plain",
        tmp.path(),
        &[],
    )?;
    let hello = hello.to_str().expect("utf-8 path");
    let ran = wasmcell_cmd(&["up", hello])?;
    assert_eq!(ran.code, Some(125), "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "{hello} is not a Spin app image (it holds no spin.toml)"
        )),
        "{ran:?}"
    );

    // Under containerd: the Spin image given to the wasmtime runtime fails create, saying
    // which runtime runs it.
    let containerd = Containerd::start()?;
    containerd.import(Path::new(spin_image))?;
    let ran = containerd.run_wasm(&[], "example.com/shop:wrong", "wrong", &[])?;
    assert_ne!(ran.code, Some(0), "{ran:?}");
    assert!(
        ran.stderr.contains("is a Spin app's manifest")
            && ran.stderr.contains("runtime io.containerd.spin.v2"),
        "{ran:?}"
    );
    Ok(())
}

/// Waits until `url` answers, for as long as a 36 MB component's first compile may take here
/// (10-40 s).
fn wait_compiled(url: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while curl(&[url]).is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{url} did not answer in 240 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}

/// `wasmcell up` of the app in `app` with `--env env`, once it answers (see [`wait_compiled`]):
/// `check` runs against its base URL, then Ctrl-C must stop it with status 0.
fn up_compiled(app: &Path, env: &[&str], check: impl FnOnce(&str) -> Result<()>) -> Result<()> {
    let port = free_port()?;
    let up = Command::new(wasmcell())
        .args(["up", "-f"])
        .arg(app.join("spin.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(env.iter().flat_map(|pair| ["--env", pair]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let served = wait_compiled(&format!("{base}/hello")).and_then(|()| check(&base));
    wasmcell_e2e::run(Command::new("kill").args(["-TERM", &up.id().to_string()]))?;
    let out = up.wait_with_output()?;
    served?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    Ok(())
}

/// What the Python app (guests/spin-apps-python/python-kv) serves at `base`: its variable
/// `greeting`, its key-value store, its SQLite database (`rows` after this request) and
/// PostgreSQL's own error, as Python sees them.
/// `pg`: what `/pg` answers (status and body): the row of a real server, or the error.
fn assert_serves_python(base: &str, greeting: &str, rows: &str, pg: (u16, &str)) -> Result<()> {
    let hello = curl(&[&format!("{base}/hello")])?;
    assert_eq!(
        (hello.status, hello.body.as_str()),
        (200, format!("{greeting}, Python!\n").as_str())
    );
    let put = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "banana",
        &format!("{base}/kv/fruit"),
    ])?;
    assert_eq!(put.status, 201, "{put:?}");
    let got = curl(&[&format!("{base}/kv/fruit")])?;
    assert_eq!((got.status, got.body.as_str()), (200, "banana"));
    assert_eq!(curl(&[&format!("{base}/kv/missing")])?.status, 404);
    assert_eq!(curl(&[&format!("{base}/sql")])?.body, rows);
    let reply = curl(&[&format!("{base}/pg")])?;
    assert_eq!((reply.status, reply.body.as_str()), pg);
    Ok(())
}

/// A Spin app in Python (Spin's Python SDK 3.x, made a component by componentize-py from PyPI:
/// scripts/build-python-guests.sh) imports every interface of the SDK's world, used or not. It
/// serves under `wasmcell up` and the spin shim.
#[test]
fn a_python_spin_app_serves_under_wasmcell_up_and_the_spin_shim() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("python-kv", tmp.path())?;
    let pg = Postgres::start()?;
    let address = format!("SPIN_VARIABLE_PG_ADDRESS={}", pg.address());
    let answer = (200, "hello from Python 42\n");
    up_compiled(&app, &["SPIN_VARIABLE_GREETING=Hola", &address], |base| {
        assert_serves_python(base, "Hola", "rows: 1\n", answer)
    })?;

    let archive = build_spin_image(&app, "example.com/python-kv:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let base = start_spin_detached(
        &containerd,
        "example.com/python-kv:1",
        "python",
        &[&address],
    )?;
    wait_compiled(&format!("{base}/hello"))?;
    // The image leaves the store of the run above (`.spin/`) out: the count starts again.
    assert_serves_python(&base, "Hello", "rows: 1\n", answer)?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "python"])?
        .success()?;
    containerd.wait_status("python", "STOPPED")?;
    Ok(())
}

/// The servers a Spin 4 app's outbound interfaces reach in a test, and the `SPIN_VARIABLE_*`
/// settings that give the Python SDK 5 app (guests/spin-apps-python/python-sdk5) their
/// addresses.
struct Servers {
    pg: Postgres,
    redis: Redis,
    mysql: MariaDb,
    mqtt: Mosquitto,
}

impl Servers {
    fn start() -> Result<Servers> {
        Ok(Servers {
            pg: Postgres::start()?,
            redis: Redis::start()?,
            mysql: MariaDb::start()?,
            mqtt: Mosquitto::start()?,
        })
    }

    /// The apps' settings; `client_id`: the MQTT client id of the app's connections.
    fn env(&self, client_id: &str) -> Vec<String> {
        vec![
            format!("SPIN_VARIABLE_PG_ADDRESS={}", self.pg.address()),
            format!("SPIN_VARIABLE_REDIS_ADDRESS={}", self.redis.url()),
            format!("SPIN_VARIABLE_MYSQL_ADDRESS={}", self.mysql.url()),
            format!(
                "SPIN_VARIABLE_MQTT_ADDRESS={}?client_id={client_id}",
                self.mqtt.url()
            ),
        ]
    }
}

/// A Spin 4 test app: the Python SDK 5 one (guests/spin-apps-python/python-sdk5) or the Rust
/// SDK 7 one (guests/spin-apps/spin4), which serve the same routes in their own words.
struct Spin4App {
    /// What its answers call it: "Python 5", "Spin 4".
    who: &'static str,
    /// The Redis key it sets.
    redis_key: &'static str,
}

const PYTHON5: Spin4App = Spin4App {
    who: "Python 5",
    redis_key: "python5",
};

const RUST_SPIN4: Spin4App = Spin4App {
    who: "Spin 4",
    redis_key: "spin4",
};

/// What a Spin 4 app serves at `base` (its `n`th run against `servers`, counting from 1): its
/// variable, its key-value store (with the keys as a stream), its SQLite database and
/// PostgreSQL's rows (read from streams), Redis, MySQL and MQTT: every call through Spin 4's
/// async interfaces, the handler itself `wasi:http/handler@0.3.0`.
fn assert_serves_spin4(
    app: &Spin4App,
    base: &str,
    greeting: &str,
    servers: &Servers,
    n: u32,
) -> Result<()> {
    let who = app.who;
    let hello = curl(&[&format!("{base}/hello")])?;
    assert_eq!(
        (hello.status, hello.body.as_str()),
        (200, format!("{greeting}, {who}!\n").as_str())
    );
    for (key, value) in [("kiwi", "green"), ("fig", "purple")] {
        let put = curl(&[
            "-X",
            "PUT",
            "--data-binary",
            value,
            &format!("{base}/kv/{key}"),
        ])?;
        assert_eq!(put.status, 201, "{put:?}");
    }
    let got = curl(&[&format!("{base}/kv/kiwi")])?;
    assert_eq!((got.status, got.body.as_str()), (200, "green"));
    assert_eq!(curl(&[&format!("{base}/kv/missing")])?.status, 404);
    let keys = curl(&[&format!("{base}/kv-keys")])?;
    assert_eq!((keys.status, keys.body.as_str()), (200, "fig,kiwi\n"));
    let sql = curl(&[&format!("{base}/sql")])?;
    assert_eq!((sql.status, sql.body), (200, format!("rows: {n}\n")));
    let pg = curl(&[&format!("{base}/pg")])?;
    assert_eq!(
        (pg.status, pg.body),
        (200, format!("hello from {who} 42\n"))
    );
    let redis = curl(&[&format!("{base}/redis")])?;
    assert_eq!(
        (redis.status, redis.body),
        (200, format!("from {who} {n}\n"))
    );
    assert_eq!(
        servers.redis.cli(&["GET", app.redis_key])?.stdout.trim(),
        format!("from {who}")
    );
    let mysql = curl(&[&format!("{base}/mysql")])?;
    assert_eq!(
        (mysql.status, mysql.body),
        (200, format!("rows: {n} word: hello\n"))
    );
    let topic = format!("{}/{n}", app.redis_key);
    let received = servers.mqtt.receive(&topic, 1, || {
        let published = curl(&[
            "-X",
            "POST",
            "--data-binary",
            &format!("from {who}"),
            &format!("{base}/mqtt?topic={topic}"),
        ])?;
        assert_eq!(
            (published.status, published.body.as_str()),
            (200, "published\n")
        );
        Ok(())
    })?;
    assert_eq!(received, format!("from {who}\n"));
    Ok(())
}

/// Starts `image` (a Spin 4 app already imported) as task `id` under the spin shim with the
/// servers' settings, and checks it serves its second run against them (the image leaves the
/// SQLite database of the first, under `wasmcell up`, out; the servers keep theirs).
fn assert_spin4_under_the_shim(
    app: &Spin4App,
    containerd: &Containerd,
    image: &str,
    id: &str,
    env: &[String],
) -> Result<()> {
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let base = start_spin_detached(containerd, image, id, &env)?;
    wait_compiled(&format!("{base}/hello"))?;
    let who = app.who;
    let sql = curl(&[&format!("{base}/sql")])?;
    assert_eq!((sql.status, sql.body.as_str()), (200, "rows: 1\n"));
    let redis = curl(&[&format!("{base}/redis")])?;
    assert_eq!((redis.status, redis.body), (200, format!("from {who} 2\n")));
    let pg = curl(&[&format!("{base}/pg")])?;
    assert_eq!(pg.body, format!("hello from {who} 42\n"));
    let mysql = curl(&[&format!("{base}/mysql")])?;
    assert_eq!(mysql.body, "rows: 2 word: hello\n");
    let hello = curl(&[&format!("{base}/hello")])?;
    assert_eq!(hello.body, format!("Hello, {who}!\n"));
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", id])?
        .success()?;
    containerd.wait_status(id, "STOPPED")
}

/// A Spin 4 app: Python with Spin's SDK 5 (spin-sdk 5.0.0 and componentize-py 0.25.1 from
/// PyPI), Spin 4's `spin:up/http-trigger@4.1.0` world. Its component imports WASI 0.3 twice
/// (`@0.3.0` and `@0.3.0-rc-2026-03-15`), WASI 0.2, and every interface of Spin 2, 3 and 4,
/// and exports `wasi:http/handler@0.3.0`. It serves under `wasmcell up` and the spin shim,
/// with real servers behind its outbound interfaces.
#[test]
fn a_spin_sdk5_python_app_serves_under_wasmcell_up_and_the_spin_shim() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("python-sdk5", tmp.path())?;
    let servers = Servers::start()?;
    let env = servers.env("python5");
    let mut up_env: Vec<&str> = env.iter().map(String::as_str).collect();
    up_env.push("SPIN_VARIABLE_GREETING=Hallo");
    up_compiled(&app, &up_env, |base| {
        assert_serves_spin4(&PYTHON5, base, "Hallo", &servers, 1)
    })?;

    let archive = build_spin_image(&app, "example.com/python-sdk5:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    assert_spin4_under_the_shim(
        &PYTHON5,
        &containerd,
        "example.com/python-sdk5:1",
        "python5",
        &env,
    )
}

/// A Spin 4 app in Rust: Spin's Rust SDK 7 (spin-sdk 7.0.0 from crates.io, WASI 0.3 through
/// wit-bindgen's async bindings; guests/spin4-rust), serving the same routes under
/// `wasmcell up` and the spin shim with real servers behind its outbound interfaces.
#[test]
fn a_spin_sdk7_rust_app_serves_under_wasmcell_up_and_the_spin_shim() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("spin4", tmp.path())?;
    let servers = Servers::start()?;
    let env = servers.env("spin4");
    let mut up_env: Vec<&str> = env.iter().map(String::as_str).collect();
    up_env.push("SPIN_VARIABLE_GREETING=Hej");
    up_compiled(&app, &up_env, |base| {
        assert_serves_spin4(&RUST_SPIN4, base, "Hej", &servers, 1)?;
        // From the guest's side: query after query of an 8 MB blob, none read. The host holds
        // no more than its bound for the instance, refuses the next, and serves on.
        for _ in 0..2 {
            let hoard = curl(&[&format!("{base}/hoard")])?;
            assert_eq!(hoard.status, 200, "{hoard:?}");
            assert!(
                hoard.body.starts_with("held 8\n")
                    && hoard
                        .body
                        .contains("would pass what an instance may leave unread"),
                "{hoard:?}"
            );
        }
        assert_eq!(curl(&[&format!("{base}/hello")])?.body, "Hej, Spin 4!\n");
        Ok(())
    })?;

    let archive = build_spin_image(&app, "example.com/spin4:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    assert_spin4_under_the_shim(
        &RUST_SPIN4,
        &containerd,
        "example.com/spin4:1",
        "spin4",
        &env,
    )
}

/// Publishes `message` on the Python SDK 5 listener's channel once its trigger has subscribed
/// (the app may answer HTTP before), then waits until the app counts it: `count` messages.
fn publish_to_python5(redis: &Redis, base: &str, message: &str, count: u32) -> Result<()> {
    wait_for("the trigger to subscribe", || {
        let published = redis.cli(&["PUBLISH", "python5-messages", message])?;
        Ok(published.success()?.stdout.trim() == "1")
    })?;
    let expected = format!("{count} {message}\n");
    wait_for("the message to be handled", || {
        Ok(curl(&[&format!("{base}/last-message")])?.body == expected)
    })
}

/// Spin 4's Redis trigger: a Python SDK 5 component exporting
/// `spin:redis/inbound-redis@3.0.0` (an async `handle-message`) handles each message, one at a
/// time, under `wasmcell up` and the spin shim; the app's HTTP component serves what it kept.
#[test]
fn a_spin4_redis_trigger_handles_each_message() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("python-sdk5-listener", tmp.path())?;
    let redis = Redis::start()?;
    let address = format!("SPIN_VARIABLE_REDIS_ADDRESS={}", redis.url());
    up_compiled(&app, &[&address], |base| {
        let none = curl(&[&format!("{base}/last-message")])?;
        assert_eq!((none.status, none.body.as_str()), (404, "no message\n"));
        publish_to_python5(&redis, base, "hello", 1)?;
        publish_to_python5(&redis, base, "two words é", 2)
    })?;

    let archive = build_spin_image(&app, "example.com/python-sdk5-listener:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let base = start_spin_detached(
        &containerd,
        "example.com/python-sdk5-listener:1",
        "listener5",
        &[&address],
    )?;
    wait_compiled(&format!("{base}/last-message"))?;
    publish_to_python5(&redis, &base, "from the shim", 1)?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "listener5"])?
        .success()?;
    containerd.wait_status("listener5", "STOPPED")?;
    Ok(())
}

/// A key-value store kept in Redis lists its keys page by page (SCAN, within the bound a result
/// may hold): as Spin keeps such a store, its keys are the server's, a key set by another
/// client too.
#[test]
fn a_redis_key_value_store_lists_its_keys() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("spin4", tmp.path())?;
    let redis = Redis::start()?;
    keep_default_store_in(&redis, &app)?;
    redis.cli(&["SET", "outside", "x"])?.success()?;
    up_compiled(&app, &[], |base| {
        for key in ["b*", "a", "c[d]"] {
            let url = format!("{base}/kv/{key}");
            let put = curl(&["-g", "-X", "PUT", "--data-binary", "v", &url])?;
            assert_eq!(put.status, 201, "{put:?}");
        }
        let keys = curl(&[&format!("{base}/kv-keys")])?;
        assert_eq!(
            (keys.status, keys.body.as_str()),
            (200, "a,b*,c[d],outside\n")
        );
        Ok(())
    })
}

/// PostgreSQL over TLS, as Spin connects: with `sslmode=require` and the server's CA given
/// (4.1.0's `connection-builder.set-ca-root`), the session is encrypted; without it, a
/// certificate no known CA signed is refused; `sslmode=disable` connects in plain TCP.
#[test]
fn spin4_postgres_speaks_tls_and_checks_the_servers_certificate() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("spin4", tmp.path())?;
    let pg = Postgres::start_tls()?;
    let ca = pg.ca().expect("a TLS server's CA");
    let address = |mode: &str| {
        format!(
            "SPIN_VARIABLE_PG_ADDRESS=host=localhost port={} user={} password={} dbname=postgres sslmode={mode}",
            pg.port(),
            Postgres::USER,
            Postgres::PASSWORD
        )
    };
    let ca = format!("SPIN_VARIABLE_PG_CA={ca}");
    up_compiled(&app, &[&address("require"), &ca], |base| {
        let tls = curl(&[&format!("{base}/pg-tls")])?;
        assert_eq!(
            (tls.status, tls.body.as_str()),
            (200, "hello from Spin 4 42\n")
        );
        // The session the component's pool keeps is encrypted.
        let encrypted = pg.psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
        )?;
        assert_eq!(encrypted.stdout.trim(), "1", "{encrypted:?}");
        // Without the CA (Mozilla's roots only) the server's certificate is refused.
        let refused = curl(&[&format!("{base}/pg")])?;
        assert_eq!(refused.status, 502, "{refused:?}");
        assert!(
            refused.body.contains("ConnectionFailed") && refused.body.contains("certificate"),
            "{refused:?}"
        );
        Ok(())
    })?;
    up_compiled(&app, &[&address("disable")], |base| {
        let plain = curl(&[&format!("{base}/pg")])?;
        assert_eq!(
            (plain.status, plain.body.as_str()),
            (200, "hello from Spin 4 42\n")
        );
        Ok(())
    })
}

/// A Spin app in JavaScript (Spin's JS build tools from npm, ComponentizeJS:
/// scripts/build-js-guests.sh) serves under `wasmcell up` and the spin shim: its variable,
/// key-value store and SQLite database.
#[test]
fn a_javascript_spin_app_serves_under_wasmcell_up_and_the_spin_shim() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("js-kv", tmp.path())?;
    let pg = Postgres::start()?;
    let address = format!("SPIN_VARIABLE_PG_ADDRESS={}", pg.address());
    let check = |base: &str, greeting: &str| -> Result<()> {
        let hello = curl(&[&format!("{base}/hello")])?;
        assert_eq!(
            (hello.status, hello.body.as_str()),
            (200, format!("{greeting}, JavaScript!\n").as_str())
        );
        let queried = curl(&[&format!("{base}/pg")])?;
        assert_eq!(
            (queried.status, queried.body.as_str()),
            (200, "hello from JavaScript 42\n")
        );
        assert_eq!(curl(&[&format!("{base}/kv/k1")])?.status, 404);
        let put = curl(&["-X", "PUT", "--data-binary", "v1", &format!("{base}/kv/k1")])?;
        assert_eq!(put.status, 201, "{put:?}");
        let got = curl(&[&format!("{base}/kv/k1")])?;
        assert_eq!((got.status, got.body.as_str()), (200, "v1"));
        assert_eq!(curl(&[&format!("{base}/sql")])?.body, "rows: 1\n");
        assert_eq!(curl(&[&format!("{base}/sql")])?.body, "rows: 2\n");
        Ok(())
    };
    up_compiled(
        &app,
        &["SPIN_VARIABLE_GREETING=Bonjour", &address],
        |base| check(base, "Bonjour"),
    )?;

    let archive = build_spin_image(&app, "example.com/js-kv:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let base = start_spin_detached(&containerd, "example.com/js-kv:1", "js", &[&address])?;
    wait_compiled(&format!("{base}/hello"))?;
    check(&base, "Hello")?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "js"])?
        .success()?;
    containerd.wait_status("js", "STOPPED")?;
    Ok(())
}

/// The Python and JavaScript apps as Kubernetes pods: pushed to a registry, pulled through
/// CRI, run under the `spin` handler, served at the pod's IP on Spin's port 80.
#[test]
fn python_and_javascript_spin_apps_serve_from_pods() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let registry = Registry::start()?;
    let cri = Cri::start()?;
    let serve = |name: &str| -> Result<String> {
        let app = spin_app(name, tmp.path())?;
        let image = format!("{}/{name}:1", registry.addr);
        wasmcell_e2e::run(
            Command::new(wasmcell())
                .env("WASMCELL_STORE", tmp.path().join("store"))
                .args(["build", "--spin"])
                .arg(app.join("spin.toml"))
                .args(["--tag", &image, "--push"]),
        )?
        .success()?;
        let pod = cri.run_pod(cri.pod_config(name)?, "spin")?;
        cri.pull(&image)?;
        let id = pod.run(pod.container_config(name, &image))?;
        cri.wait_running(&id)?;
        let base = format!("http://{}:80", pod.ip()?);
        wait_compiled(&format!("{base}/hello"))?;
        let body = curl(&[&format!("{base}/hello")])?.body;
        if name == "python-kv" {
            // The default address, which the component is not granted.
            let denied = "Error_ConnectionFailed: address postgres://localhost is not permitted\n";
            assert_serves_python(&base, "Hello", "rows: 1\n", (502, denied))?;
        }
        cri.stop_container(&id, 10)?;
        assert_eq!(cri.container_status(&id)?.exit_code, 0);
        pod.stop()?;
        pod.remove()?;
        Ok(body)
    };
    assert_eq!(serve("python-kv")?, "Hello, Python!\n");
    assert_eq!(serve("js-kv")?, "Hello, JavaScript!\n");
    assert_eq!(serve("python-sdk5")?, "Hello, Python 5!\n");
    Ok(())
}

#[test]
fn wasmcell_build_spin_checks_the_app() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    std::fs::remove_file(app.join("spin_http.wasm"))?;
    let built = wasmcell_e2e::run(
        Command::new(wasmcell())
            .env("WASMCELL_STORE", tmp.path().join("store"))
            .args(["build", "--spin"])
            .arg(app.join("spin.toml"))
            .args(["--tag", "example.com/broken:1"]),
    )?;
    assert_ne!(built.code, Some(0));
    assert!(
        built
            .stderr
            .contains("source `spin_http.wasm` is not in the app's directory"),
        "{built:?}"
    );
    Ok(())
}

#[test]
fn a_spin_app_serves_from_a_pod_under_the_spin_handler() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let registry = Registry::start()?;
    let app = spin_app("shop", tmp.path())?;
    let image = format!("{}/shop:1", registry.addr);
    wasmcell_e2e::run(
        Command::new(wasmcell())
            .env("WASMCELL_STORE", tmp.path().join("store"))
            .args(["build", "--spin"])
            .arg(app.join("spin.toml"))
            .args(["--tag", &image, "--push"]),
    )?
    .success()?;
    let cri = Cri::start()?;
    let pod = cri.run_pod(cri.pod_config("shop")?, "spin")?;
    cri.pull(&image)?;
    let mut config = pod.container_config("shop", &image);
    config.envs = vec![k8s_cri::v1::KeyValue {
        key: "SPIN_VARIABLE_GREETING".into(),
        value: "Hello from a pod".into(),
    }];
    let id = pod.run(config)?;
    cri.wait_running(&id)?;
    // Spin's port 80, at the pod's IP, as a Service reaches it.
    let base = format!("http://{}:80", pod.ip()?);
    wait_for("the pod to answer", || {
        Ok(curl(&[&format!("{base}/health")]).is_ok())
    })?;
    let hello = curl(&[&format!("{base}/hello")])?;
    assert!(
        hello.body.starts_with("Hello from a pod, Spin!\n"),
        "{hello:?}"
    );
    let put = curl(&["-X", "PUT", "--data-binary", "x", &format!("{base}/kv/k")])?;
    assert_eq!(put.status, 201, "{put:?}");
    // StopContainer: SIGTERM, the server drains and exits 0.
    cri.stop_container(&id, 10)?;
    assert_eq!(cri.container_status(&id)?.exit_code, 0);
    pod.stop()?;
    pod.remove()?;
    Ok(())
}

#[test]
fn a_command_trigger_runs_its_component_to_completion() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = tmp.path().join("tool");
    std::fs::create_dir(&app)?;
    std::fs::copy(
        wasmcell_e2e::guest("hello.component.wasm"),
        app.join("hello.wasm"),
    )?;
    std::fs::write(
        app.join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"tool\"\n\
         [[trigger.command]]\ncomponent = \"hello\"\n\
         [component.hello]\nsource = \"hello.wasm\"\nenvironment = { GREETING = \"hi\" }\n",
    )?;
    let up = wasmcell_e2e::run(Command::new(wasmcell()).args(["up", "-f"]).arg(&app))?;
    assert_eq!(
        (up.code, up.stdout.as_str()),
        (Some(0), "Hello from Wasm!\n"),
        "{up:?}"
    );
    let archive = build_spin_image(&app, "example.com/tool:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let ran = containerd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            SPIN,
            "example.com/tool:1",
            "tool",
        ])?
        .success()?;
    assert_eq!(ran.stdout, "Hello from Wasm!\n");
    Ok(())
}

/// `spin up`'s habits: `-f` takes an image as well as a manifest, `--listen` a host name; a
/// port already in use is said once, with `--listen`, before any route is printed.
#[test]
fn wasmcell_up_takes_an_image_with_f_and_a_host_name_to_listen_on() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    let archive = build_spin_image(&app, "example.com/shop:f", tmp.path())?;
    let port = free_port()?;
    let up = Command::new(wasmcell())
        .env("WASMCELL_STORE", tmp.path().join("store"))
        .args(["up", "-f"])
        .arg(&archive)
        .args(["--listen", &format!("localhost:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let served = wait_http(&format!("http://127.0.0.1:{port}/health"));
    let _ = Command::new("kill").arg(up.id().to_string()).status();
    let out = up.wait_with_output()?;
    served?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let listen = taken.local_addr()?.to_string();
    let out = wasmcell_e2e::run(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(&app)
            .args(["--listen", &listen]),
    )?;
    assert_eq!(out.code, Some(125), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "wasmcell: error: {listen} is already in use: stop what listens there, or choose another address with --listen IP:PORT\n"
        )
    );
    Ok(())
}

#[test]
fn wasmcell_up_runs_an_image_with_a_runtime_config_file() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    let archive = build_spin_image(&app, "example.com/shop:up", tmp.path())?;
    // The store where the given runtime config says, on the host.
    let config = tmp.path().join("runtime-config.toml");
    let store = tmp.path().join("stores/kv.db");
    std::fs::write(
        &config,
        format!(
            "[key_value_store.default]\ntype = \"spin\"\npath = \"{}\"\n",
            store.display()
        ),
    )?;
    let up = Up::start(
        Command::new(wasmcell())
            .env("WASMCELL_STORE", tmp.path().join("store"))
            .arg("up")
            .arg(&archive)
            .arg("--runtime-config-file")
            .arg(&config),
        "/health",
    )?;
    let base = up.base.clone();
    let put = curl(&["-X", "PUT", "--data-binary", "v", &format!("{base}/kv/k")])?;
    assert_eq!(put.status, 201, "{put:?}");
    assert_eq!(curl(&[&format!("{base}/kv/k")])?.body, "v");
    assert!(
        store.is_file(),
        "the store is not where the runtime config says"
    );
    up.stop()?;
    Ok(())
}

#[test]
fn an_app_in_spins_registry_format_runs_from_a_registry_under_ctr_and_wasmcell_up() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    let registry = Registry::start()?;
    let reference = format!("{}/shop:oci", registry.addr);
    let archive = tmp.path().join("shop-oci.tar");
    wasmcell_e2e::run(
        Command::new(wasmcell())
            .env("WASMCELL_STORE", tmp.path().join("build-store"))
            .args(["build", "--spin"])
            .arg(app.join("spin.toml"))
            .args(["--format", "artifact", "-t", &reference, "--push", "-o"])
            .arg(&archive),
    )?
    .success()?;

    // The image is Spin's format: the component once (three components share it), the small
    // file inlined, the locked app as the last layer, its digest in the config's labels.
    let layout = tmp.path().join("layout");
    std::fs::create_dir(&layout)?;
    wasmcell_e2e::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout),
    )?
    .success()?;
    let blob = |digest: &str| -> Result<serde_json::Value> {
        let path = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap_or_default())?;
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .map(|l| l.iter().filter_map(|l| l["mediaType"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        layers,
        [
            "application/vnd.wasm.content.layer.v1+wasm",
            "application/vnd.fermyon.spin.application.v1+config"
        ],
        "{manifest}"
    );
    let locked_digest = manifest["layers"][1]["digest"].as_str().unwrap_or_default();
    let config = blob(manifest["config"]["digest"].as_str().unwrap_or_default())?;
    assert_eq!(
        config["config"]["Labels"]["com.fermyon.spin.lockedAppDigest"], locked_digest,
        "{config}"
    );
    let locked = blob(locked_digest)?;
    assert_eq!(locked["metadata"]["name"], "shop", "{locked}");

    // containerd pulls it (nothing to unpack) and the spin runtime runs it from its content.
    let containerd = Containerd::start()?;
    containerd
        .ctr(&["images", "pull", "--plain-http", &reference])?
        .success()?;
    let base = run_spin_detached(&containerd, &reference, "shop-oci", "/health")?;
    assert_serves_shop(&base, "Hello", "ROLE=web\n")?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGTERM", "shop-oci"])?
        .success()?;
    containerd.wait_status("shop-oci", "STOPPED")?;

    // `wasmcell up` pulls it into an empty store and runs it the same way.
    let up = Up::start(
        Command::new(wasmcell())
            .env("WASMCELL_STORE", tmp.path().join("up-store"))
            .args(["up", &reference, "--pull", "always"])
            .env("SPIN_VARIABLE_GREETING", "Hey"),
        "/health",
    )?;
    let base = up.base.clone();
    let hello = curl(&[&format!("{base}/hello")])?;
    assert!(hello.body.starts_with("Hey, Spin!"), "{hello:?}");
    let notice = curl(&[&format!("{base}/files/assets/notice.txt")])?;
    assert_eq!(notice.body, "Open every day from nine to five.\n");
    up.stop()?;
    Ok(())
}

#[test]
fn spin_3_interfaces_reach_the_same_grants_as_spin_2() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    let up = Up::start(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(app.join("spin.toml")),
        "/health",
    )?;
    let base = up.base.clone();
    let call = |method: &str, path: &str, body: &str| -> Result<(u16, String)> {
        let reply = curl(&[
            "-X",
            method,
            "--data-binary",
            body,
            &format!("{base}{path}"),
        ])?;
        Ok((reply.status, reply.body))
    };

    // spin:sqlite@3.0.0: the insert's row id and the rows it changed.
    assert_eq!(
        call("POST", "/v3/orders", "tea")?,
        (200, "id 1, changed 1\n1 tea\n".into())
    );
    assert_eq!(
        call("POST", "/v3/orders", "cake")?,
        (200, "id 2, changed 1\n1 tea\n2 cake\n".into())
    );

    // wasi:keyvalue: the component's `default` store, the same one Spin 2's interface opens.
    assert_eq!(call("PUT", "/wasi-kv/default/color", "blue")?.0, 201);
    assert_eq!(curl(&[&format!("{base}/kv/color")])?.body, "blue");
    assert_eq!(
        call("POST", "/wasi-kv/default/hits/increment?5", "")?,
        (200, "5\n".into())
    );
    assert_eq!(
        call("POST", "/wasi-kv/default/hits/increment?2", "")?,
        (200, "7\n".into())
    );
    let swapped = call("PUT", "/wasi-kv/default/color/swap", "red")?;
    assert_eq!(swapped.0, 200, "{swapped:?}");
    assert_eq!(curl(&[&format!("{base}/kv/color")])?.body, "red");
    assert_eq!(
        call("GET", "/wasi-kv/default/many?color,none", "")?,
        (200, "color=red\nnone=-\n".into())
    );
    // A bucket the component was not granted.
    assert_eq!(call("GET", "/wasi-kv/secrets/x", "")?.0, 403);

    // wasi:config: the component's variables, and nothing else.
    assert_eq!(
        call("GET", "/config/greeting", "")?,
        (200, "Hello\n".into())
    );
    assert_eq!(call("GET", "/config/upstream", "")?.0, 404);
    assert_eq!(
        call("GET", "/config", "")?,
        (200, "greeting=Hello\n".into())
    );

    up.stop()?;
    Ok(())
}

#[test]
fn a_preview_1_module_from_an_older_spin_sdk_runs_as_spin_runs_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("legacy", tmp.path())?;
    let visit = |base: &str, n: u32| -> Result<()> {
        let reply = curl(&[&format!("{base}/page")])?;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (
                200,
                format!("Hello from a preview 1 module: /page visit {n}\n").as_str()
            ),
        );
        Ok(())
    };

    let up = Up::start(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(app.join("spin.toml")),
        "/",
    )?;
    let base = up.base.clone();
    visit(&base, 2)?;
    visit(&base, 3)?;
    up.stop()?;

    // The same under the shim, from an image of the app's directory, which leaves the local
    // store of the run above (`.spin/`) out: the count starts again.
    let archive = build_spin_image(&app, "example.com/legacy:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let base = run_spin_detached(&containerd, "example.com/legacy:1", "legacy", "/")?;
    visit(&base, 2)?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "legacy"])?
        .success()?;
    containerd.wait_status("legacy", "STOPPED")?;
    Ok(())
}

#[test]
fn a_spin_1_module_serves_through_its_handle_http_request_export() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("spin1", tmp.path())?;
    let check = |base: &str, greeting: &str| -> Result<()> {
        // The variable through Spin 1's spin-config, Spin's headers, and `client-addr`.
        let hello = curl(&[&format!("{base}/old/hello")])?;
        assert_eq!(
            (hello.status, hello.body.as_str()),
            (
                200,
                format!("{greeting} from Spin 1: GET /hello from 127.0.0.1\n").as_str()
            )
        );
        // Spin 1's key-value over the app's default store, across instances.
        let put = curl(&[
            "-X",
            "PUT",
            "--data-binary",
            "blue",
            &format!("{base}/old/kv/color"),
        ])?;
        assert_eq!((put.status, put.body.as_str()), (201, "stored color\n"));
        assert_eq!(curl(&[&format!("{base}/old/kv/color")])?.body, "blue");
        let missing = curl(&[&format!("{base}/old/kv/none")])?;
        assert_eq!(
            (missing.status, missing.body.as_str()),
            (404, "no-such-key: \n")
        );
        // Spin 1's outbound-http: only to the allowed host (the `upstream` variable).
        let denied = curl(&[&format!("{base}/old/fetch/denied")])?;
        assert_eq!(
            (denied.status, denied.body.as_str()),
            (502, "destination-not-allowed\n")
        );
        Ok(())
    };

    let upstream = upstream("from upstream")?;
    let up = Up::start(
        Command::new(wasmcell())
            .env(
                "SPIN_VARIABLE_UPSTREAM",
                format!("http://127.0.0.1:{upstream}"),
            )
            .env("SPIN_VARIABLE_GREETING", "Howdy")
            .args(["up", "-f"])
            .arg(app.join("spin.toml")),
        "/old/hello",
    )?;
    check(&up.base.clone(), "Howdy")?;
    let fetched = curl(&[&format!("{}/old/fetch/allowed", up.base)])?;
    assert_eq!(
        (fetched.status, fetched.body.as_str()),
        (200, "upstream said 200: from upstream")
    );
    let out = up.stop()?;
    // The denied request is explained where the operator looks.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("outbound request to http://127.0.0.1:2 denied"),
        "{stderr}"
    );

    let archive = build_spin_image(&app, "example.com/spin1:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let base = run_spin_detached(&containerd, "example.com/spin1:1", "spin1", "/old/hello")?;
    check(&base, "Hello")?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGTERM", "spin1"])?
        .success()?;
    containerd.wait_status("spin1", "STOPPED")?;
    containerd.ctr(&["task", "delete", "spin1"])?.success()?;
    Ok(())
}

/// The `listener` app (a Redis trigger on channel `messages`, and an HTTP component) under
/// containerd as `id`: its store in `store`, its trigger subscribed at `trigger` (a Redis
/// URL), its output in `log`. Returns the containerd it runs in.
fn run_listener(
    tmp: &Path,
    id: &str,
    store: &Redis,
    trigger: &str,
    log: &Path,
) -> Result<Containerd> {
    let app = spin_app("listener", tmp)?;
    std::fs::write(
        app.join("runtime-config.toml"),
        format!(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n",
            store.url()
        ),
    )?;
    let archive = build_spin_image(&app, "example.com/listener:1", tmp)?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let listen = format!("SPIN_HTTP_LISTEN_ADDR=127.0.0.1:{}", free_port()?);
    let address = format!("SPIN_VARIABLE_REDIS_ADDRESS={trigger}");
    let log_uri = format!("file://{}", log.display());
    containerd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            SPIN,
            "--net-host",
            "--log-uri",
            &log_uri,
            "--env",
            &listen,
            "--env",
            &address,
            "example.com/listener:1",
            id,
        ])?
        .success()?;
    Ok(containerd)
}

/// Issue 26 point 5: a Redis trigger whose subscription the server dropped (here `CLIENT
/// KILL`; a slow subscriber past its output buffer limit is dropped the same way) used to end
/// its listener for good, and a trigger-only app exited 0. Now it subscribes again, says so on
/// the container's stderr, and handles the next message.
#[test]
fn a_redis_trigger_whose_subscription_is_killed_subscribes_again() -> Result<()> {
    let redis = Redis::start()?;
    let tmp = tempfile::tempdir()?;
    let log = tmp.path().join("listener.log");
    let containerd = run_listener(tmp.path(), "listener", &redis, &redis.url(), &log)?;
    // Publishes `message`; how many subscribers it reached.
    let publish = |message: &str| -> Result<String> {
        Ok(redis
            .cli(&["PUBLISH", "messages", message])?
            .success()?
            .stdout
            .trim()
            .to_owned())
    };
    wait_for("the trigger to subscribe", || Ok(publish("first")? == "1"))?;
    wait_for("the message to be handled", || {
        Ok(redis.cli(&["GET", "last"])?.stdout.trim() == "first")
    })?;

    let killed = redis
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])?
        .success()?;
    assert_eq!(killed.stdout.trim(), "1", "{killed:?}");
    let since = std::time::Instant::now();
    wait_for("the trigger to subscribe again", || {
        Ok(redis
            .cli(&["PUBSUB", "NUMSUB", "messages"])?
            .stdout
            .lines()
            .nth(1)
            == Some("1"))
    })?;
    eprintln!("subscribed again {:?} after the kill", since.elapsed());
    assert_eq!(publish("second")?, "1");
    wait_for("the message after the kill to be handled", || {
        Ok(redis.cli(&["GET", "last"])?.stdout.trim() == "second")
    })?;
    let logged = std::fs::read_to_string(&log)?;
    let server = redis.url().replace("redis://", "");
    for line in [
        format!("lost the subscription to messages on {server}"),
        format!("subscribed to messages on {server} again"),
    ] {
        assert!(logged.contains(&line), "no {line:?} in {logged}");
    }

    // While the server refuses the trigger (its user turned off, as a server restarting refuses
    // it), the trigger says why once and keeps trying; it is back once it is let in.
    redis
        .cli(&[
            "ACL", "SETUSER", "admin", "on", ">admin", "~*", "&*", "+@all",
        ])?
        .success()?;
    let admin = |args: &[&str]| {
        let mut all = vec!["--user", "admin", "--pass", "admin", "--no-auth-warning"];
        all.extend_from_slice(args);
        redis.cli(&all)?.success()
    };
    admin(&["ACL", "SETUSER", "default", "off"])?;
    admin(&["CLIENT", "KILL", "TYPE", "pubsub"])?;
    wait_for("a failed attempt to be reported", || {
        Ok(std::fs::read_to_string(&log)?.contains("; retrying, at least every 5 s"))
    })?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    admin(&["ACL", "SETUSER", "default", "on"])?;
    wait_for("the trigger to subscribe once let in", || {
        Ok(publish("third")? == "1")
    })?;
    wait_for("the message after the refusal to be handled", || {
        Ok(redis.cli(&["GET", "last"])?.stdout.trim() == "third")
    })?;
    let logged = std::fs::read_to_string(&log)?;
    let back = logged
        .lines()
        .rev()
        .find(|line| line.contains("again, after"));
    eprintln!("{}", back.unwrap_or_default());
    assert!(
        back.is_some_and(|line| !line.ends_with(" and 1 attempt(s)")),
        "{logged}"
    );
    assert_eq!(
        containerd.task("listener")?.map(|(_, s)| s).as_deref(),
        Some("RUNNING")
    );
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "listener"])?
        .success()?;
    containerd.wait_status("listener", "STOPPED")?;
    Ok(())
}

/// A Redis trigger that cannot subscribe when its app starts ends the app, with a status that
/// says it failed and the reason on its stderr, as Spin's does; the app's HTTP server (which
/// used to serve on, with nobody handling the channel) ends with it.
#[test]
fn a_redis_trigger_that_cannot_subscribe_ends_its_app_non_zero() -> Result<()> {
    let redis = Redis::start()?;
    let tmp = tempfile::tempdir()?;
    let log = tmp.path().join("listener.log");
    let nobody = format!("redis://127.0.0.1:{}", free_port()?);
    let containerd = run_listener(tmp.path(), "listener", &redis, &nobody, &log)?;
    containerd.wait_status("listener", "STOPPED")?;
    let deleted = containerd.ctr(&["task", "delete", "listener"])?.success()?;
    assert!(
        deleted.stderr.contains("exit with non-zero exit code 1"),
        "{deleted:?}"
    );
    let logged = std::fs::read_to_string(&log)?;
    let reason = format!(
        "cannot connect to Redis at {} for channel messages",
        &nobody[8..]
    );
    assert!(logged.contains(&reason), "no {reason:?} in {logged}");
    Ok(())
}

/// Gives the app in `app` a runtime config keeping its default key-value store in `redis`.
fn keep_default_store_in(redis: &Redis, app: &Path) -> Result<()> {
    std::fs::write(
        app.join("runtime-config.toml"),
        format!(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        ),
    )?;
    Ok(())
}
