//! The fleet as a user runs it: `kiln serve`, templates, groups of real
//! isolated instances behind the load balancer, rolling updates under load
//! (one batch at a time, one launch per replaced instance), automatic
//! rollback, self-healing, and recovery from `kill -9` (adopting the
//! instances still running).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    Daemon, group, json, kiln, lb_addr, mounts_below, ok, roll_out, serving, wait_for_group,
};
use kiln_lb::loadgen::{self, LoadOptions};
use serde_json::Value;

/// Bakes web/1.0.0, 2.0.0 (both healthy, answering "v1" / "v2") and 3.0.0
/// (its /health is gone, so it never passes a health check).
fn bake_versions(dir: &Path, state: &Path, port: u16) {
    let component = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-service.yaml");
    std::fs::write(
        dir.join("break-health.yaml"),
        "name: break-health\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Remove\n        action: DeleteFile\n        inputs:\n          - path: /opt/hello/www/health\n",
    )
    .unwrap();
    for (v, greeting, extra) in [
        ("1.0.0", "v1", ""),
        ("2.0.0", "v2", ""),
        ("3.0.0", "v3", "  - path: break-health.yaml\n"),
    ] {
        let recipe = dir.join(format!("web-{v}.yaml"));
        std::fs::write(
            &recipe,
            format!(
                "name: web\nversion: {v}\nparent: busybox\nshell: sh\ncomponents:\n  - path: {}\n    parameters: {{ Port: \"{port}\", Greeting: {greeting} }}\n{extra}working_directory: /opt/hello\nentrypoint: [\"/usr/local/bin/hello-service\"]\nport: {port}\n",
                component.display()
            ),
        )
        .unwrap();
        let out = ok(kiln(state, &["bake", recipe.to_str().unwrap()]));
        assert!(out.contains("available"), "{out}");
    }
}

/// Launch template web, versions 1 to 3, one per image (needs the daemon).
fn create_templates(state: &Path) {
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        ok(kiln(
            state,
            &["templates", "create", "web", "--image", &format!("web/{v}")],
        ));
    }
}

const HEALTH: &str = r#"{"path": "/health", "interval_ms": 300, "timeout_ms": 500, "healthy_threshold": 2, "unhealthy_threshold": 2}"#;

fn create_group(state: &Path, desired: u32, port: u16) -> Value {
    create_templates(state);
    let rolling = r#"{"max_batch_size": 2, "min_instances_in_service": 2, "pause_ms": 200, "batch_timeout_ms": 8000}"#;
    let d = desired.to_string();
    ok(kiln(
        state,
        &[
            "groups",
            "create",
            "web",
            "--template",
            "web",
            "--version",
            "1",
            "--desired",
            &d,
            "--max",
            &d,
            "--port",
            &port.to_string(),
            "--health",
            HEALTH,
            "--rolling",
            rolling,
        ],
    ));
    wait_for_group(state, "web", Duration::from_secs(30), "v1 serving", |g| {
        serving(g, 1, desired as usize)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn load(concurrency: usize) -> LoadOptions {
    LoadOptions {
        concurrency,
        max_requests: 2_000_000,
        max_duration: Duration::from_secs(90),
        path: "/index.html".into(),
        keep_alive: true,
        request_timeout: Duration::from_secs(10),
    }
}

#[test]
fn rolling_update_and_automatic_rollback_under_load_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    bake_versions(dir.path(), &state, 18601);
    let mut daemon = Daemon::start(&state);
    let g = create_group(&state, 4, 18601);
    let addr = lb_addr(&g);
    let rt = runtime();

    // v1 -> v2 under continuous load, counting the instances launching or
    // in service at once (draining ones are out of service: ALB and
    // instance refresh leave them out too).
    let (report, stop) = rt.block_on(async { loadgen::spawn(addr, load(4)) });
    let rolling = Arc::new(AtomicBool::new(true));
    let peak = {
        let (state, rolling) = (state.clone(), rolling.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while rolling.load(Ordering::Relaxed) {
                let alive = json(kiln(
                    &state,
                    &["instances", "ls", "--group", "web", "--output", "json"],
                ));
                let up = alive
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|i| i["state"] == "pending" || i["state"] == "in-service");
                peak = peak.max(up.count());
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let g = roll_out(&state, "web", 2, 4, Duration::from_secs(60));
    rolling.store(false, Ordering::Relaxed);
    stop.stop();
    let peak = peak.join().unwrap();
    assert!(
        (5..=6).contains(&peak),
        "launch before terminating, one batch of at most 2 at a time: 5 or 6 instances up at once, saw {peak}"
    );
    // One launch per replaced instance, and every replaced one stopped.
    let history = json(kiln(
        &state,
        &[
            "instances",
            "ls",
            "--all",
            "--group",
            "web",
            "--output",
            "json",
        ],
    ));
    let states = |version: u64| -> Vec<&str> {
        let all = history.as_array().unwrap().iter();
        all.filter(|i| i["version"] == version)
            .map(|i| i["state"].as_str().unwrap())
            .collect()
    };
    assert_eq!(states(1), ["terminated"; 4], "{history:#}");
    assert_eq!(states(2), ["in-service"; 4], "{history:#}");
    let report = rt.block_on(report).unwrap();
    assert_eq!(report.failed, 0, "{report:#?}");
    assert!(
        report.bodies.contains_key("<h1>v1</h1>") && report.bodies.contains_key("<h1>v2</h1>"),
        "{:?}",
        report.bodies
    );
    let after = rt.block_on(loadgen::run(
        addr,
        LoadOptions {
            max_requests: 200,
            ..load(2)
        },
    ));
    assert_eq!(after.bodies.keys().collect::<Vec<_>>(), ["<h1>v2</h1>"]);
    assert_eq!(g["rollouts"].as_array().unwrap().len(), 1);

    // v2 -> v3, whose health never passes: rolled back, still under load.
    let (report, stop) = rt.block_on(async { loadgen::spawn(addr, load(4)) });
    ok(kiln(
        &state,
        &["groups", "update", "web", "--template-version", "3"],
    ));
    let g = wait_for_group(
        &state,
        "web",
        Duration::from_secs(60),
        "the rollback to v2",
        |g| g["rollouts"][1]["state"] == "rolled-back" && g["version"] == 2 && serving(g, 2, 4),
    );
    stop.stop();
    let report = rt.block_on(report).unwrap();
    assert_eq!(report.failed, 0, "{report:#?}");
    assert!(!report.bodies.contains_key("<h1>v3</h1>"));
    assert!(
        g["rollouts"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("version 3"),
        "{g:#}"
    );
    let history = ok(kiln(
        &state,
        &["instances", "ls", "--all", "--group", "web"],
    ));
    assert!(
        history.contains("rolled back") || history.contains("failed its health checks"),
        "{history}"
    );
    daemon.destroy(&["web"]);
}

#[test]
fn a_killed_instance_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    bake_versions(dir.path(), &state, 18602);
    let mut daemon = Daemon::start(&state);
    let g = create_group(&state, 2, 18602);
    let victim = g["instances"][0].clone();
    let init = victim["init_pid"].as_u64().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    let app = children
        .split_whitespace()
        .next()
        .expect("the application runs under the namespace's init");
    let killed = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", app])
            .status()
            .unwrap()
            .success()
    );
    let g = wait_for_group(
        &state,
        "web",
        Duration::from_secs(20),
        "a replacement",
        |g| {
            serving(g, 1, 2)
                && g["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|i| i["id"] != victim["id"])
        },
    );
    // interval x unhealthy threshold, plus a generous start and health time.
    assert!(
        killed.elapsed() < Duration::from_millis(300 * 2) + Duration::from_secs(10),
        "{:?}",
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
    assert_eq!(g["instances"].as_array().unwrap().len(), 2);
    // Retention keeps the newest image (3.0.0) and the one the group's
    // current template version uses (1.0.0); template version 2 is neither
    // the group's current nor its previous one, so its image goes.
    let gc: Value = json(kiln(&state, &["gc", "--keep", "1", "--output", "json"]));
    assert_eq!(gc["images"], serde_json::json!(["web/2.0.0/1"]), "{gc}");
    let images = ok(kiln(&state, &["images", "ls"]));
    assert!(
        images.contains("web/1.0.0/1") && images.contains("web/3.0.0/1"),
        "{images}"
    );
    daemon.destroy(&["web"]);
}

#[test]
fn a_daemon_killed_mid_rollout_converges_after_restart_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    bake_versions(dir.path(), &state, 18603);
    let mut daemon = Daemon::start(&state);
    create_group(&state, 3, 18603);
    ok(kiln(
        &state,
        &["groups", "update", "web", "--template-version", "2"],
    ));
    // Kill it while some instances serve v2 and others v1.
    let in_service_v2 = |g: &Value| -> Vec<String> {
        let all = g["instances"].as_array().unwrap().iter();
        all.filter(|i| i["version"] == 2 && i["state"] == "in-service")
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let g = wait_for_group(
        &state,
        "web",
        Duration::from_secs(30),
        "a first v2 instance in service",
        |g| !in_service_v2(g).is_empty(),
    );
    let serving_at_kill = in_service_v2(&g);
    daemon.kill9();
    let mut daemon = Daemon::start(&state);
    let g = wait_for_group(
        &state,
        "web",
        Duration::from_secs(60),
        "convergence on v2",
        |g| serving(g, 2, 3) && g["rollouts"][0]["state"] == "succeeded",
    );
    // The restarted daemon adopted the v2 instances it found serving
    // rather than launching others in their place.
    let finished = in_service_v2(&g);
    assert!(
        serving_at_kill.iter().all(|id| finished.contains(id)),
        "serving at the kill: {serving_at_kill:?}; at the end: {finished:?}"
    );
    let addr = lb_addr(&g);
    let report = runtime().block_on(loadgen::run(
        addr,
        LoadOptions {
            max_requests: 100,
            ..load(2)
        },
    ));
    assert_eq!(
        (
            report.failed,
            report.bodies.keys().cloned().collect::<Vec<_>>()
        ),
        (0, vec!["<h1>v2</h1>".to_string()])
    );

    // Only what the group owns remains: its instance directories and mounts.
    let owned: Vec<String> = g["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    let dirs: Vec<String> = std::fs::read_dir(state.join("instances"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut sorted = dirs.clone();
    sorted.sort();
    let mut expected = owned.clone();
    expected.sort();
    assert_eq!(sorted, expected);
    let mounts = mounts_below(&state.join("instances"));
    assert_eq!(mounts.len(), 3, "{mounts:?}");

    daemon.destroy(&["web"]);
    assert!(
        mounts_below(&state).is_empty(),
        "{:?}",
        mounts_below(&state)
    );
    assert_eq!(
        std::fs::read_dir(state.join("instances")).unwrap().count(),
        0
    );
    assert!(kiln_sandbox::instance::processes_with_root_below(&state).is_empty());
}

/// `kiln groups create` takes the load balancer's target group attributes
/// as ALB names them, listings show them, and a value ALB would refuse is
/// refused with the flag and its bounds named.
#[test]
fn groups_take_the_load_balancer_attributes_as_flags() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let component = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-service.yaml");
    let recipe = dir.path().join("attrs.yaml");
    std::fs::write(
        &recipe,
        format!(
            "name: attrs\nversion: 1.0.0\nparent: busybox\nshell: sh\ncomponents:\n  - path: {}\n    parameters: {{ Port: \"18605\" }}\nworking_directory: /opt/hello\nentrypoint: [\"/usr/local/bin/hello-service\"]\nport: 18605\n",
            component.display()
        ),
    )
    .unwrap();
    ok(kiln(&state, &["bake", recipe.to_str().unwrap()]));
    let mut daemon = Daemon::start(&state);
    ok(kiln(
        &state,
        &["templates", "create", "attrs", "--image", "attrs/1.0.0"],
    ));
    let create = |extra: &[&str]| {
        let mut args = vec!["groups", "create", "attrs", "--template", "attrs"];
        args.extend_from_slice(&["--min", "0", "--desired", "0", "--port", "18605"]);
        args.extend_from_slice(extra);
        kiln(&state, &args)
    };

    for (flags, why) in [
        (&["--deregistration-delay", "3601"][..], "0 to 3600"),
        (&["--stickiness", "0"][..], "1 to 604800"),
        (&["--slow-start", "10"][..], "30 to 900"),
        (&["--algorithm", "fastest"][..], "round_robin"),
        (
            &["--slow-start", "60"][..],
            "needs algorithm round_robin; ALB refuses it with least_outstanding_requests",
        ),
        (
            &["--slow-start", "60", "--algorithm", "weighted_random"][..],
            "ALB refuses it with weighted_random",
        ),
        (
            &["--stickiness", "60", "--algorithm", "weighted_random"][..],
            "does not take sticky sessions",
        ),
        (&["--idle-timeout", "0"][..], "1 to 4000"),
        (&["--idle-timeout", "4001"][..], "1 to 4000"),
        (&["--lb-threads", "0"][..], "from 1 to 64 threads"),
        (&["--lb-threads", "65"][..], "from 1 to 64 threads"),
    ] {
        let out = create(flags);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was taken");
        assert!(
            stderr.contains(flags[0]) && stderr.contains(why),
            "{flags:?}: {stderr}"
        );
    }
    assert_eq!(
        json(kiln(&state, &["groups", "ls", "--output", "json"])),
        serde_json::json!([]),
        "a refused create left a group"
    );

    ok(create(&[
        "--deregistration-delay",
        "45",
        "--idle-timeout",
        "4000",
        "--algorithm",
        "round_robin",
        "--stickiness",
        "86400",
        "--slow-start",
        "30",
        "--lb-threads",
        "2",
    ]));
    let shown = json(kiln(
        &state,
        &["groups", "show", "attrs", "--output", "json"],
    ));
    let listed = json(kiln(&state, &["groups", "ls", "--output", "json"]));
    assert_eq!(listed[0]["spec"], shown["spec"]);
    assert_eq!(
        shown["spec"]["deregistration_delay_ms"], 45_000,
        "{shown:#}"
    );
    assert_eq!(shown["spec"]["lb_threads"], 2, "{shown:#}");
    assert_eq!(shown["spec"]["idle_timeout_ms"], 4_000_000, "{shown:#}");
    assert_eq!(
        shown["spec"]["routing"],
        serde_json::json!({
            "algorithm": "round_robin",
            "stickiness_ms": 86_400_000,
            "slow_start_ms": 30_000,
        }),
        "{shown:#}"
    );

    // `groups update` changes them on the serving balancer; flags not
    // given keep the group's values.
    let update = |extra: &[&str]| {
        let mut args = vec!["groups", "update", "attrs"];
        args.extend_from_slice(extra);
        kiln(&state, &args)
    };
    ok(update(&[
        "--desired",
        "1",
        "--algorithm",
        "least_outstanding_requests",
        "--slow-start",
        "0",
        "--idle-timeout",
        "1",
    ]));
    let g = wait_for_group(
        &state,
        "attrs",
        Duration::from_secs(60),
        "an instance in service",
        |g| serving(g, 1, 1),
    );
    assert_eq!(
        g["spec"]["routing"],
        serde_json::json!({ "algorithm": "least_outstanding_requests", "stickiness_ms": 86_400_000, "slow_start_ms": 0 }),
        "{g:#}"
    );
    assert_eq!(g["spec"]["idle_timeout_ms"], 1_000, "{g:#}");
    let lb = lb_addr(&g);
    let head = response_head(lb);
    assert!(
        head.contains("set-cookie: awsalb=") && head.contains("max-age=86400"),
        "{head}"
    );
    // The daemon serves the group's traffic on two threads of the balancer's
    // own, as `top -H` shows them.
    let daemon_pid = daemon.child.as_ref().unwrap().id();
    let mut threads: Vec<String> = std::fs::read_dir(format!("/proc/{daemon_pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .filter(|comm| comm.starts_with(&format!("kiln-lb-{}-", lb.port())))
        .collect();
    threads.sort();
    assert_eq!(
        threads,
        [
            format!("kiln-lb-{}-0", lb.port()),
            format!("kiln-lb-{}-1", lb.port())
        ]
    );

    ok(update(&["--no-stickiness", "--deregistration-delay", "0"]));
    let g = group(&state, "attrs");
    assert_eq!(g["spec"]["deregistration_delay_ms"], 0, "{g:#}");
    assert_eq!(g["spec"]["routing"]["stickiness_ms"], Value::Null, "{g:#}");
    let head = response_head(lb);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("set-cookie"), "stickiness is off: {head}");

    // Refused as at creation, and the group is left as it was.
    for (flags, why) in [
        (&["--stickiness", "604801"][..], "1 to 604800"),
        (&["--slow-start", "10"][..], "30 to 900"),
        (&["--idle-timeout", "4001"][..], "1 to 4000"),
        (
            &["--stickiness", "60", "--no-stickiness"][..],
            "cannot be used with",
        ),
    ] {
        let out = update(flags);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was taken");
        assert!(stderr.contains(why), "{flags:?}: {stderr}");
    }
    let out = update(&["--slow-start", "60"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("least_outstanding_requests"),
        "{out:?}"
    );
    ok(update(&[
        "--algorithm",
        "round_robin",
        "--slow-start",
        "30",
    ]));
    // The group's slow start stays, which weighted random refuses.
    let out = update(&["--algorithm", "weighted_random"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ALB refuses it with weighted_random"),
        "{out:?}"
    );
    let g = group(&state, "attrs");
    assert_eq!(
        g["spec"]["routing"],
        serde_json::json!({ "algorithm": "round_robin", "stickiness_ms": null, "slow_start_ms": 30_000 }),
        "{g:#}"
    );
    assert_eq!(g["spec"]["idle_timeout_ms"], 1_000);
    daemon.destroy(&["attrs"]);
}

/// The head of a GET / answered by `addr`, lowercased.
fn response_head(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.to_ascii_lowercase()
}
