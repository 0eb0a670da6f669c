//! `wasmcell install`: put the binary and its shim links where containerd finds them, and on a
//! Kubernetes node, teach containerd's CRI the runtimes (see [`crate::node`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use wasmcell_shim::Runtime;

use crate::manual;
use crate::node::{self, Edit, Entry};

/// Install wasmcell and the containerd shim links (containerd-shim-wasmtime-v1, ...), and with
/// --containerd, the Kubernetes runtime handlers.
///
/// containerd maps a runtime name io.containerd.NAME.v1 to the binary containerd-shim-NAME-v1 on
/// its PATH; each of those is a link to the one wasmcell binary. A file of that name that is not
/// such a link (another project's shim) is left alone, and said so.
///
/// With --containerd, containerd's config also gets a CRI runtime per handler (wasmtime,
/// wasmedge, spin, slight), which RuntimeClasses name; nothing else in the file changes, and
/// running it again changes nothing. containerd reads its config when it starts: restart it
/// (--restart does, where systemd runs it). Then apply the RuntimeClasses
/// (--print-runtime-classes) and label the node.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    wasmcell install                                   # /usr/local/bin/wasmcell and the shim links\n  \
    wasmcell install --containerd --dry-run            # what a node install would change\n  \
    sudo wasmcell install --containerd --restart --runtime-class | kubectl apply -f -\n  \
    wasmcell install --containerd --uninstall          # undo it")]
pub struct InstallArgs {
    /// Install into PREFIX/bin (which must be on containerd's PATH).
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Also add the runtime handlers to containerd's CRI config, for Kubernetes.
    #[arg(long)]
    containerd: bool,
    /// containerd's config file (created if missing).
    #[arg(
        long,
        default_value = "/etc/containerd/config.toml",
        requires = "containerd"
    )]
    config: PathBuf,
    /// Print what would change (the config as a diff, the files), and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove what install adds: the config's runtime entries, the links and the binary.
    #[arg(long)]
    uninstall: bool,
    /// Restart containerd afterwards (`systemctl restart containerd`; systemd only).
    #[arg(long, requires = "containerd")]
    restart: bool,
    /// Print the RuntimeClass manifests when done, for `kubectl apply -f -`.
    #[arg(long)]
    runtime_class: bool,
    /// Only print the RuntimeClass manifests (one per handler, for nodes labelled
    /// wasmcell/runtimes=installed); install nothing.
    #[arg(long, exclusive = true)]
    print_runtime_classes: bool,
}

/// `command`: the CLI's definition, whose completion scripts and man pages are installed too.
pub fn install(args: InstallArgs, command: clap::Command) -> Result<()> {
    if args.print_runtime_classes {
        print!("{}", node::runtime_classes());
        return Ok(());
    }
    let bin = args.prefix.join("bin");
    let plan = if args.uninstall {
        Plan::Remove
    } else {
        Plan::Install
    };
    // Messages go to stderr when the manifests go to stdout, so both can be piped apart.
    let say = |line: String| {
        if args.runtime_class {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if args.containerd {
        edit_config(&args, plan, &say)?;
    }
    match plan {
        Plan::Install => install_files(&bin, args.dry_run, &say)?,
        Plan::Remove => remove_files(&bin, args.dry_run, &say)?,
    }
    manual_files(&args.prefix, &command, plan, args.dry_run, &say)?;
    if args.containerd && !args.dry_run {
        restart(args.restart, &say)?;
    }
    if args.runtime_class && plan == Plan::Install {
        print!("{}", node::runtime_classes());
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    Install,
    Remove,
}

/// Adds (or removes) the CRI runtime entries in containerd's config; with `--dry-run`, prints
/// the diff instead.
fn edit_config(args: &InstallArgs, plan: Plan, say: &dyn Fn(String)) -> Result<()> {
    let path = &args.config;
    let original = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let Edit { text, entries } = match plan {
        Plan::Install => node::add_runtimes(&original),
        Plan::Remove => node::remove_runtimes(&original),
    }
    .with_context(|| format!("in {}", path.display()))?;
    for (handler, entry) in &entries {
        let runtime = Runtime::KUBERNETES
            .iter()
            .find(|(h, _)| h == handler)
            .map(|(_, r)| r.id())
            .unwrap_or_default();
        let line = match entry {
            Entry::Added => format!("CRI runtime {handler}: added ({runtime})"),
            Entry::Present => format!("CRI runtime {handler}: already there ({runtime})"),
            Entry::Removed => format!("CRI runtime {handler}: removed"),
            Entry::Absent => format!("CRI runtime {handler}: not there"),
            Entry::Foreign { runtime_type } => format!(
                "CRI runtime {handler}: left as it is: it runs {runtime_type}, not wasmcell's {runtime}"
            ),
        };
        say(line);
    }
    if text == original {
        say(format!("{}: unchanged", path.display()));
        return Ok(());
    }
    if args.dry_run {
        let name = path.display().to_string();
        let diff = similar::TextDiff::from_lines(&original, &text);
        print!("{}", diff.unified_diff().header(&name, &name));
        return Ok(());
    }
    write_atomically(path, &text)?;
    say(format!("{}: updated", path.display()));
    Ok(())
}

/// Replaces `path` with `text` whole (a containerd starting meanwhile reads the old file or
/// the new one), keeping the old file's permissions.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    if let Ok(metadata) = std::fs::metadata(path) {
        std::fs::set_permissions(tmp.path(), metadata.permissions())?;
    }
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Writes (or removes) the completion scripts and man pages under `prefix`/share.
fn manual_files(
    prefix: &Path,
    command: &clap::Command,
    plan: Plan,
    dry_run: bool,
    say: &dyn Fn(String),
) -> Result<()> {
    let files = manual::files(prefix, command)?;
    let share = prefix.join("share");
    let what = format!(
        "the completions for bash, zsh and fish and {} man pages under {}",
        files.len() - 3,
        share.display()
    );
    match (plan, dry_run) {
        (Plan::Install, true) => say(format!("would install {what}")),
        (Plan::Remove, true) => say(format!("would remove {what}")),
        (Plan::Install, false) => {
            for (path, text) in &files {
                let dir = path.parent().expect("under share");
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                std::fs::write(path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            say(format!("installed {what}"));
        }
        (Plan::Remove, false) => {
            for (path, _) in &files {
                match std::fs::remove_file(path) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error)
                            .with_context(|| format!("cannot remove {}", path.display()));
                    }
                    _ => {}
                }
            }
            say(format!("removed {what}"));
        }
    }
    Ok(())
}

/// Whether `link` is one of ours: a symbolic link to `wasmcell`.
fn is_our_link(link: &Path) -> bool {
    std::fs::read_link(link).is_ok_and(|target| target == Path::new("wasmcell"))
}

fn install_files(bin: &Path, dry_run: bool, say: &dyn Fn(String)) -> Result<()> {
    let target = bin.join("wasmcell");
    if dry_run {
        say(format!("would install {}", target.display()));
    } else {
        std::fs::create_dir_all(bin).with_context(|| format!("cannot create {}", bin.display()))?;
        let exe = std::env::current_exe().context("cannot find the running wasmcell binary")?;
        if std::fs::canonicalize(&target).ok() != Some(std::fs::canonicalize(&exe)?) {
            // Copied then renamed, so a shim starting meanwhile sees the old or the new binary
            // whole.
            let tmp = bin.join(".wasmcell.tmp");
            std::fs::copy(&exe, &tmp)
                .with_context(|| format!("cannot copy {} to {}", exe.display(), tmp.display()))?;
            std::fs::rename(&tmp, &target)
                .with_context(|| format!("cannot install {}", target.display()))?;
        }
        say(format!("installed {}", target.display()));
    }
    for runtime in Runtime::ALL {
        let link = bin.join(runtime.binary_name());
        if link.symlink_metadata().is_ok() && !is_our_link(&link) {
            say(format!(
                "left {} as it is: it is not a link to wasmcell (another shim?), so {runtime} stays that one's",
                link.display()
            ));
            continue;
        }
        if dry_run {
            say(format!("would link {} -> wasmcell", link.display()));
            continue;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("wasmcell", &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
        say(format!(
            "linked {} -> wasmcell for {runtime}",
            link.display()
        ));
    }
    Ok(())
}

fn remove_files(bin: &Path, dry_run: bool, say: &dyn Fn(String)) -> Result<()> {
    let links = Runtime::ALL.map(|runtime| bin.join(runtime.binary_name()));
    for path in links.iter().filter(|link| is_our_link(link)) {
        remove(path, dry_run, say)?;
    }
    let binary = bin.join("wasmcell");
    if binary.exists() {
        remove(&binary, dry_run, say)?;
    }
    Ok(())
}

fn remove(path: &Path, dry_run: bool, say: &dyn Fn(String)) -> Result<()> {
    if dry_run {
        say(format!("would remove {}", path.display()));
        return Ok(());
    }
    std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    say(format!("removed {}", path.display()));
    Ok(())
}

/// containerd reads its config only when it starts: restart it where that can be done
/// (systemd), or say how.
fn restart(asked: bool, say: &dyn Fn(String)) -> Result<()> {
    let systemd = Path::new("/run/systemd/system").exists();
    match (asked, systemd) {
        (true, true) => {
            let status = std::process::Command::new("systemctl")
                .args(["restart", "containerd"])
                .status()
                .context("cannot run systemctl")?;
            if !status.success() {
                bail!(
                    "`systemctl restart containerd` failed ({status}): see `journalctl -u containerd`"
                );
            }
            say("restarted containerd".to_owned());
        }
        (true, false) => bail!(
            "cannot restart containerd: this machine does not run systemd; restart it however it is started here"
        ),
        (false, true) => {
            say("containerd reads its config when it starts: `systemctl restart containerd` (or --restart)".to_owned());
        }
        (false, false) => {
            say(
                "containerd reads its config when it starts: restart it however it is started here"
                    .to_owned(),
            );
        }
    }
    Ok(())
}
