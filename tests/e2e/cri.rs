//! Kubernetes' side of a node, played by the tests (no kubelet runs here): a private containerd
//! 1.7 with its CRI plugin, pods networked by the CNI `bridge`, `firewall` and `portmap`
//! plugins on a bridge and subnet of the fixture's own, the pause image CRI starts every pod
//! with, pod cgroups made as kubelet makes them, and a CRI client making kubelet's calls in
//! kubelet's order.
//!
//! Test pods get a /24 inside 198.18.0.0/15 (the range reserved for benchmarking), chosen under
//! a lock so that fixtures in parallel never share one; nothing masquerades them, so they are
//! reachable from this machine only.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, DnsConfig, ExecRequest, ExecSyncRequest, ExecSyncResponse, ImageSpec,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatus, PodSandboxStatusRequest,
    PortForwardRequest, PortMapping, Protocol, PullImageRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::Channel;

use crate::linux_image::{PAUSE_IMAGE, pause_image};
use crate::{Containerd, free_port, wait_for, wasmcell};

/// The runtime handlers the fixture's containerd knows, as RuntimeClasses name them, with their
/// runtime types: ours as `wasmcell install --containerd` configures them, and runc for the
/// baselines and mixed-node tests.
pub const HANDLERS: [(&str, &str); 5] = [
    ("wasmtime", "io.containerd.wasmtime.v1"),
    ("wasmedge", "io.containerd.wasmedge.v1"),
    ("spin", "io.containerd.spin.v2"),
    ("slight", "io.containerd.slight.v1"),
    // Last: `Cri::start_installed` keeps only this one.
    ("runc", "io.containerd.runc.v2"),
];

/// A private containerd with CRI, its pod network and pod cgroups, and a CRI client. Pods it
/// ran are stopped and removed when it is dropped, then containerd stops, then the bridge and
/// the cgroups go.
pub struct Cri {
    tokio: tokio::runtime::Runtime,
    channel: Channel,
    /// Every pod run, so that a failing test leaves none behind.
    pods: Mutex<Vec<String>>,
    // Dropped in this order, after `Drop::drop` has removed the pods.
    containerd: Containerd,
    network: PodNetwork,
    cgroups: PodCgroups,
}

impl Cri {
    /// Starts a containerd with CRI and our shim, and imports the pause image.
    pub fn start() -> Result<Cri> {
        Cri::start_with(&wasmcell())
    }

    /// As [`Cri::start`], with `shim` (a `wasmcell` binary) behind the shim names.
    pub fn start_with(shim: &Path) -> Result<Cri> {
        Cri::start_prepared(Some(shim), &HANDLERS, |_| Ok(()))
    }

    /// As a node is set up by `wasmcell install`: containerd's directory and config are made
    /// with runc as the only runtime and no shim on its PATH, then `install` runs (given the
    /// directory, whose `config.toml` is containerd's and whose `bin/` is first on its PATH),
    /// then containerd starts.
    pub fn start_installed(install: impl FnOnce(&Path) -> Result<()>) -> Result<Cri> {
        Cri::start_prepared(None, &HANDLERS[4..], install)
    }

    fn start_prepared(
        shim: Option<&Path>,
        handlers: &[(&str, &str)],
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Cri> {
        let network = PodNetwork::reserve()?;
        let cgroups = PodCgroups::create()?;
        let stream_port = free_port()?;
        let section = |root: &Path| cri_config(root, stream_port, handlers);
        let (dir, namespace) = Containerd::configure(shim, Some(&section))?;
        network.write_conflist(&dir.path().join("cni"))?;
        prepare(dir.path())?;
        let containerd = Containerd::start_in(dir, namespace, &[])?;
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = containerd.dir().join("containerd.sock");
        let channel = tokio.block_on(containerd_client::connect(socket))?;
        let cri = Cri {
            tokio,
            channel,
            pods: Mutex::default(),
            containerd,
            network,
            cgroups,
        };
        cri.containerd.import(&pause_image(cri.containerd.dir())?)?;
        // CRI learns of images from containerd's events: wait until it knows the pause image.
        wait_for("CRI to see the pause image", || {
            Ok(cri
                .call(cri.images().image_status(k8s_cri::v1::ImageStatusRequest {
                    image: Some(image_spec(PAUSE_IMAGE)),
                    verbose: false,
                }))?
                .image
                .is_some())
        })?;
        Ok(cri)
    }

    /// The containerd under it (`ctr` commands use CRI's namespace).
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// The pods' subnet, e.g. `198.18.7.0/24`.
    pub fn subnet(&self) -> String {
        self.network.subnet()
    }

    /// A client for CRI's runtime service.
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// A client for CRI's image service.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs a CRI call to its end; a failure carries the gRPC code and CRI's message.
    pub fn call<T>(
        &self,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        self.tokio
            .block_on(call)
            .map(tonic::Response::into_inner)
            .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))
    }

    /// Runs any future on the client's runtime (streaming clients, for instance).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.tokio.block_on(future)
    }

    /// PullImage, as kubelet does before creating a container; returns the image reference.
    pub fn pull(&self, image: &str) -> Result<String> {
        let pulled = self.call(self.images().pull_image(PullImageRequest {
            image: Some(image_spec(image)),
            ..Default::default()
        }))?;
        Ok(pulled.image_ref)
    }

    /// The pod config kubelet would send for a pod named `name`: its own cgroup under the
    /// fixture's (made here, as kubelet makes it), a log directory, DNS settings, the pod's
    /// network, IPC and UTS namespaces shared by its containers, a PID namespace per container.
    pub fn pod_config(&self, name: &str) -> Result<PodSandboxConfig> {
        static UID: AtomicU32 = AtomicU32::new(0);
        let uid = format!(
            "{}-{}",
            std::process::id(),
            UID.fetch_add(1, Ordering::Relaxed)
        );
        let log_directory = self.containerd.dir().join("pods").join(&uid);
        std::fs::create_dir_all(&log_directory)?;
        Ok(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.clone(),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: log_directory.display().to_string(),
            dns_config: Some(DnsConfig {
                servers: vec!["198.18.255.53".to_owned()],
                searches: vec!["default.svc.cluster.local".to_owned()],
                options: vec!["ndots:5".to_owned()],
            }),
            port_mappings: Vec::new(),
            labels: HashMap::from([("app".to_owned(), name.to_owned())]),
            annotations: HashMap::new(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroups.pod(&uid)?,
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(pod_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            windows: None,
        })
    }

    /// RunPodSandbox with `config` under runtime `handler` (a RuntimeClass's handler).
    pub fn run_pod(&self, config: PodSandboxConfig, handler: &str) -> Result<Pod<'_>> {
        let id = self
            .call(self.runtime().run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.to_owned(),
            }))?
            .pod_sandbox_id;
        self.pods.lock().expect("pods").push(id.clone());
        Ok(Pod {
            cri: self,
            id,
            config,
        })
    }

    /// A port mapping to give a pod (host port on the pods' bridge address).
    pub fn port_mapping(container_port: i32, host_port: i32) -> PortMapping {
        PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port,
            host_port,
            host_ip: String::new(),
        }
    }

    /// StartContainer.
    pub fn start_container(&self, id: &str) -> Result<()> {
        self.call(self.runtime().start_container(StartContainerRequest {
            container_id: id.to_owned(),
        }))?;
        Ok(())
    }

    /// ContainerStatus.
    pub fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        self.call(self.runtime().container_status(ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        }))?
        .status
        .context("no status")
    }

    /// Polls ContainerStatus (as kubelet's PLEG does) until the container has exited.
    pub fn wait_exited(&self, id: &str) -> Result<ContainerStatus> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.container_status(id)?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "{id} still not exited: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls ContainerStatus until the container runs.
    pub fn wait_running(&self, id: &str) -> Result<()> {
        wait_for(&format!("{id} running"), || {
            Ok(self.container_status(id)?.state == ContainerState::ContainerRunning as i32)
        })
    }

    /// ExecSync (an exec probe): `cmd` with a timeout in seconds.
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: i64) -> Result<ExecSyncResponse> {
        self.call(self.runtime().exec_sync(ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
            timeout,
        }))
    }

    /// Exec: the streaming server's URL for `cmd` with stdin, stdout and stderr.
    pub fn exec_url(&self, id: &str, cmd: &[&str]) -> Result<String> {
        Ok(self
            .call(self.runtime().exec(ExecRequest {
                container_id: id.to_owned(),
                cmd: cmd.iter().map(|c| c.to_string()).collect(),
                tty: false,
                stdin: true,
                stdout: true,
                stderr: true,
            }))?
            .url)
    }

    /// StopContainer with a grace period in seconds.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        self.call(self.runtime().stop_container(StopContainerRequest {
            container_id: id.to_owned(),
            timeout,
        }))?;
        Ok(())
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.call(self.runtime().remove_container(RemoveContainerRequest {
            container_id: id.to_owned(),
        }))?;
        Ok(())
    }

    /// StopPodSandbox.
    pub fn stop_pod(&self, id: &str) -> Result<()> {
        self.call(self.runtime().stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        }))?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        self.call(self.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        }))?;
        Ok(())
    }

    /// PodSandboxStatus.
    pub fn pod_status(&self, id: &str) -> Result<PodSandboxStatus> {
        self.call(self.runtime().pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        }))?
        .status
        .context("no pod status")
    }

    /// The directory of the fixture's pod cgroups in `controller`'s hierarchy, e.g.
    /// `/sys/fs/cgroup/memory/wasmcell-cri-123-0`.
    pub fn cgroup_root(&self, controller: &str) -> PathBuf {
        self.cgroups.dir(controller)
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // As kubelet tears a pod down: stop (kills what runs, frees the network), then remove.
        for id in std::mem::take(&mut *self.pods.lock().expect("pods")) {
            let _ = self.stop_pod(&id);
            let _ = self.remove_pod(&id);
        }
    }
}

/// A pod CRI runs, and what kubelet knows of it.
pub struct Pod<'a> {
    cri: &'a Cri,
    /// Its sandbox id.
    pub id: String,
    /// The config it was run with (CreateContainer sends it again).
    pub config: PodSandboxConfig,
}

impl Pod<'_> {
    /// The container config kubelet would send for container `name` of `image` in this pod
    /// (see [`container_config`]).
    pub fn container_config(&self, name: &str, image: &str) -> ContainerConfig {
        container_config(name, image)
    }

    /// CreateContainer in this pod; returns the container id.
    pub fn create(&self, config: ContainerConfig) -> Result<String> {
        Ok(self
            .cri
            .call(self.cri.runtime().create_container(CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(config),
                sandbox_config: Some(self.config.clone()),
            }))?
            .container_id)
    }

    /// CreateContainer then StartContainer; returns the container id.
    pub fn run(&self, config: ContainerConfig) -> Result<String> {
        let id = self.create(config)?;
        self.cri.start_container(&id)?;
        Ok(id)
    }

    /// The log file of the container `config` made (`<log_directory>/<log_path>`).
    pub fn log_file(&self, config: &ContainerConfig) -> PathBuf {
        Path::new(&self.config.log_directory).join(&config.log_path)
    }

    /// PodSandboxStatus.
    pub fn status(&self) -> Result<PodSandboxStatus> {
        self.cri.pod_status(&self.id)
    }

    /// The pod's IP, as CNI gave it.
    pub fn ip(&self) -> Result<String> {
        let status = self.status()?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ensure!(!ip.is_empty(), "pod {} has no IP", self.id);
        Ok(ip)
    }

    /// PortForward: the streaming server's URL for this pod.
    pub fn port_forward_url(&self, port: i32) -> Result<String> {
        Ok(self
            .cri
            .call(self.cri.runtime().port_forward(PortForwardRequest {
                pod_sandbox_id: self.id.clone(),
                port: vec![port],
            }))?
            .url)
    }

    /// The path of the pod's cgroup in `controller`'s hierarchy.
    pub fn cgroup_dir(&self, controller: &str) -> PathBuf {
        let parent = &self.config.linux.as_ref().expect("linux").cgroup_parent;
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(parent.trim_start_matches('/'))
    }

    /// StopPodSandbox.
    pub fn stop(&self) -> Result<()> {
        self.cri.stop_pod(&self.id)
    }

    /// RemovePodSandbox.
    pub fn remove(&self) -> Result<()> {
        self.cri.remove_pod(&self.id)
    }
}

/// The container config kubelet would send for container `name` of `image`: its log path
/// `NAME/0.log` under the pod's log directory, the pod's namespaces, no limits.
pub fn container_config(name: &str, image: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_shares: 2,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

/// Kubelet's namespaces for a pod: network and IPC shared by the pod, a PID namespace per
/// container.
fn pod_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The CRI plugin's section of a fixture's containerd config (containerd 1.7, version 2), with
/// runtime `handlers`.
fn cri_config(root: &Path, stream_port: u16, handlers: &[(&str, &str)]) -> String {
    let mut runtimes = String::new();
    for (handler, runtime_type) in handlers {
        runtimes.push_str(&format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{handler}]\n  runtime_type = \"{runtime_type}\"\n"
        ));
    }
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root lacks CAP_SYS_RESOURCE here: lowering an oom_score_adj would fail.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "{stream_port}"
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{root}/cni"
  max_conf_num = 1
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{root}/certs.d"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
{runtimes}[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  # runc's state is per instance: instances share /run/containerd/runc/k8s.io otherwise.
  Root = "{root}/runc"
"#,
        root = root.display(),
    )
}

/// A /24 for one fixture's pods inside 198.18.0.0/15 and the bridge they hang on, held under a
/// lock file so parallel fixtures (and benchmarks) never share one. The bridge is deleted when
/// the fixture ends (CNI leaves it).
struct PodNetwork {
    index: u16,
    bridge: String,
    _lock: File,
}

impl PodNetwork {
    fn reserve() -> Result<PodNetwork> {
        for index in 0..512u16 {
            let path = format!("/tmp/wasmcell-pod-net-{index}.lock");
            let lock = File::create(&path).with_context(|| format!("create {path}"))?;
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            let locked =
                unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            if locked {
                let network = PodNetwork {
                    index,
                    bridge: format!("wcpod{index}"),
                    _lock: lock,
                };
                // A bridge left by a fixture that was killed.
                network.delete_bridge();
                return Ok(network);
            }
        }
        bail!("all 512 test pod subnets in 198.18.0.0/15 are in use")
    }

    fn subnet(&self) -> String {
        format!("198.{}.{}.0/24", 18 + self.index / 256, self.index % 256)
    }

    fn write_conflist(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "wasmcell-test",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet()}]],
                        "dataDir": dir.join("ipam"),
                    },
                },
                // Lets pod traffic through the FORWARD chain, which Docker's tests set to DROP.
                {"type": "firewall", "backend": "iptables"},
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(
            dir.join("10-wasmcell-test.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        Ok(())
    }

    fn delete_bridge(&self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.delete_bridge();
    }
}

/// The fixture's cgroup, in every hierarchy, under which each pod gets `pod<UID>` as kubelet
/// makes `kubepods/.../pod<UID>`; removed, deepest first, when the fixture ends.
struct PodCgroups {
    name: String,
}

impl PodCgroups {
    fn create() -> Result<PodCgroups> {
        static INSTANCE: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "wasmcell-cri-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        let cgroups = PodCgroups { name };
        cgroups.make(&cgroups.name)?;
        Ok(cgroups)
    }

    /// Makes the pod's cgroup and returns its cgroup_parent.
    fn pod(&self, uid: &str) -> Result<String> {
        let path = format!("{}/pod{uid}", self.name);
        self.make(&path)?;
        Ok(format!("/{path}"))
    }

    fn dir(&self, controller: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.name)
    }

    /// Creates `path` in every hierarchy (v1), or the unified one (v2), with cpuset's CPUs and
    /// memory nodes copied from the parent, as kubelet's cgroupfs driver does.
    fn make(&self, path: &str) -> Result<()> {
        for hierarchy in hierarchies()? {
            let dir = hierarchy.join(path);
            std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let parent = dir.parent().expect("has a parent").join(file);
                if let Ok(value) = std::fs::read_to_string(&parent) {
                    std::fs::write(dir.join(file), value.trim())
                        .with_context(|| format!("write {}", dir.join(file).display()))?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for PodCgroups {
    fn drop(&mut self) {
        for hierarchy in hierarchies().unwrap_or_default() {
            remove_tree(&hierarchy.join(&self.name));
        }
    }
}

/// The cgroup hierarchies to make pod cgroups in: each v1 controller's, or the v2 root.
fn hierarchies() -> Result<Vec<PathBuf>> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return Ok(vec![root.to_owned()]);
    }
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // Named and hybrid hierarchies hold no controllers kubelet limits.
        if !["systemd", "unified"].contains(&name)
            && !path.is_symlink()
            && path.join("cgroup.procs").exists()
        {
            dirs.push(path);
        }
    }
    Ok(dirs)
}

/// Removes a cgroup directory and its children, deepest first (cgroupfs only removes empty
/// cgroups, one `rmdir` at a time).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
