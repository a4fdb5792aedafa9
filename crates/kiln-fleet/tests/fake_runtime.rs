//! The fleet controller driven through its runtime boundary by a runtime
//! that records what it is asked and runs each "instance" as a small HTTP
//! server on loopback. No root, no namespaces: what is tested is the
//! controller (capacity, health, rolling updates, rollback, self-healing,
//! adoption after a restart) and the load balancer in front of it.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_fleet::runtime::{Machine, Runtime, RuntimeError};
use kiln_fleet::*;
use kiln_lb::loadgen::{LoadOptions, LoadReport, StopHandle};
use kiln_sandbox::instance::InstanceIdentity;

/// What the runtime was asked to do, in order.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Launch { id: String, version: u32 },
    Stop { id: String },
    Adopt { id: String },
}

#[derive(Default)]
struct Recording {
    events: Vec<Event>,
    running: HashMap<String, Arc<FakeMachine>>,
    /// The most instances running at once.
    peak: usize,
}

/// Machines share the recording with their runtime, so that a stopped
/// machine leaves the running set.
#[derive(Default)]
struct FakeRuntime {
    log: Arc<Mutex<Recording>>,
    next_pid: AtomicU32,
}

impl FakeRuntime {
    fn events(&self) -> Vec<Event> {
        self.log.lock().unwrap().events.clone()
    }

    fn running(&self) -> Vec<Arc<FakeMachine>> {
        self.log.lock().unwrap().running.values().cloned().collect()
    }

    fn peak(&self) -> usize {
        self.log.lock().unwrap().peak
    }

    fn reset_peak(&self) {
        let mut log = self.log.lock().unwrap();
        log.peak = log.running.len();
    }
}

impl Runtime for FakeRuntime {
    fn launch(
        &self,
        id: &str,
        _dir: &Path,
        _group: &Group,
        template: &Template,
    ) -> Result<Arc<dyn Machine>, RuntimeError> {
        let healthy = template.spec.env.get("HEALTH").map(String::as_str) != Some("fail");
        let pid = 1000 + self.next_pid.fetch_add(1, Ordering::SeqCst);
        let machine = FakeMachine::start(id, template.version, healthy, pid, self.log.clone());
        let mut log = self.log.lock().unwrap();
        log.events.push(Event::Launch {
            id: id.into(),
            version: template.version,
        });
        log.running.insert(id.into(), machine.clone());
        log.peak = log.peak.max(log.running.len());
        Ok(machine)
    }

    fn adopt(&self, instance: &Instance) -> Option<Arc<dyn Machine>> {
        let mut log = self.log.lock().unwrap();
        let machine = log
            .running
            .get(&instance.id)
            .filter(|m| m.alive.load(Ordering::SeqCst) && m.pid == instance.pid)
            .cloned()?;
        log.events.push(Event::Adopt {
            id: instance.id.clone(),
        });
        Some(machine)
    }

    fn cleanup(&self, _dir: &Path) {}

    fn reap(&self, _instances_dir: &Path, live: &[(String, Arc<dyn Machine>)]) {
        let mut log = self.log.lock().unwrap();
        let orphans: Vec<String> = log
            .running
            .keys()
            .filter(|id| !live.iter().any(|(l, _)| l == *id))
            .cloned()
            .collect();
        for id in orphans {
            if let Some(m) = log.running.remove(&id) {
                m.alive.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// An instance: an HTTP server answering `/health` (200, or 500 when told
/// to be unhealthy) and `/` with its id and version.
struct FakeMachine {
    id: String,
    version: u32,
    pid: u32,
    addr: SocketAddr,
    alive: AtomicBool,
    log: Arc<Mutex<Recording>>,
}

impl FakeMachine {
    fn start(
        id: &str,
        version: u32,
        healthy: bool,
        pid: u32,
        log: Arc<Mutex<Recording>>,
    ) -> Arc<FakeMachine> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let machine = Arc::new(FakeMachine {
            id: id.into(),
            version,
            pid,
            addr: listener.local_addr().unwrap(),
            alive: AtomicBool::new(true),
            log,
        });
        let m = machine.clone();
        std::thread::spawn(move || {
            while m.alive.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let m = m.clone();
                        std::thread::spawn(move || serve(stream, &m, healthy));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        machine
    }

    /// Dies as a crashed process does: it stops answering and is no
    /// longer alive.
    fn crash(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

fn serve(mut stream: TcpStream, m: &FakeMachine, healthy: bool) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        if !m.alive.load(Ordering::SeqCst) {
            return;
        }
        let head = String::from_utf8_lossy(&head);
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = match path {
            "/health" if healthy => ("200 OK", "ok\n".to_string()),
            "/health" => ("500 Internal Server Error", "unhealthy\n".to_string()),
            _ => ("200 OK", format!("{} version {}\n", m.id, m.version)),
        };
        let close = head.to_ascii_lowercase().contains("connection: close");
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if stream.write_all(reply.as_bytes()).is_err() || close {
            return;
        }
    }
}

impl Machine for FakeMachine {
    fn identity(&self) -> InstanceIdentity {
        InstanceIdentity {
            pid: self.pid,
            start_time: 1,
            init_pid: self.pid,
        }
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn connect(&self, _port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
        if !self.is_alive() {
            return Err(std::io::ErrorKind::ConnectionRefused.into());
        }
        TcpStream::connect_timeout(&self.addr, timeout)
    }

    fn stop(&self, _grace: Duration) {
        self.alive.store(false, Ordering::SeqCst);
        let mut log = self.log.lock().unwrap();
        log.running.remove(&self.id);
        log.events.push(Event::Stop {
            id: self.id.clone(),
        });
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    runtime: Arc<FakeRuntime>,
    fleet: Fleet,
    image: String,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // A one-file image: the fake runtime never reads it, but templates
    // name images the store must hold.
    let store = kiln_image::Store::open(&state.join("images")).unwrap();
    let image = {
        let _lock = store.lock().unwrap();
        let tree = store.temp_path("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("app"), "app\n").unwrap();
        kiln_image::import::image_from_tree(&store, &tree, "app", "1.0.0".parse().unwrap(), "test")
            .unwrap()
    };
    let runtime = Arc::new(FakeRuntime::default());
    let fleet = Fleet::with_runtime(&state, runtime.clone()).unwrap();
    fleet.start().await.unwrap();
    Setup {
        _dir: dir,
        state,
        runtime,
        fleet,
        image: image.digest(),
    }
}

fn template(s: &Setup, env: &[(&str, &str)]) -> Template {
    s.fleet
        .create_template(
            "web",
            TemplateSpec {
                image: s.image.clone(),
                entrypoint: Some(vec!["/app".into()]),
                cmd: None,
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                secrets: BTreeMap::new(),
                memory_max: None,
                pids_max: None,
                tags: BTreeMap::new(),
                init: None,
                driver: Default::default(),
            },
        )
        .unwrap()
}

/// Group `web` of `desired` instances of template version 1, all in
/// service.
async fn serving_group(s: &Setup, desired: u32) -> GroupView {
    template(s, &[]);
    let view = s
        .fleet
        .create_group("web", "web", None, spec(desired, RollingPolicy::default()))
        .await
        .unwrap();
    wait_for("the group in service", || {
        settled(&s.fleet, "web", 1, desired as usize)
    })
    .await;
    view
}

/// A new template version with `env`, and the group rolling to it.
fn roll(s: &Setup, env: &[(&str, &str)]) {
    let version = template(s, env).version;
    s.fleet
        .update_group(
            "web",
            GroupUpdate {
                template_version: Some(version),
                ..Default::default()
            },
        )
        .unwrap();
}

fn spec(desired: u32, rolling: RollingPolicy) -> GroupSpec {
    GroupSpec {
        min: 0,
        max: desired * 3,
        desired,
        port: 8080,
        lb_port: 0,
        health: HealthCheck {
            path: "/health".into(),
            interval_ms: 50,
            timeout_ms: 500,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            grace_period_ms: 0,
        },
        rolling,
        deregistration_delay_ms: 100,
        ..GroupSpec::default()
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn serving_versions(fleet: &Fleet, group: &str) -> Vec<u32> {
    let mut v: Vec<u32> = fleet
        .instances(Some(group), false)
        .unwrap()
        .iter()
        .filter(|i| i.state == InstanceState::InService)
        .map(|i| i.version)
        .collect();
    v.sort();
    v
}

fn settled(fleet: &Fleet, group: &str, version: u32, desired: usize) -> bool {
    let all = fleet.instances(Some(group), false).unwrap();
    all.len() == desired
        && all
            .iter()
            .all(|i| i.state == InstanceState::InService && i.version == version)
}

/// Requests through the group's load balancer until stopped.
fn load(view: &GroupView) -> (tokio::task::JoinHandle<LoadReport>, StopHandle) {
    let addr = view
        .load_balancer
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let opts = LoadOptions {
        concurrency: 2,
        max_requests: u64::MAX,
        max_duration: Duration::from_secs(120),
        ..LoadOptions::default()
    };
    kiln_lb::loadgen::spawn(addr, opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_replaces_every_instance_behind_the_balancer_with_no_failed_request() {
    let s = setup().await;
    let view = serving_group(&s, 3).await;

    let (traffic, stop) = load(&view);
    s.runtime.reset_peak();
    roll(&s, &[("RELEASE", "2")]);
    // The rollout is marked succeeded just after its last instance
    // settles: both are waited for.
    wait_for("the rollout to version 2", || {
        settled(&s.fleet, "web", 2, 3)
            && s.fleet.group("web").is_ok_and(|v| {
                v.rollouts
                    .last()
                    .is_some_and(|r| r.state != RolloutState::InProgress)
            })
    })
    .await;
    let view = s.fleet.group("web").unwrap();
    assert_eq!(view.rollouts.last().unwrap().state, RolloutState::Succeeded);
    stop.stop();
    let report = traffic.await.unwrap();
    assert_eq!(
        report.failed, 0,
        "failed requests during the rollout: {:?}",
        report.errors
    );
    assert!(report.ok > 0);
    assert!(
        report.bodies.keys().any(|b| b.contains("version 2")),
        "{:?}",
        report.bodies
    );
    assert!(
        s.runtime.peak() <= 4,
        "launch before terminate, one batch at a time: at most desired + 1 ran at once, saw {}",
        s.runtime.peak()
    );
    let launches_of_2 = s
        .runtime
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Launch { version: 2, .. }))
        .count();
    assert_eq!(launches_of_2, 3, "exactly one launch per replaced instance");
    assert_eq!(
        s.runtime.running().len(),
        3,
        "every old instance was stopped"
    );
    let stops = s
        .runtime
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Stop { .. }))
        .count();
    assert_eq!(stops, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_that_never_becomes_healthy_is_rolled_back_and_the_old_one_keeps_serving() {
    let s = setup().await;
    let view = serving_group(&s, 2).await;
    let (traffic, stop) = load(&view);
    roll(&s, &[("HEALTH", "fail")]);
    wait_for("the rollback", || {
        s.fleet
            .group("web")
            .unwrap()
            .rollouts
            .last()
            .is_some_and(|r| r.state == RolloutState::RolledBack)
    })
    .await;
    stop.stop();
    let report = traffic.await.unwrap();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(
        report.bodies.keys().all(|b| b.contains("version 1")),
        "{:?}",
        report.bodies
    );
    let view = s.fleet.group("web").unwrap();
    assert_eq!(view.group.version, 1);
    assert!(
        view.rollouts.last().unwrap().reason.contains("version 2"),
        "{:?}",
        view.rollouts.last()
    );
    assert_eq!(serving_versions(&s.fleet, "web"), [1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_instance_is_replaced_and_a_restarted_controller_adopts_the_rest() {
    let s = setup().await;
    serving_group(&s, 2).await;
    let victim = s.runtime.running()[0].clone();
    victim.crash();
    wait_for("a replacement", || {
        settled(&s.fleet, "web", 1, 2)
            && !s
                .fleet
                .instances(Some("web"), false)
                .unwrap()
                .iter()
                .any(|i| i.id == victim.id)
    })
    .await;
    let all = s.fleet.instances(Some("web"), true).unwrap();
    let dead = all.iter().find(|i| i.id == victim.id).unwrap();
    assert_eq!(dead.state, InstanceState::Terminated);
    assert_eq!(dead.reason, "its process exited");

    // A second controller on the same state, as after a daemon restart:
    // it adopts both running instances and launches nothing.
    s.fleet.shutdown().await;
    let before = s.runtime.events().len();
    let again = Fleet::with_runtime(&s.state, s.runtime.clone()).unwrap();
    again.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<Event> = s.runtime.events()[before..].to_vec();
    assert_eq!(
        after
            .iter()
            .filter(|e| matches!(e, Event::Adopt { .. }))
            .count(),
        2,
        "{after:?}"
    );
    assert!(
        !after.iter().any(|e| matches!(e, Event::Launch { .. })),
        "{after:?}"
    );
}
