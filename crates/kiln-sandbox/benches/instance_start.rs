//! Instance figures: how long from `RunningInstance::start` until the
//! instance's server accepts a connection through its network namespace,
//! and what a connection through a `Connector` costs next to a plain
//! loopback one. Prints its figures. Needs root, overlayfs and bwrap.
//!
//! `cargo bench -p kiln-sandbox --bench instance_start`

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_sandbox::{InstanceSpec, NetNs, OverlayMount, RunningInstance};

const STARTS: usize = 50;
const CONNECTS: usize = 2000;
const PORT: u16 = 8080;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut d: Vec<Duration>, unit_us: bool) {
    d.sort();
    let f = |d: Duration| {
        if unit_us {
            format!("{:.1} µs", d.as_secs_f64() * 1e6)
        } else {
            format!("{:.1} ms", d.as_secs_f64() * 1e3)
        }
    };
    println!(
        "{name:<44} p50 {:>9}  p90 {:>9}  p99 {:>9}  max {:>9}",
        f(percentile(&d, 0.5)),
        f(percentile(&d, 0.9)),
        f(percentile(&d, 0.99)),
        f(*d.last().unwrap())
    );
}

fn spec(id: &str, root: &Path, logs: &Path, argv: &[&str]) -> InstanceSpec {
    InstanceSpec {
        id: id.to_owned(),
        root: root.to_owned(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: "/".into(),
        log_dir: logs.to_owned(),
        ..Default::default()
    }
}

/// Accepts and drops connections until the listener is closed.
fn accept_forever(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
}

fn main() {
    let host = kiln_sandbox::probe::probe();
    if !(host.root && host.overlayfs && host.bwrap.is_some()) {
        eprintln!("skipped: needs root, overlayfs and bwrap");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("image");
    kiln_sandbox::busybox::assemble(&lower).unwrap();
    std::fs::create_dir_all(lower.join("www")).unwrap();
    std::fs::write(lower.join("www/index.html"), "hi\n").unwrap();
    let port = PORT.to_string();
    let httpd = ["httpd", "-f", "-p", &port, "-h", "/www"];

    // Start latency. The overlay is mounted outside the measurement, as
    // the fleet mounts it before it starts an instance.
    let mut returned = Vec::new();
    let mut accepting = Vec::new();
    for i in 0..STARTS {
        let dir = t.path().join(format!("i{i}"));
        let mount = OverlayMount::mount(
            &[&lower],
            &dir.join("upper"),
            &dir.join("work"),
            &dir.join("merged"),
        )
        .unwrap();
        let spec = spec(
            &format!("i-bench-{i}"),
            mount.merged(),
            &dir.join("logs"),
            &httpd,
        );
        let t0 = Instant::now();
        let inst = RunningInstance::start(&spec).unwrap();
        returned.push(t0.elapsed());
        loop {
            match inst.netns().connect(PORT, Duration::from_secs(1)) {
                Ok(_) => break,
                Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(e) => panic!("{e}"),
            }
        }
        accepting.push(t0.elapsed());
        inst.stop(Duration::ZERO).unwrap();
        mount.unmount().unwrap();
    }
    println!("instance start, {STARTS} runs (busybox httpd):");
    summary("  start() returned", returned, false);
    summary("  port accepts via NetNs", accepting, false);

    // Connection cost against the same accepting listener code, on the
    // host's loopback and inside an instance's namespace.
    let dir = t.path().join("conn");
    let mount = OverlayMount::mount(
        &[&lower],
        &dir.join("upper"),
        &dir.join("work"),
        &dir.join("merged"),
    )
    .unwrap();
    let inst = RunningInstance::start(&spec(
        "i-bench-conn",
        mount.merged(),
        &dir.join("logs"),
        &["sleep", "1000"],
    ))
    .unwrap();
    let ns_file = std::fs::File::open(format!("/proc/{}/ns/net", inst.identity.init_pid)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            ns_file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
        tx.send(()).unwrap();
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    rx.recv().unwrap();
    let host_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_addr = host_listener.local_addr().unwrap();
    accept_forever(host_listener);

    let timeout = Duration::from_secs(2);
    let measure = |f: &dyn Fn() -> TcpStream| -> Vec<Duration> {
        (0..CONNECTS)
            .map(|_| {
                let t0 = Instant::now();
                let s = f();
                let d = t0.elapsed();
                drop(s);
                d
            })
            .collect()
    };
    let netns: &NetNs = inst.netns();
    let connector = netns.connector().unwrap();
    // Warm up all three paths.
    for _ in 0..50 {
        TcpStream::connect_timeout(&host_addr, timeout).unwrap();
        connector.connect(PORT, timeout).unwrap();
        netns.connect(PORT, timeout).unwrap();
    }
    println!("connect + close, {CONNECTS} each:");
    summary(
        "  host loopback (std connect_timeout)",
        measure(&|| TcpStream::connect_timeout(&host_addr, timeout).unwrap()),
        true,
    );
    summary(
        "  instance namespace via Connector",
        measure(&|| connector.connect(PORT, timeout).unwrap()),
        true,
    );
    summary(
        "  instance namespace via NetNs::connect",
        measure(&|| netns.connect(PORT, timeout).unwrap()),
        true,
    );
    inst.stop(Duration::ZERO).unwrap();
    mount.unmount().unwrap();
}
