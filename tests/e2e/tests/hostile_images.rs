//! Images written to break out (issue 24, "every path from an image is hostile"): a Spin
//! manifest aiming its `files` at the host, device nodes and FIFOs where a module, a component
//! or a file is read, a runtime config naming the host's stores. Each is tried from the
//! attacker's side under `ctr run` and `wasmcell up IMAGE.tar`, and the host is checked
//! afterwards: nothing written where the image aimed, create refused naming the file, and the
//! next container still runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use wasmcell_e2e::linux_image::LinuxImage;
use wasmcell_e2e::{
    Background, Containerd, RUNTIME, curl, free_port, spin_app, wait_http, wasmcell,
};

const SPIN: &str = "io.containerd.spin.v2";

/// What `hello.component.wasm` prints: the app below ran.
const HELLO: &str = "Hello from Wasm!\n";

/// A Spin app image `example.com/NAME:1` in `dir`: a command trigger running `hello.wasm` (a
/// component that prints [`HELLO`]), whose component table ends with `component`, plus what
/// `more` adds to the image. Written by hand, as an attacker would: `wasmcell build` checks
/// what it packs.
fn spin_image(
    dir: &Path,
    name: &str,
    component: &str,
    more: impl FnOnce(LinuxImage) -> LinuxImage,
) -> Result<PathBuf> {
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"{name}\"\n\
         [[trigger.command]]\ncomponent = \"hello\"\n\
         [component.hello]\nsource = \"hello.wasm\"\n{component}\n"
    );
    let image = LinuxImage::new(&format!("example.com/{name}:1"))
        .platform("wasip2", "wasm")
        .entrypoint(&["/hello.wasm"])
        .file("/spin.toml", manifest, 0o644)
        .executable("/hello.wasm", &wasmcell_e2e::guest("hello.component.wasm"))?
        .file("/payload.txt", "written by the image", 0o644);
    let archive = dir.join(format!("{name}.tar"));
    more(image).write(&archive)?;
    Ok(archive)
}

/// `ctr run --rm --runtime RUNTIME example.com/NAME:1 NAME`, its container removed after.
fn ctr_run(containerd: &Containerd, runtime: &str, name: &str) -> Result<wasmcell_e2e::Ran> {
    let image = format!("example.com/{name}:1");
    let ran = containerd.ctr(&["run", "--rm", "--runtime", runtime, &image, name])?;
    // A failed create leaves the container record behind.
    containerd.ctr(&["container", "delete", name]).ok();
    Ok(ran)
}

/// Issue 24: `destination = "/../../../tmp/pwned"` and `"//tmp/pwned"` made the shim, as root,
/// write the image's file at that path on the host.
#[test]
fn ctr_run_writes_no_files_destination_outside_the_container() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = tempfile::tempdir()?;
    let (climbed, slashed) = (host.path().join("climbed"), host.path().join("slashed"));
    let climb = format!(
        "/../../../../../../../../../../../../../..{}",
        climbed.display()
    );
    let containerd = Containerd::start()?;
    containerd.import(&spin_image(
        tmp.path(),
        "climb",
        &format!("files = [{{ source = \"payload.txt\", destination = \"{climb}\" }}]"),
        |image| image,
    )?)?;
    containerd.import(&spin_image(
        tmp.path(),
        "slashes",
        &format!(
            "files = [{{ source = \"payload.txt\", destination = \"/{}\" }}]",
            slashed.display()
        ),
        |image| image,
    )?)?;

    let ran = ctr_run(&containerd, SPIN, "climb")?;
    assert_ne!(ran.code, Some(0), "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "[component.hello] files: destination \"{climb}\" leads out of the component's files: `..` is refused"
        )),
        "{ran:?}"
    );
    assert!(!climbed.exists(), "the image wrote {}", climbed.display());

    // `//x` is `/x` in the component's files, as Spin places it: the app runs, the host is
    // untouched.
    let ran = ctr_run(&containerd, SPIN, "slashes")?.success()?;
    assert_eq!(ran.stdout, HELLO);
    assert!(!slashed.exists(), "the image wrote {}", slashed.display());
    Ok(())
}

/// Issue 24: a character device as the entrypoint was read into memory without bound, a FIFO
/// hung create forever, a device as a `files` source was copied without bound. Links out of
/// the rootfs lead nowhere either.
#[test]
fn ctr_run_refuses_devices_and_fifos_in_an_image_without_blocking() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let containerd = Containerd::start()?;
    // (name, runtime, component table, what the image adds, what create says)
    type Add = fn(LinuxImage) -> LinuxImage;
    let cases: [(&str, &str, &str, Add, &[&str]); 8] = [
        (
            "device-source",
            SPIN,
            "",
            |image| image.char_device("/hello.wasm", 1, 5),
            &[
                "[component.hello] cannot read its source `hello.wasm` in the app's directory: it is a character device, not a regular file",
            ],
        ),
        (
            "fifo-source",
            SPIN,
            "",
            |image| image.fifo("/hello.wasm"),
            &[
                "[component.hello] cannot read its source `hello.wasm` in the app's directory: it is a FIFO, not a regular file",
            ],
        ),
        (
            "device-files",
            SPIN,
            "files = [{ source = \"zero\", destination = \"/zero\" }]",
            |image| image.char_device("/zero", 1, 5),
            &["[component.hello] files: `zero`: it is a character device, not a regular file"],
        ),
        (
            "link-source",
            SPIN,
            "",
            |image| image.symlink("/hello.wasm", "/etc/hostname"),
            &["[component.hello] cannot read its source `hello.wasm` in the app's directory"],
        ),
        (
            "link-files",
            SPIN,
            "files = [{ source = \"leak\", destination = \"/leak\" }]",
            |image| image.symlink("/leak", "../../../../../../etc/hostname"),
            &["[component.hello] files: source \"leak\" in the app's directory"],
        ),
        (
            "fifo-manifest",
            SPIN,
            "",
            |image| image.fifo("/spin.toml"),
            &["cannot read spin.toml: it is a FIFO, not a regular file"],
        ),
        (
            "device-entrypoint",
            RUNTIME,
            "",
            |image| image.char_device("/hello.wasm", 1, 5),
            &[
                "cannot read the entrypoint `/hello.wasm`",
                "it is a character device, not a regular file",
            ],
        ),
        (
            "fifo-entrypoint",
            RUNTIME,
            "",
            |image| image.fifo("/hello.wasm"),
            &[
                "cannot read the entrypoint `/hello.wasm`",
                "it is a FIFO, not a regular file",
            ],
        ),
    ];
    for (name, runtime, component, add, expected) in cases {
        containerd.import(&spin_image(tmp.path(), name, component, add)?)?;
        // `run` gives up after 60 s: a FIFO read would block create for ever.
        let ran = ctr_run(&containerd, runtime, name)?;
        assert_ne!(ran.code, Some(0), "{name}: {ran:?}");
        for expected in expected {
            assert!(
                ran.stderr.contains(expected),
                "{name}: no {expected:?} in {}",
                ran.stderr
            );
        }
    }

    // The next container is served as ever.
    containerd.import(&spin_image(tmp.path(), "good", "", |image| image)?)?;
    let ran = ctr_run(&containerd, SPIN, "good")?.success()?;
    assert_eq!(ran.stdout, HELLO);
    Ok(())
}

/// Issue 24, under `wasmcell up IMAGE.tar`: the same destinations wrote the same host files.
#[test]
fn wasmcell_up_image_writes_no_files_destination_outside_its_app() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = tempfile::tempdir()?;
    let (climbed, slashed) = (host.path().join("climbed"), host.path().join("slashed"));
    let climb = format!("/../../../../../../../../../../..{}", climbed.display());
    let up = |archive: &Path| {
        wasmcell_e2e::run(
            Command::new(wasmcell())
                .env("WASMCELL_STORE", tmp.path().join("store"))
                .arg("up")
                .arg(archive),
        )
    };

    let archive = spin_image(
        tmp.path(),
        "climb",
        &format!("files = [{{ source = \"payload.txt\", destination = \"{climb}\" }}]"),
        |image| image,
    )?;
    let ran = up(&archive)?;
    assert_ne!(ran.code, Some(0), "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "destination \"{climb}\" leads out of the component's files"
        )),
        "{ran:?}"
    );
    assert!(!climbed.exists(), "the image wrote {}", climbed.display());

    let archive = spin_image(
        tmp.path(),
        "slashes",
        &format!(
            "files = [{{ source = \"payload.txt\", destination = \"/{}\" }}]",
            slashed.display()
        ),
        |image| image,
    )?;
    let ran = up(&archive)?.success()?;
    assert_eq!(ran.stdout, HELLO);
    assert!(!slashed.exists(), "the image wrote {}", slashed.display());
    Ok(())
}

/// Issue 24: under `wasmcell up IMAGE`, the image's own runtime config named a host path for
/// its key-value store, and so read and wrote another app's store on the host. Only the
/// user's own paths are the host's.
#[test]
fn wasmcell_up_image_cannot_reach_host_stores_through_its_runtime_config() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let app = spin_app("shop", tmp.path())?;
    let store = tmp.path().join("host/kv.db");
    let config = format!(
        "[key_value_store.default]\ntype = \"spin\"\npath = \"{}\"\n",
        store.display()
    );
    let serve = |command: &mut Command| -> Result<(Background, String)> {
        let base = format!("http://127.0.0.1:{}", free_port()?);
        let listen = base.trim_start_matches("http://").to_owned();
        let server = Background::spawn(command.args(["--listen", &listen]))?;
        wait_http(&format!("{base}/health"))?;
        Ok((server, base))
    };

    // The user's own app keeps a secret in a store on the host, where they said.
    let user_config = tmp.path().join("user-config.toml");
    std::fs::write(&user_config, &config)?;
    let (mut server, base) = serve(
        Command::new(wasmcell())
            .args(["up", "-f"])
            .arg(&app)
            .arg("--runtime-config-file")
            .arg(&user_config),
    )?;
    let put = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "s3cret",
        &format!("{base}/kv/secret"),
    ])?;
    assert_eq!(put.status, 201, "{put:?}");
    server.terminate()?;
    let before = std::fs::read(&store)?;

    // An image whose runtime config names that same host path.
    std::fs::write(app.join("runtime-config.toml"), &config)?;
    let include = format!("{}:/", app.display());
    let archive = wasmcell_e2e::build_image(
        &app.join("spin_http.wasm"),
        "example.com/thief:1",
        tmp.path(),
        &["--include", &include],
    )?;
    let (mut server, base) = serve(
        Command::new(wasmcell())
            .env("WASMCELL_STORE", tmp.path().join("store"))
            .arg("up")
            .arg(&archive),
    )?;
    let stolen = curl(&[&format!("{base}/kv/secret")])?;
    assert_eq!(stolen.status, 404, "read the host's store: {stolen:?}");
    // Its store works, in its own files (the image's rootfs), gone with the run.
    let put = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "x",
        &format!("{base}/kv/planted"),
    ])?;
    assert_eq!(put.status, 201, "{put:?}");
    assert_eq!(curl(&[&format!("{base}/kv/planted")])?.body, "x");
    server.terminate()?;
    assert_eq!(
        std::fs::read(&store)?,
        before,
        "the image wrote the host's store"
    );
    Ok(())
}
