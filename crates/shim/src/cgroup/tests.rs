use super::*;

fn limits() -> Resources {
    Resources {
        memory: Some(96 << 20),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        cpu_shares: Some(1024),
        pids: Some(64),
    }
}

fn file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A v2 root as the kernel shows it, with nothing enabled for its children yet.
fn v2_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let controllers = "cpuset cpu io memory hugetlb pids rdma misc";
    std::fs::write(root.path().join("cgroup.controllers"), controllers).unwrap();
    std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
    root
}

#[test]
fn systemd_paths_land_where_runc_puts_the_scope() {
    for (cgroups_path, expected) in [
        (
            "kubepods-besteffort-pod1a2b.slice:cri-containerd:abc",
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b.slice/cri-containerd-abc.scope",
        ),
        (":docker:abc", "system.slice/docker-abc.scope"),
        ("user.slice::abc", "user.slice/abc.scope"),
        ("-.slice:p:abc", "p-abc.scope"),
        (
            "machine.slice:ignored:vm-1.slice",
            "machine.slice/vm-1.slice",
        ),
        ("/default/c3", "default/c3"),
        ("default/c3", "default/c3"),
        ("/kubepods/burstable/pod1/c1", "kubepods/burstable/pod1/c1"),
    ] {
        assert_eq!(
            placement(cgroups_path).unwrap(),
            Path::new(expected),
            "{cgroups_path}"
        );
    }
}

#[test]
fn cgroup_paths_that_name_no_container_cgroup_are_refused() {
    for cgroups_path in [
        "a.slice:b",
        "a.slice:b:c:d",
        "system:p:n",
        "a--b.slice:p:n",
        "-a.slice:p:n",
        ".slice:p:n",
        "a.slice:p:",
        "a.slice:p:../../etc",
        "/../etc",
        "/default/../../etc",
        "/",
        "",
    ] {
        let error = placement(cgroups_path).unwrap_err();
        assert!(
            matches!(error, CgroupError::Path { .. }),
            "{cgroups_path}: {error}"
        );
    }
    assert_eq!(
        placement("a.slice:b").unwrap_err().to_string(),
        "cgroupsPath \"a.slice:b\" is not of the systemd driver's form \"slice:prefix:name\""
    );
}

#[test]
fn cpu_shares_become_runc_s_cpu_weight() {
    for (shares, weight) in [
        (0, 0),
        (2, 1),
        (3, 2),
        (512, 59),
        (1024, 100),
        (2048, 174),
        (262_144, 10_000),
        (1 << 20, 10_000),
    ] {
        assert_eq!(cpu_weight(shares), weight, "{shares} shares");
    }
}

#[test]
fn v2_create_enables_the_controllers_in_every_ancestor_and_writes_the_limits() {
    let root = v2_root();
    // The kubelet made and enabled the slice above; it is left as it is.
    let kubepods = root.path().join("kubepods.slice");
    std::fs::create_dir(&kubepods).unwrap();
    std::fs::write(
        kubepods.join("cgroup.subtree_control"),
        "cpu io memory pids",
    )
    .unwrap();

    let hierarchy = Hierarchy::at(root.path());
    let cgroup = Cgroup::create(
        &hierarchy,
        "kubepods-burstable.slice:cri-containerd:abc",
        &limits(),
    )
    .unwrap();

    let burstable = kubepods.join("kubepods-burstable.slice");
    let leaf = burstable.join("cri-containerd-abc.scope");
    let enable_all = "+cpu +io +memory +pids";
    assert_eq!(
        file(&root.path().join("cgroup.subtree_control")),
        enable_all
    );
    assert_eq!(
        file(&kubepods.join("cgroup.subtree_control")),
        "cpu io memory pids"
    );
    assert_eq!(file(&burstable.join("cgroup.subtree_control")), enable_all);
    // The leaf will hold the sandbox: a cgroup with processes enables nothing below it.
    assert!(!leaf.join("cgroup.subtree_control").exists());
    assert_eq!(file(&leaf.join("memory.max")), (96u64 << 20).to_string());
    assert_eq!(file(&leaf.join("cpu.max")), "50000 100000");
    assert_eq!(file(&leaf.join("cpu.weight")), "100");
    assert_eq!(file(&leaf.join("pids.max")), "64");
    assert_eq!(cgroup.dirs, vec![leaf]);
}

#[test]
fn v2_create_refused_a_controller_names_where_and_leaves_no_directory_behind() {
    let root = v2_root();
    // An ancestor whose subtree_control refuses every write (as the kernel refuses one
    // holding processes itself).
    let kubepods = root.path().join("kubepods");
    std::fs::create_dir_all(kubepods.join("cgroup.subtree_control")).unwrap();
    let hierarchy = Hierarchy::at(root.path());

    let error = Cgroup::create(&hierarchy, "/kubepods/pod1/c1", &limits()).unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "the memory controller, which the container's memory limit needs, cannot be enabled in {}",
            kubepods.join("cgroup.subtree_control").display()
        )),
        "{error}"
    );
    assert!(
        !kubepods.join("pod1").exists(),
        "the failed create left pod1 behind"
    );
    assert!(kubepods.exists(), "it removed a directory it did not make");

    // Without limits nothing needs the controllers: the cgroup is made, as runc makes it.
    let cgroup = Cgroup::create(&hierarchy, "/kubepods/pod1/c1", &Resources::default());
    assert!(cgroup.is_ok(), "{cgroup:?}");
    assert!(kubepods.join("pod1/c1").is_dir());
}

#[test]
fn v1_create_places_a_systemd_path_under_every_controller() {
    let root = tempfile::tempdir().unwrap();
    for controller in V1_CONTROLLERS {
        std::fs::create_dir(root.path().join(controller)).unwrap();
    }
    let hierarchy = Hierarchy::at(root.path());
    Cgroup::create(&hierarchy, ":docker:abc", &limits()).unwrap();
    let dir = |controller: &str| {
        root.path()
            .join(controller)
            .join("system.slice/docker-abc.scope")
    };
    for controller in V1_CONTROLLERS {
        assert!(dir(controller).is_dir(), "{controller}");
    }
    let memory = file(&dir("memory").join("memory.limit_in_bytes"));
    assert_eq!(memory, (96u64 << 20).to_string());
    assert_eq!(file(&dir("cpu").join("cpu.shares")), "1024");
    assert_eq!(file(&dir("pids").join("pids.max")), "64");
}

#[test]
fn v1_create_that_fails_removes_the_directories_it_made() {
    let root = tempfile::tempdir().unwrap();
    // No pids hierarchy: making the cgroup there fails after memory, cpu and cpuacct.
    for controller in ["memory", "cpu", "cpuacct", "freezer", "devices"] {
        std::fs::create_dir(root.path().join(controller)).unwrap();
    }
    let hierarchy = Hierarchy::at(root.path());
    let error = Cgroup::create(&hierarchy, "/default/c3", &limits()).unwrap_err();
    assert!(error.to_string().contains("pids/default"), "{error}");
    for controller in ["memory", "cpu", "cpuacct"] {
        let left = std::fs::read_dir(root.path().join(controller))
            .unwrap()
            .count();
        assert_eq!(left, 0, "{controller} keeps what the failed create made");
    }
}
