//! CPU the daemon uses while 100 instances are health-checked every second.
//! Prints its figures.
//!
//! `cargo bench -p kiln --bench fleet_health [-- INSTANCES]`

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn kiln(state: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn main() {
    let count: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let recipe =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-image/recipe.yaml");
    kiln(&state, &["bake", recipe.to_str().unwrap()]);
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--state-dir")
        .arg(&state)
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !state.join("daemon.json").exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    kiln(&state, &["templates", "create", "web", "--image", "hello"]);
    let n = count.to_string();
    let started = Instant::now();
    kiln(
        &state,
        &[
            "groups",
            "create",
            "web",
            "--template",
            "web",
            "--desired",
            &n,
            "--max",
            &n,
            "--port",
            "18480",
            "--health",
            r#"{"path": "/health", "interval_ms": 1000, "healthy_threshold": 2, "unhealthy_threshold": 3}"#,
        ],
    );
    loop {
        let out = kiln(&state, &["instances", "ls", "--output", "json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if list
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["state"] == "in-service")
            .count()
            == count as usize
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the group never reached {count} healthy instances"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = started.elapsed();
    let ticks_per_second = 100.0;
    let window = Duration::from_secs(10);
    let before = cpu_ticks(daemon.id());
    std::thread::sleep(window);
    let used = (cpu_ticks(daemon.id()) - before) as f64 / ticks_per_second;
    println!("instances:                         {count}");
    println!(
        "time to {count} healthy instances:   {:>8.2} s",
        ready.as_secs_f64()
    );
    println!(
        "daemon CPU while health-checking:  {:>8.1} % of one core ({:.2} s CPU in {} s)",
        used / window.as_secs_f64() * 100.0,
        used,
        window.as_secs()
    );
    kiln(&state, &["groups", "rm", "web"]);
    let _ = daemon.kill();
    let _ = daemon.wait();
}
