//! The sandbox as a wall of its own (issue 24, "the sandbox as a runc container would be"):
//! whatever runs in it on a guest's behalf can name no host path, and what an image makes the
//! shim do on the host (compiling its module) is bounded. Checked from the host's side.

use std::collections::BTreeSet;
use std::path::{Component, Path};
use std::process::Command;

use anyhow::{Result, ensure};
use wasmcell_e2e::linux_image::LinuxImage;
use wasmcell_e2e::{Containerd, build_image, cgroup_dir, containerd_with, guest};

/// The sandbox's root holds its own descriptors, the compile cache, the resolver's files and
/// the node's CA bundle, and nothing else of the host's: not `/etc/shadow`, not the host's `/usr`, not a file the
/// test put next to the cache.
#[test]
fn the_sandbox_can_name_no_host_path_r24() -> Result<()> {
    let (tmp, containerd) =
        containerd_with(&[], &[("sleeper.wasm", "example.com/sleeper:latest")])?;
    let marker = tmp.path().join("host-secret");
    std::fs::write(&marker, "host only")?;
    containerd
        .run_wasm(&["-d"], "example.com/sleeper:latest", "walled", &[])?
        .success()?;
    let sandbox = containerd.running("walled")?;
    let root = Path::new("/proc").join(sandbox.to_string()).join("root");

    let cache = containerd.dir().join("cache");
    let cache_top = match cache.components().nth(1) {
        Some(Component::Normal(top)) => top.to_string_lossy().into_owned(),
        _ => anyhow::bail!("unexpected cache path {}", cache.display()),
    };
    let names = |dir: &Path| -> Result<BTreeSet<String>> {
        std::fs::read_dir(dir)?
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect()
    };
    let top = names(&root)?;
    let allowed: BTreeSet<String> = ["etc", "proc", &cache_top]
        .into_iter()
        .map(str::to_owned)
        .collect();
    ensure!(top.is_subset(&allowed), "the sandbox's root shows {top:?}");
    let resolver: BTreeSet<String> = [
        "hosts",
        "resolv.conf",
        "nsswitch.conf",
        "host.conf",
        "gai.conf",
        "ssl",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let etc = names(&root.join("etc"))?;
    ensure!(etc.is_subset(&resolver), "the sandbox's /etc shows {etc:?}");
    // Of the node's TLS files, its CA bundle only (Debian's, read-only), not its private keys.
    let ssl = root.join("etc/ssl");
    if ssl.exists() {
        let shown = (names(&ssl)?, names(&ssl.join("certs"))?);
        let bundle = BTreeSet::from(["ca-certificates.crt".to_owned()]);
        ensure!(
            shown == (BTreeSet::from(["certs".to_owned()]), bundle),
            "the sandbox's /etc/ssl shows {shown:?}"
        );
    }
    ensure!(names(&root.join("proc"))? == BTreeSet::from(["self".to_owned()]));

    let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    for host in [Path::new("/etc/shadow"), Path::new("/usr/bin"), &marker] {
        ensure!(
            !inside(host).exists(),
            "{} is in the sandbox's view",
            host.display()
        );
    }
    // The cache is there, and read-only.
    ensure!(inside(&cache).is_dir(), "no compile cache in the sandbox");
    let mounts = std::fs::read_to_string(
        Path::new("/proc")
            .join(sandbox.to_string())
            .join("mountinfo"),
    )?;
    let cache_mount = mounts
        .lines()
        .find(|line| line.split(' ').nth(4) == Some(&*cache.to_string_lossy()))
        .ok_or_else(|| anyhow::anyhow!("no cache mount in {mounts}"))?;
    ensure!(
        cache_mount
            .split(' ')
            .nth(5)
            .is_some_and(|options| options.split(',').any(|o| o == "ro")),
        "the cache is writable in the sandbox: {cache_mount}"
    );

    // On cgroup v1 (this machine), the devices the container's cgroup lets it use are runc's
    // defaults, not every device.
    if Path::new("/sys/fs/cgroup/devices").is_dir() {
        let list = std::fs::read_to_string(cgroup_dir(sandbox, "devices")?.join("devices.list"))?;
        let rules: BTreeSet<&str> = list.lines().collect();
        ensure!(
            !rules.contains("a *:* rwm"),
            "every device is allowed: {list}"
        );
        for rule in ["c 1:3 rwm", "c 1:9 rwm", "c 136:* rwm"] {
            ensure!(rules.contains(rule), "{rule} is not allowed: {list}");
        }
        ensure!(
            !rules
                .iter()
                .any(|r| r.starts_with("c 1:11") || r.starts_with("b 8:")),
            "the kernel log or a disk is allowed: {list}"
        );
    }
    containerd.ctr(&["task", "kill", "-s", "KILL", "walled"])?;
    Ok(())
}

/// A module built to be slow to compile is refused at the compile bound, naming it, instead of
/// taking the node's CPU in the shim; the shim goes on creating other containers.
#[test]
fn a_module_slow_to_compile_is_refused_at_the_bound_and_the_next_one_runs_r24() -> Result<()> {
    let containerd = Containerd::start_with_env(&[("WASMCELL_COMPILE_CPU_SECONDS", "1")])?;
    let tmp = tempfile::tempdir()?;
    let slow = tmp.path().join("slow.wasm");
    std::fs::write(&slow, wat::parse_str(slow_to_compile())?)?;
    containerd.import(&build_image(&slow, "example.com/slow:1", tmp.path(), &[])?)?;
    containerd.import(&build_image(
        &guest("hello.wasm"),
        "example.com/hello:1",
        tmp.path(),
        &[],
    )?)?;

    let refused = containerd.run_wasm(&["--rm"], "example.com/slow:1", "slow", &[])?;
    ensure!(refused.code != Some(0), "the slow module ran: {refused:?}");
    ensure!(
        refused
            .stderr
            .contains("took more than 1 s of CPU time, the most one image may use"),
        "the refusal does not name the bound: {}",
        refused.stderr
    );
    let hello = containerd
        .run_wasm(
            &["--rm"],
            "example.com/hello:1",
            "after-slow",
            &["/hello.wasm", "still"],
        )?
        .success()?;
    ensure!(hello.stdout.contains("arg: still"), "{hello:?}");
    Ok(())
}

/// Hundreds of large functions of dependent arithmetic: seconds of Cranelift's time.
fn slow_to_compile() -> String {
    let mut text = String::from("(module\n");
    for f in 0..400 {
        text.push_str(&format!(
            "(func (export \"f{f}\") (param i32 i32) (result i32) (local i32)\n"
        ));
        for i in 0..3000 {
            text.push_str(&format!(
                "(local.set 0 (i32.mul (i32.add (local.get 0) (i32.const {})) (local.get 1)))\n",
                i * 7 + f
            ));
        }
        text.push_str("(local.get 0))\n");
    }
    text.push_str("(func (export \"_start\")))\n");
    text
}

/// A 0666 character device in an image (here the kernel log's, 1:11) is inert: the rootfs
/// reaches the sandbox `nodev`, so the guest's write is refused and nothing reaches the host's
/// kernel log, where before the guest's bytes landed in it.
#[test]
fn a_device_node_in_an_image_cannot_be_opened_r24() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let containerd = Containerd::start()?;
    let archive = tmp.path().join("kmsg.tar");
    LinuxImage::new("example.com/kmsg:1")
        .platform("wasip1", "wasm")
        .file("/fs.wasm", std::fs::read(guest("fs.wasm"))?, 0o755)
        .char_device("/kmsg", 1, 11)
        .entrypoint(&["/fs.wasm"])
        .write(&archive)?;
    containerd.import(&archive)?;
    let token = format!("wasmcell-r24-{}", std::process::id());
    let wrote = containerd.run_wasm(
        &["--rm"],
        "example.com/kmsg:1",
        "kmsg",
        &["/fs.wasm", "write", "/kmsg", &token],
    )?;
    ensure!(wrote.code == Some(1), "the device was written: {wrote:?}");
    ensure!(
        wrote.stderr.contains("fs: write /kmsg:"),
        "the guest's write was not refused: {wrote:?}"
    );
    // Read as it is written: the log is larger than a pipe holds.
    let log = Command::new("dmesg").output()?;
    ensure!(log.status.success(), "dmesg failed: {log:?}");
    ensure!(
        !String::from_utf8_lossy(&log.stdout).contains(&token),
        "the guest wrote into the host's kernel log"
    );
    Ok(())
}

/// The sandbox's name lookups (`wasi:sockets`' `ip-name-lookup`, through the C library) read the
/// container's `/etc/hosts` and `/etc/resolv.conf` where its spec binds them, as Docker and CRI
/// do, not the node's: its root shows them at those paths.
#[test]
fn the_sandbox_resolves_with_the_containers_own_hosts_file() -> Result<()> {
    let (tmp, containerd) =
        containerd_with(&[], &[("sleeper.wasm", "example.com/sleeper:latest")])?;
    let hosts = tmp.path().join("hosts");
    std::fs::write(&hosts, "10.9.8.7 only-in-this-container\n")?;
    let mount = format!(
        "type=bind,src={},dst=/etc/hosts,options=rbind:ro",
        hosts.display()
    );
    containerd
        .run_wasm(
            &["-d", "--mount", &mount],
            "example.com/sleeper:latest",
            "named",
            &[],
        )?
        .success()?;
    let sandbox = containerd.running("named")?;
    let seen = std::fs::read_to_string(format!("/proc/{sandbox}/root/etc/hosts"))?;
    ensure!(
        seen == "10.9.8.7 only-in-this-container\n",
        "the sandbox's /etc/hosts is {seen:?}"
    );
    containerd.ctr(&["task", "kill", "-s", "KILL", "named"])?;
    Ok(())
}
