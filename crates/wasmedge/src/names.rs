//! `sock_getaddrinfo`: name lookups with the container's `/etc/hosts` and `/etc/resolv.conf`,
//! not the host's (the process that runs the guest sees the host's `/etc`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Hosts, TokioResolver};
use wasmcell_oci::rootfs;

use super::address::{family_matches, loopback};
use super::memory::Errno;
use wasmcell_workload::{ModuleSource, NameFiles, WorkloadSpec};

/// Where a guest's name lookups look: the files its spec names, else those in its rootfs.
pub(crate) struct Names {
    hosts: Option<Source>,
    resolv_conf: Option<Source>,
    resolver: Option<TokioResolver>,
}

/// A configuration file: one the spec names (a bind mount's source, trusted like a preopen),
/// or one inside the rootfs, read with the rootfs as root so a symlink cannot leave it.
enum Source {
    Host(PathBuf),
    Rootfs { root: PathBuf, path: &'static str },
}

impl Source {
    fn of(file: &Option<PathBuf>, spec: &WorkloadSpec, path: &'static str) -> Option<Source> {
        match (file, &spec.module) {
            (Some(file), _) => Some(Source::Host(file.clone())),
            (None, ModuleSource::Rootfs { root, .. }) => Some(Source::Rootfs {
                root: root.clone(),
                path,
            }),
            (None, ModuleSource::File(_)) => None,
        }
    }

    /// The file's text; a missing or unreadable file is an empty one, as for the C library.
    fn read(&self) -> String {
        let read: Result<String, Box<dyn std::error::Error>> = match self {
            Source::Host(path) => std::fs::read_to_string(path).map_err(Into::into),
            // The image's: a FIFO or a device there must not hang or flood a lookup.
            Source::Rootfs { root, path } => Dir::open_ambient_dir(root, ambient_authority())
                .map_err(rootfs::ReadError::from)
                .and_then(|dir| rootfs::read_config(&dir, Path::new(path)))
                .map_err(Into::into),
        };
        read.unwrap_or_else(|error| {
            tracing::debug!(%error, "name lookup configuration not read");
            String::new()
        })
    }
}

impl Names {
    pub(crate) fn new(spec: &WorkloadSpec) -> Names {
        let NameFiles { hosts, resolv_conf } = &spec.names;
        Names {
            hosts: Source::of(hosts, spec, "etc/hosts"),
            resolv_conf: Source::of(resolv_conf, spec, "etc/resolv.conf"),
            resolver: None,
        }
    }

    /// The resolver, built on the first lookup (most guests never make one). A clone shares
    /// its cache and connections, and holds no borrow of the store across the lookup.
    pub(crate) fn resolver(&mut self) -> TokioResolver {
        self.resolver
            .get_or_insert_with(|| build(&self.hosts, &self.resolv_conf))
            .clone()
    }
}

/// The addresses of `node` of `family` (0 for any): an IP literal as is, a name from the
/// hosts file, else from the name servers of `resolv.conf`.
pub(crate) async fn lookup(
    resolver: &TokioResolver,
    node: &str,
    family: u8,
) -> Result<Vec<IpAddr>, Errno> {
    let found: Vec<IpAddr> = if let Ok(ip) = node.parse::<IpAddr>() {
        vec![ip]
    } else {
        match resolver.lookup_ip(node).await {
            Ok(lookup) => lookup.iter().collect(),
            Err(_) if node.eq_ignore_ascii_case("localhost") => loopback().to_vec(),
            Err(error) => {
                tracing::debug!(%error, node, "name lookup failed");
                let unknown = error.is_nx_domain()
                    || error.is_no_records_found()
                    || resolver.config().name_servers().is_empty();
                return Err(if unknown {
                    Errno::AI_NONAME
                } else {
                    Errno::AI_AGAIN
                });
            }
        }
    };
    let found: Vec<_> = found
        .into_iter()
        .filter(|ip| family_matches(family, *ip))
        .collect();
    if found.is_empty() {
        return Err(Errno::AI_NONAME);
    }
    Ok(found)
}

fn build(hosts_file: &Option<Source>, resolv_conf: &Option<Source>) -> TokioResolver {
    let resolv_conf = resolv_conf.as_ref().map(Source::read).unwrap_or_default();
    let (config, mut options) = hickory_resolver::system_conf::parse_resolv_conf(&resolv_conf)
        .unwrap_or_else(|error| {
            tracing::debug!(%error, "resolv.conf not usable: no name servers");
            (
                ResolverConfig::from_parts(None, vec![], vec![]),
                ResolverOpts::default(),
            )
        });
    // The host's hosts file must not be read: the container's is set below.
    options.use_hosts_file = ResolveHosts::Never;
    let mut resolver =
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(options)
            .build();
    let mut hosts = Hosts::default();
    if let Some(source) = hosts_file
        && let Err(error) = hosts.read_hosts_conf(source.read().as_bytes())
    {
        tracing::debug!(%error, "hosts file not usable");
    }
    resolver.set_hosts(Arc::new(hosts));
    resolver
}

/// A `sock_getaddrinfo` service: a port number, a well-known service name (Wasm images carry
/// no `/etc/services`; `wasmedge_wasi_socket` asks for "http" whatever port it then uses), or
/// empty for 0.
pub(crate) fn service_port(service: &str) -> Result<u16, Errno> {
    const WELL_KNOWN: [(&str, u16); 12] = [
        ("ftp", 21),
        ("ssh", 22),
        ("smtp", 25),
        ("domain", 53),
        ("http", 80),
        ("pop3", 110),
        ("imap", 143),
        ("https", 443),
        ("mysql", 3306),
        ("postgresql", 5432),
        ("redis", 6379),
        ("http-alt", 8080),
    ];
    if service.is_empty() {
        return Ok(0);
    }
    service
        .parse()
        .ok()
        .or_else(|| {
            WELL_KNOWN
                .iter()
                .find(|(name, _)| *name == service)
                .map(|&(_, port)| port)
        })
        .ok_or(Errno::AI_SERVICE)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::address::{INET4, INET6};
    use wasmcell_workload::{HttpServe, Limits, Network, Stdio};

    const HOSTS: &str = "10.1.2.3 db.internal db\nfd00::7 cache\n";

    /// A spec whose module is in `root` and whose name files are `names`.
    fn spec(root: &Path, names: NameFiles) -> WorkloadSpec {
        WorkloadSpec {
            module: ModuleSource::Rootfs {
                root: root.to_owned(),
                path: "/app.wasm".into(),
            },
            function: None,
            args: vec![],
            env: vec![],
            cwd: "/".into(),
            preopens: vec![],
            stdio: Stdio::default(),
            limits: Limits::default(),
            network: Network::Inherit,
            http: HttpServe::default(),
            names,
            app: None,
        }
    }

    /// A resolver for `spec`, as a guest's first lookup builds it.
    async fn resolve(spec: &WorkloadSpec, node: &str, family: u8) -> Result<Vec<IpAddr>, Errno> {
        lookup(&Names::new(spec).resolver(), node, family).await
    }

    /// The name files the spec names (bind mounts, as Kubernetes gives a pod's `/etc/hosts`),
    /// and a `resolv.conf` with no name servers, so nothing leaves the machine.
    fn mounted(dir: &Path) -> WorkloadSpec {
        std::fs::write(dir.join("hosts"), HOSTS).unwrap();
        std::fs::write(dir.join("resolv.conf"), "").unwrap();
        let names = NameFiles {
            hosts: Some(dir.join("hosts")),
            resolv_conf: Some(dir.join("resolv.conf")),
        };
        spec(&dir.join("rootfs"), names)
    }

    #[tokio::test]
    async fn names_resolve_from_the_hosts_file_the_spec_names() {
        let dir = tempfile::tempdir().unwrap();
        let spec = mounted(dir.path());
        let db = IpAddr::from(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(resolve(&spec, "db.internal", 0).await, Ok(vec![db]));
        // An alias on the same line.
        assert_eq!(resolve(&spec, "db", INET4).await, Ok(vec![db]));
        let cache: IpAddr = "fd00::7".parse().unwrap();
        assert_eq!(resolve(&spec, "cache", INET6).await, Ok(vec![cache]));
    }

    #[tokio::test]
    async fn a_name_with_no_address_of_the_family_asked_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let spec = mounted(dir.path());
        assert_eq!(resolve(&spec, "db", INET6).await, Err(Errno::AI_NONAME));
        assert_eq!(resolve(&spec, "cache", INET4).await, Err(Errno::AI_NONAME));
    }

    #[tokio::test]
    async fn a_name_in_no_file_and_no_name_server_is_unknown_but_localhost_is_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let spec = mounted(dir.path());
        assert_eq!(
            resolve(&spec, "nowhere.invalid", 0).await,
            Err(Errno::AI_NONAME)
        );
        let local = resolve(&spec, "localhost", 0).await.unwrap();
        assert!(local.iter().all(IpAddr::is_loopback), "{local:?}");
    }

    #[tokio::test]
    async fn an_address_is_its_own_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let spec = mounted(dir.path());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(resolve(&spec, "192.0.2.9", 0).await, Ok(vec![ip]));
        assert_eq!(
            resolve(&spec, "192.0.2.9", INET6).await,
            Err(Errno::AI_NONAME)
        );
    }

    /// Without a file named in the spec, the image's own `/etc/hosts` is read, inside its rootfs.
    #[tokio::test]
    async fn without_mounted_files_the_images_etc_hosts_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hosts"), HOSTS).unwrap();
        std::fs::write(root.join("etc/resolv.conf"), "").unwrap();
        let spec = spec(&root, NameFiles::default());
        let db = IpAddr::from(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(resolve(&spec, "db", 0).await, Ok(vec![db]));
    }

    #[test]
    fn services_are_ports_or_well_known_names() {
        assert_eq!(service_port(""), Ok(0));
        assert_eq!(service_port("8443"), Ok(8443));
        assert_eq!(service_port("http"), Ok(80));
        assert_eq!(service_port("redis"), Ok(6379));
        assert_eq!(service_port("gopher"), Err(Errno::AI_SERVICE));
        assert_eq!(service_port("70000"), Err(Errno::AI_SERVICE));
    }
}
