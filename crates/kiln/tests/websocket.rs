//! A WebSocket echo application behind a group, through a rolling update:
//! open connections stay until their instance's deregistration delay ends,
//! new ones reach the new version, and no handshake fails.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, json, kiln, ok};
use serde_json::Value;

const PORT: u16 = 18611;
const DEREGISTRATION_DELAY: Duration = Duration::from_secs(3);

/// RFC 6455 section 1.3's sample key and the accept value it must get.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Builds the echo application (std only, static) and bakes it into
/// ws/1.0.0 on a busybox root.
fn bake_echo_image(dir: &Path, state: &Path) {
    let tree = dir.join("tree");
    kiln_sandbox::busybox::assemble(&tree).unwrap();
    std::fs::create_dir_all(tree.join("usr/local/bin")).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/ws_echo.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let built = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(tree.join("usr/local/bin/ws-echo"))
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "building {}: {}",
        source.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    let rootfs = dir.join("rootfs.tar");
    let tar = Command::new("tar")
        .arg("-cf")
        .arg(&rootfs)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    std::fs::write(
        dir.join("mark.yaml"),
        "name: mark\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/ws-echo\n            content: echo\n",
    )
    .unwrap();
    let recipe = dir.join("ws.yaml");
    std::fs::write(
        &recipe,
        format!(
            "name: ws\nversion: 1.0.0\nparent: rootfs:{}\nshell: sh\ncomponents:\n  - path: mark.yaml\nentrypoint: [\"/usr/local/bin/ws-echo\", \"{PORT}\"]\nport: {PORT}\n",
            rootfs.display()
        ),
    )
    .unwrap();
    let out = ok(kiln(state, &["bake", recipe.to_str().unwrap()]));
    assert!(out.contains("available"), "{out}");
}

/// A group of two instances with a deregistration delay of its own.
fn create_group(state: &Path) {
    let health = r#"{"path": "/health", "interval_ms": 300, "timeout_ms": 500, "healthy_threshold": 2, "unhealthy_threshold": 2}"#;
    let rolling = r#"{"max_batch_size": 2, "min_instances_in_service": 2, "pause_ms": 200, "batch_timeout_ms": 15000}"#;
    let delay = DEREGISTRATION_DELAY.as_secs().to_string();
    let port = PORT.to_string();
    ok(kiln(
        state,
        &[
            "groups",
            "create",
            "ws",
            "--template",
            "ws",
            "--version",
            "1",
            "--min",
            "0",
            "--max",
            "2",
            "--desired",
            "2",
            "--port",
            &port,
            "--health",
            health,
            "--rolling",
            rolling,
            "--deregistration-delay",
            &delay,
        ],
    ));
}

fn group(state: &Path) -> Value {
    json(kiln(
        state,
        &["groups", "inspect", "ws", "--output", "json"],
    ))
}

fn wait_for(state: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let g = group(state);
        if done(&g) {
            return g;
        }
        assert!(Instant::now() < deadline, "{what} did not happen: {g:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serving(g: &Value, version: u64) -> bool {
    let instances = g["instances"].as_array().unwrap();
    instances.len() == 2
        && instances
            .iter()
            .all(|i| i["version"] == version && i["state"] == "in-service")
}

/// A client's WebSocket connection through the balancer.
struct Socket {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Socket {
    /// Opens one and completes the handshake; Err says how it failed.
    fn open(addr: SocketAddr) -> Result<Socket, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        write!(
            writer,
            "GET /chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .map_err(|e| format!("sending the handshake: {e}"))?;
        let mut reader = BufReader::new(stream);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| format!("reading the handshake: {e}; so far {head:?}"))?;
            if n == 0 || line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        let switched = head.first().is_some_and(|l| l.starts_with("HTTP/1.1 101"));
        let accepted = head
            .iter()
            .any(|l| l.eq_ignore_ascii_case(&format!("sec-websocket-accept: {ACCEPT}")));
        if !(switched && accepted) {
            return Err(format!("handshake answered {head:?}"));
        }
        Ok(Socket { reader, writer })
    }

    /// Sends a masked text frame and reads the reply's text.
    fn echo(&mut self, text: &str) -> Result<String, String> {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.writer
            .write_all(&frame)
            .map_err(|e| format!("send: {e}"))?;
        let mut head = [0u8; 2];
        self.reader
            .read_exact(&mut head)
            .map_err(|e| format!("receive: {e}"))?;
        if head[0] != 0x81 || head[1] >= 126 {
            return Err(format!("unexpected frame {head:?}"));
        }
        let mut payload = vec![0u8; head[1] as usize];
        self.reader
            .read_exact(&mut payload)
            .map_err(|e| format!("receive: {e}"))?;
        String::from_utf8(payload).map_err(|e| e.to_string())
    }

    fn close(mut self) {
        let _ = self.writer.write_all(&[0x88, 0x80, 0, 0, 0, 0]);
    }
}

/// When a new connection was opened, and its echo or how it failed.
type Opened = (Instant, Result<String, String>);

/// What an old connection saw while it echoed every 50 ms.
#[derive(Debug, Default)]
struct Held {
    version: String,
    last_echo: Option<Instant>,
    closed: Option<(Instant, String)>,
}

#[test]
fn websocket_connections_ride_out_a_rolling_update() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    bake_echo_image(dir.path(), &state);
    let mut daemon = Daemon::start(&state);
    for _ in 0..2 {
        ok(kiln(
            &state,
            &["templates", "create", "ws", "--image", "ws/1.0.0"],
        ));
    }
    create_group(&state);
    let g = wait_for(&state, "v1 serving", |g| serving(g, 1));
    let addr: SocketAddr = g["load_balancer"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();

    // Two long-lived connections on v1, echoing until they are closed.
    let held: Vec<Arc<Mutex<Held>>> = (0..2).map(|_| Arc::default()).collect();
    let keepers: Vec<_> = held
        .iter()
        .map(|h| {
            let mut socket = Socket::open(addr).expect("a v1 connection");
            let h = h.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(90);
                for n in 0.. {
                    if Instant::now() > deadline {
                        return;
                    }
                    match socket.echo(&format!("ping {n}")) {
                        Ok(reply) => {
                            let mut h = h.lock().unwrap();
                            let (version, rest) = reply.split_once(": ").unwrap();
                            assert_eq!(rest, format!("ping {n}"));
                            h.version = version.to_string();
                            h.last_echo = Some(Instant::now());
                        }
                        Err(e) => {
                            h.lock().unwrap().closed = Some((Instant::now(), e));
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();

    // New connections, one every 50 ms throughout: each must complete its
    // handshake and echo.
    let stop = Arc::new(AtomicBool::new(false));
    let opened: Arc<Mutex<Vec<Opened>>> = Arc::default();
    let opener = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = Socket::open(addr).and_then(|mut s| {
                    let reply = s.echo("hello");
                    s.close();
                    reply
                });
                opened.lock().unwrap().push((started, result));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    std::thread::sleep(Duration::from_millis(300));
    ok(kiln(
        &state,
        &["groups", "update", "ws", "--template-version", "2"],
    ));
    // The moment the old instances are seen draining: their drain began
    // before it, so every connection opened from here on must reach v2.
    wait_for(&state, "the v1 instances draining", |g| {
        g["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["version"] == 1 && i["state"] == "draining")
    });
    let drain_seen = Instant::now();
    wait_for(&state, "the rollout to v2", |g| {
        serving(g, 2) && g["rollouts"][0]["state"] == "succeeded"
    });
    for k in keepers {
        k.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    opener.join().unwrap();

    let opened = opened.lock().unwrap();
    let failed: Vec<_> = opened.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "failed handshakes or echoes: {failed:?}");
    let late: Vec<&String> = opened
        .iter()
        .filter(|(t, _)| *t >= drain_seen)
        .map(|(_, r)| r.as_ref().unwrap())
        .collect();
    assert!(late.len() >= 5, "{opened:?}");
    assert!(late.iter().all(|r| *r == "v2: hello"), "{late:?}");
    assert!(
        opened.iter().any(|(_, r)| r.as_deref() == Ok("v1: hello")),
        "no connection reached v1 before the update: {opened:?}"
    );

    for h in &held {
        let h = h.lock().unwrap();
        assert_eq!(h.version, "v1", "{h:?}");
        let (closed, why) = h.closed.clone().expect("closed when the delay ended");
        let last = h.last_echo.unwrap();
        // Still echoing well into the delay, closed once it ended (the
        // drain began at most the polling interval before it was seen).
        assert!(
            last >= drain_seen + DEREGISTRATION_DELAY - Duration::from_millis(1500),
            "{h:?}: last echo {:?} after the drain was seen",
            last.saturating_duration_since(drain_seen)
        );
        let open_for = closed.saturating_duration_since(drain_seen);
        assert!(
            open_for >= DEREGISTRATION_DELAY - Duration::from_millis(1000)
                && open_for <= DEREGISTRATION_DELAY + Duration::from_secs(5),
            "closed {open_for:?} after the drain was seen: {why}"
        );
    }
    daemon.destroy(&["ws"]);
}
