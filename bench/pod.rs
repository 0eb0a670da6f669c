//! `wasmcell-bench pod [N]`: Kubernetes pods through containerd 1.7's CRI plugin with CNI
//! networking, ours against runc's in the same run and the same containerd, the calls made as
//! kubelet makes them (images already on the node):
//!
//! - (a) RunPodSandbox until the container is RUNNING, N pods each, interleaved: our sleeper
//!   against busybox `sleep` (runc runs the pause image too), and the same for a host-network
//!   pod, whose difference is what the pod network costs (netns and CNI);
//! - (b) RunPodSandbox until the first HTTP 200 from the pod's IP: the HTTP example against
//!   busybox `httpd`;
//! - (c) PSS of every process each adds per idle pod (shims, sandboxes, pause, containers);
//! - (d) 50 pods started at once: wall time until all run.
//!
//! Each start is split into RunPodSandbox, CreateContainer, StartContainer and the status
//! polls until RUNNING, for where a pod start's time goes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_cri::v1::{
    ContainerConfig, ContainerState, ContainerStatusRequest, CreateContainerRequest, NamespaceMode,
    PodSandboxConfig, PodSandboxStatusRequest, RunPodSandboxRequest, StartContainerRequest,
};
use wasmcell_e2e::cri::{Cri, container_config};
use wasmcell_e2e::linux_image::{BUSYBOX_IMAGE, busybox_image};
use wasmcell_e2e::{build_image, guest};

use crate::{Stats, ms, pss_kib, stats, table};

/// One pod's kind: its runtime handler and its container.
struct Kind {
    name: &'static str,
    handler: &'static str,
    image: &'static str,
    command: &'static [&'static str],
    /// Serves HTTP on port 8080: started means answering at the pod's IP.
    serves_http: bool,
}

const SLEEPER: Kind = Kind {
    name: "wasmcell + sleeper.wasm",
    handler: "wasmtime",
    image: "bench.local/sleeper:latest",
    command: &[],
    serves_http: false,
};
const BUSYBOX_SLEEP: Kind = Kind {
    name: "runc + pause + busybox sleep (baseline)",
    handler: "runc",
    image: BUSYBOX_IMAGE,
    command: &["/bin/sleep", "3600"],
    serves_http: false,
};
const HELLO_HTTP: Kind = Kind {
    name: "wasmcell + hello-http.wasm",
    handler: "wasmtime",
    image: "bench.local/hello-http:latest",
    command: &[],
    serves_http: true,
};
const BUSYBOX_HTTPD: Kind = Kind {
    name: "runc + pause + busybox httpd (baseline)",
    handler: "runc",
    image: BUSYBOX_IMAGE,
    command: &["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
    serves_http: true,
};

/// How long each step of one pod start took.
struct Start {
    run_pod: Duration,
    create: Duration,
    start: Duration,
    /// From RunPodSandbox's call to RUNNING (or the first HTTP 200).
    total: Duration,
}

pub fn pod(n: usize) -> Result<()> {
    ensure!(n >= 2, "pod needs at least 2 pods");
    let tmp = tempfile::tempdir()?;
    let cri = Cri::start()?;
    for (wasm, tag) in [
        ("sleeper.wasm", SLEEPER.image),
        ("hello-http.wasm", HELLO_HTTP.image),
    ] {
        cri.containerd()
            .import(&build_image(&guest(wasm), tag, tmp.path(), &[])?)?;
    }
    cri.containerd().import(&busybox_image(tmp.path())?)?;
    println!(
        "\npods through containerd 1.7's CRI with CNI (bridge, firewall, portmap); subnet {}",
        cri.subnet()
    );

    // Warm-up: the first pod of each kind compiles into the cache, pages binaries in.
    for kind in [&SLEEPER, &BUSYBOX_SLEEP, &HELLO_HTTP, &BUSYBOX_HTTPD] {
        start_pod(&cri, kind, &format!("warm-{}", kind.handler), Network::Pod)?;
    }
    remove_all(&cri)?;

    // (a) and (c): N idle pods of each kind, started one after the other, interleaved.
    let (mut ours, mut runc) = (Vec::new(), Vec::new());
    for i in 0..n {
        ours.push(start_pod(
            &cri,
            &SLEEPER,
            &format!("ours-{i}"),
            Network::Pod,
        )?);
        runc.push(start_pod(
            &cri,
            &BUSYBOX_SLEEP,
            &format!("runc-{i}"),
            Network::Pod,
        )?);
    }
    std::thread::sleep(Duration::from_secs(2));
    let (ours_pss, ours_processes) = pss_of(&cri, SLEEPER.handler)?;
    let (runc_pss, runc_processes) = pss_of(&cri, BUSYBOX_SLEEP.handler)?;
    remove_all(&cri)?;
    let (mut ours_host, mut runc_host) = (Vec::new(), Vec::new());
    for i in 0..n {
        ours_host.push(start_pod(
            &cri,
            &SLEEPER,
            &format!("host-ours-{i}"),
            Network::Host,
        )?);
        runc_host.push(start_pod(
            &cri,
            &BUSYBOX_SLEEP,
            &format!("host-runc-{i}"),
            Network::Host,
        )?);
    }
    remove_all(&cri)?;
    let total = |starts: &[Start]| stats(starts.iter().map(|s| s.total).collect());
    table(
        "(a) RunPodSandbox -> container RUNNING (kubelet's calls, image present)",
        n,
        &[
            (BUSYBOX_SLEEP.name, total(&runc)),
            (SLEEPER.name, total(&ours)),
            ("runc, hostNetwork (no netns, no CNI)", total(&runc_host)),
            (
                "wasmcell, hostNetwork (no netns, no CNI)",
                total(&ours_host),
            ),
        ],
    );
    steps(
        "where (a)'s time goes: median per step",
        &[
            (BUSYBOX_SLEEP.name, &runc),
            (SLEEPER.name, &ours),
            ("runc, hostNetwork", &runc_host),
            ("wasmcell, hostNetwork", &ours_host),
        ],
    );

    // (b): the first HTTP 200 from the pod's IP.
    let (mut ours_http, mut runc_http) = (Vec::new(), Vec::new());
    for i in 0..n {
        ours_http.push(start_pod(
            &cri,
            &HELLO_HTTP,
            &format!("web-ours-{i}"),
            Network::Pod,
        )?);
        runc_http.push(start_pod(
            &cri,
            &BUSYBOX_HTTPD,
            &format!("web-runc-{i}"),
            Network::Pod,
        )?);
    }
    remove_all(&cri)?;
    table(
        "(b) RunPodSandbox -> first HTTP 200 from the pod IP",
        n,
        &[
            (BUSYBOX_HTTPD.name, total(&runc_http)),
            (HELLO_HTTP.name, total(&ours_http)),
        ],
    );

    println!("\n(c) {n} idle pods: PSS of every process each runtime adds per pod");
    println!(
        "| {:<40} | {:>10} | {:>14} | {:>10} |",
        "what", "processes", "per pod", "ratio"
    );
    println!("|{:-<42}|{:->12}|{:->16}|{:->12}|", "", "", "", "");
    for (name, pss, processes) in [
        (BUSYBOX_SLEEP.name, runc_pss, runc_processes),
        (SLEEPER.name, ours_pss, ours_processes),
    ] {
        println!(
            "| {name:<40} | {processes:>10} | {:>10} KiB | {:>9.2}x |",
            pss / n as u64,
            pss as f64 / runc_pss as f64
        );
    }

    // (d): 50 at once, twice each, alternating.
    const PARALLEL: usize = 50;
    println!("\n(d) {PARALLEL} pods started at once: wall time until all RUNNING");
    println!("| {:<40} | {:>10} | {:>8} |", "what", "wall", "ratio");
    println!("|{:-<42}|{:->12}|{:->10}|", "", "", "");
    let mut baseline = None;
    for round in 0..2 {
        for kind in [&BUSYBOX_SLEEP, &SLEEPER] {
            let wall = start_parallel(&cri, kind, PARALLEL, round)?;
            remove_all(&cri)?;
            let base = *baseline.get_or_insert(wall);
            println!(
                "| {:<40} | {:>10} | {:>7.2}x |",
                kind.name,
                ms(wall),
                wall.as_secs_f64() / base.as_secs_f64()
            );
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Network {
    /// The pod's own network namespace, set up by CNI.
    Pod,
    /// The node's (hostNetwork: no netns, no CNI).
    Host,
}

/// Starts one pod of `kind` named `name` as kubelet does, timed until its container runs (or,
/// for a server, until it answers HTTP 200 on port 8080 at the pod's IP).
fn start_pod(cri: &Cri, kind: &Kind, name: &str, network: Network) -> Result<Start> {
    let (pod_config, container) = configs(cri, kind, name, network)?;
    let runtime = cri.runtime();
    let began = Instant::now();
    let id = cri
        .call(runtime.clone().run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: kind.handler.to_owned(),
        }))?
        .pod_sandbox_id;
    let run_pod = began.elapsed();
    let container_id = cri
        .call(runtime.clone().create_container(CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(container),
            sandbox_config: Some(pod_config),
        }))?
        .container_id;
    let create = began.elapsed() - run_pod;
    cri.call(runtime.clone().start_container(StartContainerRequest {
        container_id: container_id.clone(),
    }))?;
    let start = began.elapsed() - run_pod - create;
    if kind.serves_http {
        let ip = cri
            .call(runtime.clone().pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: false,
            }))?
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .context("no pod IP")?;
        if let Err(error) = wait_http_ok(&format!("{ip}:8080")) {
            let status = cri.container_status(&container_id)?;
            return Err(error.context(format!("{name}: {status:?}")));
        }
    } else {
        loop {
            let status = cri
                .call(runtime.clone().container_status(ContainerStatusRequest {
                    container_id: container_id.clone(),
                    verbose: false,
                }))?
                .status
                .context("no status")?;
            if status.state == ContainerState::ContainerRunning as i32 {
                break;
            }
            ensure!(
                began.elapsed() < Duration::from_secs(30),
                "{name} not running: {status:?}"
            );
        }
    }
    Ok(Start {
        run_pod,
        create,
        start,
        total: began.elapsed(),
    })
}

/// Kubelet's pod and container configs for a pod of `kind`.
fn configs(
    cri: &Cri,
    kind: &Kind,
    name: &str,
    network: Network,
) -> Result<(PodSandboxConfig, ContainerConfig)> {
    let mut pod_config = cri.pod_config(name)?;
    if network == Network::Host {
        // As kubelet sends it: a host-network pod has the node's UTS namespace too.
        pod_config.hostname.clear();
        let linux = pod_config.linux.as_mut().expect("linux");
        let context = linux.security_context.as_mut().expect("security context");
        context
            .namespace_options
            .as_mut()
            .expect("namespaces")
            .network = NamespaceMode::Node as i32;
    }
    let mut container = container_config("main", kind.image);
    container.command = kind.command.iter().map(|a| a.to_string()).collect();
    Ok((pod_config, container))
}

/// Polls `addr` until it answers `GET /` with 200 (every millisecond, for at most 30 s).
fn wait_http_ok(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reply = [0u8; 12];
            let request = b"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n";
            if stream.write_all(request).is_ok()
                && stream.read_exact(&mut reply).is_ok()
                && reply.ends_with(b" 200")
            {
                return Ok(());
            }
        }
        ensure!(Instant::now() < deadline, "{addr} never answered 200");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Starts `count` pods of `kind` at once (each RunPodSandbox, CreateContainer, StartContainer
/// in order, all pods concurrently) and returns the wall time until every one runs.
fn start_parallel(cri: &Cri, kind: &Kind, count: usize, round: usize) -> Result<Duration> {
    let mut pods = Vec::new();
    for i in 0..count {
        pods.push(configs(
            cri,
            kind,
            &format!("par-{round}-{i}"),
            Network::Pod,
        )?);
    }
    let began = Instant::now();
    cri.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (pod_config, container) in pods {
            let runtime = cri.runtime();
            let handler = kind.handler.to_owned();
            set.spawn(async move {
                let mut runtime = runtime;
                let id = runtime
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(pod_config.clone()),
                        runtime_handler: handler,
                    })
                    .await?
                    .into_inner()
                    .pod_sandbox_id;
                let container_id = runtime
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: id,
                        config: Some(container),
                        sandbox_config: Some(pod_config),
                    })
                    .await?
                    .into_inner()
                    .container_id;
                runtime
                    .start_container(StartContainerRequest { container_id })
                    .await?;
                Ok::<_, tonic::Status>(())
            });
        }
        while let Some(done) = set.join_next().await {
            done??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(began.elapsed())
}

/// Stops and removes every pod, as kubelet tears pods down.
fn remove_all(cri: &Cri) -> Result<()> {
    let pods = cri
        .call(
            cri.runtime()
                .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default()),
        )?
        .items;
    for pod in pods {
        cri.stop_pod(&pod.id)?;
        cri.remove_pod(&pod.id)?;
    }
    Ok(())
}

/// The PSS (KiB) and count of every process serving the pods of `handler`: their tasks'
/// processes (sandboxes; pause and container processes) and the shims above them.
fn pss_of(cri: &Cri, handler: &str) -> Result<(u64, usize)> {
    let pods = cri
        .call(
            cri.runtime()
                .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default()),
        )?
        .items;
    let ids: Vec<String> = pods
        .into_iter()
        .filter(|p| p.runtime_handler == handler)
        .map(|p| p.id)
        .collect();
    let containers = cri
        .call(
            cri.runtime()
                .list_containers(k8s_cri::v1::ListContainersRequest::default()),
        )?
        .containers;
    let mut pids: Vec<u32> = Vec::new();
    for (task, pid, _) in cri.containerd().task_pids()? {
        let in_pods = ids.contains(&task)
            || containers
                .iter()
                .any(|c| c.id == task && ids.contains(&c.pod_sandbox_id));
        if in_pods {
            pids.push(pid);
            pids.push(crate::parent_of(pid)?);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    let total = pids.iter().map(|&pid| pss_kib(pid)).sum::<Result<u64>>()?;
    Ok((total, pids.len()))
}

/// A table of each step's median, per kind.
fn steps(title: &str, rows: &[(&str, &Vec<Start>)]) {
    println!("\n{title}");
    println!(
        "| {:<40} | {:>14} | {:>14} | {:>14} | {:>14} |",
        "what", "RunPodSandbox", "CreateContainer", "StartContainer", "until RUNNING"
    );
    println!(
        "|{:-<42}|{:->16}|{:->16}|{:->16}|{:->16}|",
        "", "", "", "", ""
    );
    for (name, starts) in rows {
        let median = |f: fn(&Start) -> Duration| -> Stats { stats(starts.iter().map(f).collect()) };
        let waited = |s: &Start| s.total - s.run_pod - s.create - s.start;
        println!(
            "| {name:<40} | {:>14} | {:>14} | {:>14} | {:>14} |",
            ms(median(|s| s.run_pod).median),
            ms(median(|s| s.create).median),
            ms(median(|s| s.start).median),
            ms(median(waited).median),
        );
    }
}
