//! The sandbox process: where guest code runs, with no more privilege than a runc container.
//!
//! A shim starts one sandbox per group (a pod, or a lone container) by re-executing its own
//! binary ([`SANDBOX_ARG0`]), not by forking: the shim is a multi-threaded tokio process, and
//! a fork of one is only safe up to `exec`. Code pages stay shared all the same, since both
//! processes map the same binary and the same compiled artifacts from the cache.
//!
//! The sandbox isolates itself before it reads anything but its setup ([`sys::isolate`]): the
//! spec's network/IPC/UTS namespaces (joined by path, or new), a private mount namespace whose
//! root is a fresh read-only tmpfs (`pivot_root`, as runc does) holding only its own
//! `/proc/self/fd`, the compile cache, the resolver's files and the node's CA bundle, the spec's uid/gid/groups, no
//! capabilities in any set, `no_new_privs`, and a seccomp allow-list. The shim has already
//! placed it in the container's cgroup. It can name no host path: the shim opens everything a
//! container is granted (rootfs, bind sources, stdio) and passes the descriptors with each
//! request ([`protocol`]), the directories as detached mounts (`nodev`, `nosuid`, read-only
//! unless written) out of which `..` cannot climb, and the sandbox reaches them through
//! `/proc/self/fd`. A non-root sandbox therefore needs no access to containerd's directories,
//! a pod's later rootfs mounts need not propagate into its mount namespace, and host-side code
//! running for a guest (SQLite, the stores) reaches exactly what the guest may.
#![deny(missing_docs)]

mod channel;
mod client;
pub mod protocol;
mod server;
mod sys;

pub use client::{Exited, Sandbox, SandboxError};
pub use server::main;

/// The `argv[0]` a sandbox is started with; the `wasmcell` binary dispatches on it.
pub const SANDBOX_ARG0: &str = "wasmcell-sandbox";
