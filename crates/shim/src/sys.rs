//! Every syscall the shim makes itself: mounting and unmounting a container's rootfs.

use std::path::Path;

use containerd_shim::protos::api::Mount;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::mount::MntFlags;
use nix::sys::stat::Mode;

use crate::error::Error;

/// Mounts containerd's rootfs mounts (usually one overlay) at `target`, creating it.
pub async fn mount_rootfs(mounts: &[Mount], target: &Path) -> Result<(), Error> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Rootfs {
        action: "mount",
        path: target.display().to_string(),
        source,
    };
    tokio::fs::create_dir_all(target)
        .await
        .map_err(|e| err(e.into()))?;
    for mount in mounts {
        containerd_shim::util::mount_rootfs(mount, target)
            .await
            .map_err(|e| err(e.into()))?;
    }
    Ok(())
}

/// Unmounts whatever is mounted at `target` (lazily, so an open file cannot keep it busy).
/// Not mounted is not an error: delete may run twice, or after a failed create.
///
/// The filesystems come back still referenced: releasing the last reference to an overlay
/// syncs its upper filesystem, the host's, which took 7-22 ms here; see [`Detached`].
pub fn unmount_rootfs(target: &Path) -> Result<Detached, Error> {
    let err = |source: nix::errno::Errno| Error::Rootfs {
        action: "unmount",
        path: target.display().to_string(),
        source: source.into(),
    };
    let mut held = Vec::new();
    // Overlays may be stacked: hold and detach the top one until nothing is left.
    loop {
        let fd = match nix::fcntl::open(target, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()) {
            Err(nix::errno::Errno::ENOENT) => break,
            opened => opened.map_err(err)?,
        };
        // SAFETY: `open` returned a new descriptor that nothing else owns.
        held.push(unsafe { OwnedFd::from_raw_fd(fd) });
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Err(nix::errno::Errno::EINVAL) => break,
            unmounted => unmounted.map_err(err)?,
        }
    }
    Ok(Detached { _held: held })
}

/// Filesystems unmounted from the container's rootfs, kept alive by descriptors to them.
/// Dropping it releases them where it is dropped; the task service releases them on a thread
/// of their own instead, so that `delete` answers without waiting for the host's disk.
#[must_use = "dropping it releases the filesystems here, which may wait for a sync"]
pub struct Detached {
    /// Held only to be closed: what keeps the detached filesystems alive.
    _held: Vec<OwnedFd>,
}

impl Detached {
    /// Releases the filesystems on a new thread, which the caller does not wait for.
    pub fn release_in_background(self) {
        let spawned = std::thread::Builder::new()
            .name("wasmcell-unmount".into())
            .spawn(move || drop(self));
        if let Err(error) = spawned {
            tracing::warn!("releasing the unmounted rootfs here: no thread for it: {error}");
        }
    }
}
