//! `wasmcell run` and `wasmcell build` as a user runs them: no container engine.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use wasmcell_e2e::{CacheListing, Ran, build_image, distinct_guest, guest, run, wasmcell};

fn wasmcell_run(cache: &Path, args: &[&str]) -> Result<Ran> {
    run(Command::new(wasmcell())
        .arg("run")
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("HOST_ONLY_CANARY", "leaked"))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn module_gets_args_and_flags_env_and_its_exit_code() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = wasmcell_run(
        tmp.path(),
        &[
            "-e",
            "GREETING=hi",
            path(&guest("hello.wasm")),
            "one",
            "env",
            "exit=7",
        ],
    )?;
    assert_eq!(out.code, Some(7), "{out:?}");
    assert!(
        out.stdout.starts_with("Hello from Wasm!\narg: one\n"),
        "{out:?}"
    );
    assert!(out.stdout.contains("GREETING=hi"), "{out:?}");
    assert!(
        !out.stdout.contains("HOST_ONLY_CANARY"),
        "host environment leaked: {out:?}"
    );
    assert!(
        !out.stdout.contains("PATH="),
        "host environment leaked: {out:?}"
    );
    Ok(())
}

#[test]
fn a_trap_ends_the_guest_with_134_and_says_why_on_stderr() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // `exit=abc` makes the guest panic, which Rust compiles to an `unreachable` trap.
    let out = wasmcell_run(tmp.path(), &[path(&guest("hello.wasm")), "exit=abc"])?;
    assert_eq!(out.code, Some(134), "{out:?}");
    assert!(out.stderr.contains("wasmcell: guest trapped"), "{out:?}");
    assert!(
        out.stderr
            .contains("wasm `unreachable` instruction executed"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn the_guests_stderr_is_its_own_and_statuses_map_as_wasmtimes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // wasmtime's WASI logs a warning for `sock_recv`: not on the guest's stderr by default.
    let out = wasmcell_run(tmp.path(), &[path(&guest("hostile.wasm")), "sock"])?;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stderr, "sock_recv: errno 57\n", "{out:?}");
    // Asked for, it is there, without colour codes on a pipe.
    let out = run(Command::new(wasmcell())
        .args(["run", "--verbose", "--cache-dir", path(tmp.path())])
        .arg(guest("hostile.wasm"))
        .args(["sock"])
        .env("WASMCELL_LOG", "wasmtime_wasi=warn"))?;
    assert!(
        out.stderr.contains("p1 sock_recv is not implemented"),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains('\x1b'),
        "colour codes on a pipe: {out:?}"
    );
    // `proc_exit` with a status WASI does not allow: 1 and why, as `wasmtime run`, not a trap.
    let out = wasmcell_run(tmp.path(), &[path(&guest("hello.wasm")), "exit=200"])?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("exit status outside of [0..126)"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn component_runs_wasi_cli_run() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = wasmcell_run(
        tmp.path(),
        &[
            path(&guest("hello.component.wasm")),
            "p2",
            "stderr=to-stderr",
        ],
    )?
    .success()?;
    assert_eq!(out.stdout, "Hello from Wasm!\narg: p2\n");
    assert_eq!(out.stderr, "to-stderr\n");
    // WASI p2's exit carries only success or failure.
    let out = wasmcell_run(
        tmp.path(),
        &[path(&guest("hello.component.wasm")), "exit=3"],
    )?;
    assert_eq!(out.code, Some(1));
    Ok(())
}

#[test]
fn image_archive_runs_like_a_container() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let assets = tmp.path().join("assets");
    std::fs::create_dir(&assets)?;
    std::fs::write(assets.join("motd"), "from the image\n")?;
    let fs_image = build_image(
        &guest("fs.wasm"),
        "example.com/fs:latest",
        tmp.path(),
        &["--include", &format!("{}:/etc", path(&assets))],
    )?;

    let out = wasmcell_run(tmp.path(), &[path(&fs_image), "cat", "/etc/motd"])?.success()?;
    assert_eq!(out.stdout, "from the image\n");
    // The rootfs is the image's: the host's files are not there.
    let out = wasmcell_run(tmp.path(), &[path(&fs_image), "cat", "/etc/hostname"])?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("fs: cat /etc/hostname"), "{out:?}");

    let hello = build_image(
        &guest("hello.wasm"),
        "example.com/hello:latest",
        tmp.path(),
        &[],
    )?;
    let out = wasmcell_run(tmp.path(), &[path(&hello), "a", "exit=4"])?;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(4), "Hello from Wasm!\narg: a\n")
    );
    Ok(())
}

/// The flags users type from `docker run` and `wasmtime run` habits do what those tools do
/// with them (issue 30, point 1).
#[test]
fn run_takes_the_flags_of_docker_and_wasmtime() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data)?;
    std::fs::write(data.join("note"), "a note\n")?;

    // --env-file (comments, a bare name taking this shell's value), with -e winning over it.
    let env_file = tmp.path().join("app.env");
    std::fs::write(
        &env_file,
        "# settings\nFROM_FILE=1\nBOTH=file\nHOST_ONLY_CANARY\n",
    )?;
    let out = wasmcell_run(
        cache,
        &[
            "--env-file",
            path(&env_file),
            "-e",
            "BOTH=flag",
            path(&guest("hello.wasm")),
            "env",
        ],
    )?
    .success()?;
    for line in ["FROM_FILE=1", "BOTH=flag", "HOST_ONLY_CANARY=leaked"] {
        assert!(out.stdout.lines().any(|l| l == line), "{line}: {out:?}");
    }

    // -v and --volume as docker's.
    let volume = format!("{}:/data:ro", path(&data));
    for flag in ["-v", "--volume"] {
        let out = wasmcell_run(
            cache,
            &[flag, &volume, path(&guest("fs.wasm")), "cat", "/data/note"],
        )?
        .success()?;
        assert_eq!(out.stdout, "a note\n", "{flag}");
    }
    // -w: the working directory a component is told (wasi:cli's initial-cwd).
    let out = wasmcell_run(
        cache,
        &[
            "-v",
            &volume,
            "-w",
            "/data",
            path(&guest("p3-cli.wasm")),
            "cwd",
        ],
    )?
    .success()?;
    assert_eq!(out.stdout, "/data\n");
    let out = wasmcell_run(cache, &["-w", "data", path(&guest("hello.wasm"))])?;
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("must be an absolute path"), "{out:?}");

    // --memory ends a guest that grows past it with 137, as the OOM killer would.
    let out = wasmcell_run(
        cache,
        &["--memory", "16m", path(&guest("hostile.wasm")), "alloc"],
    )?;
    assert_eq!(out.code, Some(137), "{out:?}");
    let out = wasmcell_run(
        cache,
        &["-m", "64m", path(&guest("hostile.wasm")), "alloc", "8"],
    )?;
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "done: 8 MiB\n"));
    // --cpus as docker bounds it.
    wasmcell_run(cache, &["--cpus", "0.5", path(&guest("hello.wasm"))])?.success()?;
    let out = wasmcell_run(cache, &["--cpus", "0", path(&guest("hello.wasm"))])?;
    assert!(out.stderr.contains("the range is 0.01 to"), "{out:?}");

    // wasmtime's --invoke, as TARGET#FUNCTION.
    let out = wasmcell_run(
        cache,
        &["--invoke", "greet", path(&guest("reactor.wasm")), "x"],
    )?
    .success()?;
    assert_eq!(out.stdout, "greetings from greet\narg: x\n");

    // --read-only: the image's rootfs cannot be written; without it, it can.
    let image = build_image(&guest("fs.wasm"), "example.com/fs:latest", tmp.path(), &[])?;
    let out = wasmcell_run(cache, &["--read-only", path(&image), "write", "/f", "x"])?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("fs: write /f"), "{out:?}");
    wasmcell_run(cache, &["--rm", "-i", path(&image), "write", "/f", "x"])?.success()?;

    // -t has no terminal to give; -p on a command says it publishes nothing.
    let out = wasmcell_run(cache, &["-it", path(&guest("hello.wasm"))])?;
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("no terminal"), "{out:?}");
    let out = wasmcell_run(cache, &["-p", "8080:8080", path(&guest("hello.wasm"))])?.success()?;
    assert!(
        out.stderr
            .contains("--publish 8080:8080 has nothing to publish")
            && out.stderr.contains("serves no HTTP"),
        "{out:?}"
    );
    Ok(())
}

/// A port already in use is said once, before anything claims to serve, with the flag that
/// moves the server; a server that starts says where it listens, once.
#[test]
fn a_port_in_use_is_named_with_the_flag_that_moves_the_server() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let publish = format!("{}:8080", taken.local_addr()?);
    let out = wasmcell_run(
        tmp.path(),
        &["-p", &publish, path(&guest("hello-http.wasm"))],
    )?;
    assert_eq!(out.code, Some(125), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "wasmcell: error: {} is already in use: stop what listens there, or choose another address with -p/--publish [IP:]PORT:8080\n",
            taken.local_addr()?
        )
    );
    Ok(())
}

/// Containers with no engine, as `docker run -d`, `ps`, `logs`, `stop` and `rm` handle them
/// (issue 30, point 6): exit statuses kept (a server drains to 0, a command's own code, 143 for
/// a command SIGTERM ended), output kept apart by stream, names unique, `--rm` honoured, and
/// nothing left running.
#[test]
fn detached_runs_are_listed_logged_stopped_and_removed_as_dockers() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let wc = |args: &[&str]| {
        run(Command::new(wasmcell())
            .env("WASMCELL_STATE", tmp.path().join("state"))
            .env("WASMCELL_CACHE_DIR", tmp.path().join("cache"))
            .args(args))
    };
    let status_of = |name: &str| -> Result<Option<String>> {
        let ps = wc(&["ps", "-a"])?.success()?;
        Ok(ps.stdout.lines().find_map(|line| {
            let mut columns = line.split_whitespace();
            (columns.next() == Some(name)).then(|| match columns.next() {
                // `Exited (N)` is two columns.
                Some("Exited") => format!("Exited {}", columns.next().unwrap_or_default()),
                other => other.unwrap_or_default().to_owned(),
            })
        }))
    };

    let port = wasmcell_e2e::free_port()?;
    let publish = format!("127.0.0.1:{port}:8080");
    let http = guest("hello-http.wasm");
    let started = wc(&["run", "-d", "--name", "web", "-p", &publish, path(&http)])?.success()?;
    assert_eq!(started.stdout, "web\n");
    let base = format!("http://127.0.0.1:{port}");
    wasmcell_e2e::wait_http(&format!("{base}/"))?;
    assert_eq!(status_of("web")?.as_deref(), Some("Up"));
    assert_eq!(wc(&["ps", "-q"])?.success()?.stdout, "web\n");
    wasmcell_e2e::curl(&[&format!("{base}/stdout")])?;
    let logs = wc(&["logs", "web"])?.success()?;
    assert!(logs.stdout.contains("hello-http: a log line"), "{logs:?}");
    assert!(
        logs.stderr
            .contains(&format!("wasmcell: listening on http://127.0.0.1:{port}")),
        "{logs:?}"
    );
    let taken = wc(&["run", "-d", "--name", "web", path(&http)])?;
    assert_eq!(taken.code, Some(125), "{taken:?}");
    assert!(
        taken.stderr.contains("name web is already in use"),
        "{taken:?}"
    );
    let running = wc(&["rm", "web"])?;
    assert!(running.stderr.contains("is running"), "{running:?}");
    assert_eq!(wc(&["stop", "web"])?.success()?.stdout, "web\n");
    assert_eq!(status_of("web")?.as_deref(), Some("Exited (0)"));
    assert_eq!(wc(&["ps", "-q"])?.success()?.stdout, "");
    wc(&["rm", "web"])?.success()?;
    assert_eq!(status_of("web")?, None);

    // A command: its own status, its output; SIGTERM ends one at once, as 143.
    wc(&[
        "run",
        "-d",
        "--name",
        "cmd",
        path(&guest("hello.wasm")),
        "exit=3",
    ])?
    .success()?;
    wasmcell_e2e::wait_for("cmd to exit", || {
        Ok(status_of("cmd")?.is_some_and(|s| s != "Up"))
    })?;
    assert_eq!(status_of("cmd")?.as_deref(), Some("Exited (3)"));
    let logs = wc(&["logs", "-f", "cmd"])?.success()?;
    assert_eq!(logs.stdout, "Hello from Wasm!\n");
    wc(&[
        "run",
        "-d",
        "--name",
        "spinner",
        path(&guest("hostile.wasm")),
        "spin",
    ])?
    .success()?;
    wc(&["stop", "-t", "5", "spinner"])?.success()?;
    assert_eq!(status_of("spinner")?.as_deref(), Some("Exited (143)"));
    // --rm: gone once it ends; a generated name from the target.
    let named = wc(&["run", "-d", "--rm", path(&guest("hello.wasm"))])?.success()?;
    assert_eq!(named.stdout, "hello-1\n");
    wasmcell_e2e::wait_for("hello-1 to be removed", || {
        Ok(status_of("hello-1")?.is_none())
    })?;
    wc(&["rm", "cmd", "spinner"])?.success()?;
    assert_eq!(wc(&["ps", "-a", "-q"])?.success()?.stdout, "");
    let bad = wc(&["run", "-d", "--name", "../x", path(&guest("hello.wasm"))])?;
    assert!(bad.stderr.contains("invalid container name"), "{bad:?}");
    // What can be checked fails before detaching, leaving no container, as with docker.
    for args in [
        &["run", "-d", "--memory", "4m", path(&guest("hello.wasm"))][..],
        &["run", "-d", "nosuchimage:1"][..],
    ] {
        let refused = wc(args)?;
        assert_eq!(refused.code, Some(125), "{args:?}: {refused:?}");
    }
    assert_eq!(wc(&["ps", "-a", "-q"])?.success()?.stdout, "");
    // State behind a link someone planted is not written through.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere)?;
    std::os::unix::fs::symlink(&elsewhere, tmp.path().join("planted"))?;
    let planted = run(Command::new(wasmcell())
        .env("WASMCELL_STATE", tmp.path().join("planted/containers"))
        .args(["run", "-d", path(&guest("hello.wasm"))]))?;
    assert_eq!(planted.code, Some(125), "{planted:?}");
    assert!(
        planted.stderr.contains("is not a directory of this user's"),
        "{planted:?}"
    );
    Ok(())
}

#[test]
fn dir_grants_exactly_what_it_says() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir(&data)?;
    std::fs::write(data.join("in.txt"), "inside")?;
    let fs = guest("fs.wasm");
    let ro = format!("{}:/data:ro", path(&data));
    let rw = format!("{}:/data", path(&data));

    let out = wasmcell_run(
        tmp.path(),
        &["--dir", &ro, path(&fs), "cat", "/data/in.txt"],
    )?
    .success()?;
    assert_eq!(out.stdout, "inside");
    let out = wasmcell_run(
        tmp.path(),
        &["--dir", &ro, path(&fs), "write", "/data/new.txt", "x"],
    )?;
    assert_eq!(out.code, Some(1), "a read-only dir was writable: {out:?}");
    assert!(!data.join("new.txt").exists());
    wasmcell_run(
        tmp.path(),
        &["--dir", &rw, path(&fs), "write", "/data/new.txt", "x"],
    )?
    .success()?;
    assert_eq!(std::fs::read_to_string(data.join("new.txt"))?, "x");

    // No --dir, no files at all.
    let out = wasmcell_run(tmp.path(), &[path(&fs), "cat", "/data/in.txt"])?;
    assert_eq!(out.code, Some(1), "{out:?}");
    Ok(())
}

#[test]
fn entry_function_of_a_library_module() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let target = format!("{}#greet", path(&guest("reactor.wasm")));
    let out = wasmcell_run(tmp.path(), &[&target, "x"])?.success()?;
    assert_eq!(out.stdout, "greetings from greet\narg: x\n");

    let out = wasmcell_run(tmp.path(), &[path(&guest("reactor.wasm"))])?;
    assert_eq!(out.code, Some(125));
    assert!(
        out.stderr.contains("has no `_start`") && out.stderr.contains("#FUNCTION"),
        "{out:?}"
    );
    let out = wasmcell_run(
        tmp.path(),
        &[&format!("{}#nope", path(&guest("reactor.wasm")))],
    )?;
    assert!(
        out.stderr.contains("no usable function `nope`") && out.stderr.contains("`greet`"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn bad_input_is_named_with_what_to_do() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let invalid = tmp.path().join("invalid.wasm");
    std::fs::write(&invalid, b"\0asm\x01\0\0\0\x01\xff\xff")?;
    let cases: [(&str, &str); 3] = [
        (path(&invalid), "is not a valid Wasm binary"),
        ("/bin/true", "is a native ELF executable, not Wasm"),
        ("/no/such.wasm", "cannot read /no/such.wasm"),
    ];
    for (target, message) in cases {
        let out = wasmcell_run(tmp.path(), &[target])?;
        assert_eq!(out.code, Some(125), "{target}: {out:?}");
        assert!(out.stderr.contains(message), "{target}: {out:?}");
    }
    let out = run(Command::new(wasmcell())
        .args(["build", "/bin/true", "--tag", "x:y", "--output"])
        .arg(tmp.path().join("x.tar")))?;
    assert!(
        out.stderr.contains("true is a native ELF executable"),
        "{out:?}"
    );
    assert!(
        !tmp.path().join("x.tar").exists(),
        "a failed build left an archive"
    );
    Ok(())
}

/// A tmpfs mounted at `dir` with `options`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir))?
        .success()?;
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_or_read_only_cache_is_named_and_never_holds_a_truncated_artifact() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let full = Tmpfs::mount(&tmp.path().join("full"), "size=64k")?;
    let read_only = Tmpfs::mount(&tmp.path().join("ro"), "ro,size=1m")?;
    for (cache, why) in [
        (&full.0, "No space left on device"),
        (&read_only.0, "Read-only file system"),
    ] {
        let out = wasmcell_run(cache, &[path(&guest("hello.wasm"))])?;
        assert_eq!(out.code, Some(125), "{out:?}");
        for expected in ["compile cache", why, "WASMCELL_CACHE_DIR"] {
            assert!(out.stderr.contains(expected), "no {expected:?}: {out:?}");
        }
        // Nothing half-written is left to be loaded by the next run: no artifact, and only
        // whole entries of the function cache (renamed into place, named by their key's hash).
        let (functions, files): (Vec<_>, Vec<_>) = walk(cache)
            .into_iter()
            .partition(|file| file.starts_with(cache.join("functions")));
        assert!(files.is_empty(), "left in the cache: {files:?}");
        for file in functions {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            assert!(
                name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()),
                "{file:?}"
            );
        }
    }
    let out = wasmcell_run(&tmp.path().join("cache"), &[path(&guest("hello.wasm"))])?;
    assert_eq!(out.code, Some(0), "{out:?}");
    Ok(())
}

/// The files (not directories) under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn compiled_code_is_cached_and_reused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");
    let artifacts = || -> Vec<std::path::PathBuf> {
        cache_files(&cache)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect()
    };
    wasmcell_run(&cache, &[path(&guest("hello.wasm"))])?.success()?;
    let first = artifacts();
    assert_eq!(first.len(), 1, "{first:?}");
    let written = std::fs::metadata(&first[0])?.modified()?;
    wasmcell_run(&cache, &[path(&guest("hello.wasm"))])?.success()?;
    assert_eq!(artifacts(), first);
    assert_eq!(
        std::fs::metadata(&first[0])?.modified()?,
        written,
        "a cache hit rewrote the entry"
    );

    // A corrupted entry is discarded and rebuilt, and the guest still runs.
    std::fs::write(&first[0], b"garbage")?;
    let out = wasmcell_run(&cache, &[path(&guest("hello.wasm")), "again"])?.success()?;
    assert!(out.stdout.contains("arg: again"));
    assert!(
        std::fs::metadata(&first[0])?.len() > 1000,
        "entry was not rebuilt"
    );
    Ok(())
}

#[test]
fn install_links_every_shim_name_to_one_binary() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = run(Command::new(wasmcell())
        .args(["install", "--prefix"])
        .arg(tmp.path()))?
    .success()?;
    assert!(
        out.stdout.contains("containerd-shim-wasmtime-v1"),
        "{out:?}"
    );
    for shim in [
        "containerd-shim-wasmtime-v1",
        "containerd-shim-wasmedge-v1",
        "containerd-shim-spin-v2",
    ] {
        assert_eq!(
            std::fs::read_link(tmp.path().join("bin").join(shim))?,
            Path::new("wasmcell")
        );
    }
    let version = run(Command::new(tmp.path().join("bin/wasmcell")).arg("--version"))?.success()?;
    assert!(version.stdout.starts_with("wasmcell "), "{version:?}");
    // The commit built and the wasmtime linked, for bug reports.
    assert!(version.stdout.contains(", wasmtime 48."), "{version:?}");
    let commit = version
        .stdout
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default();
    assert!(
        commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{version:?}"
    );
    let subcommand = run(Command::new(tmp.path().join("bin/wasmcell")).arg("version"))?;
    assert_eq!(subcommand.success()?.stdout, version.stdout);
    // Each shim answers `-v` as containerd's own shims do: its name, version and revision.
    for shim in ["containerd-shim-wasmtime-v1", "containerd-shim-spin-v2"] {
        let said = run(Command::new(tmp.path().join("bin").join(shim)).arg("-v"))?.success()?;
        assert!(said.stdout.starts_with(&format!("{shim}:\n")), "{said:?}");
        assert!(
            said.stdout.contains(&format!("Revision: {commit}")),
            "{said:?}"
        );
    }
    // Which runtime name runs what.
    let runtimes = run(Command::new(wasmcell()).arg("runtimes"))?.success()?;
    for id in [
        "io.containerd.wasmtime.v1",
        "io.containerd.spin.v2",
        "io.containerd.slight.v1",
    ] {
        assert!(runtimes.stdout.contains(id), "{runtimes:?}");
    }
    // Completions and man pages where the shells and `man` look, generated from --help's
    // definitions; gone with --uninstall, the binary too.
    let share = tmp.path().join("share");
    let bash = std::fs::read_to_string(share.join("bash-completion/completions/wasmcell"))?;
    assert!(
        bash.contains("--compile") && bash.contains("_wasmcell"),
        "{bash}"
    );
    assert!(share.join("zsh/site-functions/_wasmcell").is_file());
    assert!(
        share
            .join("fish/vendor_completions.d/wasmcell.fish")
            .is_file()
    );
    let page = std::fs::read_to_string(share.join("man/man1/wasmcell-run.1"))?;
    assert!(page.contains(".TH wasmcell-run 1"), "{page}");
    assert!(page.contains("publish"), "{page}");
    let printed = run(Command::new(wasmcell()).args(["completions", "bash"]))?.success()?;
    assert_eq!(printed.stdout, bash);
    run(Command::new(wasmcell())
        .args(["install", "--uninstall", "--prefix"])
        .arg(tmp.path()))?
    .success()?;
    assert!(!share.join("man/man1/wasmcell.1").exists());
    assert!(!share.join("bash-completion/completions/wasmcell").exists());
    assert!(!tmp.path().join("bin/wasmcell").exists());
    Ok(())
}

#[test]
fn processes_racing_to_compile_one_module_compile_it_once_and_leave_one_entry() -> Result<()> {
    for round in 0..3 {
        let tmp = tempfile::tempdir()?;
        let cache = tmp.path().join("cache");
        // All started before any is waited for, so they compile and write the entry together.
        let children: Vec<_> = (0..4)
            .map(|i| {
                Command::new(wasmcell())
                    .arg("run")
                    .arg("--cache-dir")
                    .arg(&cache)
                    .arg(guest("hello.wasm"))
                    .arg(format!("racer{i}"))
                    .env("WASMCELL_LOG", "wasmcell_runtime=debug")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        let racers: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output())
            .collect::<Result<_, _>>()?;
        for (i, out) in racers.iter().enumerate() {
            assert!(
                out.status.success(),
                "round {round}, racer {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("arg: racer{i}")));
        }
        // The entry's lock lets one of them compile; the others load what it wrote.
        let compiled = racers
            .iter()
            .filter(|out| String::from_utf8_lossy(&out.stderr).contains("compile cache miss"))
            .count();
        assert_eq!(
            compiled, 1,
            "round {round}: {compiled} of 4 racers compiled"
        );
        let files = cache_files(&cache);
        assert_eq!(
            files.len(),
            2,
            "round {round}: {files:?} (one artifact and its checksum, nothing half-written)"
        );
        // The winner's entry is whole: a fresh run loads it without recompiling.
        wasmcell_run(&cache, &[path(&guest("hello.wasm"))])?.success()?;
    }
    Ok(())
}

/// Every file in a compile cache's engine directories (not the collection's lock beside them,
/// nor the apps' function caches), sorted.
fn cache_files(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .map(|dir| dir.unwrap().path())
        .filter(|dir| dir.is_dir())
        .filter(|dir| {
            dir.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("wasmtime-"))
        })
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Issue 26 point 6: the compile cache grew without bound, every distinct module adding its
/// artifact. Now it stays within WASMCELL_CACHE_MAX_SIZE, evicting the least recently used
/// (a cache hit counts as a use), and `wasmcell cache prune --all` empties it.
#[test]
fn the_cache_stays_within_its_bound_evicting_the_least_recently_used() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");
    // Distinct modules of one guest: a custom section changes the digest, not the code.
    let modules: Vec<std::path::PathBuf> = (0..4)
        .map(|n| distinct_guest("hello.wasm", &format!("bounded-{n}"), tmp.path()))
        .collect::<Result<_>>()?;
    let run_bounded = |module: &Path, bound: &str| -> Result<Ran> {
        run(Command::new(wasmcell())
            .args(["run", "--cache-dir", path(&cache)])
            .arg(module)
            .env("WASMCELL_CACHE_MAX_SIZE", bound))?
        .success()
    };
    run_bounded(&modules[0], "2G")?;
    let one = CacheListing::of(&cache)?.total()?;
    // Room for two entries, not three.
    let bound = (one * 5 / 2).to_string();
    run_bounded(&modules[1], &bound)?;
    // A hit on module 0 makes module 1 the least recently used.
    run_bounded(&modules[0], &bound)?;
    run_bounded(&modules[2], &bound)?;
    let ls = CacheListing::of(&cache)?;
    assert!(ls.total()? <= one * 5 / 2, "{ls:?}");
    assert!(
        ls.lists(&modules[0])? && ls.lists(&modules[2])? && !ls.lists(&modules[1])?,
        "module 1 was the least recently used: {ls:?}"
    );
    run_bounded(&modules[3], &bound)?;
    let ls = CacheListing::of(&cache)?;
    assert!(ls.total()? <= one * 5 / 2, "{ls:?}");
    assert!(ls.lists(&modules[3])?, "the newest stays: {ls:?}");

    let pruned = run(Command::new(wasmcell()).args([
        "cache",
        "prune",
        "--all",
        "--cache-dir",
        path(&cache),
    ]))?
    .success()?;
    assert!(
        pruned.stdout.contains("Total reclaimed space: "),
        "{pruned:?}"
    );
    assert_eq!(CacheListing::of(&cache)?.total()?, 0);
    assert!(!cache.join("functions").exists(), "{pruned:?}");
    let out = wasmcell_run(&cache, &[path(&modules[3]), "again"])?.success()?;
    assert!(out.stdout.contains("arg: again"), "{out:?}");
    assert_eq!(cache_files(&cache).len(), 2, "compiled once more");

    // A bound that is not a size is named, before anything runs.
    let out = run(Command::new(wasmcell())
        .args(["run", "--cache-dir", path(&cache)])
        .arg(&modules[0])
        .env("WASMCELL_CACHE_MAX_SIZE", "lots"))?;
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.contains("WASMCELL_CACHE_MAX_SIZE") && out.stderr.contains("such as 512M"),
        "{out:?}"
    );
    let help = run(Command::new(wasmcell()).args(["cache", "prune", "--help"]))?.success()?;
    assert!(
        help.stdout.contains("wasmcell cache prune --all"),
        "{help:?}"
    );
    Ok(())
}

/// Issue 29 point 2: an app rebuilt with its code unchanged (another digest) takes its
/// functions from its function cache, which lives in the compile cache; another app with the
/// same code has a cache of its own (what one app's compile writes there is code, and no other
/// app takes it).
#[test]
fn a_rebuilt_app_reuses_its_own_compiled_functions_and_no_other_app_does() -> Result<()> {
    use std::collections::BTreeMap;
    use std::time::SystemTime;
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");
    let run_app = |app: &Path| -> Result<()> {
        let out = wasmcell_run(&cache, &["--compile", "optimized", path(app), "x"])?;
        assert!(out.stdout.contains("arg: x"), "{out:?}");
        Ok(())
    };
    // Each app's function cache: its entries and when each was written.
    let scopes = || -> Vec<BTreeMap<std::path::PathBuf, SystemTime>> {
        std::fs::read_dir(cache.join("functions"))
            .into_iter()
            .flatten()
            .map(|scope| {
                std::fs::read_dir(scope.unwrap().path())
                    .unwrap()
                    .map(|entry| {
                        let entry = entry.unwrap();
                        (entry.path(), entry.metadata().unwrap().modified().unwrap())
                    })
                    .collect()
            })
            .collect()
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    std::fs::create_dir_all(&one)?;
    std::fs::create_dir_all(&two)?;
    let app = one.join("app.wasm");
    std::fs::copy(guest("hello.wasm"), &app)?;
    run_app(&app)?;
    let first = scopes();
    assert_eq!(first.len(), 1);
    let compiled = first[0].len();
    assert!(compiled > 100, "{compiled} functions");
    // Entries are written a second apart at least in mtime's eyes: a rewrite shows.
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // Rebuilt: a custom section more, the same functions. Compiled again (its own entry), its
    // functions found in the cache: written again only where Cranelift's key for a function
    // differs from run to run (about one in ten here: the key is not fully deterministic).
    std::fs::copy(
        wasmcell_e2e::distinct_guest("hello.wasm", "rebuilt", &one)?,
        &app,
    )?;
    run_app(&app)?;
    let second = scopes();
    let written = second[0]
        .iter()
        .filter(|(entry, modified)| first[0].get(*entry) != Some(modified))
        .count();
    assert!(
        written * 3 < compiled,
        "{written} of {compiled} functions compiled again"
    );
    let artifacts = cache_files(&cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .count();
    assert_eq!(artifacts, 2);

    // Another app of the same code: a function cache of its own, filled afresh.
    let other = two.join("app.wasm");
    std::fs::copy(
        wasmcell_e2e::distinct_guest("hello.wasm", "other", &two)?,
        &other,
    )?;
    run_app(&other)?;
    let all = scopes();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|scope| scope.len() >= compiled));
    Ok(())
}
