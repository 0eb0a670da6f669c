//! [`WorkloadSpec`]: what to run, as plain data. The shim builds it from an OCI runtime spec,
//! the CLI from an image and flags; nothing below it knows which.
#![deny(missing_docs)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the engine needs to run a guest, and nothing it may add on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Where the Wasm binary comes from.
    pub module: ModuleSource,
    /// The export to call for a core module (`path#function`); `None` runs `_start`, or
    /// `wasi:cli/run` for a component.
    pub function: Option<String>,
    /// The guest's argv, program name first.
    pub args: Vec<String>,
    /// The guest's whole environment.
    pub env: Vec<(String, String)>,
    /// The guest's initial working directory.
    pub cwd: String,
    /// The directories the guest may open, and nothing else.
    pub preopens: Vec<Preopen>,
    /// Where the guest's standard streams go.
    pub stdio: Stdio,
    /// What the guest may consume.
    pub limits: Limits,
    /// Whether the guest may use sockets (WASI 0.2 `wasi:sockets`, outgoing `wasi:http`).
    pub network: Network,
    /// How a `wasi:http/proxy` component is served; ignored for commands.
    pub http: HttpServe,
    /// The files name lookups read instead of the host's.
    pub names: NameFiles,
    /// The framework app this is, if it is one.
    pub app: Option<App>,
}

/// An application framework's app, run with the framework's interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum App {
    /// A Spin app, run instead of `module`: the spec's root is then the app's directory (its
    /// component sources, and its store files at relative paths, are read there).
    Spin(Box<wasmcell_spin::App>),
    /// A SpiderLightning app: `module` (its `app.wasm`) with the capabilities its slightfile
    /// grants.
    Slight(Box<wasmcell_slight::SlightApp>),
}

/// The container's `/etc/hosts` and `/etc/resolv.conf` (the sources of the bind mounts a
/// runtime such as Docker adds), read by the guest's name lookups (WasmEdge's
/// `sock_getaddrinfo`) in place of the host's. A file not given here is read from the rootfs,
/// if there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameFiles {
    /// The hosts file.
    pub hosts: Option<PathBuf>,
    /// The resolver configuration.
    pub resolv_conf: Option<PathBuf>,
}

impl HttpServe {
    /// The settings a guest's environment asks for, over the defaults: `WASMCELL_HTTP_ADDR`
    /// (or runwasi's `WASMTIME_HTTP_PROXY_SOCKET_ADDR`) `IP:PORT`, `WASMCELL_HTTP_MAX_BODY`
    /// bytes, `WASMCELL_HTTP_TIMEOUT` and `WASMCELL_HTTP_HEADER_TIMEOUT` seconds,
    /// `WASMCELL_HTTP_MAX_CONNECTIONS`, and `WASMCELL_HTTP_INSTANCE_CONCURRENCY` requests. The
    /// last value of a variable wins, as in a shell.
    pub fn from_env(env: &[(String, String)]) -> Result<HttpServe, HttpSettingError> {
        const ADDR: &str = "an IP:PORT address such as 0.0.0.0:8080";
        let mut serve = HttpServe::default();
        for (key, value) in env {
            match key.as_str() {
                "WASMCELL_HTTP_ADDR" => serve.addr = setting("WASMCELL_HTTP_ADDR", value, ADDR)?,
                "WASMTIME_HTTP_PROXY_SOCKET_ADDR" => {
                    serve.addr = setting("WASMTIME_HTTP_PROXY_SOCKET_ADDR", value, ADDR)?;
                }
                "WASMCELL_HTTP_MAX_BODY" => {
                    let expected = "a size in bytes such as 1048576";
                    serve.max_body = setting("WASMCELL_HTTP_MAX_BODY", value, expected)?;
                }
                "WASMCELL_HTTP_TIMEOUT" => {
                    let expected = "a whole number of seconds such as 30";
                    let seconds: u64 = setting("WASMCELL_HTTP_TIMEOUT", value, expected)?;
                    serve.timeout = std::time::Duration::from_secs(seconds.max(1));
                }
                "WASMCELL_HTTP_HEADER_TIMEOUT" => {
                    let expected = "a whole number of seconds such as 10";
                    let seconds: u64 = setting("WASMCELL_HTTP_HEADER_TIMEOUT", value, expected)?;
                    serve.header_timeout = std::time::Duration::from_secs(seconds.max(1));
                }
                "WASMCELL_HTTP_MAX_CONNECTIONS" => {
                    let expected = "a number of connections such as 1000";
                    let cap: usize = setting("WASMCELL_HTTP_MAX_CONNECTIONS", value, expected)?;
                    serve.max_connections = cap.max(1);
                }
                "WASMCELL_HTTP_INSTANCE_CONCURRENCY" => {
                    let expected = "a number of requests from 1 to 64, such as 16";
                    let requests: usize =
                        setting("WASMCELL_HTTP_INSTANCE_CONCURRENCY", value, expected)?;
                    if !(1..=64).contains(&requests) {
                        return Err(HttpSettingError {
                            variable: "WASMCELL_HTTP_INSTANCE_CONCURRENCY",
                            value: value.clone(),
                            expected,
                        });
                    }
                    serve.instance_concurrency = requests;
                }
                _ => {}
            }
        }
        Ok(serve)
    }
}

/// An HTTP setting in a guest's environment that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value} is not valid: {expected}")]
pub struct HttpSettingError {
    /// The environment variable.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// What it should look like.
    pub expected: &'static str,
}

fn setting<T: std::str::FromStr>(
    variable: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<T, HttpSettingError> {
    value.parse().map_err(|_| HttpSettingError {
        variable,
        value: value.to_owned(),
        expected,
    })
}

/// A guest's access to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Network {
    /// No sockets at all.
    #[default]
    None,
    /// The network of the process it runs in: under the shim, the container's network
    /// namespace, which is what the OCI spec grants.
    Inherit,
}

/// How a `wasi:http/proxy` component is served: HTTP/1.1 on `addr`, a fresh instance per
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpServe {
    /// Where to listen.
    pub addr: std::net::SocketAddr,
    /// Larger request bodies are refused with 413 Content Too Large.
    pub max_body: u64,
    /// A request whose handler runs longer is cut off with 504 Gateway Timeout.
    pub timeout: std::time::Duration,
    /// A connection that has not sent a whole request header this long after it opened, or
    /// after its last response, is closed: it bounds both a stalled header and an idle
    /// keep-alive connection (hyper times both with one timer).
    pub header_timeout: std::time::Duration,
    /// The most connections a server holds at once, before the bound the process's descriptor
    /// limit sets (see `crate::connections`); past it, the connection idle the longest is closed.
    pub max_connections: usize,
    /// How many requests one instance of a WASI 0.3 handler serves at once: 1, a fresh
    /// instance per request as for 0.2 (requests share nothing); more, concurrent requests
    /// share an instance (its memory, its limits, and its fate: a trap or a request past its
    /// deadline ends the instance and the requests in it).
    #[serde(default = "one")]
    pub instance_concurrency: usize,
}

fn one() -> usize {
    1
}

impl Default for HttpServe {
    /// Port 8080 on every interface of the container's network namespace, as runwasi's wasmtime
    /// shim does; 16 MiB bodies; 60 s per request. 10 s for a request's header, or between
    /// keep-alive requests: a real client sends a header in one round trip, so this only ever
    /// cuts off clients that stalled, and frees their connections a third as late as hyper's
    /// default 30 s would. At most 1000 connections: as many as the server has instance slots
    /// for concurrent requests (`HttpEngine::new`).
    fn default() -> HttpServe {
        HttpServe {
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body: 16 << 20,
            timeout: std::time::Duration::from_secs(60),
            header_timeout: std::time::Duration::from_secs(10),
            max_connections: 1000,
            instance_concurrency: 1,
        }
    }
}

impl WorkloadSpec {
    /// The host paths the spec reaches directly: the module's source, every preopened
    /// directory, the app's mounts and the name lookup files (stdio is separate: it is opened,
    /// not reached). A sandbox that is handed these as descriptors rewrites them in place: it
    /// can name no host path of its own.
    pub fn host_paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let module = match &mut self.module {
            ModuleSource::File(path) => path,
            ModuleSource::Rootfs { root, .. } => root,
        };
        let mounts = self.app.iter_mut().flat_map(|app| match app {
            App::Spin(app) => app.host_paths_mut().collect(),
            App::Slight(_) => Vec::new(),
        });
        let NameFiles { hosts, resolv_conf } = &mut self.names;
        std::iter::once(module)
            .chain(self.preopens.iter_mut().map(|p| &mut p.host))
            .chain(mounts)
            .chain(hosts.iter_mut().chain(resolv_conf.iter_mut()))
            .collect()
    }
}

/// Resource limits of one guest instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// The most bytes one instance's store may hold in its linear memories and tables together
    /// (a component, or a module of a grouped container, may have several); growing past it
    /// ends the guest as out of memory (status 137), as the kernel's OOM killer would end a
    /// process.
    pub memory: Option<u64>,
    /// The CPU time the guest may use per period, enforced at epoch ticks.
    pub cpu: Option<CpuQuota>,
}

/// CPU time per period, as in the OCI spec's `cpu.quota` and `cpu.period` (microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuQuota {
    /// Microseconds of CPU time per period.
    pub quota_us: u64,
    /// The period, in microseconds.
    pub period_us: u64,
}

/// Where the Wasm binary is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModuleSource {
    /// A file the user named on the host (`wasmcell run app.wasm`).
    File(PathBuf),
    /// A path inside a container rootfs, resolved like the guest would resolve it: symlinks and
    /// `..` cannot leave `root`.
    Rootfs {
        /// The rootfs directory on the host.
        root: PathBuf,
        /// The path inside it, absolute or relative to the spec's `cwd`.
        path: String,
    },
}

/// A host directory the guest sees at `guest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it, e.g. `/` for the rootfs.
    pub guest: String,
    /// Whether the guest may write.
    pub access: Access,
}

/// What a guest may do in a preopened directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// Read only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// The guest's standard streams.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stdio {
    /// Standard input.
    pub stdin: Input,
    /// Standard output.
    pub stdout: Output,
    /// Standard error.
    pub stderr: Output,
}

/// Where standard input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Input {
    /// Nothing: reads see end of file.
    #[default]
    Null,
    /// This process's own standard input (the CLI).
    Inherit,
    /// A FIFO containerd writes to.
    Fifo(PathBuf),
    /// A descriptor this process already has open (a sandbox receives stdio this way); each
    /// instance reads from a duplicate.
    Descriptor(i32),
}

/// Where an output stream goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Output {
    /// Discarded.
    #[default]
    Null,
    /// This process's own stream (the CLI).
    Inherit,
    /// A FIFO containerd reads from. Writes wait while nobody reads, as they do under runc.
    Fifo(PathBuf),
    /// A log file, appended to (containerd's `file://` log URIs).
    File(PathBuf),
    /// A descriptor this process already has open (a sandbox receives stdio this way); each
    /// instance writes to a duplicate.
    Descriptor(i32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn http_settings_come_from_the_environment_last_one_winning() {
        let serve = HttpServe::from_env(&env(&[
            ("WASMTIME_HTTP_PROXY_SOCKET_ADDR", "127.0.0.1:3000"),
            ("WASMCELL_HTTP_ADDR", "[::]:9000"),
            ("WASMCELL_HTTP_MAX_BODY", "1024"),
            ("WASMCELL_HTTP_TIMEOUT", "0"),
            ("WASMCELL_HTTP_HEADER_TIMEOUT", "3"),
            ("WASMCELL_HTTP_MAX_CONNECTIONS", "0"),
            ("OTHER", "x"),
        ]))
        .unwrap();
        assert_eq!(serve.addr.to_string(), "[::]:9000");
        assert_eq!(serve.max_body, 1024);
        assert_eq!(
            serve.timeout,
            std::time::Duration::from_secs(1),
            "at least a second"
        );
        assert_eq!(serve.header_timeout, std::time::Duration::from_secs(3));
        assert_eq!(serve.max_connections, 1, "at least one connection");
        assert_eq!(HttpServe::from_env(&[]).unwrap(), HttpServe::default());
    }

    #[test]
    fn a_bad_http_setting_is_named_with_what_was_expected() {
        let error = HttpServe::from_env(&env(&[("WASMCELL_HTTP_MAX_BODY", "1MB")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "WASMCELL_HTTP_MAX_BODY=1MB is not valid: a size in bytes such as 1048576"
        );
    }
}
