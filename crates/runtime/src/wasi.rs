//! The WASI context every instance of a workload starts from: its args, env, working
//! directory, preopened directories and (when granted) the network.

use wasmcell_workload::{Access, Network, WorkloadSpec};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::error::Error;

/// The WASI context every instance of `spec` starts from: its args, env, working directory,
/// preopens and (when granted) the network. Standard streams are attached by the caller.
pub fn wasi_builder(spec: &WorkloadSpec) -> Result<WasiCtxBuilder, Error> {
    let mut wasi = wasi_base(spec);
    wasi.args(&spec.args).envs(&spec.env);
    add_preopens(&mut wasi, spec)?;
    Ok(wasi)
}

/// What every instance of `spec` starts from whatever its own args, env and files: the
/// working directory, and the network when granted.
///
/// The working directory (`wasi:cli/environment.initial-cwd`) is the spec's only where the
/// guest can see it, inside one of its preopened directories (an image's rootfs is one, at
/// `/`); a guest with no such directory has none, as under `wasmtime run` (WASI's own test
/// suite checks that a command run without directories sees no working directory).
pub fn wasi_base(spec: &WorkloadSpec) -> WasiCtxBuilder {
    let mut wasi = WasiCtxBuilder::new();
    if spec
        .preopens
        .iter()
        .any(|preopen| contains(&preopen.guest, &spec.cwd))
    {
        wasi.initial_cwd(&spec.cwd);
    }
    match spec.network {
        Network::None => {}
        Network::Inherit => {
            wasi.inherit_network()
                .allow_tcp(true)
                .allow_udp(true)
                .allow_ip_name_lookup(true);
        }
    }
    wasi
}

/// Whether the guest path `path` is the directory `dir` or inside it (`/data` holds
/// `/data/x`, not `/database`).
fn contains(dir: &str, path: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    match path.strip_prefix(dir) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Opens the spec's preopened directories into `wasi`.
pub fn add_preopens(wasi: &mut WasiCtxBuilder, spec: &WorkloadSpec) -> Result<(), Error> {
    for preopen in &spec.preopens {
        let perms = match preopen.access {
            Access::ReadOnly => FsPerms::ReadOnly,
            Access::ReadWrite => FsPerms::ReadWrite,
        };
        wasi.preopened_dir(&preopen.host, &preopen.guest, perms)
            .map_err(|source| Error::Preopen {
                host: preopen.host.clone(),
                guest: preopen.guest.clone(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::contains;

    #[test]
    fn a_working_directory_counts_only_inside_a_preopen() {
        assert!(contains("/", "/"));
        assert!(contains("/", "/app"));
        assert!(contains("/data", "/data"));
        assert!(contains("/data/", "/data/x"));
        assert!(!contains("/data", "/database"));
        assert!(!contains("/data", "/"));
    }
}
