//! SpiderLightning apps (`slightfile.toml` + `app.wasm`, core modules importing slight's
//! interfaces with wit-bindgen 0.2's ABI): under `io.containerd.slight.v1` through containerd
//! and Docker, and under `wasmcell run --slightfile`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Result;
use wasmcell_e2e::cri::Cri;
use wasmcell_e2e::{
    Containerd, Docker, Redis, Registry, build_image, curl, free_port, guest, upstream, wait_for,
    wait_http, wasmcell,
};

const SLIGHT: &str = "io.containerd.slight.v1";

/// What the HTTP app needs: its server, a store, its environment and the client (the slightfile
/// it ships with).
const HTTP_SLIGHTFILE: &str = include_str!("../../../guests/slight-http/slightfile.toml");

/// An app's directory as a slight image holds it: `slightfile` and the guest `module` as
/// `app.wasm`.
fn app(dir: &Path, name: &str, module: &str, slightfile: &str) -> Result<PathBuf> {
    let app = dir.join(name);
    std::fs::create_dir_all(&app)?;
    std::fs::copy(guest(module), app.join("app.wasm"))?;
    std::fs::write(app.join("slightfile.toml"), slightfile)?;
    Ok(app)
}

/// The image of `app` as a Dockerfile `COPY . /` builds it (for `wasi/wasm32`, the platform
/// Docker's Wasm runtimes pull), tagged `example.com/NAME:1`.
fn image(dir: &Path, app: &Path) -> Result<(PathBuf, String)> {
    let name = app.file_name().unwrap().to_string_lossy();
    let tag = format!("example.com/{name}:1");
    let include = format!("{}:/", app.display());
    let extra = ["--include", &include, "--platform", "wasi/wasm32"];
    let archive = build_image(&app.join("app.wasm"), &tag, dir, &extra)?;
    Ok((archive, tag))
}

/// Checks the HTTP app at `base`: its routes, route parameters, key-value across requests
/// (each a fresh instance), Spin-less 404 and 405, and the client reaching `upstream`.
fn assert_serves_router(base: &str) -> Result<()> {
    let hello = curl(&[&format!("{base}/hello?x=1")])?;
    assert_eq!(
        (hello.status, hello.body.as_str()),
        (200, "hello from slight: GET /hello?x=1\n")
    );
    let put = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "blue",
        &format!("{base}/kv/color"),
    ])?;
    assert_eq!((put.status, put.body.as_str()), (201, "stored color\n"));
    let get = curl(&[&format!("{base}/kv/color")])?;
    assert_eq!((get.status, get.body.as_str()), (200, "blue"));
    let missing = curl(&[&format!("{base}/kv/none")])?;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, "key-not-found: none\n")
    );
    assert_eq!(curl(&[&format!("{base}/nowhere")])?.status, 404);
    assert_eq!(
        curl(&["-X", "DELETE", &format!("{base}/hello")])?.status,
        405
    );
    let fetched = curl(&[&format!("{base}/fetch")])?;
    assert_eq!(
        (fetched.status, fetched.body.as_str()),
        (200, "upstream said 200: from upstream")
    );
    Ok(())
}

#[test]
fn ctr_runs_a_slight_keyvalue_app_with_its_store_in_a_volume() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let slightfile = "specversion = \"0.2\"\n[[capability]]\nresource = \"keyvalue.filesystem\"\nname = \"my-container\"\n";
    let app = app(tmp.path(), "kv", "slight-kv.wasm", slightfile)?;
    let (archive, tag) = image(tmp.path(), &app)?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let volume = tmp.path().join("volume");
    std::fs::create_dir(&volume)?;
    let mount = format!(
        "type=bind,src={},dst=/.slight,options=rbind:rw",
        volume.display()
    );
    let run = |id: &str, volume: bool| {
        let mut args = vec!["run", "--rm", "--runtime", SLIGHT];
        if volume {
            args.extend(["--mount", &mount]);
        }
        args.extend([tag.as_str(), id]);
        containerd.ctr(&args)?.success()
    };
    let first = run("kv1", true)?;
    assert_eq!(
        first.stdout,
        "runs: 1\ngreeting: hello\nkeys: greeting,runs\nafter delete: key-not-found: greeting\n\
         empty key: invalid-key: a key may not be empty\nundeclared: unexpected-error\n"
    );
    // The store the slightfile does not declare is refused, and the user is told how to fix it.
    assert!(
        first
            .stderr
            .contains("no key-value store named \"undeclared\" is declared in slightfile.toml"),
        "{first:?}"
    );
    assert!(volume.join("keyvalue.sqlite").is_file());
    // The volume keeps the store for the next container; without it, each starts afresh.
    assert!(run("kv2", true)?.stdout.starts_with("runs: 2\n"));
    assert!(run("kv3", false)?.stdout.starts_with("runs: 1\n"));
    assert!(run("kv4", false)?.stdout.starts_with("runs: 1\n"));
    Ok(())
}

#[test]
fn a_slight_redis_store_keeps_its_keys_in_a_real_redis() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let redis = Redis::start()?;
    let slightfile = format!(
        "specversion = \"0.2\"\n[[capability]]\nresource = \"keyvalue.redis\"\nname = \"cache\"\n  [capability.configs]\n  REDIS_ADDRESS = \"{}\"\n",
        redis.url()
    );
    let app = app(tmp.path(), "kvredis", "slight-kv.wasm", &slightfile)?;
    let (archive, tag) = image(tmp.path(), &app)?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    for (id, runs) in [("redis1", "1"), ("redis2", "2")] {
        let ran = containerd
            .ctr(&[
                "run",
                "--rm",
                "--runtime",
                SLIGHT,
                "--net-host",
                "--env",
                "STORE=cache",
                &tag,
                id,
            ])?
            .success()?;
        assert!(
            ran.stdout.starts_with(&format!(
                "runs: {runs}\ngreeting: hello\nkeys: greeting,runs\n"
            )),
            "{ran:?}"
        );
    }
    // As slight kept them: each key under its store's name.
    let stored = redis.cli(&["GET", "cache:runs"])?.success()?;
    assert_eq!(stored.stdout.trim(), "2");
    Ok(())
}

#[test]
fn slight_configs_come_from_the_containers_environment_and_the_slightfiles_secrets() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let token = wasmcell_slight::encrypt_secret("k3y", b"s3cret");
    let slightfile = format!(
        "specversion = \"0.2\"\n[[capability]]\nresource = \"configs.envvars\"\nname = \"env\"\n\
         [[capability]]\nresource = \"configs.usersecrets\"\nname = \"secrets\"\n\
         [[secret_settings]]\nname = \"token\"\nvalue = \"{token}\"\n"
    );
    let app = app(tmp.path(), "configs", "slight-configs.wasm", &slightfile)?;
    let (archive, tag) = image(tmp.path(), &app)?;
    // HOME is in the shim's environment (containerd's), never the app's.
    let containerd = Containerd::start_with_env(&[("HOME", "/root")])?;
    containerd.import(&archive)?;
    let ran = containerd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            SLIGHT,
            "--env",
            "GREETING=hi",
            "--env",
            "SLIGHTKEY=k3y",
            &tag,
            "configs",
        ])?
        .success()?;
    assert_eq!(
        ran.stdout,
        "GREETING: hi\nHOME: not-found: no config \"HOME\" in \"env\"\nCOLOR: blue\ntoken: s3cret\n\
         set secret: permission-denied: \"secrets\" is configs.usersecrets, which are set in the slightfile (`slight secret`), not by the app\n\
         nope: unexpected-error\n"
    );
    // Without the key the secrets were encrypted with, create fails and says what to pass.
    let keyless = containerd.ctr(&["run", "--rm", "--runtime", SLIGHT, &tag, "keyless"])?;
    assert_ne!(keyless.code, Some(0));
    assert!(
        keyless.stderr.contains("the container has no SLIGHTKEY"),
        "{keyless:?}"
    );
    Ok(())
}

#[test]
fn a_component_under_slight_gets_its_capabilities_as_wasi_keyvalue_and_wasi_config() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let token = wasmcell_slight::encrypt_secret("k3y", b"s3cret");
    let slightfile = format!(
        "specversion = \"0.2\"\n[[capability]]\nresource = \"keyvalue.filesystem\"\nname = \"my-container\"\n\
         [[capability]]\nresource = \"configs.envvars\"\nname = \"env\"\n\
         [[capability]]\nresource = \"configs.usersecrets\"\nname = \"secrets\"\n\
         [[secret_settings]]\nname = \"token\"\nvalue = \"{token}\"\n"
    );
    let app = app(
        tmp.path(),
        "component",
        "slight-component.wasm",
        &slightfile,
    )?;
    let (archive, tag) = image(tmp.path(), &app)?;
    let containerd = Containerd::start_with_env(&[("HOME", "/root")])?;
    containerd.import(&archive)?;
    let volume = tmp.path().join("volume");
    std::fs::create_dir(&volume)?;
    let mount = format!(
        "type=bind,src={},dst=/.slight,options=rbind:rw",
        volume.display()
    );
    let run = |id: &str| {
        let args = [
            "run",
            "--rm",
            "--runtime",
            SLIGHT,
            "--mount",
            &mount,
            "--env",
            "GREETING=hi",
            "--env",
            "SLIGHTKEY=k3y",
            &tag,
            id,
        ];
        containerd.ctr(&args)?.success()
    };
    let first = run("component1")?;
    assert_eq!(
        first.stdout,
        "runs: 1\ngreeting: hello\nmany: [Some((\"a\", [49])), None]\nkeys: greeting,runs\n\
         exists zz: false\nundeclared: Error::NoSuchStore\nGREETING: Some(\"hi\")\nHOME: None\n\
         token: Some(\"s3cret\")\n"
    );
    // The atomic counter lives in the volume, as the module ABI's stores do.
    assert!(run("component2")?.stdout.starts_with("runs: 2\n"));
    Ok(())
}

#[test]
fn ctr_serves_a_slight_http_router_app_and_stops_it_gracefully() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // The app built as a library: slight starts it through `on-server-init`.
    let app = app(tmp.path(), "router", "slight_http.wasm", HTTP_SLIGHTFILE)?;
    let (archive, tag) = image(tmp.path(), &app)?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let (port, upstream) = (free_port()?, upstream("from upstream")?);
    containerd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            SLIGHT,
            "--net-host",
            "--env",
            &format!("WASMCELL_HTTP_ADDR=127.0.0.1:{port}"),
            "--env",
            &format!("UPSTREAM=http://127.0.0.1:{upstream}/"),
            &tag,
            "router",
        ])?
        .success()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/hello"))?;
    assert_serves_router(&base)?;
    containerd
        .ctr(&["task", "kill", "--signal", "SIGTERM", "router"])?
        .success()?;
    containerd.wait_status("router", "STOPPED")?;
    let deleted = containerd.ctr(&["task", "delete", "router"])?.success()?;
    assert!(!deleted.stderr.contains("non-zero"), "{deleted:?}");
    Ok(())
}

#[test]
fn docker_runs_a_slight_http_app_with_its_port_published() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = app(tmp.path(), "router", "slight-http.wasm", HTTP_SLIGHTFILE)?;
    let (archive, tag) = image(tmp.path(), &app)?;
    let docker = Docker::start_bridged()?;
    docker.load(&archive)?;
    let port = free_port()?;
    docker
        .docker(&[
            "run",
            "-d",
            "--name",
            "router",
            "--runtime",
            SLIGHT,
            "--platform",
            "wasi/wasm32",
            "-p",
            &format!("127.0.0.1:{port}:3000"),
            &tag,
        ])?
        .success()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/hello"))?;
    let hello = curl(&[&format!("{base}/hello")])?;
    assert_eq!(
        (hello.status, hello.body.as_str()),
        (200, "hello from slight: GET /hello\n")
    );
    let put = curl(&["-X", "PUT", "--data-binary", "7", &format!("{base}/kv/n")])?;
    assert_eq!(put.status, 201, "{put:?}");
    assert_eq!(curl(&[&format!("{base}/kv/n")])?.body, "7");
    assert_eq!(docker.stop("router")?, "0");
    Ok(())
}

#[test]
fn wasmcell_run_slightfile_serves_the_router_app_without_a_container_engine() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = app(tmp.path(), "router", "slight-http.wasm", HTTP_SLIGHTFILE)?;
    let (port, upstream) = (free_port()?, upstream("from upstream")?);
    let mut child = Command::new(wasmcell())
        .args(["run", "--net", "--cache-dir"])
        .arg(tmp.path().join("cache"))
        .arg("--slightfile")
        .arg(app.join("slightfile.toml"))
        .args(["-e", &format!("WASMCELL_HTTP_ADDR=127.0.0.1:{port}")])
        .args(["-e", &format!("UPSTREAM=http://127.0.0.1:{upstream}/")])
        .arg(app.join("app.wasm"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/hello"))?;
    assert_serves_router(&base)?;
    // Its store is beside the module, not in the host's temporary directory.
    assert!(app.join(".slight/keyvalue.sqlite").is_file());
    // Without --net, the client has no network: refused to the app, which answers 502.
    let offline_port = free_port()?;
    let mut offline = wasmcell_e2e::Background::spawn(
        Command::new(wasmcell())
            .args(["run", "--cache-dir"])
            .arg(tmp.path().join("cache"))
            .arg("--slightfile")
            .arg(app.join("slightfile.toml"))
            .args([
                "-e",
                &format!("WASMCELL_HTTP_ADDR=127.0.0.1:{offline_port}"),
            ])
            .args(["-e", &format!("UPSTREAM=http://127.0.0.1:{upstream}/")])
            .arg(app.join("app.wasm")),
    )?;
    let offline_base = format!("http://127.0.0.1:{offline_port}");
    wait_http(&format!("{offline_base}/hello"))?;
    let refused = curl(&[&format!("{offline_base}/fetch")])?;
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (
            502,
            "unexpected-error: request: the app has no network to send requests on\n"
        )
    );
    offline.terminate()?;
    wasmcell_e2e::run(Command::new("kill").args(["-TERM", &child.id().to_string()]))?.success()?;
    wait_for("wasmcell run to exit", || Ok(child.try_wait()?.is_some()))?;
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "serving on 0.0.0.0:3000\n"
    );
    Ok(())
}

#[test]
fn broken_slight_apps_fail_naming_the_problem_and_the_shim_runs_on() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let containerd = Containerd::start()?;
    let kv = "specversion = \"0.2\"\n[[capability]]\nresource = \"keyvalue.filesystem\"\nname = \"my-container\"\n";
    let cases = [
        (
            "syntax",
            "slight-kv.wasm",
            "specversion = \"0.2\"\n[[capability]]\nresource = keyvalue.filesystem\n",
            "/slightfile.toml line 3",
        ),
        (
            "cloud",
            "slight-kv.wasm",
            "specversion = \"0.2\"\n[[capability]]\nresource = \"blobstore.azblob\"\nname = \"b\"\n",
            "/slightfile.toml line 2: blobstore.azblob \"b\": blobstore.azblob is not provided by wasmcell",
        ),
        (
            "version",
            "slight-kv.wasm",
            "specversion = \"0.9\"\n",
            "specversion \"0.9\" is not one SpiderLightning defined",
        ),
        // The HTTP app without the `http` capability: serve is refused to the app, which
        // fails as it chooses to (this one panics), with the reason on its stderr.
        (
            "noserver",
            "slight-http.wasm",
            kv,
            "slightfile.toml declares no `http` capability",
        ),
    ];
    for (name, module, slightfile, expected) in cases {
        let app = app(tmp.path(), name, module, slightfile)?;
        let (archive, tag) = image(tmp.path(), &app)?;
        containerd.import(&archive)?;
        let ran = containerd.ctr(&["run", "--rm", "--runtime", SLIGHT, &tag, name])?;
        assert_ne!(ran.code, Some(0), "{name}: {ran:?}");
        assert!(
            ran.stderr.contains(expected),
            "{name}: no {expected:?} in {}",
            ran.stderr
        );
        containerd.ctr(&["container", "delete", name]).ok();
    }
    // A module that hands slight a pointer outside its memory traps; it never reaches the host.
    let hostile = tmp.path().join("hostile");
    std::fs::create_dir_all(&hostile)?;
    let module = wat::parse_str(
        r#"(module
            (import "keyvalue" "keyvalue::open" (func $open (param i32 i32 i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $open (i32.const 0x7fffffff) (i32.const 100) (i32.const 0))))"#,
    )?;
    std::fs::write(hostile.join("app.wasm"), module)?;
    std::fs::write(hostile.join("slightfile.toml"), kv)?;
    let (archive, tag) = image(tmp.path(), &hostile)?;
    containerd.import(&archive)?;
    let ran = containerd.ctr(&["run", "--rm", "--runtime", SLIGHT, &tag, "hostile"])?;
    assert_eq!(ran.code, Some(134), "{ran:?}");
    assert!(ran.stderr.contains("outside its memory"), "{}", ran.stderr);
    containerd.ctr(&["container", "delete", "hostile"]).ok();
    // No app.wasm beside the slightfile.
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare)?;
    std::fs::write(bare.join("slightfile.toml"), kv)?;
    let include = format!("{}:/", bare.display());
    let archive = build_image(
        &guest("hello.wasm"),
        "example.com/bare:1",
        tmp.path(),
        &["--include", &include],
    )?;
    containerd.import(&archive)?;
    let ran = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        SLIGHT,
        "example.com/bare:1",
        "bare",
    ])?;
    assert!(
        ran.stderr.contains("/app.wasm is missing"),
        "{}",
        ran.stderr
    );
    containerd.ctr(&["container", "delete", "bare"]).ok();
    // The same shim binary still runs a good app.
    let good = app(tmp.path(), "good", "slight-kv.wasm", kv)?;
    let (archive, tag) = image(tmp.path(), &good)?;
    containerd.import(&archive)?;
    let ran = containerd
        .ctr(&["run", "--rm", "--runtime", SLIGHT, &tag, "good"])?
        .success()?;
    assert!(ran.stdout.starts_with("runs: 1\n"), "{ran:?}");
    Ok(())
}

#[test]
fn a_slight_app_serves_from_a_pod_under_the_slight_handler() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let registry = Registry::start()?;
    let app = app(tmp.path(), "router", "slight-http.wasm", HTTP_SLIGHTFILE)?;
    let image = format!("{}/router:1", registry.addr);
    let include = format!("{}:/", app.display());
    wasmcell_e2e::run(
        Command::new(wasmcell())
            .env("WASMCELL_STORE", tmp.path().join("store"))
            .arg("build")
            .arg(app.join("app.wasm"))
            .args(["--tag", &image, "--push", "--include", &include]),
    )?
    .success()?;
    let cri = Cri::start()?;
    let pod = cri.run_pod(cri.pod_config("router")?, "slight")?;
    cri.pull(&image)?;
    let id = pod.run(pod.container_config("router", &image))?;
    cri.wait_running(&id)?;
    // The app's own address, 0.0.0.0:3000 in the pod's network, at the pod's IP.
    let base = format!("http://{}:3000", pod.ip()?);
    wait_for("the pod to answer", || {
        Ok(curl(&[&format!("{base}/hello")]).is_ok_and(|r| r.status == 200))
    })?;
    let put = curl(&["-X", "PUT", "--data-binary", "x", &format!("{base}/kv/k")])?;
    assert_eq!(put.status, 201, "{put:?}");
    assert_eq!(curl(&[&format!("{base}/kv/k")])?.body, "x");
    // StopContainer: SIGTERM, the server drains and exits 0.
    cri.stop_container(&id, 10)?;
    assert_eq!(cri.container_status(&id)?.exit_code, 0);
    pod.stop()?;
    pod.remove()?;
    Ok(())
}
