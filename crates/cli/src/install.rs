//! `wasmcell install`: put the binary and its shim links where containerd finds them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use wasmcell_shim::Runtime;

/// Install wasmcell and the containerd shim links (containerd-shim-wasmtime-v1, ...).
///
/// containerd maps a runtime name io.containerd.NAME.v1 to the binary containerd-shim-NAME-v1 on
/// its PATH; each of those is a link to the one wasmcell binary.
#[derive(Args)]
pub struct InstallArgs {
    /// Install into PREFIX/bin.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
}

pub fn install(args: InstallArgs) -> Result<()> {
    let bin = args.prefix.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    let exe = std::env::current_exe().context("cannot find the running wasmcell binary")?;
    let target = bin.join("wasmcell");
    if std::fs::canonicalize(&target).ok() != Some(std::fs::canonicalize(&exe)?) {
        // Copied then renamed, so a shim starting meanwhile sees the old or the new binary whole.
        let tmp = bin.join(".wasmcell.tmp");
        std::fs::copy(&exe, &tmp)
            .with_context(|| format!("cannot copy {} to {}", exe.display(), tmp.display()))?;
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("cannot install {}", target.display()))?;
    }
    println!("installed {}", target.display());
    for runtime in Runtime::ALL {
        let link = bin.join(runtime.binary_name());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("wasmcell", &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
        let note = if runtime.is_supported() {
            ""
        } else {
            " (not supported yet: refuses containers)"
        };
        println!("linked {} -> wasmcell for {runtime}{note}", link.display());
    }
    Ok(())
}
