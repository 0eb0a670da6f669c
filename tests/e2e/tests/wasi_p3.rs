//! WASI 0.3 components (`wasi:cli/run@0.3.0`, `wasi:http/handler@0.3.0`; guests/p3-cli and
//! guests/p3-http, Rust with wit-bindgen's async support): run by `wasmcell run` and by the
//! shim under containerd with the grants 0.2 components get, checked as a user would.

use std::process::{Command, Stdio};

use anyhow::Result;
use wasmcell_e2e::{containerd_with, curl, free_port, guest, run, wait_http, wasmcell};

/// `wasmcell run [flags] p3-cli.wasm args...`.
fn p3_cli(flags: &[&str], args: &[&str]) -> Result<wasmcell_e2e::Ran> {
    run(Command::new(wasmcell())
        .arg("run")
        .args(flags)
        .arg(guest("p3-cli.wasm"))
        .args(args))
}

#[test]
fn a_wasi_0_3_command_gets_args_env_stdio_and_exit_codes() -> Result<()> {
    let hello = p3_cli(&[], &["hello"])?.success()?;
    assert_eq!(hello.stdout, "hello from wasi 0.3\n");
    assert_eq!(hello.stderr, "to stderr\n");

    let env = p3_cli(&["--env", "COLOR=red"], &["env", "COLOR"])?.success()?;
    assert_eq!(env.stdout, "red\np3-cli.wasm env COLOR\n");
    let unset = p3_cli(&[], &["env", "COLOR"])?.success()?;
    assert_eq!(unset.stdout.lines().next(), Some("unset"));

    // No directory, no working directory (as WASI's test suite expects); one inside a preopen.
    assert_eq!(p3_cli(&[], &["cwd"])?.success()?.stdout, "none\n");
    assert_eq!(p3_cli(&[], &["exit", "7"])?.code, Some(7));
    let failed = p3_cli(&[], &["fail"])?;
    assert_eq!(failed.code, Some(1), "{failed:?}");

    // Standard input reaches the guest's 0.3 stream whole.
    let mut cat = Command::new(wasmcell())
        .arg("run")
        .arg(guest("p3-cli.wasm"))
        .arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let text = "line one\nline two\n".repeat(1000);
    {
        use std::io::Write;
        let mut stdin = cat.stdin.take().expect("piped stdin");
        stdin.write_all(text.as_bytes())?;
    }
    let out = cat.wait_with_output()?;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8(out.stdout)?, text);
    Ok(())
}

/// The flags users bring from Docker and wasmtime: `-e KEY` passes the value it has here (and
/// nothing when it has none), and wasmtime's `--dir HOST::GUEST` mounts at GUEST.
#[test]
fn docker_and_wasmtime_flag_habits_work() -> Result<()> {
    let cli = |flags: &[&str], args: &[&str]| {
        run(Command::new(wasmcell())
            .env("WASMCELL_TEST_COLOR", "teal")
            .env_remove("WASMCELL_TEST_UNSET")
            .arg("run")
            .args(flags)
            .arg(guest("p3-cli.wasm"))
            .args(args))
    };
    let passed = cli(
        &["-e", "WASMCELL_TEST_COLOR"],
        &["env", "WASMCELL_TEST_COLOR"],
    )?;
    assert_eq!(passed.success()?.stdout.lines().next(), Some("teal"));
    let unset = cli(
        &["-e", "WASMCELL_TEST_UNSET"],
        &["env", "WASMCELL_TEST_UNSET"],
    )?;
    assert_eq!(unset.success()?.stdout.lines().next(), Some("unset"));
    let dir = tempfile::tempdir()?;
    let mount = format!("{}::/data", dir.path().display());
    let fs = cli(&["--dir", &mount], &["fs"])?.success()?;
    assert!(fs.stdout.starts_with("preopen: /data\n"), "{fs:?}");
    assert!(dir.path().join("p3.txt").exists());
    Ok(())
}

/// The preopened directory is the guest's, and only it: a path out of it is refused.
#[test]
fn a_wasi_0_3_command_uses_its_preopened_directory_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("existing"), "x")?;
    let mount = format!("{}:/data", dir.path().display());
    let fs = p3_cli(&["--dir", &mount], &["fs"])?.success()?;
    assert_eq!(
        fs.stdout,
        "preopen: /data\nread: written by wasi 0.3\nexisting\np3.txt\n\
         ../outside: not-permitted\nfs ok\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("p3.txt"))?,
        "written by wasi 0.3\n"
    );
    assert!(
        !dir.path().parent().unwrap().join("outside").exists(),
        "the guest wrote outside its directory"
    );
    Ok(())
}

#[test]
fn a_wasi_0_3_command_image_runs_under_containerd() -> Result<()> {
    let (_tmp, containerd) = containerd_with(&[], &[("p3-cli.wasm", "example.com/p3-cli:1")])?;
    let out = containerd
        .run_wasm(
            &["--rm", "--env", "COLOR=blue"],
            "example.com/p3-cli:1",
            "p3",
            &["/p3-cli.wasm", "env", "COLOR"],
        )?
        .success()?;
    assert_eq!(out.stdout, "blue\n/p3-cli.wasm env COLOR\n");
    // The image's working directory, inside its rootfs.
    let out = containerd
        .run_wasm(
            &["--rm", "--cwd", "/etc"],
            "example.com/p3-cli:1",
            "p3-cwd",
            &["/p3-cli.wasm", "cwd"],
        )?
        .success()?;
    assert_eq!(out.stdout, "/etc\n");
    let out = containerd.run_wasm(
        &["--rm"],
        "example.com/p3-cli:1",
        "p3-exit",
        &["/p3-cli.wasm", "exit", "3"],
    )?;
    assert_eq!(out.code, Some(3), "{out:?}");
    Ok(())
}

/// Serves p3-http.wasm with `wasmcell run [flags] -p PORT:8080`, runs `check` on its base URL
/// once `/hello` answers, then stops it as Ctrl-C does: it must exit 0.
fn serving(flags: &[&str], check: impl FnOnce(&str) -> Result<()>) -> Result<()> {
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(wasmcell())
        .arg("run")
        .args(flags)
        .args(["-p", &format!("127.0.0.1:{port}:8080")])
        .arg(guest("p3-http.wasm"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let served = wait_http(&format!("{base}/hello")).and_then(|()| check(&base));
    run(Command::new("kill").args(["-TERM", &server.id().to_string()]))?.success()?;
    let status = server.wait()?;
    served?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}

#[test]
fn a_wasi_0_3_handler_is_served_like_a_0_2_proxy() -> Result<()> {
    let flags = [
        "-e",
        "WASMCELL_HTTP_TIMEOUT=2",
        "-e",
        "WASMCELL_HTTP_MAX_BODY=4096",
    ];
    serving(&flags, |base| {
        let hello = curl(&["-i", &format!("{base}/hello")])?;
        assert_eq!(hello.status, 200, "{hello:?}");
        assert!(
            hello.body.ends_with("hello from a wasi 0.3 handler\n"),
            "{hello:?}"
        );
        let body = "y".repeat(3000);
        let echoed = curl(&["--data-binary", &body, &format!("{base}/echo")])?;
        assert_eq!((echoed.status, echoed.body.as_str()), (200, body.as_str()));
        let big = curl(&["--data-binary", &"z".repeat(8192), &format!("{base}/echo")])?;
        assert_eq!(big.status, 413, "{big:?}");
        assert_eq!(curl(&[&format!("{base}/trap")])?.status, 500);
        let forever = curl(&[&format!("{base}/forever")])?;
        assert_eq!(forever.status, 504, "{forever:?}");
        // No network grant: the guest's 0.3 outgoing request is refused.
        let fetched = curl(&[&format!("{base}/fetch?{base}/hello")])?;
        assert_eq!(fetched.status, 502, "{fetched:?}");
        assert!(fetched.body.contains("HttpRequestDenied"), "{fetched:?}");
        // Every failure ended its own request only.
        assert_eq!(curl(&[&format!("{base}/hello")])?.status, 200);
        Ok(())
    })
}

#[test]
fn a_wasi_0_3_handler_with_the_network_fetches() -> Result<()> {
    serving(&["--net"], |base| {
        let fetched = curl(&[&format!("{base}/fetch?{base}/hello")])?;
        assert_eq!(fetched.status, 200, "{fetched:?}");
        assert_eq!(
            fetched.body,
            "upstream 200\nhello from a wasi 0.3 handler\n"
        );
        Ok(())
    })
}

/// WASI 0.3 sockets follow the network grant as 0.2's do: a TCP connect only with `--net`.
#[test]
fn a_wasi_0_3_command_connects_only_with_the_network_grant() -> Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    let peer = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut line = [0u8; 5];
        stream.read_exact(&mut line)?;
        stream.write_all(b"pong: ")?;
        stream.write_all(&line)
    });
    let denied = p3_cli(&[], &["connect", &address])?;
    assert_eq!(denied.stdout, "connect: access-denied\n", "{denied:?}");
    let connected = p3_cli(&["--net"], &["connect", &address])?.success()?;
    assert_eq!(connected.stdout, "pong: ping\n");
    peer.join().expect("the peer thread")?;
    Ok(())
}

/// A component built against an earlier WASI 0.3 release candidate, which differs from 0.3.0,
/// fails before it runs, naming the import and what is provided instead (the candidate Spin 4's
/// SDKs import, `0.3.0-rc-2026-03-15`, is 0.3.0 and links to it).
#[test]
fn a_wasi_release_candidate_import_is_refused_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join("rc.wasm");
    let rc = "wasi:cli/environment@0.3.0-rc-2025-09-16";
    std::fs::write(
        &wasm,
        wat::parse_str(format!("(component (import \"{rc}\" (instance)))"))?,
    )?;
    let ran = run(Command::new(wasmcell()).arg("run").arg(&wasm))?;
    assert_ne!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stderr.contains(rc), "{ran:?}");
    assert!(ran.stderr.contains("WASI 0.3.0"), "{ran:?}");
    assert!(
        ran.stderr.contains("0.3.0-rc-2026-03-15, which is 0.3.0"),
        "{ran:?}"
    );
    Ok(())
}

/// With WASMCELL_HTTP_INSTANCE_CONCURRENCY, a 0.3 handler's instance serves several requests
/// at once; a trap or a request past its deadline ends that instance only, and the server
/// serves on with fresh ones.
#[test]
fn a_wasi_0_3_handler_instance_serves_concurrent_requests_when_asked() -> Result<()> {
    let flags = [
        "-e",
        "WASMCELL_HTTP_INSTANCE_CONCURRENCY=4",
        "-e",
        "WASMCELL_HTTP_TIMEOUT=2",
    ];
    serving(&flags, |base| {
        let waits: Vec<_> = (0..12)
            .map(|_| {
                let url = format!("{base}/wait?300");
                std::thread::spawn(move || curl(&[&url]))
            })
            .collect();
        for wait in waits {
            let reply = wait.join().expect("a client thread")?;
            assert_eq!((reply.status, reply.body.as_str()), (200, "waited\n"));
        }
        assert_eq!(curl(&[&format!("{base}/trap")])?.status, 500);
        assert_eq!(curl(&[&format!("{base}/hello")])?.status, 200);
        assert_eq!(curl(&[&format!("{base}/forever")])?.status, 504);
        for _ in 0..5 {
            assert_eq!(curl(&[&format!("{base}/hello")])?.status, 200);
        }
        Ok(())
    })?;
    // A setting out of range is refused at start, naming it.
    let refused = run(Command::new(wasmcell())
        .args(["run", "-e", "WASMCELL_HTTP_INSTANCE_CONCURRENCY=0"])
        .arg(guest("p3-http.wasm")))?;
    assert_ne!(refused.code, Some(0));
    assert!(
        refused
            .stderr
            .contains("WASMCELL_HTTP_INSTANCE_CONCURRENCY=0"),
        "{refused:?}"
    );
    Ok(())
}
