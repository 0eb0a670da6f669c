//! Images through registries: `wasmcell build --push`, `push`, `pull`, `images`, `rmi` and
//! `run REF` against a real registry (Debian's docker-registry, private to each test); `ctr` and
//! Docker pulling what wasmcell pushed; and registries that misbehave.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use sha2::{Digest as _, Sha256};
use wasmcell_e2e::{Containerd, Docker, Ran, Registry, guest, run, wasm_layer_archive, wasmcell};

/// `wasmcell ARGS` with `store` as the local image store and its compile cache beside it.
fn wasmcell_in(store: &Path, args: &[&str]) -> Result<Ran> {
    run(Command::new(wasmcell())
        .env("WASMCELL_STORE", store.join("images"))
        .env("WASMCELL_CACHE_DIR", store.join("cache"))
        .args(args))
}

/// A temp dir (the local store and compile cache live in it), a private registry, and the
/// hello guest's path.
fn registry_fixture() -> Result<(tempfile::TempDir, Registry, String)> {
    let hello = guest("hello.wasm").to_str().expect("utf-8 path").to_owned();
    Ok((tempfile::tempdir()?, Registry::start()?, hello))
}

/// Builds `wasm` for `wasi/wasm32` and `wasip1/wasm` (one index) and pushes it as `reference`.
fn push_two_platforms(store: &Path, wasm: &str, reference: &str) -> Result<()> {
    let platforms = ["--platform", "wasi/wasm32", "--platform", "wasip1/wasm"];
    let args = [
        &["build", wasm, "-t", reference, "--push"][..],
        &platforms[..],
    ]
    .concat();
    wasmcell_in(store, &args)?.success()?;
    Ok(())
}

#[test]
fn wasmcell_pushes_pulls_and_runs_both_formats_through_a_registry() -> Result<()> {
    let (tmp, registry, hello) = registry_fixture()?;
    let hello = hello.as_str();
    let (artifact, image, multi) = (
        format!("{}/hello:artifact", registry.addr),
        format!("{}/hello:image", registry.addr),
        format!("{}/hello:multi", registry.addr),
    );
    let wc = |args: &[&str]| wasmcell_in(tmp.path(), args);

    // The artifact straight to the registry; the image as an archive, pushed after.
    wc(&[
        "build", hello, "-t", &artifact, "--format", "artifact", "--push",
    ])?
    .success()?;
    let archive = tmp.path().join("hello.tar");
    let archive = archive.to_str().expect("utf-8 path");
    wc(&["build", hello, "-t", "local/hello:1", "-o", archive])?.success()?;
    wc(&["push", archive, &image])?.success()?;
    push_two_platforms(tmp.path(), hello, &multi)?;
    // Emptied, so that everything below comes from the registry.
    wc(&["rmi", &artifact, &multi, "local/hello:1"])?.success()?;
    assert_eq!(
        wc(&["images"])?.success()?.stdout.lines().count(),
        1,
        "only the header"
    );

    for reference in [&artifact, &image] {
        let out = wc(&["run", reference, "from", "the registry"])?.success()?;
        assert!(
            out.stdout
                .contains("Hello from Wasm!\narg: from\narg: the registry"),
            "{out:?}"
        );
    }
    let listed = wc(&["images"])?.success()?.stdout;
    assert!(
        listed.lines().any(|l| l.starts_with(&artifact)
            && l.contains("artifact")
            && l.contains("wasip1/wasm")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&image) && l.contains(" image ")),
        "{listed}"
    );

    // Either platform of the index; the first Wasm one when none is named.
    wc(&["pull", "--platform", "wasip1/wasm", &multi])?.success()?;
    let listed = wc(&["images"])?.success()?.stdout;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&multi) && l.contains("wasip1/wasm")),
        "{listed}"
    );
    wc(&["pull", &multi])?.success()?;
    let listed = wc(&["images"])?.success()?.stdout;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&multi) && l.contains("wasi/wasm32")),
        "{listed}"
    );

    // --pull never finds nothing it has not got, and says what to do.
    let missing = format!("{}/hello:nope", registry.addr);
    let out = wc(&["run", "--pull", "never", &missing])?;
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.contains(&format!("wasmcell pull {missing}")),
        "{out:?}"
    );

    // Removing the images removes their blobs, and the compiled binary once none holds it.
    let out = wc(&["rmi", &artifact, &image])?.success()?;
    assert!(
        out.stdout.contains("0 compiled artifacts freed"),
        "the multi image still holds it: {out:?}"
    );
    let out = wc(&["rmi", &multi])?.success()?;
    assert!(out.stdout.contains("1 compiled artifacts freed"), "{out:?}");
    let blobs = std::fs::read_dir(tmp.path().join("images/blobs/sha256"))?.count();
    assert_eq!(blobs, 0);
    Ok(())
}

#[test]
fn ctr_and_docker_pull_and_run_what_wasmcell_pushed() -> Result<()> {
    let (tmp, registry, hello) = registry_fixture()?;
    let hello = hello.as_str();
    let single = format!("{}/hello:single", registry.addr);
    let multi = format!("{}/hello:multi", registry.addr);
    wasmcell_in(tmp.path(), &["build", hello, "-t", &single, "--push"])?.success()?;
    push_two_platforms(tmp.path(), hello, &multi)?;

    let containerd = Containerd::start()?;
    containerd
        .ctr(&["images", "pull", "--plain-http", "--all-platforms", &single])?
        .success()?;
    containerd
        .ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--platform",
            "wasi/wasm32",
            &multi,
        ])?
        .success()?;
    for (image, platform, id) in [
        (&single, "wasip1/wasm", "single"),
        (&multi, "wasi/wasm32", "multi"),
    ] {
        let out = containerd
            .run_wasm(
                &["--rm", "--platform", platform],
                image,
                id,
                &["/hello.wasm", "pulled"],
            )?
            .success()?;
        assert!(
            out.stdout.contains("Hello from Wasm!\narg: pulled"),
            "{out:?}"
        );
    }
    drop(containerd);

    let docker = Docker::start()?;
    let out = docker
        .docker(&[
            "run",
            "--rm",
            "--runtime=io.containerd.wasmtime.v1",
            "--platform=wasi/wasm32",
            &multi,
            "via",
            "docker",
        ])?
        .success()?;
    assert!(
        out.stdout
            .contains("Hello from Wasm!\narg: via\narg: docker"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn the_shim_runs_images_whose_wasm_layer_is_not_a_tar() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let wasm = std::fs::read(guest("hello.wasm"))?;
    let containerd = Containerd::start()?;
    for (i, media_type) in [
        "application/wasm",
        "application/vnd.wasm.content.layer.v1+wasm",
        "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("example.com/wasm-layer-{i}:latest");
        let archive = tmp.path().join(format!("{i}.tar"));
        wasm_layer_archive(&wasm, media_type, &name, &archive)?;
        containerd.import(&archive)?;
        // containerd does not unpack such a layer: the shim reads it from the content store.
        let out = containerd
            .run_wasm(
                &["--rm"],
                &name,
                &format!("layer-{i}"),
                &["/hello.wasm", media_type],
            )?
            .success()?;
        assert!(
            out.stdout
                .contains(&format!("Hello from Wasm!\narg: {media_type}")),
            "{out:?}"
        );
    }
    Ok(())
}

/// Runs `image` (pulled into `containerd`) as container `id` the way CRI does: through
/// containerd's API, with the image recorded on the container and an empty snapshot (the image
/// has no tar layers), its stdout to `log`. Returns the exit status.
fn run_like_cri(
    containerd: &Containerd,
    image: &str,
    id: &str,
    args: &[&str],
    log: &Path,
) -> Result<u32> {
    use containerd_client::services::v1::container::Runtime;
    use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
    use containerd_client::services::v1::{
        Container, CreateContainerRequest, CreateTaskRequest, StartRequest, WaitRequest,
    };
    use containerd_client::tonic::Request;
    use containerd_client::with_namespace;

    let namespace = containerd.namespace();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "cwd": "/", "env": [], "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "mount"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "pid"}]},
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client =
            containerd_client::Client::from_path(containerd.dir().join("containerd.sock")).await?;
        let prepare = PrepareSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: id.into(),
            ..Default::default()
        };
        let mounts = client
            .snapshots()
            .prepare(with_namespace!(prepare, namespace))
            .await?
            .into_inner()
            .mounts;
        let container = Container {
            id: id.into(),
            image: image.into(),
            runtime: Some(Runtime {
                name: "io.containerd.wasmtime.v1".into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: spec.to_string().into_bytes(),
            }),
            snapshotter: "overlayfs".into(),
            snapshot_key: id.into(),
            ..Default::default()
        };
        let create = CreateContainerRequest {
            container: Some(container),
        };
        client
            .containers()
            .create(with_namespace!(create, namespace))
            .await?;
        let output = format!("file://{}", log.display());
        let task = CreateTaskRequest {
            container_id: id.into(),
            rootfs: mounts,
            stdout: output.clone(),
            stderr: output,
            ..Default::default()
        };
        client
            .tasks()
            .create(with_namespace!(task, namespace))
            .await?;
        let start = StartRequest {
            container_id: id.into(),
            ..Default::default()
        };
        client
            .tasks()
            .start(with_namespace!(start, namespace))
            .await?;
        // containerd keeps a task's exit status until it is deleted: waiting after the start
        // misses nothing.
        let wait = WaitRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let exited = client
            .tasks()
            .wait(with_namespace!(wait, namespace))
            .await?;
        Ok::<_, anyhow::Error>(exited.into_inner().exit_status)
    })
}

#[test]
fn the_shim_runs_a_cncf_artifact_for_a_client_that_records_its_image() -> Result<()> {
    let (tmp, registry, hello) = registry_fixture()?;
    let reference = format!("{}/hello:artifact", registry.addr);
    let build = [
        "build", &hello, "-t", &reference, "--format", "artifact", "--push",
    ];
    wasmcell_in(tmp.path(), &build)?.success()?;
    let containerd = Containerd::start()?;
    containerd
        .ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--platform",
            "wasip1/wasm",
            &reference,
        ])?
        .success()?;
    // ctr itself cannot start it (it refuses the config's media type before any shim runs).
    let out = containerd.run_wasm(&["--rm"], &reference, "by-ctr", &["/hello.wasm"])?;
    assert!(
        out.stderr.contains("unknown image config media type"),
        "{out:?}"
    );
    // A client that records the image, as CRI does: the shim finds the Wasm layer.
    let log = tmp.path().join("artifact.log");
    let status = run_like_cri(
        &containerd,
        &reference,
        "as-cri",
        &["/hello.wasm", "as", "cri"],
        &log,
    )?;
    assert_eq!(status, 0);
    let output = std::fs::read_to_string(&log)?;
    assert!(
        output.contains("Hello from Wasm!\narg: as\narg: cri"),
        "{output:?}"
    );
    Ok(())
}

/// What a fake registry serves at a path, and how.
#[derive(Clone)]
struct Route {
    content_type: &'static str,
    body: Vec<u8>,
    /// Closes the connection after this many bytes of the body.
    cut_after: Option<usize>,
}

/// A registry that serves fixed routes over HTTP/1.1 and honours `Range`: for the ways a
/// registry can misbehave.
struct FakeRegistry {
    addr: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
}

impl FakeRegistry {
    fn start() -> Result<FakeRegistry> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let served = routes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let routes = served.clone();
                std::thread::spawn(move || serve(stream, &routes));
            }
        });
        let registry = FakeRegistry { addr, routes };
        registry.route("/v2/", "application/json", b"{}".to_vec());
        Ok(registry)
    }

    fn route(&self, path: &str, content_type: &'static str, body: Vec<u8>) {
        self.routes.lock().unwrap().insert(
            path.to_owned(),
            Route {
                content_type,
                body,
                cut_after: None,
            },
        );
    }

    fn cut(&self, path: &str, after: Option<usize>) {
        self.routes.lock().unwrap().get_mut(path).unwrap().cut_after = after;
    }

    /// Serves `blobs` and a manifest of them as `repo:latest`; returns the blob digests.
    fn image(
        &self,
        repo: &str,
        config: (&str, &[u8]),
        layers: &[(&str, &[u8], Option<usize>)],
    ) -> Vec<String> {
        let blob = |media_type: &str, bytes: &[u8], size: Option<usize>| {
            let digest = format!("sha256:{}", hex(&Sha256::digest(bytes)));
            self.route(
                &format!("/v2/{repo}/blobs/{digest}"),
                "application/octet-stream",
                bytes.to_vec(),
            );
            (
                serde_json::json!({"mediaType": media_type, "digest": digest, "size": size.unwrap_or(bytes.len())}),
                digest,
            )
        };
        let (config, config_digest) = blob(config.0, config.1, None);
        let mut digests = vec![config_digest];
        let layers: Vec<_> = layers
            .iter()
            .map(|(media_type, bytes, size)| {
                let (descriptor, digest) = blob(media_type, bytes, *size);
                digests.push(digest);
                descriptor
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        self.route(
            &format!("/v2/{repo}/manifests/latest"),
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().into_bytes(),
        );
        digests
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn serve(stream: TcpStream, routes: &Mutex<HashMap<String, Route>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request = String::new();
    let mut range_from = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(range) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_from = range
                .trim()
                .trim_end_matches('-')
                .split('-')
                .next()
                .and_then(|n| n.parse::<usize>().ok());
        }
        if request.is_empty() {
            request = line;
        }
    }
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_owned();
    let route = routes.lock().unwrap().get(&path).cloned();
    let mut stream = stream;
    let Some(route) = route else {
        let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        let _ = write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    };
    let (status, body) = match range_from {
        Some(from) if from <= route.body.len() => ("206 Partial Content", &route.body[from..]),
        _ => ("200 OK", &route.body[..]),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        route.content_type,
        body.len()
    );
    let sent = route
        .cut_after
        .map_or(body.len(), |cut| cut.min(body.len()));
    let _ = stream.write_all(&body[..sent]);
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}

#[test]
fn misbehaving_registries_and_unrunnable_images_fail_naming_the_image_and_store_nothing()
-> Result<()> {
    let tmp = tempfile::tempdir()?;
    let fake = FakeRegistry::start()?;
    let wasm = std::fs::read(guest("hello.wasm"))?;
    let wasm_config = br#"{"architecture":"wasm","os":"wasip1","layerDigests":[]}"#;
    let artifact_config = ("application/vnd.wasm.config.v0+json", &wasm_config[..]);
    // A layer whose content is not what its digest says (served under the digest it claims).
    let digests = fake.image("lie", artifact_config, &[("application/wasm", &wasm, None)]);
    fake.route(
        &format!("/v2/lie/blobs/{}", digests[1]),
        "application/octet-stream",
        b"\0asm not what was promised".to_vec(),
    );
    // A layer bigger than its descriptor says.
    fake.image(
        "size",
        artifact_config,
        &[("application/wasm", &wasm, Some(100))],
    );
    fake.image(
        "two",
        artifact_config,
        &[
            ("application/wasm", &wasm, None),
            ("application/wasm", b"\0asm\x01\0\0\0", None),
        ],
    );
    fake.image(
        "config",
        ("application/json", b"{}"),
        &[("application/wasm", &wasm, None)],
    );
    // Cut after 1000 bytes: interrupted, then resumed.
    let digests = fake.image("cut", artifact_config, &[("application/wasm", &wasm, None)]);
    let cut_blob = format!("/v2/cut/blobs/{}", digests[1]);
    fake.cut(&cut_blob, Some(1000));

    let pull = |repo: &str| {
        wasmcell_in(
            tmp.path(),
            &["pull", &format!("{}/{repo}:latest", fake.addr)],
        )
    };
    for (repo, cause) in [
        ("lie", "does not match its content"),
        ("size", "more than 100 bytes"),
        ("two", "with 2 layers; it must have exactly one"),
        ("config", "its config has media type application/json"),
        ("missing", "manifest unknown"),
        ("cut", "stopped after 1000 of"),
    ] {
        let out = pull(repo)?;
        assert_eq!(out.code, Some(125), "{repo}: {out:?}");
        let reference = format!("{}/{repo}:latest", fake.addr);
        assert!(
            out.stderr.contains(&reference) && out.stderr.contains(cause),
            "{repo}: {out:?}"
        );
    }
    // Nothing half-written is in the store: no image, no blob but the configs that did match.
    assert_eq!(
        wasmcell_in(tmp.path(), &["images"])?
            .success()?
            .stdout
            .lines()
            .count(),
        1
    );
    let stored: Vec<_> = std::fs::read_dir(tmp.path().join("images/blobs/sha256"))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    let wasm_digest = hex(&Sha256::digest(&wasm));
    assert!(!stored.contains(&wasm_digest), "{stored:?}");

    // The interrupted download resumes from its 1000 bytes and completes.
    fake.cut(&cut_blob, None);
    let out = pull("cut")?.success()?;
    assert!(out.stdout.contains("pulled"), "{out:?}");
    let out = wasmcell_in(
        tmp.path(),
        &["run", &format!("{}/cut:latest", fake.addr), "resumed"],
    )?
    .success()?;
    assert!(out.stdout.contains("arg: resumed"), "{out:?}");
    Ok(())
}

/// Issue 29 point 5: `build` and `pull` compile the Wasm an image holds into the compile cache,
/// so its first run compiles nothing. A hostile image's FIFO, device and symlink out named
/// `.wasm`, and thousands of files beside its module, are passed over without blocking.
#[test]
fn build_and_pull_compile_the_images_wasm_ahead_of_its_first_run() -> Result<()> {
    let (tmp, registry, hello) = registry_fixture()?;
    let reference = format!("{}/warm:1", registry.addr);
    let built = wasmcell_in(tmp.path(), &["build", &hello, "-t", &reference, "--push"])?;
    let built = built.success()?;
    assert!(built.stdout.contains("compiled 1 Wasm binary"), "{built:?}");
    let first_run = |store: &Path, reference: &str| {
        run(Command::new(wasmcell())
            .env("WASMCELL_STORE", store.join("images"))
            .env("WASMCELL_CACHE_DIR", store.join("cache"))
            .env("WASMCELL_LOG", "wasmcell_runtime=debug")
            .args(["run", reference]))
    };
    let ran = first_run(tmp.path(), &reference)?.success()?;
    assert!(ran.stdout.contains("Hello from Wasm!"), "{ran:?}");
    assert!(!ran.stderr.contains("compile cache miss"), "{ran:?}");

    // Pulled into another store and cache: compiled by the pull.
    let other = tmp.path().join("other");
    let pulled = wasmcell_in(&other, &["pull", &reference])?.success()?;
    assert!(
        pulled.stdout.contains("compiled 1 Wasm binary"),
        "{pulled:?}"
    );
    let ran = first_run(&other, &reference)?.success()?;
    assert!(!ran.stderr.contains("compile cache miss"), "{ran:?}");
    // `--no-compile`: nothing compiled, the run compiles.
    let lazy = tmp.path().join("lazy");
    let pulled = wasmcell_in(&lazy, &["pull", "--no-compile", &reference])?.success()?;
    assert!(!pulled.stdout.contains("compiled"), "{pulled:?}");
    assert!(
        first_run(&lazy, &reference)?
            .success()?
            .stderr
            .contains("compile cache miss")
    );

    // What an attacker packs around the module.
    let mut image = wasmcell_e2e::linux_image::LinuxImage::new("example.com/hostile:1")
        .platform("wasip1", "wasm")
        .entrypoint(&["/hello.wasm"])
        .executable("/hello.wasm", Path::new(&hello))?
        .fifo("/fifo.wasm")
        .char_device("/zero.wasm", 1, 5)
        .symlink("/link.wasm", "/etc/hostname")
        .symlink("/out.wasm", "../../../../../../../bin/sh");
    for i in 0..3000 {
        image = image.file(&format!("/many/{i}.wasm"), "not wasm", 0o644);
    }
    let archive = tmp.path().join("hostile.tar");
    image.write(&archive)?;
    let hostile = format!("{}/hostile:1", registry.addr);
    let archive = archive.to_str().expect("utf-8 path");
    wasmcell_in(tmp.path(), &["push", archive, &hostile])?.success()?;
    // (A FIFO read would block the pull until `run`'s deadline fails it.)
    let fresh = tmp.path().join("fresh");
    let pulled = wasmcell_in(&fresh, &["pull", &hostile])?.success()?;
    assert!(
        pulled.stdout.contains("compiled 1 Wasm binary"),
        "{pulled:?}"
    );
    Ok(())
}

/// Image names as Docker users type them (issue 30, points 2 and 5): a short name built is run
/// by that name and never pulled from Docker Hub unasked; a name Docker refuses is refused at
/// build; an archive is pushed where its own name says or not at all; `build` prints the lines
/// that run what it made; `images -q` and `--format json` script; a registry's error is said
/// once, Docker's way; a pull without a terminal prints a line per layer.
#[test]
fn names_scripting_and_registry_errors_speak_dockers_language() -> Result<()> {
    let (tmp, registry, hello) = registry_fixture()?;
    let hello = hello.as_str();
    let wc = |args: &[&str]| wasmcell_in(tmp.path(), args);

    let built = wc(&["build", hello, "-t", "myapp"])?.success()?;
    assert!(
        built
            .stdout
            .contains("built myapp:latest (module hello.wasm, platform wasi/wasm)")
            && built
                .stdout
                .contains("run it:\n  wasmcell run myapp:latest\n"),
        "{built:?}"
    );
    for name in ["myapp", "myapp:latest", "docker.io/library/myapp"] {
        let ran = wc(&["run", name, "x"])?.success()?;
        assert_eq!(ran.stdout, "Hello from Wasm!\narg: x\n", "{name}");
    }
    let never = wc(&["run", "nosuchapp:1"])?;
    assert_eq!(never.code, Some(125), "{never:?}");
    assert!(
        never
            .stderr
            .contains("no image nosuchapp:1 in the local store")
            && never.stderr.contains("not pulled from Docker Hub unasked"),
        "{never:?}"
    );
    for bad in ["Bad Tag", "MyApp", "app:bad tag"] {
        let refused = wc(&["build", hello, "-t", bad])?;
        assert_eq!(refused.code, Some(125), "{bad}: {refused:?}");
        assert!(
            refused.stderr.contains("in lower case"),
            "{bad}: {refused:?}"
        );
    }

    // An archive names where it goes, or push asks for a reference.
    let archive = tmp.path().join("app.tar");
    let archive = archive.to_str().expect("utf-8 path");
    let built = wc(&["build", hello, "-t", "myapp", "-o", archive])?.success()?;
    for line in [
        "  ctr images import --all-platforms ",
        "  ctr run --rm --runtime io.containerd.wasmtime.v1 docker.io/library/myapp:latest myapp\n",
        "  docker run --rm --runtime=io.containerd.wasmtime.v1 --platform=wasi/wasm myapp:latest\n",
    ] {
        assert!(built.stdout.contains(line), "{line}: {built:?}");
    }
    // The lines it printed run it: containerd keeps the name whole, as it keeps every name.
    let containerd = Containerd::start()?;
    containerd.import(Path::new(archive))?;
    let ran = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.wasmtime.v1",
        "docker.io/library/myapp:latest",
        "myapp",
    ])?;
    assert_eq!(ran.stdout, "Hello from Wasm!\n", "{ran:?}");
    let unnamed = wc(&["push", archive])?;
    assert_eq!(unnamed.code, Some(125), "{unnamed:?}");
    assert!(
        unnamed.stderr.contains("names no registry to push to")
            && unnamed.stderr.contains("wasmcell push"),
        "{unnamed:?}"
    );
    let named = format!("{}/named:1", registry.addr);
    wc(&["build", hello, "-t", &named, "-o", archive])?.success()?;
    let pushed = wc(&["push", archive])?.success()?;
    assert_eq!(pushed.stdout, format!("pushed {named}\n"), "{pushed:?}");
    // Without a terminal, a line per layer, as docker prints them.
    assert!(pushed.stderr.contains(": Pushed\n"), "{pushed:?}");

    // Scripting: names alone, or JSON a line per image.
    let quiet = wc(&["images", "-q"])?.success()?;
    let mut names: Vec<&str> = quiet.stdout.lines().collect();
    names.sort();
    assert_eq!(names, [named.as_str(), "myapp:latest"]);
    let json = wc(&["images", "--format", "json"])?.success()?;
    let images: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let myapp = images
        .iter()
        .find(|i| i["Repository"] == "myapp")
        .expect("myapp listed");
    assert_eq!(
        (&myapp["Tag"], &myapp["Platform"], &myapp["Format"]),
        (&"latest".into(), &"wasi/wasm".into(), &"image".into())
    );
    wc(&["rmi", named.as_str()])?.success()?;
    // The blobs it shares with myapp are there already: said so, as docker says it.
    let pulled = wc(&["pull", &named])?.success()?;
    let lines: Vec<&str> = pulled.stderr.lines().collect();
    assert!(
        lines.len() == 2
            && lines.iter().all(|l| {
                let (short, status) = l.split_once(": ").unwrap_or_default();
                short.len() == 12 && ["Already exists", "Pull complete"].contains(&status)
            }),
        "{pulled:?}"
    );

    // A registry's error, once.
    let missing = format!("{}/named:nope", registry.addr);
    let failed = wc(&["pull", &missing])?;
    assert_eq!(failed.code, Some(125), "{failed:?}");
    assert_eq!(
        failed.stderr,
        format!("wasmcell: error: manifest unknown: {missing}\n")
    );
    Ok(())
}
