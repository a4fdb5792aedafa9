//! Boot mode: instances that run the image's own systemd as pid 1. The
//! web component installs and enables a systemd unit and tests it with
//! `systemctl is-active` and curl; the test gate boots the image to run
//! those steps, and a group of booted instances rolls from one version to
//! the next under load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_lb::loadgen::{self, LoadOptions};
use serde_json::Value;

use crate::common::{Daemon, kiln, ok, roll_out, serving, wait_for_group};
use crate::fixture::{self, WEB_PORT};

/// Writes a web recipe whose component is `component` (the fixture's, or
/// a broken variant of it) and bakes it with `--output json`.
fn bake(dir: &Path, state: &Path, version: &str, greeting: &str, component: &str) -> Value {
    if !state.exists() {
        fixture::base_state(state);
    }
    let doc = format!("web-service-{version}.yaml");
    std::fs::write(dir.join(&doc), component).unwrap();
    let recipe = dir.join(format!("web-{version}.yaml"));
    std::fs::write(
        &recipe,
        format!(
            "name: web\nversion: {version}\nparent: kiln:machine/1.0.0\ncomponents:\n  - path: {doc}\n    parameters: {{ Greeting: {greeting}, Port: \"{WEB_PORT}\" }}\nport: {WEB_PORT}\n{}tests: {{ timeout: 3m }}\n",
            fixture::WEB_RECIPE_EXTRA,
        ),
    )
    .unwrap();
    let out = kiln(
        state,
        &["bake", recipe.to_str().unwrap(), "--output", "json"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "bake output is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn test_log(report: &Value) -> String {
    let log = report["tests"]["log"].as_str().expect("a test log");
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn the_test_gate_boots_systemd_and_fails_a_broken_service() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for (version, greeting) in [("1.0.0", "v1"), ("2.0.0", "v2")] {
        let report = bake(
            dir.path(),
            &state,
            version,
            greeting,
            fixture::WEB_COMPONENT,
        );
        assert_eq!(report["tests"]["result"], "passed", "{report:#}");
        let log = test_log(&report);
        // The unit's own checks ran inside the booted system and passed.
        assert!(
            log.contains("systemd is running") || log.contains("systemd is degraded"),
            "{log}"
        );
        assert!(log.contains("Stdout: active"), "{log}");
        assert!(log.contains(&format!("Stdout: {greeting}")), "{log}");
    }
    // (The image's dev.kiln.init label, which makes templates on it boot,
    // is what the group test below relies on.)

    // A unit whose program does not exist never becomes active.
    let broken = fixture::WEB_COMPONENT.replace(
        "ExecStart=/bin/busybox httpd",
        "ExecStart=/bin/no-such-httpd",
    );
    let report = bake(dir.path(), &state, "3.0.0", "v3", &broken);
    assert_eq!(report["tests"]["result"], "failed", "{report:#}");
    let message = report["tests"]["message"].as_str().unwrap();
    assert!(
        message.contains("phase test, step Active failed"),
        "{message}"
    );
    let log = test_log(&report);
    // What systemd says about the unit is in the log.
    assert!(log.contains("web.service"), "{log}");
    let images = ok(kiln(&state, &["images", "ls"]));
    assert!(images.contains("3.0.0"), "{images}");
}

fn load(concurrency: usize, max_requests: u64) -> LoadOptions {
    LoadOptions {
        concurrency,
        max_requests,
        max_duration: Duration::from_secs(120),
        path: "/index.html".into(),
        keep_alive: true,
        request_timeout: Duration::from_secs(10),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Each instance's init, as the host sees it.
fn init_pids(g: &Value) -> Vec<u32> {
    g["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["init_pid"].as_u64().unwrap() as u32)
        .collect()
}

/// Runs `script` inside the booted instance whose init is `init_pid`.
fn inside(init_pid: u32, script: &str) -> std::process::Output {
    Command::new("nsenter")
        .args([
            "-t",
            &init_pid.to_string(),
            "-m",
            "-p",
            "-u",
            "-i",
            "-n",
            "-C",
        ])
        .args(["/bin/sh", "-c", script])
        .output()
        .unwrap()
}

/// The instance's pid 1 is systemd, with /run and /tmp of its own.
fn check_booted(init_pid: u32) {
    let comm = std::fs::read_to_string(format!("/proc/{init_pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "systemd");
    let out = inside(
        init_pid,
        "cat /proc/1/comm; for m in /run /tmp; do grep \" $m \" /proc/self/mounts | cut -d' ' -f3; done; \
         test -d /run/systemd/system && echo booted; systemctl is-active web.service",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["systemd", "tmpfs", "tmpfs", "booted", "active"],
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The instance's /run is not the host's, nor the image's directory.
    assert!(!Path::new("/run/kiln-boot-probe").exists());
    let probe = inside(init_pid, "touch /run/kiln-boot-probe && echo ok");
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "ok");
    assert!(!Path::new("/run/kiln-boot-probe").exists());
}

#[test]
fn a_group_of_booted_instances_rolls_to_a_new_version_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for (v, g) in [("1.0.0", "v1"), ("2.0.0", "v2")] {
        fixture::bake_web(dir.path(), &state, v, g, "");
    }
    let mut daemon = Daemon::start(&state);
    // The image's label makes the first template boot; the second says so.
    ok(kiln(
        &state,
        &["templates", "create", "web", "--image", "web/1.0.0"],
    ));
    ok(kiln(
        &state,
        &[
            "templates",
            "create",
            "web",
            "--image",
            "web/2.0.0",
            "--init",
            "systemd",
        ],
    ));
    // systemd takes a second or two to start the unit: health checks
    // start after a grace period, as an Auto Scaling group's do. The test
    // runs beside virtual machines that keep both cores busy, where a boot
    // can take many times as long: only 40 failures in a row (12 s) after
    // the grace make an instance unhealthy.
    let health = r#"{"path": "/health", "interval_ms": 300, "timeout_ms": 2000, "healthy_threshold": 2, "unhealthy_threshold": 40, "grace_period_ms": 8000}"#;
    let rolling = r#"{"max_batch_size": 1, "min_instances_in_service": 2, "pause_ms": 200, "batch_timeout_ms": 240000}"#;
    let started = Instant::now();
    ok(kiln(
        &state,
        &[
            "groups",
            "create",
            "web",
            "--template",
            "web",
            "--version",
            "1",
            "--desired",
            "2",
            "--max",
            "3",
            "--port",
            &WEB_PORT.to_string(),
            "--health",
            health,
            "--rolling",
            rolling,
        ],
    ));
    let g = wait_for_group(&state, "web", Duration::from_secs(90), "v1 serving", |g| {
        serving(g, 1, 2)
    });
    eprintln!(
        "2 booted instances in service {:.1}s after groups create",
        started.elapsed().as_secs_f64()
    );
    for pid in init_pids(&g) {
        check_booted(pid);
    }
    let addr: std::net::SocketAddr = g["load_balancer"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();

    let rt = runtime();
    let (report, stop) = rt.block_on(async { loadgen::spawn(addr, load(4, 2_000_000)) });
    let g = roll_out(&state, "web", 2, 2, Duration::from_secs(300));
    stop.stop();
    let report = rt.block_on(report).unwrap();
    assert_eq!(report.failed, 0, "{report:#?}");
    let bodies: Vec<String> = report.bodies.keys().map(|b| b.trim().to_string()).collect();
    assert!(
        bodies.contains(&"v1".into()) && bodies.contains(&"v2".into()),
        "{bodies:?}"
    );

    // kill -9 of the daemon: the booted instances keep running and the
    // next daemon adopts them.
    let before = init_pids(&g);
    daemon.kill9();
    let mut daemon = Daemon::start(&state);
    let g = wait_for_group(&state, "web", Duration::from_secs(30), "adoption", |g| {
        serving(g, 2, 2)
    });
    assert_eq!(init_pids(&g), before, "{g:#}");
    let after = rt.block_on(loadgen::run(addr, load(2, 200)));
    assert_eq!(after.failed, 0, "{after:#?}");
    for pid in before.iter() {
        check_booted(*pid);
    }
    daemon.destroy(&["web"]);
    // Stopped with systemd's halt: nothing of theirs is left.
    for pid in before {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still runs"
        );
    }
}

/// Everything below the host's cgroup v2 mount, for comparison.
fn cgroup_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A component that tries, from inside a booted instance, to reach what
/// belongs to the host; each attempt must fail, and the step passes only
/// if all do. Run as the test phase of a boot-mode bake.
const ESCAPES: &str = r#"name: escapes
description: tries to leave a booted instance
schemaVersion: 1.0
phases:
  - name: test
    steps:
      - name: Escapes
        action: ExecuteBash
        inputs:
          commands:
            - set -u
            - v=$(cat /proc/sys/kernel/core_pattern)
            - if echo "$v" > /proc/sys/kernel/core_pattern; then echo "ESCAPE proc/sys"; fi
            - if mkdir /sys/kiln-escape; then echo "ESCAPE sys"; fi
            - if mkdir /sys/fs/cgroup/../kiln-escape; then echo "ESCAPE cgroup parent"; fi
            - mkdir -p /mnt/cg
            - if mount -t cgroup2 none /mnt/cg; then echo "ESCAPE cgroup mount"; fi
            - if mount -t sysfs none /mnt/cg; then echo "ESCAPE sysfs mount"; fi
            - if mount -o remount,rw /proc/sys; then echo "ESCAPE remount"; fi
            - if ls /sys/fs/cgroup/kiln 2>/dev/null; then echo "ESCAPE sees the host tree"; fi
            - mkdir /sys/fs/cgroup/own-subtree && rmdir /sys/fs/cgroup/own-subtree && echo own-subtree-ok
            - test "$(cat /proc/1/comm)" = systemd && echo pid1-systemd
"#;

#[test]
fn a_booted_instance_cannot_write_the_hosts_cgroups_sys_or_proc_sys() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::write(dir.path().join("escapes.yaml"), ESCAPES).unwrap();
    fixture::base_state(&state);
    let recipe = dir.path().join("escapes-recipe.yaml");
    std::fs::write(
        &recipe,
        "name: escapes\nversion: 1.0.0\nparent: kiln:machine/1.0.0\ncomponents:\n  - path: escapes.yaml\ninit: systemd\n",
    )
    .unwrap();
    let unified = Path::new("/sys/fs/cgroup/unified");
    let before: Vec<PathBuf> = cgroup_dirs(unified)
        .into_iter()
        .filter(|d| !d.starts_with(unified.join("kiln")))
        .collect();
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let out = kiln(
        &state,
        &["bake", recipe.to_str().unwrap(), "--output", "json"],
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["tests"]["result"], "passed", "{report:#}");
    let log = test_log(&report);
    assert!(!log.contains("ESCAPE"), "{log}");
    assert!(
        log.contains("own-subtree-ok") && log.contains("pid1-systemd"),
        "{log}"
    );
    let after: Vec<PathBuf> = cgroup_dirs(unified)
        .into_iter()
        .filter(|d| !d.starts_with(unified.join("kiln")))
        .collect();
    assert_eq!(before, after);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
}
