//! Every syscall the shim makes itself: mounting and unmounting a container's rootfs.

use std::path::Path;

use containerd_shim::protos::api::Mount;
use nix::mount::MntFlags;

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
pub fn unmount_rootfs(target: &Path) -> Result<(), Error> {
    loop {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue, // overlays may be stacked; unmount until nothing is left
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(Error::Rootfs {
                    action: "unmount",
                    path: target.display().to_string(),
                    source: e.into(),
                });
            }
        }
    }
}
