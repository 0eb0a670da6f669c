use super::*;

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn v1_dirs(root: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let dirs = ["memory", "cpu", "cpuacct", "pids"].map(|c| root.join(c).join("c1"));
    for dir in &dirs {
        std::fs::create_dir_all(dir).unwrap();
    }
    let [memory, cpu, cpuacct, pids] = dirs;
    (memory, cpu, cpuacct, pids)
}

/// Issue 26: Docker 26 dereferenced `CPU.Throttling`, which our v1 metrics left unset, and
/// dockerd died on `docker stats`.
#[test]
fn v1_metrics_carry_throttling_and_every_sub_message_docker_dereferences() {
    let root = tree(&[
        (
            "memory/c1/memory.stat",
            "cache 4096\nrss 8192\nrss_huge 0\nmapped_file 12\npgfault 7\n\
             hierarchical_memory_limit 67108864\ntotal_cache 4096\ntotal_rss 8192\n\
             total_inactive_file 1024\n",
        ),
        ("memory/c1/memory.usage_in_bytes", "12288\n"),
        ("memory/c1/memory.max_usage_in_bytes", "20480\n"),
        ("memory/c1/memory.limit_in_bytes", "67108864\n"),
        ("memory/c1/memory.failcnt", "3\n"),
        ("memory/c1/memory.kmem.usage_in_bytes", "512\n"),
        (
            "memory/c1/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        ),
        (
            "cpu/c1/cpu.stat",
            "nr_periods 10\nnr_throttled 4\nthrottled_time 123456\nnr_bursts 0\nburst_time 0\n",
        ),
        ("cpuacct/c1/cpuacct.usage", "5000000\n"),
        ("cpuacct/c1/cpuacct.usage_percpu", "3000000 2000000 \n"),
        ("cpuacct/c1/cpuacct.stat", "user 3\nsystem 1\n"),
        ("pids/c1/pids.current", "2\n"),
        ("pids/c1/pids.max", "max\n"),
    ]);
    let (memory, cpu, cpuacct, pids) = v1_dirs(root.path());
    let metrics = v1(&V1Dirs {
        memory: &memory,
        cpu: &cpu,
        cpuacct: &cpuacct,
        pids: &pids,
    })
    .unwrap();

    let cpu = metrics.cpu.as_ref().unwrap();
    let throttling = cpu.throttling.as_ref().expect("throttling present");
    assert_eq!(
        (
            throttling.periods,
            throttling.throttled_periods,
            throttling.throttled_time
        ),
        (10, 4, 123456)
    );
    let usage = cpu.usage.as_ref().unwrap();
    assert_eq!(usage.total, 5_000_000);
    assert_eq!(usage.per_cpu, [3_000_000, 2_000_000]);
    assert_eq!((usage.user, usage.kernel), (30_000_000, 10_000_000));

    let memory = metrics.memory.as_ref().unwrap();
    assert_eq!(
        (memory.cache, memory.rss, memory.mapped_file),
        (4096, 8192, 12)
    );
    assert_eq!((memory.pg_fault, memory.total_inactive_file), (7, 1024));
    assert_eq!(memory.hierarchical_memory_limit, 64 << 20);
    let entry = memory.usage.as_ref().unwrap();
    assert_eq!(
        (entry.usage, entry.max, entry.limit, entry.failcnt),
        (12288, 20480, 64 << 20, 3)
    );
    assert_eq!(memory.kernel.as_ref().unwrap().usage, 512);
    // No swap accounting here: present, zero.
    assert_eq!(memory.swap.as_ref().unwrap(), &v1::MemoryEntry::new());
    assert!(memory.kernel_tcp.is_some());
    assert_eq!(metrics.memory_oom_control.oom_kill, 2);

    assert_eq!((metrics.pids.current, metrics.pids.limit), (2, 0));
    assert!(metrics.blkio.is_some());
}

#[test]
fn v1_metrics_of_a_removed_cgroup_fail_naming_its_directory() {
    let root = tempfile::tempdir().unwrap();
    let (memory, cpu, cpuacct, pids) = v1_dirs(root.path());
    std::fs::remove_dir(&memory).unwrap();
    let error = v1(&V1Dirs {
        memory: &memory,
        cpu: &cpu,
        cpuacct: &cpuacct,
        pids: &pids,
    })
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("cannot read {}", memory.display())
    );
}

/// Issue 26: v2 hosts answered "not implemented yet".
#[test]
fn v2_metrics_read_a_unified_cgroup() {
    let root = tree(&[
        ("c1/pids.current", "3\n"),
        ("c1/pids.max", "max\n"),
        (
            "c1/cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 20\n\
             nr_throttled 5\nthrottled_usec 250\nnr_bursts 0\nburst_usec 0\n",
        ),
        ("c1/memory.current", "1048576\n"),
        ("c1/memory.max", "67108864\n"),
        ("c1/memory.peak", "2097152\n"),
        ("c1/memory.swap.current", "0\n"),
        ("c1/memory.swap.max", "max\n"),
        (
            "c1/memory.stat",
            "anon 700000\nfile 300000\nkernel_stack 16384\ninactive_file 4096\n\
             active_anon 1\npgfault 42\nthp_collapse_alloc 0\nsome_future_key 9\n",
        ),
        (
            "c1/memory.events",
            "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
        ),
        (
            "c1/io.stat",
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
        ),
    ]);
    let metrics = v2(&root.path().join("c1")).unwrap();

    assert_eq!((metrics.pids.current, metrics.pids.limit), (3, u64::MAX));
    let cpu = &metrics.cpu;
    assert_eq!(
        (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
        (1500, 1000, 500)
    );
    assert_eq!(
        (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec),
        (20, 5, 250)
    );
    let memory = &metrics.memory;
    assert_eq!(
        (memory.usage, memory.usage_limit, memory.max_usage),
        (1 << 20, 64 << 20, 2 << 20)
    );
    assert_eq!((memory.swap_usage, memory.swap_limit), (0, u64::MAX));
    assert_eq!(
        (memory.anon, memory.file, memory.kernel_stack),
        (700000, 300000, 16384)
    );
    assert_eq!((memory.inactive_file, memory.pgfault), (4096, 42));
    let events = &metrics.memory_events;
    assert_eq!((events.max, events.oom, events.oom_kill), (7, 2, 1));
    let io = &metrics.io.usage;
    assert_eq!(io.len(), 1);
    assert_eq!(
        (
            io[0].major,
            io[0].minor,
            io[0].rbytes,
            io[0].wbytes,
            io[0].rios,
            io[0].wios
        ),
        (8, 0, 4096, 8192, 1, 2)
    );
}

/// A v2 cgroup whose parent did not enable the memory, pids or io controllers has only
/// the core files: its metrics are zeros, not an error.
#[test]
fn v2_metrics_without_controllers_read_as_zero() {
    let root = tree(&[("c1/cpu.stat", "usage_usec 10\nuser_usec 6\nsystem_usec 4\n")]);
    let metrics = v2(&root.path().join("c1")).unwrap();
    assert_eq!(metrics.cpu.usage_usec, 10);
    assert_eq!(metrics.memory.usage, 0);
    assert!(metrics.memory_events.is_none());
    assert!(metrics.io.usage.is_empty());
}

#[test]
fn a_malformed_cgroup_file_is_an_error_naming_it() {
    let root = tree(&[("c1/cpu.stat", "usage_usec lots\n")]);
    let error = v2(&root.path().join("c1")).unwrap_err();
    let path = root.path().join("c1/cpu.stat");
    assert_eq!(
        error.to_string(),
        format!("unexpected line in {}: \"usage_usec lots\"", path.display())
    );
}

#[test]
fn metrics_are_typed_by_their_cgroup_version_for_containerd() {
    let v1_any = usage(wasmcell_engine::Usage::default()).into_any().unwrap();
    assert_eq!(v1_any.type_url, "io.containerd.cgroups.v1.Metrics");
    let v2_any = Metrics::V2(v2::Metrics::new()).into_any().unwrap();
    assert_eq!(v2_any.type_url, "io.containerd.cgroups.v2.Metrics");
}

/// A pod container's own usage must not panic dockerd or CRI either.
#[test]
fn usage_metrics_carry_throttling_and_memory_entries() {
    let Metrics::V1(metrics) = usage(wasmcell_engine::Usage {
        cpu_ns: 7,
        memory_bytes: 9,
    }) else {
        panic!("v1 metrics");
    };
    assert!(metrics.cpu.throttling.is_some());
    assert_eq!(metrics.cpu.usage.total, 7);
    assert_eq!(metrics.memory.usage.usage, 9);
}
