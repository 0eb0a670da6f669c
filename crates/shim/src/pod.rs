//! Kubernetes pods, as containerd's CRI plugin runs them through the task API.
//!
//! CRI starts a pod as a sandbox container (Kubernetes' pause image, annotated
//! `io.kubernetes.cri.container-type=sandbox`), then the pod's containers, every one annotated
//! with the pod's `io.kubernetes.cri.sandbox-id`, so one shim serves the whole pod (see
//! `crate::grouping`). Before the sandbox container is created, CRI has made the pod's network
//! namespace and configured it with CNI; the sandbox container's spec joins it by path.
//!
//! wasmcell runs no pause process and no instance for the sandbox container: its `create`
//! starts the pod's sandbox process from its spec (so that process is in the pod's network,
//! IPC and UTS namespaces), and its task is only a state, running until killed. The PID every
//! task of the pod reports is that process's, so the `/proc/<pid>/ns/...` paths CRI writes
//! into the other containers' specs name the pod's namespaces; [`check_namespaces`] holds
//! every container to them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// The annotation CRI sets on every container of a pod: containers sharing it share a shim.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The annotation telling CRI's sandbox container (`sandbox`) from the pod's others
/// (`container`).
const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// The annotations naming a pod container and its image, as the pod spec does.
const CONTAINER_NAME_ANNOTATION: &str = "io.kubernetes.cri.container-name";
const IMAGE_NAME_ANNOTATION: &str = "io.kubernetes.cri.image-name";

/// What a container is to the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// CRI's sandbox container: it holds the pod's namespaces and runs nothing.
    PodSandbox,
    /// A container of a pod CRI runs.
    PodContainer,
    /// A container outside CRI (`ctr`, Docker), on its own or grouped by annotation.
    Plain,
}

impl Role {
    /// The role CRI's annotations give a container spec.
    pub fn of(spec: &Spec) -> Role {
        let annotation = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION));
        match annotation.map(String::as_str) {
            Some("sandbox") => Role::PodSandbox,
            Some(_) => Role::PodContainer,
            None => Role::Plain,
        }
    }
}

/// A pod container as its pod spec names it, for messages: `container `NAME` of image `IMAGE``.
pub fn describe(spec: &Spec) -> String {
    let annotation = |key: &str| {
        spec.annotations()
            .as_ref()
            .and_then(|a| a.get(key))
            .map_or("?", String::as_str)
            .to_owned()
    };
    format!(
        "container `{}` of image `{}`",
        annotation(CONTAINER_NAME_ANNOTATION),
        annotation(IMAGE_NAME_ANNOTATION)
    )
}

/// Why a pod's container cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The spec grants what privileged containers get.
    #[error(
        "the container is privileged: a Wasm guest runs with no capabilities and no devices, so privilege would grant nothing; remove `privileged: true` from its securityContext"
    )]
    Privileged,
    /// The pod shares the host's PID namespace.
    #[error(
        "the pod asks for the host's PID namespace (hostPID): a Wasm guest sees no processes, so it would gain nothing; remove hostPID from the pod spec"
    )]
    HostPid,
    /// A namespace path names another namespace than the pod sandbox's.
    #[error(
        "the container's {kind} namespace {} is not its pod's: the pod's containers run in the pod's sandbox process ({pid}), which is in another",
        path.display()
    )]
    ForeignNamespace {
        /// `network`, `ipc` or `uts`.
        kind: &'static str,
        /// The path in the spec.
        path: PathBuf,
        /// The pod's sandbox process.
        pid: u32,
    },
    /// A namespace path could not be examined.
    #[error("cannot examine the container's {kind} namespace {}", path.display())]
    Namespace {
        /// `network`, `ipc` or `uts`.
        kind: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Refuses what a Wasm guest cannot be given: a privileged container (granted
/// `CAP_SYS_ADMIN`, as every privileged container is), and, for CRI's pods, the host's PID
/// namespace. (A user namespace is refused where the sandbox is set up.)
pub fn check_privilege(spec: &Spec, role: Role) -> Result<(), PodError> {
    let process = spec.process().as_ref();
    let capabilities = process.and_then(|p| p.capabilities().as_ref());
    let sys_admin = capabilities
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|set| set.contains(&oci_spec::runtime::Capability::SysAdmin));
    if sys_admin {
        return Err(PodError::Privileged);
    }
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    let own_pid = namespaces.is_some_and(|n| n.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
    if role != Role::Plain && !own_pid {
        return Err(PodError::HostPid);
    }
    Ok(())
}

/// Checks that every namespace `spec` joins by path (CRI writes `/proc/<sandbox pid>/ns/...`)
/// is the one the pod's sandbox process `pid` is in. Namespaces listed without a path are the
/// group's too: a group has one sandbox process, started from its first container's spec.
pub fn check_namespaces(spec: &Spec, pid: u32) -> Result<(), PodError> {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    for namespace in namespaces.into_iter().flatten() {
        let (kind, file) = match namespace.typ() {
            LinuxNamespaceType::Network => ("network", "net"),
            LinuxNamespaceType::Ipc => ("ipc", "ipc"),
            LinuxNamespaceType::Uts => ("uts", "uts"),
            _ => continue,
        };
        let Some(path) = namespace.path() else {
            continue;
        };
        let identity = |path: &Path| {
            std::fs::metadata(path)
                .map(|m| (m.dev(), m.ino()))
                .map_err(|source| PodError::Namespace {
                    kind,
                    path: path.to_owned(),
                    source,
                })
        };
        let pods = PathBuf::from(format!("/proc/{pid}/ns/{file}"));
        if identity(path)? != identity(&pods)? {
            return Err(PodError::ForeignNamespace {
                kind,
                path: path.clone(),
                pid,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> Spec {
        let mut value = json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["/app.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
        });
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn roles_come_from_cri_annotations() {
        let annotated = |kind: &str| {
            spec(json!({"annotations": {
                "io.kubernetes.cri.container-type": kind,
                "io.kubernetes.cri.sandbox-id": "pod1",
            }}))
        };
        assert_eq!(Role::of(&annotated("sandbox")), Role::PodSandbox);
        assert_eq!(Role::of(&annotated("container")), Role::PodContainer);
        assert_eq!(Role::of(&spec(json!({}))), Role::Plain);
        let grouped = spec(json!({"annotations": {"io.kubernetes.cri.sandbox-id": "pod1"}}));
        assert_eq!(Role::of(&grouped), Role::Plain);
    }

    #[test]
    fn privileged_and_host_pid_are_refused() {
        assert!(check_privilege(&spec(json!({})), Role::PodContainer).is_ok());
        let privileged = spec(json!({"process": {
            "args": ["/app.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_CHOWN", "CAP_SYS_ADMIN"]},
        }}));
        assert!(matches!(
            check_privilege(&privileged, Role::Plain),
            Err(PodError::Privileged)
        ));
        let host_pid = spec(json!({"linux": {"namespaces": [{"type": "mount"}]}}));
        assert!(matches!(
            check_privilege(&host_pid, Role::PodSandbox),
            Err(PodError::HostPid)
        ));
        // Outside CRI, no PID namespace is `--pid=host`: guests see no processes either way.
        assert!(check_privilege(&host_pid, Role::Plain).is_ok());
    }

    #[test]
    fn namespace_paths_must_be_the_sandbox_processes() {
        let me = std::process::id();
        let joins = |path: &str| {
            spec(json!({"linux": {"namespaces": [
                {"type": "network", "path": path}, {"type": "ipc"}, {"type": "pid"},
            ]}}))
        };
        // This process's own network namespace, by another path.
        assert!(check_namespaces(&joins("/proc/self/ns/net"), me).is_ok());
        // A namespace file that surely is another namespace: this process's IPC one.
        let err = check_namespaces(&joins("/proc/self/ns/ipc"), me).unwrap_err();
        assert!(
            matches!(
                err,
                PodError::ForeignNamespace {
                    kind: "network",
                    ..
                }
            ),
            "{err}"
        );
        let err = check_namespaces(&joins("/no/such/netns"), me).unwrap_err();
        assert!(matches!(err, PodError::Namespace { .. }), "{err}");
    }
}
