//! Boot-mode figure: from `RunningInstance::start` of an instance that
//! boots its image's systemd until the service systemd started answers
//! `GET /health` with 200 through the instance's network namespace, and
//! until `systemctl is-system-running --wait` returns inside it. Prints
//! its figures. Needs root, overlayfs, bwrap, a writable cgroup v2
//! hierarchy and a Debian root with systemd and busybox, e.g.
//!
//! ```text
//! mmdebstrap --variant=minbase --include=systemd-sysv,busybox bookworm /tmp/boot-root
//! KILN_BOOT_ROOT=/tmp/boot-root cargo bench -p kiln-sandbox --bench boot_start
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_sandbox::{InstanceSpec, OverlayMount, RunningInstance};

const STARTS: usize = 5;
const PORT: u16 = 8080;

const UNIT: &str = "[Unit]\nDescription=web\n\n[Service]\nExecStart=/bin/busybox httpd -f -p 8080 -h /srv/www\n\n[Install]\nWantedBy=multi-user.target\n";

fn healthy(inst: &RunningInstance) -> bool {
    let Ok(mut s) = inst.netns().connect(PORT, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"HTTP/1.0 200") || buf[..n].starts_with(b"HTTP/1.1 200"),
        Err(_) => false,
    }
}

fn main() {
    let Some(lower) = std::env::var_os("KILN_BOOT_ROOT").map(PathBuf::from) else {
        eprintln!("set KILN_BOOT_ROOT to a root with systemd and busybox (see the file's doc)");
        std::process::exit(2);
    };
    let t = tempfile::tempdir().unwrap();
    // The service as a component would install it, in a layer above.
    let layer = t.path().join("layer");
    for d in ["etc/systemd/system/multi-user.target.wants", "srv/www"] {
        std::fs::create_dir_all(layer.join(d)).unwrap();
    }
    std::fs::write(layer.join("etc/systemd/system/web.service"), UNIT).unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/web.service",
        layer.join("etc/systemd/system/multi-user.target.wants/web.service"),
    )
    .unwrap();
    std::fs::write(layer.join("srv/www/health"), "ok\n").unwrap();

    let mut returned = Vec::new();
    let mut healthy_at = Vec::new();
    let mut booted_at = Vec::new();
    let mut stopped = Vec::new();
    for i in 0..STARTS {
        let dir = t.path().join(format!("i{i}"));
        let lowers: [&Path; 2] = [&layer, &lower];
        let mount = OverlayMount::mount(
            &lowers,
            &dir.join("upper"),
            &dir.join("work"),
            &dir.join("merged"),
        )
        .unwrap();
        let spec = InstanceSpec {
            id: format!("i-bootbench-{i}"),
            root: mount.merged().to_owned(),
            argv: vec!["/sbin/init".into()],
            cwd: "/".into(),
            log_dir: dir.join("logs"),
            boot: true,
            ..Default::default()
        };
        let t0 = Instant::now();
        let inst = RunningInstance::start(&spec).unwrap();
        returned.push(t0.elapsed());
        while !healthy(&inst) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "not healthy after 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        healthy_at.push(t0.elapsed());
        let state = inst
            .booted()
            .unwrap()
            .wait_until_booted(Duration::from_secs(60))
            .unwrap();
        booted_at.push(t0.elapsed());
        let s0 = Instant::now();
        inst.stop(Duration::from_secs(10)).unwrap();
        stopped.push(s0.elapsed());
        mount.unmount().unwrap();
        eprintln!("run {i}: systemd {state}");
    }
    let show = |name: &str, mut d: Vec<Duration>| {
        d.sort();
        println!(
            "{name:<48} min {:>7.0} ms  median {:>7.0} ms  max {:>7.0} ms",
            d[0].as_secs_f64() * 1e3,
            d[d.len() / 2].as_secs_f64() * 1e3,
            d[d.len() - 1].as_secs_f64() * 1e3
        );
    };
    println!("boot-mode instance, {STARTS} runs (systemd + busybox httpd unit):");
    show("  start() returned (systemd is pid 1)", returned);
    show("  GET /health answers 200 (start to healthy)", healthy_at);
    show("  is-system-running --wait returned", booted_at);
    show("  stop (SIGRTMIN+3 halt) took", stopped);
}
