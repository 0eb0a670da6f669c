//! The container's cgroup, on cgroupfs: created and limited by the shim, which places the
//! sandbox process in it before the sandbox runs anything.
//!
//! cgroup v1 (this project's CI hosts: a hierarchy per controller under `/sys/fs/cgroup`) and
//! v2 (one unified hierarchy at `/sys/fs/cgroup`) are both handled. `cgroupsPath` is either a
//! cgroupfs path (`/default/c1`, `/kubepods/burstable/pod<uid>/<id>`) or, in the systemd
//! driver's form `slice:prefix:name` (what containerd's CRI passes with `SystemdCgroup =
//! true`), placed where runc's systemd driver places its scope: `<expanded slice>/<prefix>-<name>.scope`.
//! Both are created with cgroupfs writes, never through systemd's D-Bus API: see
//! docs/design.md ("cgroups") for why that holds with systemd as PID 1.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use crate::metrics::{self, Metrics, MetricsError, V1Dirs};

const ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers a container gets a directory in.
const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "freezer", "devices"];
/// The v2 controllers enabled down to a container's cgroup, where the kernel offers them: the
/// limits' (`cpu`, `memory`, `pids`), and what OOM detection (`memory.events`) and metrics
/// (`cpu.stat` throttling, `io.stat`) read. runc enables every controller the root offers; these
/// are the ones anything here uses.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// The devices a v1 container may use, after denying all: runc's defaults (its
/// `AllowedDevices`, without the tun device it no longer grants). Guests see no `/dev`, and
/// grants are `nodev`; this is the wall behind those, should a device node be reached anyway.
const V1_ALLOWED_DEVICES: [&str; 10] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// Why a container's cgroup cannot be placed, created or limited.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `cgroupsPath` names no place in the hierarchy a container may take.
    #[error("cgroupsPath {path:?} {reason}")]
    Path {
        /// The spec's `cgroupsPath`.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A controller a limit needs could not be enabled for the container's cgroup (cgroup v2:
    /// an ancestor's `cgroup.subtree_control` refused it, typically because that cgroup holds
    /// processes itself or was not delegated to us).
    #[error("the {controller} controller, which the container's {limit} limit needs, cannot be enabled in {}", subtree_control.display())]
    Controller {
        /// `memory`, `cpu` or `pids`.
        controller: &'static str,
        /// Which limit of the spec needs it.
        limit: &'static str,
        /// The `cgroup.subtree_control` that refused it.
        subtree_control: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A cgroupfs file or directory could not be made, read or written (the message names it).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A mounted cgroup filesystem: v2's one unified hierarchy, or v1's hierarchy per controller
/// under a common root. A parameter rather than a constant so that tests can lay a fake tree
/// out in a temporary directory.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    root: PathBuf,
    unified: bool,
}

impl Hierarchy {
    /// The host's, at `/sys/fs/cgroup`.
    pub fn host() -> Hierarchy {
        Hierarchy::at(Path::new(ROOT))
    }

    /// The one mounted at `root`: unified (v2) when `root` holds `cgroup.controllers`, which
    /// only a v2 root does.
    pub fn at(root: &Path) -> Hierarchy {
        Hierarchy {
            root: root.to_owned(),
            unified: root.join("cgroup.controllers").exists(),
        }
    }
}

/// Where a container's cgroup goes, relative to a hierarchy's root, from the spec's
/// `cgroupsPath`. A path that does not start with `/` and holds a `:` is the systemd driver's
/// `slice:prefix:name` (runc takes it so only with `--systemd-cgroup`; no cgroupfs path a
/// kubelet, containerd or Docker passes holds a `:`); it lands where runc's systemd driver
/// puts the scope: the slice expanded as systemd nests slices (`a-b.slice` is
/// `a.slice/a-b.slice`, an empty slice is `system.slice`, `-.slice` the root), then
/// `<prefix>-<name>.scope` (a `name` ending in `.slice` is taken as is). Anything else is a
/// cgroupfs path, which may not climb out of the hierarchy with `..`.
pub fn placement(cgroups_path: &str) -> Result<PathBuf, CgroupError> {
    let invalid = |reason| CgroupError::Path {
        path: cgroups_path.to_owned(),
        reason,
    };
    if cgroups_path.starts_with('/') || !cgroups_path.contains(':') {
        let path = Path::new(cgroups_path);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(invalid("climbs out of the cgroup hierarchy with `..`"));
        }
        let relative: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if relative.as_os_str().is_empty() {
            return Err(invalid(
                "names the hierarchy's root, which a container cannot take",
            ));
        }
        return Ok(relative);
    }
    let [slice, prefix, name] = cgroups_path.split(':').collect::<Vec<_>>()[..] else {
        return Err(invalid(
            "is not of the systemd driver's form \"slice:prefix:name\"",
        ));
    };
    if name.is_empty() {
        return Err(invalid(
            "names no unit (\"slice:prefix:name\" with an empty name)",
        ));
    }
    if [slice, prefix, name].iter().any(|part| part.contains('/')) {
        return Err(invalid("holds a `/` in a systemd unit name"));
    }
    let mut path = expand_slice(if slice.is_empty() {
        "system.slice"
    } else {
        slice
    })
    .ok_or_else(|| invalid("names an invalid systemd slice (expected NAME.slice, as a-b.slice)"))?;
    path.push(if name.ends_with(".slice") {
        name.to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    });
    Ok(path)
}

/// A systemd slice's cgroup directory: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`,
/// `-.slice` the root; `None` for a name systemd refuses (no `.slice`, an empty component).
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice").filter(|s| !s.is_empty())?;
    if stem == "-" {
        return Some(PathBuf::new());
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for component in stem.split('-') {
        if component.is_empty() {
            return None;
        }
        prefix.push_str(component);
        path.push(format!("{prefix}.slice"));
        prefix.push('-');
    }
    Some(path)
}

/// cgroup v2's `cpu.weight` (1 to 10000, default 100) for v1's `cpu.shares` (2 to 262144,
/// default 1024), by runc's conversion since 1.3.2 (opencontainers/runc#4785): a quadratic in
/// log2(shares) that maps the minimum, the default and the maximum onto each other, where the
/// older linear one gave the default 1024 shares a weight of 39. 0 is "unset".
pub fn cpu_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        262_144.. => 10_000,
        _ => {
            let l = (shares as f64).log2();
            let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
            10f64.powf(exponent).ceil() as u64
        }
    }
}

/// The limits the spec sets (`linux.resources`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU quota per period, in microseconds.
    pub cpu_quota: Option<i64>,
    /// CPU period, in microseconds.
    pub cpu_period: Option<u64>,
    /// Relative CPU weight (v1 shares).
    pub cpu_shares: Option<u64>,
    /// Most tasks (threads) the cgroup may hold.
    pub pids: Option<i64>,
}

impl Resources {
    /// The v2 controllers these limits are written through, each with the limit's name.
    fn controllers(&self) -> Vec<(&'static str, &'static str)> {
        let mut needed = Vec::new();
        if self.memory.is_some() {
            needed.push(("memory", "memory"));
        }
        if self.cpu_quota.is_some() || self.cpu_period.is_some() || self.cpu_shares.is_some() {
            needed.push(("cpu", "CPU"));
        }
        if self.pids.is_some() {
            needed.push(("pids", "pids"));
        }
        needed
    }
}

/// A container's cgroup: one directory per v1 controller, or one v2 directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    unified: bool,
    root: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup `cgroups_path` names (see [`placement`]) in `hierarchy`, with
    /// `resources`. On v2 it first enables the controllers in every ancestor's
    /// `cgroup.subtree_control`, from the root down, as runc's v2 manager does: without them
    /// the new directory has no `memory.max` to write. If any step fails, the directories
    /// this call made are removed again, the ancestors it made among them.
    pub fn create(
        hierarchy: &Hierarchy,
        cgroups_path: &str,
        resources: &Resources,
    ) -> Result<Cgroup, CgroupError> {
        let relative = placement(cgroups_path)?;
        let mut made = Vec::new();
        let created = Cgroup::create_in(hierarchy, &relative, resources, &mut made);
        if created.is_err() {
            for dir in made.iter().rev() {
                if let Err(error) = std::fs::remove_dir(dir) {
                    tracing::warn!("cannot remove cgroup {}: {error}", dir.display());
                }
            }
        }
        created
    }

    /// [`Cgroup::create`]'s steps, recording each directory it makes in `made`.
    fn create_in(
        hierarchy: &Hierarchy,
        relative: &Path,
        resources: &Resources,
        made: &mut Vec<PathBuf>,
    ) -> Result<Cgroup, CgroupError> {
        let root = &hierarchy.root;
        let cgroup = if hierarchy.unified {
            let mut refused = enable_controllers(root, relative, made)?;
            for (controller, limit) in resources.controllers() {
                if let Some((subtree_control, source)) = refused.remove(controller) {
                    return Err(CgroupError::Controller {
                        controller,
                        limit,
                        subtree_control,
                        source,
                    });
                }
            }
            Cgroup {
                dirs: vec![root.join(relative)],
                unified: true,
                root: root.clone(),
            }
        } else {
            for controller in V1_CONTROLLERS {
                make_dirs(&root.join(controller), relative, made, |_| ())?;
            }
            let dirs = V1_CONTROLLERS
                .iter()
                .map(|c| root.join(c).join(relative))
                .collect();
            let cgroup = Cgroup {
                dirs,
                unified: false,
                root: root.clone(),
            };
            cgroup.write("devices", "devices.deny", "a")?;
            for rule in V1_ALLOWED_DEVICES {
                cgroup.write("devices", "devices.allow", rule)?;
            }
            cgroup
        };
        cgroup.apply(resources)?;
        Ok(cgroup)
    }

    /// Writes the limits `resources` sets (unset ones are left as they are): at create, and live
    /// for `ctr task update`.
    pub fn apply(&self, resources: &Resources) -> io::Result<()> {
        if self.unified {
            if let Some(memory) = resources.memory {
                self.write("", "memory.max", &memory.to_string())?;
            }
            if resources.cpu_quota.is_some() || resources.cpu_period.is_some() {
                // As runc: a quota of 0 or less is "max"; without a period the kernel keeps its own.
                let mut max = resources
                    .cpu_quota
                    .filter(|q| *q > 0)
                    .map_or("max".to_owned(), |q| q.to_string());
                if let Some(period) = resources.cpu_period.filter(|p| *p > 0) {
                    max = format!("{max} {period}");
                }
                self.write("", "cpu.max", &max)?;
            }
            if let Some(weight) = resources.cpu_shares.map(cpu_weight).filter(|w| *w > 0) {
                self.write("", "cpu.weight", &weight.to_string())?;
            }
            if let Some(pids) = resources.pids {
                self.write("", "pids.max", &pids.to_string())?;
            }
        } else {
            if let Some(memory) = resources.memory {
                self.write("memory", "memory.limit_in_bytes", &memory.to_string())?;
            }
            if let Some(period) = resources.cpu_period {
                self.write("cpu", "cpu.cfs_period_us", &period.to_string())?;
            }
            if let Some(quota) = resources.cpu_quota {
                self.write("cpu", "cpu.cfs_quota_us", &quota.to_string())?;
            }
            if let Some(shares) = resources.cpu_shares {
                self.write("cpu", "cpu.shares", &shares.to_string())?;
            }
            if let Some(pids) = resources.pids {
                self.write("pids", "pids.max", &pids.to_string())?;
            }
        }
        Ok(())
    }

    /// Opens, in every hierarchy, the file through which a process about to start joins the
    /// cgroup by writing `0` ([`wasmcell_sandbox`]'s spawn does): `tasks` on v1, where a thread
    /// moving itself does not wait for the kernel's global threadgroup lock, `cgroup.procs` on
    /// v2.
    pub fn join_files(&self) -> io::Result<Vec<OwnedFd>> {
        let file = if self.unified {
            "cgroup.procs"
        } else {
            "tasks"
        };
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join(file);
                let opened = std::fs::OpenOptions::new().write(true).open(&path);
                opened.map(OwnedFd::from).map_err(|e| context(e, &path))
            })
            .collect()
    }

    /// Removes the cgroup's directories; they must hold no process any more.
    pub fn remove(&self) {
        for dir in &self.dirs {
            if let Err(error) = std::fs::remove_dir(dir) {
                tracing::warn!("cannot remove cgroup {}: {error}", dir.display());
            }
        }
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup: the `oom_kill`
    /// count of `memory.oom_control` (v1) or `memory.events` (v2). A sandbox that died with
    /// this count higher than at its start was killed for the cgroup's memory, not by us.
    pub fn oom_kills(&self) -> io::Result<u64> {
        let (controller, file) = if self.unified {
            ("", "memory.events")
        } else {
            ("memory", "memory.oom_control")
        };
        let text = self.read(controller, file)?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Usage and limits for `ctr task metrics`, `docker stats` and CRI, in the host's
    /// cgroup version.
    pub fn metrics(&self) -> Result<Metrics, MetricsError> {
        if self.unified {
            return Ok(Metrics::V2(metrics::v2(self.dir_of(""))?));
        }
        Ok(Metrics::V1(metrics::v1(&V1Dirs {
            memory: self.dir_of("memory"),
            cpu: self.dir_of("cpu"),
            cpuacct: self.dir_of("cpuacct"),
            pids: self.dir_of("pids"),
        })?))
    }

    fn read(&self, controller: &str, file: &str) -> io::Result<String> {
        let path = self.dir_of(controller).join(file);
        std::fs::read_to_string(&path).map_err(|e| context(e, &path))
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> io::Result<()> {
        let path = self.dir_of(controller).join(file);
        std::fs::write(&path, value).map_err(|e| context(e, &path))
    }

    fn dir_of(&self, controller: &str) -> &Path {
        let dir = self
            .dirs
            .iter()
            .find(|d| self.unified || d.starts_with(self.root.join(controller)));
        dir.expect("a directory per controller")
    }
}

/// A cgroup's OOM kill count when its sandbox started, to tell afterwards whether the kernel
/// killed the sandbox for the cgroup's memory (TaskOOM for its guests, as runc's shim
/// reports) rather than something else.
#[derive(Debug)]
pub struct OomWatch {
    cgroup: Cgroup,
    before: u64,
}

impl OomWatch {
    /// Watches `cgroup` from now on; `None` where its count cannot be read.
    pub fn start(cgroup: &Cgroup) -> Option<OomWatch> {
        let before = cgroup.oom_kills().ok()?;
        Some(OomWatch {
            cgroup: cgroup.clone(),
            before,
        })
    }

    /// Whether the OOM killer has killed in the cgroup since the watch started.
    pub fn fired(&self) -> bool {
        self.cgroup
            .oom_kills()
            .is_ok_and(|count| count > self.before)
    }
}

/// Makes `relative` under `base` and whichever of its ancestors below `base` are missing, top
/// down, recording each it makes in `made`; `before` runs on `base` and every directory below
/// it on the way, existing or made, before its child is made.
fn make_dirs(
    base: &Path,
    relative: &Path,
    made: &mut Vec<PathBuf>,
    mut before: impl FnMut(&Path),
) -> io::Result<()> {
    let mut dir = base.to_owned();
    for component in relative.components() {
        before(&dir);
        dir.push(component);
        match std::fs::create_dir(&dir) {
            Ok(()) => made.push(dir.clone()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(context(error, &dir)),
        }
    }
    Ok(())
}

/// Makes `relative` under the v2 `root`, enabling [`V2_CONTROLLERS`] (those the root offers)
/// in the `cgroup.subtree_control` of the root and of every directory below it down to the
/// new cgroup's parent. Enabling is best effort, as runc's: a controller an ancestor refuses
/// (one holding processes itself, or not delegated to us) is returned with where and why, and
/// matters only if a limit needs it.
fn enable_controllers(
    root: &Path,
    relative: &Path,
    made: &mut Vec<PathBuf>,
) -> io::Result<BTreeMap<&'static str, (PathBuf, io::Error)>> {
    let offered = read(&root.join("cgroup.controllers"))?;
    let offered: Vec<&str> = offered.split_whitespace().collect();
    let wanted: Vec<&'static str> = V2_CONTROLLERS
        .into_iter()
        .filter(|c| offered.contains(c))
        .collect();
    let mut refused = BTreeMap::new();
    make_dirs(root, relative, made, |dir| {
        let file = dir.join("cgroup.subtree_control");
        // A missing file is a directory of a fake tree made here: nothing enabled yet.
        let enabled = read(&file).unwrap_or_default();
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        let missing: Vec<&'static str> = wanted
            .iter()
            .copied()
            .filter(|c| !enabled.contains(c) && !refused.contains_key(c))
            .collect();
        if missing.is_empty() {
            return;
        }
        let all = missing.iter().map(|c| format!("+{c}")).collect::<Vec<_>>();
        if std::fs::write(&file, all.join(" ")).is_ok() {
            return;
        }
        // The kernel takes all or none of one write: find out which it refuses, and why.
        for controller in missing {
            if let Err(error) = std::fs::write(&file, format!("+{controller}")) {
                refused.insert(controller, (file.clone(), error));
            }
        }
    })?;
    Ok(refused)
}

fn read(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path).map_err(|e| context(e, path))
}

fn context(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests;
