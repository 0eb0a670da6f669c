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
pub fn wasi_base(spec: &WorkloadSpec) -> WasiCtxBuilder {
    let mut wasi = WasiCtxBuilder::new();
    wasi.initial_cwd(&spec.cwd);
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
