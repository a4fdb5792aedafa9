//! Running the `kiln` binary as a user does, for every suite of this crate.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn kiln(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

/// The command's stdout; fails the test with both outputs if it failed.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn json(out: Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// `kiln serve` for one test's state directory.
pub struct Daemon {
    pub child: Option<Child>,
    pub state: PathBuf,
}

impl Daemon {
    pub fn start(state: &Path) -> Daemon {
        let _ = std::fs::remove_file(state.join("daemon.json"));
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--state-dir")
            .arg(state)
            .arg("serve")
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.join("daemon.json").exists() {
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child: Some(child),
            state: state.to_path_buf(),
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Stops the daemon and everything it started, as a test must leave nothing.
    pub fn destroy(&mut self, groups: &[&str]) {
        for g in groups {
            let _ = kiln(&self.state, &["groups", "rm", g]);
        }
        if let Some(c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let mut c = c;
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    /// A failed test still leaves no instance, process or mount behind.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in kiln_sandbox::instance::processes_with_root_below(&self.state) {
            for pid in [p.init_pid, p.pid] {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        for m in mounts_below(&self.state) {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

pub fn mounts_below(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

/// `groups inspect NAME` as JSON.
pub fn group(state: &Path, name: &str) -> Value {
    json(kiln(
        state,
        &["groups", "inspect", name, "--output", "json"],
    ))
}

/// Waits until `done` holds for the group, or fails with the group's
/// state and the tail of each instance's log.
pub fn wait_for_group(
    state: &Path,
    name: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let g = group(state, name);
        if done(&g) {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}: {g:#}\n{}",
            logs(state, &g)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every instance's console, for a failure message.
fn logs(state: &Path, g: &Value) -> String {
    let mut text = String::new();
    for i in g["instances"].as_array().into_iter().flatten() {
        let id = i["id"].as_str().unwrap_or_default();
        let out = kiln(state, &["instances", "logs", id]);
        let log = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        text.push_str(&format!("--- {id}:\n"));
        for line in tail.into_iter().rev() {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Rolls group `name` to template version `version` and waits until the
/// rollout succeeded with `count` instances of it in service.
pub fn roll_out(state: &Path, name: &str, version: u64, count: usize, limit: Duration) -> Value {
    ok(kiln(
        state,
        &[
            "groups",
            "update",
            name,
            "--template-version",
            &version.to_string(),
        ],
    ));
    wait_for_group(
        state,
        name,
        limit,
        &format!("the rollout to v{version}"),
        |g| serving(g, version, count) && g["rollouts"][0]["state"] == "succeeded",
    )
}

/// `count` instances, all of `version` and in service.
pub fn serving(g: &Value, version: u64, count: usize) -> bool {
    let instances = g["instances"].as_array().unwrap();
    instances.len() == count
        && instances
            .iter()
            .all(|i| i["version"] == version && i["state"] == "in-service")
}

/// The group's load balancer.
pub fn lb_addr(g: &Value) -> std::net::SocketAddr {
    g["load_balancer"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}
