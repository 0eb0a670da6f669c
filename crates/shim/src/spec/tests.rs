use super::*;
use serde_json::json;

fn spec(mut value: serde_json::Value) -> Spec {
    if let Some(process) = value.get_mut("process") {
        process["user"] = json!({"uid": 0, "gid": 0});
    }
    serde_json::from_value(value).expect("test spec")
}

fn base(extra: serde_json::Value) -> Spec {
    let mut value = json!({
        "ociVersion": "1.1.0",
        "process": {"args": ["/app.wasm", "a"], "env": ["A=1", "PATH=/bin"], "cwd": "/work"},
        "root": {"path": "rootfs"},
    });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    spec(value)
}

#[test]
fn process_becomes_argv_env_cwd_and_module() {
    let w = workload(&base(json!({})), Path::new("/b"), Stdio::default()).unwrap();
    assert_eq!(
        w.module,
        ModuleSource::Rootfs {
            root: "/b/rootfs".into(),
            path: "/app.wasm".into()
        }
    );
    assert_eq!(w.function, None);
    assert_eq!(w.args, ["/app.wasm", "a"]);
    assert_eq!(
        w.env,
        [("A".into(), "1".into()), ("PATH".into(), "/bin".into())]
    );
    assert_eq!(w.cwd, "/work");
    assert_eq!(
        w.preopens,
        [Preopen {
            host: "/b/rootfs".into(),
            guest: "/".into(),
            access: Access::ReadWrite
        }]
    );
}

#[test]
fn entry_function_is_split_from_argv0() {
    let s = base(json!({"process": {"args": ["/lib.wasm#greet", "x"], "cwd": "/"}}));
    let w = workload(&s, Path::new("/b"), Stdio::default()).unwrap();
    assert_eq!(
        (w.function.as_deref(), w.args.as_slice()),
        (Some("greet"), &["/lib.wasm".to_owned(), "x".to_owned()][..])
    );
}

#[test]
fn exec_runs_its_own_command_in_the_container() {
    let container = workload(
        &base(json!({"linux": {"resources": {"memory": {"limit": 1024}}}})),
        Path::new("/b"),
        Stdio::default(),
    )
    .unwrap();
    let process: Process = serde_json::from_value(json!({
        "args": ["/tool.wasm#probe", "x"], "env": ["ONLY=exec"], "cwd": "/tmp", "user": {"uid": 0, "gid": 0},
    }))
    .unwrap();
    let exec = exec_workload(&container, &process, Stdio::default()).unwrap();
    assert_eq!(
        exec.module,
        ModuleSource::Rootfs {
            root: "/b/rootfs".into(),
            path: "/tool.wasm".into()
        }
    );
    assert_eq!(
        (exec.function.as_deref(), exec.args.as_slice()),
        (
            Some("probe"),
            &["/tool.wasm".to_owned(), "x".to_owned()][..]
        )
    );
    assert_eq!(
        (exec.env, exec.cwd.as_str()),
        (vec![("ONLY".to_owned(), "exec".to_owned())], "/tmp")
    );
    assert_eq!(
        (exec.preopens, exec.limits),
        (container.preopens, container.limits)
    );
}

#[test]
fn readonly_root_and_absolute_root_path() {
    let s = base(json!({"root": {"path": "/elsewhere/rootfs", "readonly": true}}));
    let w = workload(&s, Path::new("/b"), Stdio::default()).unwrap();
    assert_eq!(
        w.preopens[0],
        Preopen {
            host: "/elsewhere/rootfs".into(),
            guest: "/".into(),
            access: Access::ReadOnly
        }
    );
}

#[test]
fn mounts_table() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let file = dir.path().join("hosts");
    std::fs::write(&file, "").unwrap();
    let s = base(json!({"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup", "options": ["rbind", "ro"]},
        {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/etc/hosts", "type": "bind", "source": file, "options": ["rbind", "ro"]},
        {"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]},
        {"destination": "/config", "source": data, "options": ["bind", "ro"]},
    ]}));
    let w = workload(&s, Path::new("/b"), Stdio::default()).unwrap();
    let guest: Vec<_> = w
        .preopens
        .iter()
        .map(|p| (p.guest.as_str(), p.access))
        .collect();
    assert_eq!(
        guest,
        [
            ("/", Access::ReadWrite),
            ("/data", Access::ReadWrite),
            ("/config", Access::ReadOnly)
        ]
    );
    // The file mount is no preopen, but name lookups read it; no resolv.conf mount, so
    // that one comes from the rootfs.
    assert_eq!(
        w.names,
        NameFiles {
            hosts: Some(file),
            resolv_conf: None
        }
    );
}

#[test]
fn memory_limit_table() {
    for (resources, expected) in [
        (json!({}), None),
        (json!({"memory": {"limit": 67108864}}), Some(67108864)),
        (json!({"memory": {"limit": -1}}), None),
        (json!({"memory": {"limit": 0}}), None),
    ] {
        let s = base(json!({"linux": {"resources": resources}}));
        let w = workload(&s, Path::new("/b"), Stdio::default()).unwrap();
        assert_eq!(w.limits.memory, expected, "{resources}");
    }
}

#[test]
fn namespaces_follow_runc() {
    let s = base(json!({"hostname": "box", "linux": {"namespaces": [
        {"type": "network", "path": "/var/run/netns/pod"},
        {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "pid"},
    ]}}));
    let setup = sandbox_setup(&s, Path::new("/cache"), CompilePolicy::Tiered).unwrap();
    assert_eq!(
        setup.namespaces,
        [
            Namespace {
                kind: NamespaceKind::Network,
                path: Some("/var/run/netns/pod".into())
            },
            Namespace {
                kind: NamespaceKind::Ipc,
                path: None
            },
            Namespace {
                kind: NamespaceKind::Uts,
                path: None
            },
        ]
    );
    assert_eq!(setup.hostname.as_deref(), Some("box"));
    // No network namespace listed: the host's (`--net-host`); no new UTS: no hostname.
    let s = base(json!({"hostname": "box", "linux": {"namespaces": [{"type": "mount"}]}}));
    let setup = sandbox_setup(&s, Path::new("/cache"), CompilePolicy::Tiered).unwrap();
    assert!(setup.namespaces.is_empty() && setup.hostname.is_none());
    let s = base(json!({"linux": {"namespaces": [{"type": "user"}]}}));
    assert!(
        sandbox_setup(&s, Path::new("/cache"), CompilePolicy::Tiered)
            .unwrap_err()
            .to_string()
            .contains("a user namespace")
    );
}

#[test]
fn rlimits_keep_their_spec_names() {
    let mut value = serde_json::to_value(base(json!({}))).unwrap();
    value["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]);
    let setup = sandbox_setup(
        &serde_json::from_value(value).unwrap(),
        Path::new("/cache"),
        CompilePolicy::Tiered,
    )
    .unwrap();
    assert_eq!(
        setup.rlimits,
        [Rlimit {
            name: "RLIMIT_NOFILE".into(),
            soft: 1024,
            hard: 4096
        }]
    );
}

#[test]
fn user_and_groups_come_from_the_process() {
    let mut value = serde_json::to_value(base(json!({}))).unwrap();
    value["process"]["user"] = json!({"uid": 1000, "gid": 100, "additionalGids": [10, 20]});
    let setup = sandbox_setup(
        &serde_json::from_value(value).unwrap(),
        Path::new("/cache"),
        CompilePolicy::Tiered,
    )
    .unwrap();
    assert_eq!(
        setup.user,
        User {
            uid: 1000,
            gid: 100,
            additional_gids: vec![10, 20]
        }
    );
}

#[test]
fn cgroup_table() {
    assert_eq!(cgroup(&base(json!({}))), None);
    let s = base(
        json!({"linux": {"cgroupsPath": "/default/c1", "resources": {
            "memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000, "shares": 512}, "pids": {"limit": 64},
        }}}),
    );
    let (path, resources) = cgroup(&s).unwrap();
    let engine = limits(&s);
    assert_eq!(
        engine.cpu,
        Some(CpuQuota {
            quota_us: 50000,
            period_us: 100000
        })
    );
    assert_eq!(engine.memory, Some(67108864));
    assert_eq!(path, "/default/c1");
    assert_eq!(
        resources,
        Resources {
            memory: Some(67108864 + SANDBOX_MEMORY_HEADROOM),
            cpu_quota: Some(50000),
            cpu_period: Some(100000),
            cpu_shares: Some(512),
            pids: Some(64),
        }
    );
}

#[test]
fn missing_bind_source_is_named() {
    let s = base(
        json!({"mounts": [{"destination": "/data", "type": "bind", "source": "/no/such/dir", "options": ["rbind"]}]}),
    );
    let err = workload(&s, Path::new("/b"), Stdio::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "bind mount source /no/such/dir (for /data) does not exist"
    );
}

#[test]
fn empty_args_and_missing_process_are_refused() {
    let s = base(json!({"process": {"args": [], "cwd": "/"}}));
    assert!(matches!(
        workload(&s, Path::new("/b"), Stdio::default()),
        Err(SpecError::NoArgs)
    ));
    let s = spec(json!({"ociVersion": "1.1.0", "root": {"path": "rootfs"}}));
    assert!(matches!(
        workload(&s, Path::new("/b"), Stdio::default()),
        Err(SpecError::NoProcess)
    ));
}

#[test]
fn host_environment_never_leaks() {
    // The shim's own environment has PATH, HOME etc.; the guest gets only process.env.
    let s = base(json!({"process": {"args": ["/app.wasm"], "cwd": "/"}}));
    let w = workload(&s, Path::new("/b"), Stdio::default()).unwrap();
    assert!(w.env.is_empty());
}
