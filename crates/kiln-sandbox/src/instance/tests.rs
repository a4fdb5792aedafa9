use super::*;

#[test]
fn ids_must_name_a_directory() {
    for good in ["i-0a1b2c3d4e5f", "web_1.a"] {
        check_id(good).unwrap();
    }
    for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
        let err = check_id(bad).unwrap_err();
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn a_dead_identity_is_not_adopted() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let start_time = procfs::stat(pid).unwrap().unwrap().start_time;
    child.wait().unwrap();
    let identity = InstanceIdentity {
        pid,
        start_time,
        init_pid: pid,
    };
    assert!(RunningInstance::adopt(identity).unwrap().is_none());
    // A live process with another start time is someone else.
    let me = std::process::id();
    let other = InstanceIdentity {
        pid: me,
        start_time: procfs::stat(me).unwrap().unwrap().start_time + 1,
        init_pid: me,
    };
    assert!(RunningInstance::adopt(other).unwrap().is_none());
}

/// A cgroup v2 mount, wherever it is: on a hybrid host the one at
/// /sys/fs/cgroup/unified has no controllers but joins for real.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .find(|p| p.join("cgroup.controllers").is_file())
}

#[test]
fn the_sandbox_joins_its_cgroup_before_it_forks() {
    let host = crate::probe::probe();
    let mount = cgroup2_mount().filter(|_| host.root && host.bwrap.is_some());
    if !crate::probe::require_for_test(
        "root, bwrap and a writable cgroup v2 mount",
        mount.is_some(),
    ) {
        return;
    }
    let Some(mount) = mount else { return };
    let t = tempfile::tempdir().unwrap();
    crate::busybox::assemble(&t.path().join("root")).unwrap();
    let id = format!("i-unit-{}", std::process::id());
    let spec = InstanceSpec {
        id: id.clone(),
        root: t.path().join("root"),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "sleep 1000 & exec sleep 1001".into(),
        ],
        cwd: "/".into(),
        log_dir: t.path().join("logs"),
        ..Default::default()
    };
    let hierarchy = cgroup::Hierarchy::unified_at(&mount);
    let inst = RunningInstance::start_in(&spec, &hierarchy).unwrap();
    let group = mount.join("kiln").join(&id);
    let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
    let stop = inst.stop(Duration::ZERO);
    let _ = std::fs::remove_dir(mount.join("kiln"));
    stop.unwrap();
    let procs: Vec<u32> = procs.lines().map(|l| l.parse().unwrap()).collect();
    // bwrap, its init and the main process, all from the start.
    for pid in [inst.identity.pid, inst.identity.init_pid] {
        assert!(procs.contains(&pid), "{pid} not in {procs:?}");
    }
    assert!(procs.len() >= 3, "{procs:?}");
    assert!(!group.exists(), "stop removes the group");
}

#[test]
fn stderr_tail_reads_only_what_came_after() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("stderr.log");
    std::fs::write(&p, "old\n").unwrap();
    std::fs::write(&p, "old\nbwrap: execvp x: No such file\n\n").unwrap();
    assert_eq!(log_tail(&p, 4), "bwrap: execvp x: No such file");
}

#[test]
fn boot_mode_says_what_the_image_or_the_host_lacks() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    crate::busybox::assemble(&root).unwrap();
    // busybox may have an init applet of its own.
    let _ = std::fs::remove_file(root.join("sbin/init"));
    let spec = InstanceSpec {
        id: "i-noinit".into(),
        root: root.clone(),
        argv: vec!["/sbin/init".into()],
        cwd: "/".into(),
        log_dir: t.path().join("logs"),
        boot: true,
        ..Default::default()
    };
    let unified = cgroup::Hierarchy::unified_at(Path::new("/sys/fs/cgroup/unified"));
    let err = RunningInstance::start_in(&spec, &unified).unwrap_err();
    assert_eq!(
        err.to_string(),
        "instance i-noinit: cannot boot the image's init: the image has no /sbin/init: \
         install systemd as init (Debian: systemd-sysv)"
    );
    // An init that is an absolute symlink resolves inside the root.
    std::fs::create_dir_all(root.join("lib/systemd")).unwrap();
    std::fs::write(root.join("lib/systemd/systemd"), "").unwrap();
    std::fs::create_dir_all(root.join("sbin")).unwrap();
    std::os::unix::fs::symlink("/lib/systemd/systemd", root.join("sbin/init")).unwrap();
    assert!(boot::exists_in_root(&root, "/sbin/init"));
    let err = RunningInstance::start_in(&spec, &cgroup::Hierarchy::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "instance i-noinit: cannot boot the image's init: systemd needs a writable cgroup v2 \
         hierarchy for its own subtree, and this host has none (no writable cgroup hierarchy \
         is mounted): mount cgroup2 (e.g. at /sys/fs/cgroup/unified) read-write"
    );
}
