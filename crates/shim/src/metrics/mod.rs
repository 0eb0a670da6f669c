//! A container's usage and limits in the shapes containerd's clients read: the task service's
//! `stats` answers with containerd's cgroup v1 `Metrics` (`io.containerd.cgroups.v1.Metrics`)
//! on a v1 host and its v2 `Metrics` (`io.containerd.cgroups.v2.Metrics`) on a unified one,
//! as runc's shim does. `ctr task metrics`, Docker's stats collector and CRI's ContainerStats
//! decode them.
//!
//! Every sub-message a client may dereference is present, even when its numbers are zero:
//! Docker 26's `statsV1` reads `CPU.Usage` and `CPU.Throttling` of any CPU stats without a nil
//! check, and a nil one panics dockerd (issue 26). runc's shim fills them all the same way.
//!
//! The readers take directories, not a [`crate::cgroup::Cgroup`], so that unit tests run them
//! over fake trees. A file the kernel does not offer (a v2 controller not enabled in the
//! parent, swap accounting off, an older kernel) reads as zero, as in containerd's own cgroup
//! readers; a file that exists but cannot be read or parsed is an error.

use std::io;
use std::path::{Path, PathBuf};

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{self, MessageDyn, MessageField};

/// `cpuacct.stat` counts in USER_HZ ticks, 100 a second on every Linux target (containerd and
/// Docker hard-code it too).
const NANOS_PER_TICK: u64 = 1_000_000_000 / 100;

/// Why a cgroup's metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A cgroup file exists but could not be read (or the cgroup is gone).
    #[error("cannot read {}", path.display())]
    Unreadable {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A cgroup file holds something other than the kernel's format.
    #[error("unexpected line in {}: {line:?}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line that is not a number or `key number`.
        line: String,
    },
    /// The metrics could not be encoded for containerd.
    #[error("cannot encode the metrics")]
    Encode(#[source] protobuf::Error),
}

type Result<T> = std::result::Result<T, MetricsError>;

/// A container's metrics, in the cgroup version its host runs.
#[derive(Debug)]
pub enum Metrics {
    /// containerd's cgroup v1 metrics.
    V1(v1::Metrics),
    /// containerd's cgroup v2 metrics.
    V2(v2::Metrics),
}

impl Metrics {
    /// The metrics as the `Any` a `stats` reply carries, typed by the message's full name
    /// (`io.containerd.cgroups.v1.Metrics` or `...v2.Metrics`), which containerd's typeurl
    /// resolves.
    pub fn into_any(self) -> Result<Any> {
        let message: Box<dyn MessageDyn> = match self {
            Metrics::V1(metrics) => Box::new(metrics),
            Metrics::V2(metrics) => Box::new(metrics),
        };
        let mut any = Any::new();
        any.type_url = message.descriptor_dyn().full_name().to_owned();
        any.value = message.write_to_bytes_dyn().map_err(MetricsError::Encode)?;
        Ok(any)
    }
}

/// The directories of a v1 container's cgroup, one per controller read.
#[derive(Debug)]
pub struct V1Dirs<'a> {
    /// In the `memory` hierarchy.
    pub memory: &'a Path,
    /// In the `cpu` hierarchy (throttling).
    pub cpu: &'a Path,
    /// In the `cpuacct` hierarchy (usage).
    pub cpuacct: &'a Path,
    /// In the `pids` hierarchy.
    pub pids: &'a Path,
}

/// Reads a v1 cgroup's metrics as runc's shim reports them. Block I/O is present and empty:
/// the container's cgroup has no `blkio` directory (a guest does no block I/O of its own).
pub fn v1(dirs: &V1Dirs<'_>) -> Result<v1::Metrics> {
    for dir in [dirs.memory, dirs.cpu, dirs.cpuacct, dirs.pids] {
        exists(dir)?;
    }
    let mut memory = v1::MemoryStat::new();
    for (key, value) in keyed(&dirs.memory.join("memory.stat"))? {
        set_v1_memory_stat(&mut memory, &key, value);
    }
    memory.usage = MessageField::some(v1_memory_entry(dirs.memory, "memory")?);
    memory.swap = MessageField::some(v1_memory_entry(dirs.memory, "memory.memsw")?);
    memory.kernel = MessageField::some(v1_memory_entry(dirs.memory, "memory.kmem")?);
    memory.kernel_tcp = MessageField::some(v1_memory_entry(dirs.memory, "memory.kmem.tcp")?);

    let mut oom = v1::MemoryOomControl::new();
    for (key, value) in keyed(&dirs.memory.join("memory.oom_control"))? {
        match key.as_str() {
            "oom_kill_disable" => oom.oom_kill_disable = value,
            "under_oom" => oom.under_oom = value,
            "oom_kill" => oom.oom_kill = value,
            _ => {}
        }
    }

    let mut usage = v1::CPUUsage::new();
    usage.total = number(&dirs.cpuacct.join("cpuacct.usage"), 0)?;
    usage.per_cpu = numbers(&dirs.cpuacct.join("cpuacct.usage_percpu"))?;
    for (key, ticks) in keyed(&dirs.cpuacct.join("cpuacct.stat"))? {
        match key.as_str() {
            "user" => usage.user = ticks * NANOS_PER_TICK,
            "system" => usage.kernel = ticks * NANOS_PER_TICK,
            _ => {}
        }
    }
    let mut throttling = v1::Throttle::new();
    for (key, value) in keyed(&dirs.cpu.join("cpu.stat"))? {
        match key.as_str() {
            "nr_periods" => throttling.periods = value,
            "nr_throttled" => throttling.throttled_periods = value,
            "throttled_time" => throttling.throttled_time = value,
            _ => {}
        }
    }

    let mut pids = v1::PidsStat::new();
    pids.current = number(&dirs.pids.join("pids.current"), 0)?;
    // "max" (no limit) reads as 0, as containerd's v1 reader reports an unlimited pids.max.
    pids.limit = number(&dirs.pids.join("pids.max"), 0)?;

    Ok(v1::Metrics {
        pids: MessageField::some(pids),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(usage),
            throttling: MessageField::some(throttling),
            ..Default::default()
        }),
        memory: MessageField::some(memory),
        memory_oom_control: MessageField::some(oom),
        blkio: MessageField::some(v1::BlkIOStat::new()),
        rdma: MessageField::some(v1::RdmaStat::new()),
        ..Default::default()
    })
}

/// One v1 memory counter set: `{prefix}.usage_in_bytes`, `.max_usage_in_bytes`,
/// `.limit_in_bytes` and `.failcnt` (`memory`, `memory.memsw`, `memory.kmem`,
/// `memory.kmem.tcp`).
fn v1_memory_entry(dir: &Path, prefix: &str) -> Result<v1::MemoryEntry> {
    let file = |name: &str| dir.join(format!("{prefix}.{name}"));
    Ok(v1::MemoryEntry {
        usage: number(&file("usage_in_bytes"), 0)?,
        max: number(&file("max_usage_in_bytes"), 0)?,
        limit: number(&file("limit_in_bytes"), 0)?,
        failcnt: number(&file("failcnt"), 0)?,
        ..Default::default()
    })
}

fn set_v1_memory_stat(stat: &mut v1::MemoryStat, key: &str, value: u64) {
    let field = match key {
        "cache" => &mut stat.cache,
        "rss" => &mut stat.rss,
        "rss_huge" => &mut stat.rss_huge,
        "mapped_file" => &mut stat.mapped_file,
        "dirty" => &mut stat.dirty,
        "writeback" => &mut stat.writeback,
        "pgpgin" => &mut stat.pg_pg_in,
        "pgpgout" => &mut stat.pg_pg_out,
        "pgfault" => &mut stat.pg_fault,
        "pgmajfault" => &mut stat.pg_maj_fault,
        "inactive_anon" => &mut stat.inactive_anon,
        "active_anon" => &mut stat.active_anon,
        "inactive_file" => &mut stat.inactive_file,
        "active_file" => &mut stat.active_file,
        "unevictable" => &mut stat.unevictable,
        "hierarchical_memory_limit" => &mut stat.hierarchical_memory_limit,
        "hierarchical_memsw_limit" => &mut stat.hierarchical_swap_limit,
        "total_cache" => &mut stat.total_cache,
        "total_rss" => &mut stat.total_rss,
        "total_rss_huge" => &mut stat.total_rss_huge,
        "total_mapped_file" => &mut stat.total_mapped_file,
        "total_dirty" => &mut stat.total_dirty,
        "total_writeback" => &mut stat.total_writeback,
        "total_pgpgin" => &mut stat.total_pg_pg_in,
        "total_pgpgout" => &mut stat.total_pg_pg_out,
        "total_pgfault" => &mut stat.total_pg_fault,
        "total_pgmajfault" => &mut stat.total_pg_maj_fault,
        "total_inactive_anon" => &mut stat.total_inactive_anon,
        "total_active_anon" => &mut stat.total_active_anon,
        "total_inactive_file" => &mut stat.total_inactive_file,
        "total_active_file" => &mut stat.total_active_file,
        "total_unevictable" => &mut stat.total_unevictable,
        _ => return,
    };
    *field = value;
}

/// Reads a v2 cgroup's metrics (the directory `dir` of the unified hierarchy) as runc's shim
/// reports them. A limit of `max` reads as `u64::MAX`, as containerd's v2 reader has it
/// (Docker shows the host's memory in its place).
pub fn v2(dir: &Path) -> Result<v2::Metrics> {
    exists(dir)?;
    let mut pids = v2::PidsStat::new();
    pids.current = number(&dir.join("pids.current"), 0)?;
    pids.limit = number(&dir.join("pids.max"), u64::MAX)?;

    let mut cpu = v2::CPUStat::new();
    for (key, value) in keyed(&dir.join("cpu.stat"))? {
        match key.as_str() {
            "usage_usec" => cpu.usage_usec = value,
            "user_usec" => cpu.user_usec = value,
            "system_usec" => cpu.system_usec = value,
            "nr_periods" => cpu.nr_periods = value,
            "nr_throttled" => cpu.nr_throttled = value,
            "throttled_usec" => cpu.throttled_usec = value,
            "nr_bursts" => cpu.nr_bursts = value,
            "burst_usec" => cpu.burst_usec = value,
            _ => {}
        }
    }

    let mut memory = v2::MemoryStat::new();
    for (key, value) in keyed(&dir.join("memory.stat"))? {
        set_v2_memory_stat(&mut memory, &key, value);
    }
    memory.usage = number(&dir.join("memory.current"), 0)?;
    memory.usage_limit = number(&dir.join("memory.max"), u64::MAX)?;
    memory.max_usage = number(&dir.join("memory.peak"), 0)?;
    memory.swap_usage = number(&dir.join("memory.swap.current"), 0)?;
    memory.swap_limit = number(&dir.join("memory.swap.max"), u64::MAX)?;
    memory.swap_max_usage = number(&dir.join("memory.swap.peak"), 0)?;

    // Docker takes its failcnt from these; absent (no memory controller), they stay unset.
    let events_file = dir.join("memory.events");
    let memory_events = match read_optional(&events_file)? {
        None => MessageField::none(),
        Some(text) => {
            let mut events = v2::MemoryEvents::new();
            for (key, value) in parse_keyed(&events_file, &text)? {
                match key.as_str() {
                    "low" => events.low = value,
                    "high" => events.high = value,
                    "max" => events.max = value,
                    "oom" => events.oom = value,
                    "oom_kill" => events.oom_kill = value,
                    "oom_group_kill" => events.oom_group_kill = value,
                    _ => {}
                }
            }
            MessageField::some(events)
        }
    };

    let io_file = dir.join("io.stat");
    let usage = match read_optional(&io_file)? {
        Some(text) => parse_io_stat(&io_file, &text)?,
        None => Vec::new(),
    };

    Ok(v2::Metrics {
        pids: MessageField::some(pids),
        cpu: MessageField::some(cpu),
        memory: MessageField::some(memory),
        memory_events,
        io: MessageField::some(v2::IOStat {
            usage,
            ..Default::default()
        }),
        rdma: MessageField::some(v2::RdmaStat::new()),
        ..Default::default()
    })
}

fn set_v2_memory_stat(stat: &mut v2::MemoryStat, key: &str, value: u64) {
    let field = match key {
        "anon" => &mut stat.anon,
        "file" => &mut stat.file,
        "kernel_stack" => &mut stat.kernel_stack,
        "slab" => &mut stat.slab,
        "sock" => &mut stat.sock,
        "shmem" => &mut stat.shmem,
        "file_mapped" => &mut stat.file_mapped,
        "file_dirty" => &mut stat.file_dirty,
        "file_writeback" => &mut stat.file_writeback,
        "anon_thp" => &mut stat.anon_thp,
        "inactive_anon" => &mut stat.inactive_anon,
        "active_anon" => &mut stat.active_anon,
        "inactive_file" => &mut stat.inactive_file,
        "active_file" => &mut stat.active_file,
        "unevictable" => &mut stat.unevictable,
        "slab_reclaimable" => &mut stat.slab_reclaimable,
        "slab_unreclaimable" => &mut stat.slab_unreclaimable,
        "pgfault" => &mut stat.pgfault,
        "pgmajfault" => &mut stat.pgmajfault,
        "workingset_refault" => &mut stat.workingset_refault,
        "workingset_activate" => &mut stat.workingset_activate,
        "workingset_nodereclaim" => &mut stat.workingset_nodereclaim,
        "pgrefill" => &mut stat.pgrefill,
        "pgscan" => &mut stat.pgscan,
        "pgsteal" => &mut stat.pgsteal,
        "pgactivate" => &mut stat.pgactivate,
        "pgdeactivate" => &mut stat.pgdeactivate,
        "pglazyfree" => &mut stat.pglazyfree,
        "pglazyfreed" => &mut stat.pglazyfreed,
        "thp_fault_alloc" => &mut stat.thp_fault_alloc,
        "thp_collapse_alloc" => &mut stat.thp_collapse_alloc,
        _ => return,
    };
    *field = value;
}

/// `io.stat`: a line per device, `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`.
fn parse_io_stat(path: &Path, text: &str) -> Result<Vec<v2::IOEntry>> {
    let malformed = |line: &str| MetricsError::Malformed {
        path: path.to_owned(),
        line: line.to_owned(),
    };
    let mut entries = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let device = words.next().ok_or_else(|| malformed(line))?;
        let (major, minor) = device.split_once(':').ok_or_else(|| malformed(line))?;
        let mut entry = v2::IOEntry {
            major: major.parse().map_err(|_| malformed(line))?,
            minor: minor.parse().map_err(|_| malformed(line))?,
            ..Default::default()
        };
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(|| malformed(line))?;
            let value = value.parse().map_err(|_| malformed(line))?;
            match key {
                "rbytes" => entry.rbytes = value,
                "wbytes" => entry.wbytes = value,
                "rios" => entry.rios = value,
                "wios" => entry.wios = value,
                _ => {}
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// The cgroup's directory must be there: a container whose cgroup is gone has no metrics,
/// rather than all-zero ones.
fn exists(dir: &Path) -> Result<()> {
    std::fs::metadata(dir)
        .map(drop)
        .map_err(|source| MetricsError::Unreadable {
            path: dir.to_owned(),
            source,
        })
}

/// A file's text, or `None` where the kernel does not offer it.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MetricsError::Unreadable {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A one-number file; `max` (no limit) reads as `unlimited`, a missing file as 0.
fn number(path: &Path, unlimited: u64) -> Result<u64> {
    let Some(text) = read_optional(path)? else {
        return Ok(0);
    };
    match text.trim() {
        "max" => Ok(unlimited),
        value => value.parse().map_err(|_| MetricsError::Malformed {
            path: path.to_owned(),
            line: value.to_owned(),
        }),
    }
}

/// A file of whitespace-separated numbers (`cpuacct.usage_percpu`); missing reads as none.
fn numbers(path: &Path) -> Result<Vec<u64>> {
    let text = read_optional(path)?.unwrap_or_default();
    text.split_whitespace()
        .map(|word| {
            word.parse().map_err(|_| MetricsError::Malformed {
                path: path.to_owned(),
                line: text.trim().to_owned(),
            })
        })
        .collect()
}

/// A flat-keyed file (`key number` per line: `cpu.stat`, `memory.stat`); missing reads as empty.
fn keyed(path: &Path) -> Result<Vec<(String, u64)>> {
    match read_optional(path)? {
        Some(text) => parse_keyed(path, &text),
        None => Ok(Vec::new()),
    }
}

fn parse_keyed(path: &Path, text: &str) -> Result<Vec<(String, u64)>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let parsed = line
                .split_once(' ')
                .and_then(|(key, value)| Some((key.to_owned(), value.trim().parse().ok()?)));
            parsed.ok_or_else(|| MetricsError::Malformed {
                path: path.to_owned(),
                line: line.to_owned(),
            })
        })
        .collect()
}

/// A pod container's own use (its guests', as the engine measured it: the pod's containers
/// share one cgroup) in the shape of containerd's cgroup v1 metrics, which CRI turns into
/// ContainerStats: CPU as `cpuacct.usage`, memory as `memory.usage_in_bytes` (the working
/// set, as nothing of it is page cache). The sub-messages clients dereference are present.
pub fn usage(usage: wasmcell_engine::Usage) -> Metrics {
    Metrics::V1(v1::Metrics {
        memory: MessageField::some(v1::MemoryStat {
            usage: MessageField::some(v1::MemoryEntry {
                usage: usage.memory_bytes,
                ..Default::default()
            }),
            swap: MessageField::some(v1::MemoryEntry::new()),
            kernel: MessageField::some(v1::MemoryEntry::new()),
            kernel_tcp: MessageField::some(v1::MemoryEntry::new()),
            ..Default::default()
        }),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: usage.cpu_ns,
                ..Default::default()
            }),
            throttling: MessageField::some(v1::Throttle::new()),
            ..Default::default()
        }),
        pids: MessageField::some(v1::PidsStat::new()),
        blkio: MessageField::some(v1::BlkIOStat::new()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;
