//! The container's cgroup, on cgroupfs: created and limited by the shim, which places the
//! sandbox process in it before the sandbox runs anything.
//!
//! cgroup v1 (this project's CI hosts: a hierarchy per controller under `/sys/fs/cgroup`) and
//! v2 (one unified hierarchy at `/sys/fs/cgroup`) are both handled; `cgroupsPath` is taken as a
//! cgroupfs path, as runc does without the systemd driver.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::metrics::{self, Metrics, MetricsError, V1Dirs};

const ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers a container gets a directory in.
const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "freezer", "devices"];

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

/// A container's cgroup: one directory per v1 controller, or one v2 directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    unified: bool,
}

impl Cgroup {
    /// Creates the cgroup at `path` (relative to each hierarchy's root) with `resources`.
    pub fn create(path: &str, resources: &Resources) -> io::Result<Cgroup> {
        let relative = path.trim_start_matches('/');
        let unified = Path::new(ROOT).join("cgroup.controllers").exists();
        let dirs: Vec<PathBuf> = if unified {
            vec![Path::new(ROOT).join(relative)]
        } else {
            V1_CONTROLLERS
                .iter()
                .map(|c| Path::new(ROOT).join(c).join(relative))
                .collect()
        };
        for dir in &dirs {
            std::fs::create_dir_all(dir).map_err(|e| context(e, dir))?;
        }
        let cgroup = Cgroup { dirs, unified };
        if !unified {
            cgroup.write("devices", "devices.deny", "a")?;
            for rule in V1_ALLOWED_DEVICES {
                cgroup.write("devices", "devices.allow", rule)?;
            }
        }
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
                let quota = resources
                    .cpu_quota
                    .filter(|q| *q > 0)
                    .map_or("max".to_owned(), |q| q.to_string());
                self.write(
                    "",
                    "cpu.max",
                    &format!("{quota} {}", resources.cpu_period.unwrap_or(100_000)),
                )?;
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
            .find(|d| self.unified || d.starts_with(Path::new(ROOT).join(controller)));
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

fn context(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}
