//! Pods through containerd 1.7's real CRI plugin, with real CNI networking, the calls made in
//! kubelet's order: RunPodSandbox, PullImage, CreateContainer, StartContainer, status polling,
//! ExecSync and Exec, StopContainer, StopPodSandbox, RemoveContainer, RemovePodSandbox.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_cri::v1::{ContainerConfig, LinuxContainerResources, PodSandboxState};
use wasmcell_e2e::cri::{Cri, Pod};
use wasmcell_e2e::{
    CpuLoad, Registry, assert_serves_hello_http, guest, run, stream, wait_for, wasmcell,
};

/// A node: CRI on a private containerd, and a registry holding the test images, pushed by
/// `wasmcell build --push` as a user would.
struct Node {
    cri: Cri,
    registry: Registry,
    _tmp: tempfile::TempDir,
}

impl Node {
    fn start() -> Result<Node> {
        Node::start_with(Cri::start)
    }

    /// A node whose CRI `start_cri` starts.
    fn start_with(start_cri: impl FnOnce() -> Result<Cri>) -> Result<Node> {
        let tmp = tempfile::tempdir()?;
        let registry = Registry::start()?;
        // The toolbox: the sleeper as its entrypoint, with the other command guests beside it
        // for execs and the multi-container tests.
        let tools = tmp.path().join("tools");
        std::fs::create_dir(&tools)?;
        for wasm in ["hello.wasm", "hostile.wasm", "echo-server.wasm"] {
            std::fs::copy(guest(wasm), tools.join(wasm))?;
        }
        let include = format!("{}:/", tools.display());
        let pushes: [(&str, &str, &[&str]); 4] = [
            ("sleeper.wasm", "toolbox:1", &["--include", &include]),
            ("hello-http.wasm", "hello-http:1", &[]),
            ("hello.wasm", "hello-artifact:1", &["--format", "artifact"]),
            ("p3-cli.wasm", "p3-artifact:1", &["--format", "artifact"]),
        ];
        for (wasm, name, extra) in pushes {
            run(Command::new(wasmcell())
                .env("WASMCELL_STORE", tmp.path().join("store"))
                .env("WASMCELL_CACHE_DIR", tmp.path().join("cache"))
                .arg("build")
                .arg(guest(wasm))
                .args(["--tag", &format!("{}/{name}", registry.addr), "--push"])
                .args(extra))?
            .success()?;
        }
        Ok(Node {
            cri: start_cri()?,
            registry,
            _tmp: tmp,
        })
    }

    /// The registry reference of test image `name` (e.g. `toolbox:1`).
    fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.addr)
    }

    /// PullImage of test image `name`; returns its reference for container configs.
    fn pull(&self, name: &str) -> Result<String> {
        let image = self.image(name);
        self.cri.pull(&image)?;
        Ok(image)
    }
}

/// The lines of a CRI log file, checked for containerd's format
/// (`<RFC3339Nano> stdout|stderr F|P text`), as (stream, text).
fn cri_log(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (time, stream, tag) = (parts.next(), parts.next(), parts.next());
            let text = parts.next().unwrap_or_default();
            let time = time.context("no time")?;
            ensure!(
                time.len() >= 20 && time.as_bytes()[10] == b'T' && time.contains('.'),
                "not an RFC 3339 time with nanoseconds: {line:?}"
            );
            ensure!(
                matches!(stream, Some("stdout" | "stderr")) && matches!(tag, Some("F" | "P")),
                "not a CRI log line: {line:?}"
            );
            Ok((stream.unwrap_or_default().to_owned(), text.to_owned()))
        })
        .collect()
}

/// The text a container wrote to `stream` so far, from its CRI log.
fn logged(pod: &Pod, config: &ContainerConfig, stream: &str) -> Result<String> {
    Ok(cri_log(&pod.log_file(config))?
        .into_iter()
        .filter(|(s, _)| s == stream)
        .map(|(_, text)| text + "\n")
        .collect())
}

/// Waits until the container's stdout log holds `text`.
fn wait_logged(pod: &Pod, config: &ContainerConfig, text: &str) -> Result<()> {
    wait_for(&format!("{text:?} in the log"), || {
        Ok(logged(pod, config, "stdout")
            .unwrap_or_default()
            .contains(text))
    })
}

/// A container of `image` running `args` (its entrypoint first, as `command`).
fn command(pod: &Pod, name: &str, image: &str, args: &[&str]) -> ContainerConfig {
    let mut config = pod.container_config(name, image);
    config.command = args.iter().map(|a| a.to_string()).collect();
    config
}

/// The inode of a namespace file, as the kernel names the namespace.
fn namespace_of(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .ino())
}

/// FIFOs under `dir` (containers' stdio; none may be left when a pod is gone).
fn fifos_under(dir: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_fifo() {
                found.push(entry.path());
            }
        }
    }
    Ok(found)
}

/// Mount points under `dir` (none may be left when a pod is gone).
fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let dir = dir.display().to_string();
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&dir))
        .map(str::to_owned)
        .collect())
}

#[test]
fn an_http_pod_runs_through_kubelets_calls_and_leaves_nothing_behind() -> Result<()> {
    let node = Node::start()?;
    let cri = &node.cri;
    let containerd = cri.containerd();

    // RunPodSandbox with a host port mapping, as a pod with `hostPort` gets.
    let host_port = wasmcell_e2e::free_port()?;
    let mut config = cri.pod_config("web")?;
    config.port_mappings = vec![Cri::port_mapping(8080, host_port.into())];
    let pod = cri.run_pod(config, "wasmtime")?;
    let status = pod.status()?;
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    let ip = pod.ip()?;
    let subnet_prefix = cri.subnet().rsplit_once('.').unwrap().0.to_owned();
    assert!(ip.starts_with(&subnet_prefix), "{ip} in {}", cri.subnet());

    // No pause process: the sandbox task's PID is our sandbox process, and it is in the
    // network namespace CNI configured.
    let (_, sandbox_pid, task_status) = containerd
        .task_pids()?
        .into_iter()
        .find(|(id, _, _)| *id == pod.id)
        .context("no sandbox task")?;
    assert_eq!(task_status, "RUNNING");
    let cmdline = std::fs::read(format!("/proc/{sandbox_pid}/cmdline"))?;
    assert!(
        cmdline.starts_with(b"wasmcell-sandbox\0"),
        "the sandbox task's process: {}",
        String::from_utf8_lossy(&cmdline)
    );
    let info = containerd
        .ctr(&["containers", "info", &pod.id])?
        .success()?;
    let info: serde_json::Value = serde_json::from_str(&info.stdout)?;
    let netns = info["Spec"]["linux"]["namespaces"]
        .as_array()
        .context("namespaces")?
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .context("the sandbox joins a network namespace by path")?
        .to_owned();
    assert_eq!(
        namespace_of(Path::new(&netns))?,
        namespace_of(Path::new(&format!("/proc/{sandbox_pid}/ns/net")))?
    );
    let shim_socket = containerd.shim_socket(&pod.id)?;

    // PullImage, CreateContainer, StartContainer, then status polling.
    let image = node.pull("hello-http:1")?;
    let web = pod.container_config("web", &image);
    let id = pod.run(web.clone())?;
    cri.wait_running(&id)?;
    // Answered at the pod's IP: only the pod's network namespace has it, so the guest
    // listens there (as kubelet's probes and Services reach pods).
    let base = format!("http://{ip}:8080");
    wait_for("the pod to answer", || {
        Ok(wasmcell_e2e::curl(&[&format!("{base}/")]).is_ok())
    })?;
    assert_serves_hello_http(&base)?;
    // The pod's hostPort (CNI's portmap) on the node's address on the pods' bridge.
    let gateway = format!("{subnet_prefix}.1");
    let reply = wasmcell_e2e::curl(&[&format!("http://{gateway}:{host_port}/")])?;
    assert_eq!(reply.body, "Hello from a Wasm container!\n");
    // kubectl port-forward: CRI's PortForward through the streaming server.
    let url = pod.port_forward_url(8080)?;
    let reply = cri.block_on(stream::port_forward(
        &url,
        8080,
        b"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n",
        |reply| reply.ends_with(b"Hello from a Wasm container!\n"),
    ))?;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");

    // The server's CPU (its threads') is in its stats.
    let stats = cri
        .call(
            cri.runtime()
                .container_stats(k8s_cri::v1::ContainerStatsRequest {
                    container_id: id.clone(),
                }),
        )?
        .stats
        .and_then(|s| s.cpu)
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value);
    ensure!(
        stats.is_some_and(|cpu| cpu > 0),
        "the server's CPU: {stats:?}"
    );

    // StopContainer: SIGTERM, the server drains and exits 0 ("Completed").
    cri.stop_container(&id, 10)?;
    let stopped = cri.container_status(&id)?;
    assert_eq!(
        (stopped.exit_code, stopped.reason.as_str()),
        (0, "Completed"),
        "{stopped:?}"
    );
    // Called again, as kubelet may: still fine.
    cri.stop_container(&id, 10)?;

    // StopPodSandbox, then the removals, each twice.
    let started = Instant::now();
    pod.stop()?;
    let stop_took = started.elapsed();
    // Generous: it hangs for a grace period if the sandbox task ignores its SIGKILL.
    ensure!(
        stop_took < Duration::from_secs(5),
        "StopPodSandbox took {stop_took:?}"
    );
    pod.stop()?;
    cri.remove_container(&id)?;
    cri.remove_container(&id)?;
    pod.remove()?;
    pod.remove()?;
    // Stop and remove on objects already gone: done, or "not found" (as kubelet takes it).
    for gone in [
        cri.stop_container(&id, 10),
        cri.remove_container(&id),
        pod.stop(),
        pod.remove(),
    ] {
        if let Err(error) = gone {
            ensure!(error.to_string().starts_with("NotFound"), "{error}");
        }
    }

    // Nothing left: no shim, no sandbox process, no mount, no network namespace, no cgroup,
    // no shim socket.
    wait_for("the shim to exit", || Ok(containerd.shim_pids().is_empty()))?;
    ensure!(
        !Path::new(&format!("/proc/{sandbox_pid}")).exists(),
        "the sandbox process {sandbox_pid} is still there"
    );
    let left = mounts_under(containerd.dir())?;
    ensure!(left.is_empty(), "mounts left: {left:?}");
    ensure!(
        !Path::new(&netns).exists(),
        "network namespace {netns} left"
    );
    let pod_cgroup = pod.cgroup_dir("memory");
    let cgroups: Vec<PathBuf> = std::fs::read_dir(&pod_cgroup)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    ensure!(cgroups.is_empty(), "cgroups left in the pod's: {cgroups:?}");
    ensure!(
        !shim_socket.exists(),
        "shim socket {} left",
        shim_socket.display()
    );
    let fifos = fifos_under(containerd.dir())?;
    ensure!(fifos.is_empty(), "FIFOs left: {fifos:?}");
    Ok(())
}

#[test]
fn a_pods_containers_share_its_network_and_keep_their_own_logs_exits_and_limits() -> Result<()> {
    let node = Node::start()?;
    let cri = &node.cri;
    let pod = cri.run_pod(cri.pod_config("multi")?, "wasmtime")?;
    let toolbox = node.pull("toolbox:1")?;

    // An init container runs to completion first.
    let init = command(&pod, "init", &toolbox, &["/hello.wasm", "init", "done"]);
    let init_id = pod.run(init.clone())?;
    let status = cri.wait_exited(&init_id)?;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    assert_eq!(
        logged(&pod, &init, "stdout")?,
        "Hello from Wasm!\narg: init\narg: done\n"
    );

    // One container serves on the pod's localhost, the other reaches it there.
    let server = command(
        &pod,
        "server",
        &toolbox,
        &["/echo-server.wasm", "tcp", "127.0.0.1:7000"],
    );
    let server_id = pod.run(server)?;
    cri.wait_running(&server_id)?;
    let client = command(
        &pod,
        "client",
        &toolbox,
        &["/echo-server.wasm", "connect", "127.0.0.1:7000"],
    );
    let client_id = pod.run(client.clone())?;
    let status = cri.wait_exited(&client_id)?;
    assert_eq!(
        status.exit_code,
        0,
        "{status:?}: {:?}",
        logged(&pod, &client, "stderr")
    );
    assert!(logged(&pod, &client, "stdout")?.contains("ping"));

    // Each its own exit: an error exit, a stop (SIGTERM: 143), an OOM kill; the server runs on.
    let failing = command(
        &pod,
        "failing",
        &toolbox,
        &["/hello.wasm", "stderr=bad", "exit=3"],
    );
    let failing_id = pod.run(failing.clone())?;
    let status = cri.wait_exited(&failing_id)?;
    assert_eq!((status.exit_code, status.reason.as_str()), (3, "Error"));
    assert_eq!(logged(&pod, &failing, "stderr")?, "bad\n");
    let sleeper = pod.container_config("sleeper", &toolbox);
    let sleeper_id = pod.run(sleeper.clone())?;
    wait_logged(&pod, &sleeper, "tick 1")?;
    cri.stop_container(&sleeper_id, 10)?;
    let status = cri.container_status(&sleeper_id)?;
    assert_eq!((status.exit_code, status.reason.as_str()), (143, "Error"));

    let mut hungry = command(&pod, "hungry", &toolbox, &["/hostile.wasm", "alloc"]);
    resources(&mut hungry).memory_limit_in_bytes = 512 << 20;
    let hungry_id = pod.run(hungry.clone())?;
    wait_logged(&pod, &hungry, "allocated 16 MiB")?;
    // UpdateContainerResources lowers its limit live: its next growth past it ends it.
    let mut lower = resources(&mut hungry).clone();
    lower.memory_limit_in_bytes = 32 << 20;
    cri.call(cri.runtime().update_container_resources(
        k8s_cri::v1::UpdateContainerResourcesRequest {
            container_id: hungry_id.clone(),
            linux: Some(lower),
            ..Default::default()
        },
    ))?;
    let status = cri.wait_exited(&hungry_id)?;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{status:?}"
    );
    assert_eq!(
        cri.container_status(&server_id)?.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );

    // One shim, one sandbox process: every task of the pod reports the same PID.
    let pids: Vec<u32> = cri
        .containerd()
        .task_pids()?
        .into_iter()
        .map(|(_, pid, _)| pid)
        .collect();
    ensure!(pids.windows(2).all(|w| w[0] == w[1]), "PIDs: {pids:?}");
    assert_eq!(cri.containerd().shim_pids().len(), 1);

    // The pod's cgroup (kubelet's, under cgroup_parent) holds the sandbox process, so what
    // kubelet reads for the pod is what the pod uses.
    let sandbox_cgroup = wasmcell_e2e::cgroup_dir(pids[0], "memory")?;
    let pod_cgroup = pod.cgroup_dir("memory");
    ensure!(
        sandbox_cgroup.starts_with(&pod_cgroup),
        "the sandbox is in {}, outside the pod's {}",
        sandbox_cgroup.display(),
        pod_cgroup.display()
    );
    let pod_memory: u64 = std::fs::read_to_string(pod_cgroup.join("memory.usage_in_bytes"))?
        .trim()
        .parse()?;
    assert!(pod_memory > 0);

    // Stats: each container its own use (a busy one, the idle server), the pod its total.
    let mut busy = command(&pod, "busy", &toolbox, &["/hostile.wasm", "spin"]);
    resources(&mut busy).cpu_quota = 20_000;
    let busy_id = pod.run(busy.clone())?;
    wait_logged(&pod, &busy, "spinning")?;
    std::thread::sleep(Duration::from_millis(300));
    let stats = |id: &str| -> Result<(u64, u64)> {
        let stats = cri
            .call(
                cri.runtime()
                    .container_stats(k8s_cri::v1::ContainerStatsRequest {
                        container_id: id.to_owned(),
                    }),
            )?
            .stats
            .context("no stats")?;
        let cpu = stats
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map(|v| v.value);
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value);
        Ok((cpu.unwrap_or(0), memory.unwrap_or(0)))
    };
    let (busy_cpu, busy_memory) = stats(&busy_id)?;
    let (server_cpu, server_memory) = stats(&server_id)?;
    ensure!(
        busy_cpu > 0 && busy_memory > 0,
        "busy: {busy_cpu} ns, {busy_memory} B"
    );
    ensure!(
        server_cpu > 0 && server_memory > 0,
        "server: {server_cpu} ns, {server_memory} B"
    );
    ensure!(
        busy_cpu > server_cpu,
        "the spinning guest used {busy_cpu} ns, the idle server {server_cpu}"
    );
    let listed = cri
        .call(
            cri.runtime()
                .list_container_stats(k8s_cri::v1::ListContainerStatsRequest::default()),
        )?
        .stats;
    ensure!(listed.len() >= 2, "ListContainerStats: {listed:?}");
    let pod_stats = cri
        .call(
            cri.runtime()
                .list_pod_sandbox_stats(k8s_cri::v1::ListPodSandboxStatsRequest::default()),
        )?
        .stats;
    let linux = pod_stats
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == pod.id))
        .and_then(|s| s.linux.clone())
        .context("no stats for the pod")?;
    let pod_cpu = linux
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value);
    let pod_memory = linux
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    ensure!(
        pod_cpu.unwrap_or(0) >= busy_cpu && pod_memory.unwrap_or(0) > 0,
        "pod: {pod_cpu:?} ns, {pod_memory:?} B; busy container {busy_cpu} ns"
    );
    ensure!(
        linux.containers.len() >= 2,
        "the pod's containers' stats: {:?}",
        linux.containers
    );
    cri.stop_container(&busy_id, 0)?;

    // A Linux container has no place in a Wasm pod. (CRI's CreateContainer only records the
    // container; containerd creates its task, asking the shim, at StartContainer.)
    let busybox = wasmcell_e2e::linux_image::busybox_image(cri.containerd().dir())?;
    cri.containerd().import(&busybox)?;
    let linux = command(
        &pod,
        "linux",
        wasmcell_e2e::linux_image::BUSYBOX_IMAGE,
        &["/bin/sleep", "60"],
    );
    let error = pod.run(linux).unwrap_err().to_string();
    assert!(error.contains("runs WebAssembly only"), "{error}");
    assert!(error.contains("/bin/sleep"), "{error}");

    // The pod's pids cgroup counts the sandbox's threads, so kubelet's pod PID limit binds it.
    let pids: u64 = std::fs::read_to_string(pod.cgroup_dir("pids").join("pids.current"))?
        .trim()
        .parse()?;
    assert!(pids > 0);

    // StopPodSandbox with a container still running (the server) ends it at once.
    let started = Instant::now();
    pod.stop()?;
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(5),
        "StopPodSandbox took {took:?}"
    );
    let status = cri.container_status(&server_id)?;
    assert_eq!(status.exit_code, 137, "{status:?}");
    Ok(())
}

/// A container config's Linux resources.
fn resources(config: &mut ContainerConfig) -> &mut LinuxContainerResources {
    config
        .linux
        .as_mut()
        .and_then(|l| l.resources.as_mut())
        .expect("container_config sets resources")
}

#[test]
fn execs_probe_and_stream_and_refuse_what_is_not_wasm() -> Result<()> {
    let node = Node::start()?;
    let cri = &node.cri;
    let pod = cri.run_pod(cri.pod_config("exec")?, "wasmtime")?;
    let toolbox = node.pull("toolbox:1")?;
    let id = pod.run(pod.container_config("main", &toolbox))?;
    cri.wait_running(&id)?;

    // ExecSync, as an exec probe: stdout, stderr and the exit code.
    let out = cri.exec_sync(&id, &["/hello.wasm", "probe", "stderr=warn", "exit=3"], 10)?;
    assert_eq!(
        (
            String::from_utf8_lossy(&out.stdout).as_ref(),
            String::from_utf8_lossy(&out.stderr).as_ref(),
            out.exit_code
        ),
        ("Hello from Wasm!\narg: probe\n", "warn\n", 3)
    );
    // Exec probes read every line, every time, with every core busy (1-2 of 60 execs lost
    // their output under load, with ctr).
    let load = CpuLoad::on_every_core();
    let mut lost = Vec::new();
    for n in 0..100 {
        let (arg, warn) = (format!("probe{n}"), format!("stderr=warn{n}"));
        let out = cri.exec_sync(&id, &["/hello.wasm", &arg, &warn], 30)?;
        let seen = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.exit_code,
        );
        if seen
            != (
                format!("Hello from Wasm!\narg: {arg}\n"),
                format!("warn{n}\n"),
                0,
            )
        {
            lost.push((n, seen));
        }
    }
    drop(load);
    ensure!(
        lost.is_empty(),
        "{} of 100 ExecSyncs lost output: {lost:?}",
        lost.len()
    );
    // Past its timeout the exec is killed and the probe fails, without waiting for output.
    let started = Instant::now();
    let timed_out = cri.exec_sync(&id, &["/sleeper.wasm", "60"], 1);
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "ExecSync waited {:?} for a 1 s timeout",
        started.elapsed()
    );
    let error = timed_out.unwrap_err().to_string();
    assert!(error.contains("timeout"), "{error}");
    // kubectl exec's first try: a shell. A clear refusal, not a hang.
    let error = cri
        .exec_sync(&id, &["/bin/sh"], 10)
        .unwrap_err()
        .to_string();
    assert!(error.contains("/bin/sh"), "{error}");
    assert!(error.contains("Wasm"), "{error}");

    // kubectl exec -i: an interactive session over the streaming server's WebSocket.
    let url = cri.exec_url(&id, &["/hello.wasm", "stdin"])?;
    let session = cri.block_on(stream::exec(
        &url,
        &[
            ("first\n", "stdin: first"),
            ("second\n", "stdin: second"),
            ("exit\n", ""),
        ],
    ))?;
    assert_eq!(
        session.stdout, "Hello from Wasm!\nstdin: first\nstdin: second\n",
        "{session:?}"
    );
    assert!(session.status.contains("Success"), "{session:?}");
    // The main container ran on through all of it.
    assert_eq!(
        cri.container_status(&id)?.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );
    Ok(())
}

#[test]
fn pods_reach_each_other_by_ip_and_logs_follow_and_reopen() -> Result<()> {
    let node = Node::start()?;
    let cri = &node.cri;
    let toolbox = node.pull("toolbox:1")?;
    let server_pod = cri.run_pod(cri.pod_config("server")?, "wasmtime")?;
    let server = command(
        &server_pod,
        "server",
        &toolbox,
        &["/echo-server.wasm", "tcp", "0.0.0.0:7000"],
    );
    let server_id = server_pod.run(server)?;
    cri.wait_running(&server_id)?;
    let client_pod = cri.run_pod(cri.pod_config("client")?, "wasmedge")?;
    let address = format!("{}:7000", server_pod.ip()?);
    let client = command(
        &client_pod,
        "client",
        &toolbox,
        &["/echo-server.wasm", "connect", &address],
    );
    let client_id = client_pod.run(client.clone())?;
    let status = cri.wait_exited(&client_id)?;
    assert_eq!(
        status.exit_code,
        0,
        "{:?}",
        logged(&client_pod, &client, "stderr")
    );
    assert!(logged(&client_pod, &client, "stdout")?.contains("ping"));

    // A log followed while the guest writes, then reopened as kubelet's log rotation does.
    let sleeper = client_pod.container_config("sleeper", &toolbox);
    let sleeper_id = client_pod.run(sleeper.clone())?;
    wait_logged(&client_pod, &sleeper, "tick 2")?;
    let log = client_pod.log_file(&sleeper);
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated)?;
    cri.call(
        cri.runtime()
            .reopen_container_log(k8s_cri::v1::ReopenContainerLogRequest {
                container_id: sleeper_id.clone(),
            }),
    )?;
    wait_for("a tick in the reopened log", || {
        Ok(logged(&client_pod, &sleeper, "stdout").is_ok_and(|text| text.contains("tick")))
    })?;
    assert!(logged_at(&rotated)?.contains("tick 2"));
    Ok(())
}

/// The stdout text of a CRI log file at `path`.
fn logged_at(path: &Path) -> Result<String> {
    Ok(cri_log(path)?
        .into_iter()
        .filter(|(s, _)| s == "stdout")
        .map(|(_, text)| text + "\n")
        .collect())
}

#[test]
fn unrunnable_pods_are_refused_clearly() -> Result<()> {
    let node = Node::start()?;
    let cri = &node.cri;

    // A privileged container: its pod's sandbox is privileged too (kubelet makes it so), but
    // containerd gives a sandbox container nothing to tell; the container itself is refused.
    let mut privileged = cri.pod_config("privileged")?;
    let linux = privileged.linux.as_mut().unwrap();
    linux.security_context.as_mut().unwrap().privileged = true;
    let pod = cri.run_pod(privileged, "wasmtime")?;
    let toolbox = node.pull("toolbox:1")?;
    let mut config = pod.container_config("privileged", &toolbox);
    let linux = config.linux.as_mut().unwrap();
    linux.security_context.as_mut().unwrap().privileged = true;
    let error = pod.run(config).err().context("privileged container ran")?;
    assert!(error.to_string().contains("privileged"), "{error}");

    let mut host_pid = cri.pod_config("host-pid")?;
    let linux = host_pid.linux.as_mut().unwrap();
    let namespaces = linux
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut();
    namespaces.unwrap().pid = k8s_cri::v1::NamespaceMode::Node as i32;
    let error = cri
        .run_pod(host_pid, "wasmtime")
        .err()
        .context("host-PID pod ran")?;
    assert!(error.to_string().contains("hostPID"), "{error}");

    // An image with no Wasm where its entrypoint says: the error names both.
    let pod = cri.run_pod(cri.pod_config("no-wasm")?, "wasmtime")?;
    let missing = command(&pod, "missing", &toolbox, &["/app.wasm"]);
    let error = pod.run(missing).unwrap_err().to_string();
    assert!(error.contains("/app.wasm"), "{error}");
    assert!(error.contains(&toolbox), "{error}");

    // A user namespace (`hostUsers: false`).
    let mut userns = cri.pod_config("userns")?;
    let linux = userns.linux.as_mut().unwrap();
    let namespaces = linux
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut();
    let mapping = k8s_cri::v1::IdMapping {
        host_id: 100_000,
        container_id: 0,
        length: 65536,
    };
    namespaces.unwrap().userns_options = Some(k8s_cri::v1::UserNamespace {
        mode: k8s_cri::v1::NamespaceMode::Pod as i32,
        uids: vec![mapping],
        gids: vec![mapping],
    });
    let error = cri
        .run_pod(userns, "wasmtime")
        .err()
        .context("user-namespace pod ran")?;
    assert!(error.to_string().contains("user namespace"), "{error}");

    // A node with no CNI network: containerd refuses the pod (its decision, and its message).
    let conf_dir = cri.containerd().dir().join("cni");
    for entry in std::fs::read_dir(&conf_dir)?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "conflist") {
            std::fs::remove_file(entry.path())?;
        }
    }
    let mut refused = None;
    wait_for("containerd to see no CNI network", || {
        refused = cri.run_pod(cri.pod_config("no-cni")?, "wasmtime").err();
        Ok(refused.is_some())
    })?;
    let error = refused.expect("waited for it").to_string();
    assert!(error.contains("cni"), "{error}");
    Ok(())
}

#[test]
fn pods_run_on_through_a_containerd_restart_and_stop_cleanly_after() -> Result<()> {
    let node = Node::start()?;
    let cri = &node.cri;
    let toolbox = node.pull("toolbox:1")?;
    let web_image = node.pull("hello-http:1")?;
    let pod = cri.run_pod(cri.pod_config("restart")?, "wasmtime")?;
    let sleeper = pod.container_config("sleeper", &toolbox);
    let sleeper_id = pod.run(sleeper.clone())?;
    let web_id = pod.run(pod.container_config("web", &web_image))?;
    cri.wait_running(&web_id)?;
    wait_logged(&pod, &sleeper, "tick 1")?;
    let base = format!("http://{}:8080", pod.ip()?);
    wait_for("the pod to answer", || {
        Ok(wasmcell_e2e::curl(&[&format!("{base}/")]).is_ok())
    })?;

    cri.containerd()
        .restart(nix::sys::signal::Signal::SIGTERM)?;
    // CRI recovers its pods from its store and its shims; the pod is READY, its containers
    // RUNNING, and the sleeper's log goes on in the same file.
    wait_for("CRI to answer again", || Ok(pod.status().is_ok()))?;
    assert_eq!(pod.status()?.state, PodSandboxState::SandboxReady as i32);
    for id in [&sleeper_id, &web_id] {
        assert_eq!(
            cri.container_status(id)?.state,
            k8s_cri::v1::ContainerState::ContainerRunning as i32,
            "{id}"
        );
    }
    let ticks = logged(&pod, &sleeper, "stdout")?.matches("tick").count();
    wait_for("ticks after the restart", || {
        Ok(logged(&pod, &sleeper, "stdout")?.matches("tick").count() > ticks + 1)
    })?;
    assert_serves_hello_http(&base)?;

    // Stopping works as before: exits reach CRI (the shim's events go to the new containerd).
    cri.stop_container(&sleeper_id, 10)?;
    assert_eq!(cri.container_status(&sleeper_id)?.exit_code, 143);
    // A server still busy with a request when its grace period ends is killed.
    let mut busy = wasmcell_e2e::Background::spawn(Command::new("curl").args([
        "--silent",
        "--max-time",
        "30",
        &format!("{base}/spin"),
    ]))?;
    std::thread::sleep(Duration::from_millis(300));
    cri.stop_container(&web_id, 1)?;
    let status = cri.container_status(&web_id)?;
    assert_eq!((status.exit_code, status.reason.as_str()), (137, "Error"));
    let _ = busy.terminate();
    pod.stop()?;
    cri.remove_container(&sleeper_id)?;
    cri.remove_container(&web_id)?;
    pod.remove()?;
    wait_for("the shim to exit", || {
        Ok(cri.containerd().shim_pids().is_empty())
    })?;
    let left = mounts_under(cri.containerd().dir())?;
    ensure!(left.is_empty(), "mounts left: {left:?}");
    Ok(())
}

#[test]
fn every_wasm_image_format_runs_in_a_pod() -> Result<()> {
    let node = Node::start()?;
    let cri = &node.cri;
    let pod = cri.run_pod(cri.pod_config("formats")?, "wasmtime")?;
    let hello = |config: &ContainerConfig| -> Result<String> {
        let id = pod.run(config.clone())?;
        let status = cri.wait_exited(&id)?;
        ensure!(status.exit_code == 0, "{status:?}");
        logged(&pod, config, "stdout")
    };

    // The Docker-compatible image, pulled from the registry: its Entrypoint, kubelet's args.
    let toolbox = node.pull("toolbox:1")?;
    let mut config = command(&pod, "compat", &toolbox, &["/hello.wasm"]);
    config.args = vec!["compat".to_owned()];
    assert_eq!(hello(&config)?, "Hello from Wasm!\narg: compat\n");

    // The CNCF Wasm artifact: CRI pulls it and records it on the container, so the shim finds
    // its layer in containerd's content store. It has no Entrypoint: the pod spec names the
    // module (`command`), as for any image without one.
    let artifact = node.pull("hello-artifact:1")?;
    let config = command(&pod, "artifact", &artifact, &["/hello.wasm", "artifact"]);
    assert_eq!(hello(&config)?, "Hello from Wasm!\narg: artifact\n");

    // A WASI 0.3 command, as the CNCF artifact (whose config names its world,
    // `wasi:cli/command@0.3.0`).
    let p3 = node.pull("p3-artifact:1")?;
    let config = command(&pod, "p3", &p3, &["/p3-cli.wasm", "hello"]);
    assert_eq!(hello(&config)?, "hello from wasi 0.3\n");

    // runwasi's and wasm-pkg's images: the Wasm binary itself as the layer, of each media type
    // they use, imported as a node's pre-pulled images are.
    let wasm = std::fs::read(guest("hello.wasm"))?;
    for (i, media_type) in [
        "application/wasm",
        "application/vnd.wasm.content.layer.v1+wasm",
        "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("wasmcell.test/wasm-layer-{i}:1");
        let archive = cri.containerd().dir().join(format!("layer-{i}.tar"));
        wasmcell_e2e::wasm_layer_archive(&wasm, media_type, &name, &archive)?;
        cri.containerd().import(&archive)?;
        let mut config = pod.container_config(&format!("layer-{i}"), &name);
        config.args = vec![media_type.to_owned()];
        assert_eq!(
            hello(&config)?,
            format!("Hello from Wasm!\narg: {media_type}\n")
        );
    }
    Ok(())
}

/// `wasmcell install ARGS...` against a node's containerd directory: its config, and its `bin/`
/// (first on its PATH) as the prefix's.
fn install(dir: &Path, args: &[&str]) -> Result<wasmcell_e2e::Ran> {
    run(Command::new(wasmcell())
        .args(["install", "--containerd", "--config"])
        .arg(dir.join("config.toml"))
        .arg("--prefix")
        .arg(dir)
        .args(args))?
    .success()
}

#[test]
fn the_node_installer_adds_a_handler_per_runtime_keeps_the_nodes_config_and_undoes_itself()
-> Result<()> {
    let mut before = String::new();
    let node = Node::start_with(|| {
        Cri::start_installed(|dir| {
            before = std::fs::read_to_string(dir.join("config.toml"))?;
            // --dry-run: the diff, and nothing changed.
            let dry = install(dir, &["--dry-run"])?;
            assert!(
                dry.stdout.contains(
                    "+[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]"
                ),
                "{dry:?}"
            );
            assert_eq!(std::fs::read_to_string(dir.join("config.toml"))?, before);
            assert!(!dir.join("bin/containerd-shim-wasmtime-v1").exists());
            install(dir, &[])?;
            // Again: nothing to do.
            let again = install(dir, &[])?;
            assert!(again.stdout.contains("config.toml: unchanged"), "{again:?}");
            Ok(())
        })
    })?;
    let cri = &node.cri;
    let config = cri.containerd().dir().join("config.toml");
    let installed = std::fs::read_to_string(&config)?;
    assert!(installed.starts_with(&before), "{installed}");

    // containerd's effective config still has the node's own CRI settings (an imported
    // drop-in would have replaced them) and every handler.
    let dump = run(
        Command::new(wasmcell_e2e::tools().join("usr/bin/containerd"))
            .arg("--config")
            .arg(&config)
            .args(["config", "dump"]),
    )?
    .success()?
    .stdout;
    let pause = wasmcell_e2e::linux_image::PAUSE_IMAGE;
    assert!(
        dump.contains(&format!("sandbox_image = \"{pause}\"")),
        "{dump}"
    );
    for handler in ["runc", "wasmtime", "wasmedge", "spin", "slight"] {
        let table =
            format!("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{handler}]");
        assert!(dump.contains(&table), "no {handler} in {dump}");
    }

    // A pod through each installed handler.
    let toolbox = node.pull("toolbox:1")?;
    for handler in ["wasmtime", "wasmedge", "spin", "slight"] {
        let pod = cri.run_pod(cri.pod_config(handler)?, handler)?;
        let config = command(&pod, "hello", &toolbox, &["/hello.wasm", handler]);
        let id = pod.run(config.clone())?;
        let status = cri.wait_exited(&id)?;
        assert_eq!(status.exit_code, 0, "{handler}: {status:?}");
        assert_eq!(
            logged(&pod, &config, "stdout")?,
            format!("Hello from Wasm!\narg: {handler}\n")
        );
        pod.stop()?;
        pod.remove()?;
    }

    // The RuntimeClasses to apply name the same handlers.
    let classes = run(Command::new(wasmcell()).args(["install", "--print-runtime-classes"]))?
        .success()?
        .stdout;
    for handler in ["wasmtime", "wasmedge", "spin", "slight"] {
        assert!(
            classes.contains(&format!("handler: {handler}\n")),
            "{classes}"
        );
    }

    // --uninstall: the node's config as it was, and no shim links.
    let dir = cri.containerd().dir();
    install(dir, &["--uninstall"])?;
    assert_eq!(std::fs::read_to_string(&config)?, before);
    assert!(!dir.join("bin/containerd-shim-wasmtime-v1").exists());
    assert!(!dir.join("bin/wasmcell").exists());
    Ok(())
}
