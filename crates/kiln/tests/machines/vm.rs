//! Groups of virtual machines (`driver: vm`): the web image boots in qemu
//! from its exported disk, rolls to a new version under load without a
//! failed request, survives a `kill -9` of the daemon, and a VM killed
//! with `kill -9` is replaced. One test covers all of it, on a group of
//! one instance, because every boot under software emulation takes a
//! minute of a core: two boots in all (v1, then v2 beside it).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_lb::loadgen::{self, LoadOptions};
use serde_json::Value;

use crate::common::{Daemon, json, kiln, lb_addr, ok, roll_out, serving, wait_for_group};
use crate::fixture::{self, WEB_PORT};

fn load(concurrency: usize) -> LoadOptions {
    LoadOptions {
        concurrency,
        max_requests: 10_000_000,
        max_duration: Duration::from_secs(1800),
        path: "/index.html".into(),
        keep_alive: true,
        request_timeout: Duration::from_secs(10),
    }
}

/// qemu processes whose command line names a path under `dir`.
fn vms_below(dir: &Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline);
            (text.starts_with("qemu-system") && text.contains(&dir)).then_some(pid)
        })
        .collect()
}

/// Booting takes a while under software emulation: health checks fail
/// until the guest's web service is up, and only this many failures in a
/// row make an instance unhealthy.
const HEALTH: &str = r#"{"path": "/health", "interval_ms": 1000, "timeout_ms": 2000, "healthy_threshold": 2, "unhealthy_threshold": 600}"#;
/// The new VM boots beside the old one, which serves until it is healthy.
const ROLLING: &str = r#"{"max_batch_size": 1, "min_instances_in_service": 1, "pause_ms": 0, "batch_timeout_ms": 900000}"#;
/// A boot under software emulation, with other VMs booting beside it.
const BOOT: Duration = Duration::from_secs(600);

/// Kills the test's VMs however it ends: the daemon's own cleanup only
/// knows instances in namespaces.
struct KillVms<'a>(&'a Path);

impl Drop for KillVms<'_> {
    fn drop(&mut self) {
        for pid in vms_below(self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

#[test]
fn a_vm_group_rolls_under_load_survives_a_daemon_restart_and_replaces_a_killed_vm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fixture::bake_web(dir.path(), &state, "1.0.0", "v1", "");
    fixture::bake_web(dir.path(), &state, "2.0.0", "v2", "");
    let _vms = KillVms(&state);
    let mut daemon = Daemon::start(&state);
    for v in ["1.0.0", "2.0.0"] {
        ok(kiln(
            &state,
            &[
                "templates",
                "create",
                "web",
                "--image",
                &format!("web/{v}"),
                "--driver",
                "vm",
                "--tag",
                "Team=blue",
            ],
        ));
    }
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
            "1",
            "--max",
            "2",
            "--port",
            &WEB_PORT.to_string(),
            "--health",
            HEALTH,
            "--rolling",
            ROLLING,
        ],
    ));
    let g = wait_for_group(&state, "web", BOOT, "a VM of v1 in service", |g| {
        serving(g, 1, 1)
    });
    eprintln!(
        "bench: a VM (first use of the image: its disk exported too) launched to healthy in {:?}",
        started.elapsed()
    );
    // The console is the instance's log, and it says how the VM runs.
    let first = g["instances"][0]["id"].as_str().unwrap().to_string();
    let console = ok(kiln(&state, &["instances", "logs", &first]));
    assert!(
        console.contains(&format!("kiln: instance {first}: virtual machine")),
        "{console}"
    );
    assert!(
        console.contains("KVM") || console.contains("TCG"),
        "{console}"
    );
    assert!(console.contains("Linux version"), "{console}");
    let addr = lb_addr(&g);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // v1 -> v2 under continuous load.
    let (report, stop) = rt.block_on(async { loadgen::spawn(addr, load(2)) });
    let rolled = Instant::now();
    let g = roll_out(&state, "web", 2, 1, BOOT);
    eprintln!("bench: rolling update of a VM in {:?}", rolled.elapsed());
    stop.stop();
    let report = rt.block_on(report).unwrap();
    assert_eq!(report.failed, 0, "{report:#?}");
    let bodies: Vec<String> = report.bodies.keys().map(|b| b.trim().to_string()).collect();
    assert!(
        bodies.contains(&"v1".to_string()) && bodies.contains(&"v2".to_string()),
        "{bodies:?}"
    );

    // The daemon killed with kill -9 and started again adopts the VMs.
    let before: Vec<Value> = g["instances"].as_array().unwrap().clone();
    daemon.kill9();
    let mut daemon = Daemon::start(&state);
    let g = wait_for_group(
        &state,
        "web",
        Duration::from_secs(60),
        "the VM adopted",
        |g| serving(g, 2, 1),
    );
    let ids = |list: &[Value]| {
        let mut ids: Vec<String> = list
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(g["instances"].as_array().unwrap()), ids(&before));
    let addr = lb_addr(&g);
    let after = rt.block_on(loadgen::run(
        addr,
        LoadOptions {
            max_requests: 50,
            ..load(2)
        },
    ));
    assert_eq!(after.failed, 0, "{after:#?}");

    // A VM killed with kill -9 is replaced: its instance ends as exited and
    // a new VM of v2 starts in its place. The test does not wait for that
    // VM's boot, a third one under emulation: the rollout proved the same
    // launch path to a healthy v2.
    let victim = g["instances"][0].clone();
    let pid = victim["pid"].as_u64().unwrap() as u32;
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let killed = Instant::now();
    wait_for_group(
        &state,
        "web",
        Duration::from_secs(120),
        "a replacement VM launched",
        |g| {
            let list = g["instances"].as_array().unwrap();
            list.len() == 1 && list[0]["id"] != victim["id"] && list[0]["version"] == 2
        },
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let replacement = loop {
        let vms = vms_below(&state);
        if vms.len() == 1 && vms[0] != pid {
            break vms[0];
        }
        assert!(Instant::now() < deadline, "qemu processes: {vms:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "bench: a killed VM's replacement (qemu pid {replacement}) started in {:?}",
        killed.elapsed()
    );
    let all = json(kiln(
        &state,
        &["instances", "ls", "--all", "--output", "json"],
    ));
    let gone = all
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == victim["id"])
        .unwrap();
    assert_eq!(gone["state"], "terminated");
    assert!(
        gone["reason"].as_str().unwrap().contains("exited"),
        "{gone}"
    );

    daemon.destroy(&["web"]);
    assert!(vms_below(&state).is_empty(), "{:?}", vms_below(&state));
    assert_eq!(
        std::fs::read_dir(state.join("instances")).unwrap().count(),
        0
    );
}
