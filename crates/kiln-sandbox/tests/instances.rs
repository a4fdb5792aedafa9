//! Instances for real: bubblewrap sandboxes with their own network
//! namespaces, on overlays of one busybox image. Needs root, overlayfs and
//! bwrap; skipped (with a message) without them.
//!
//! `cargo test -p kiln-sandbox --test instances`

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_sandbox::instance::limits_available;
use kiln_sandbox::{
    InstanceError, InstanceIdentity, InstanceSpec, NetNs, OverlayMount, RunningInstance,
    processes_with_root_below,
};

/// Set in a re-executed copy of this binary that plays a daemon which is
/// then killed with SIGKILL.
const DAEMON_ENV: &str = "KILN_INSTANCE_TEST_DAEMON";

fn can_run() -> bool {
    let host = kiln_sandbox::probe::probe();
    kiln_sandbox::probe::require_for_test(
        "root, overlayfs and bwrap",
        host.root && host.overlayfs && host.bwrap.is_some(),
    )
}

/// A port free on the host, held by a listener for the whole test: the
/// instances bind the same port in their own namespaces, and connecting
/// to it from the host must reach this listener, not them.
fn host_port() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Every path below `dir` with its mode and content, to prove the image
/// layer is never written.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_dir() {
                walk(base, &path, out);
                Vec::new()
            } else if meta.is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&path).unwrap()
            };
            out.insert(
                path.strip_prefix(base).unwrap().to_owned(),
                (meta.mode(), content),
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Answers with what the instance itself sees: its processes, its
/// hostname, whether another instance's files are visible.
const LOOK_CGI: &str = r#"#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "hostname: $(hostname)"
echo "pids: $(ls /proc | grep '^[0-9]' | tr '\n' ' ')"
echo "sleepers: $(ps | grep -o '[s]leep 99000.' | tr '\n' ' ')"
for f in /www/marker-a /www/marker-b @HOST_DIR@; do
  test -e "$f" && echo "sees: $f"
done
echo end
"#;

struct Fixture {
    t: tempfile::TempDir,
    lower: PathBuf,
}

/// An instance on its own overlay, stopped when dropped so that a failed
/// test leaves nothing running (instances outlive their daemon by design).
struct Instance {
    name: String,
    running: Option<RunningInstance>,
    upper: PathBuf,
    merged: PathBuf,
    logs: PathBuf,
    _mount: OverlayMount,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop(Duration::ZERO);
        }
    }
}

impl Instance {
    fn get(&self) -> &RunningInstance {
        self.running.as_ref().unwrap()
    }
}

/// Whatever a failed test left running below the fixture is found the
/// way a restarted daemon finds it, and stopped.
impl Drop for Fixture {
    fn drop(&mut self) {
        for identity in processes_with_root_below(&self.instances_dir()) {
            if let Ok(Some(left)) = RunningInstance::adopt(identity) {
                eprintln!("stopping a leftover instance {identity:?}");
                let _ = left.stop(Duration::ZERO);
            }
        }
    }
}

impl Fixture {
    fn new() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("image");
        kiln_sandbox::busybox::assemble(&lower).unwrap();
        Fixture { t, lower }
    }

    fn instances_dir(&self) -> PathBuf {
        self.t.path().join("instances")
    }

    /// Mounts an overlay for `name` and writes its web root into it.
    fn prepare(&self, name: &str) -> (OverlayMount, PathBuf, PathBuf, PathBuf) {
        let dir = self.instances_dir().join(name);
        let upper = dir.join("upper");
        let mount = OverlayMount::mount(
            &[&self.lower],
            &upper,
            &dir.join("work"),
            &dir.join("merged"),
        )
        .unwrap();
        let merged = mount.merged().to_owned();
        std::fs::create_dir_all(merged.join("www/cgi-bin")).unwrap();
        std::fs::write(merged.join("www/index.html"), format!("page of {name}\n")).unwrap();
        std::fs::write(merged.join(format!("www/marker-{name}")), name).unwrap();
        let look = LOOK_CGI.replace("@HOST_DIR@", &self.instances_dir().display().to_string());
        std::fs::write(merged.join("www/cgi-bin/look"), look).unwrap();
        std::fs::set_permissions(
            merged.join("www/cgi-bin/look"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        (mount, upper, merged, dir.join("logs"))
    }

    fn spec(&self, name: &str, merged: &Path, logs: &Path, argv: &[&str]) -> InstanceSpec {
        InstanceSpec {
            id: format!("i-test-{name}-{}", std::process::id()),
            root: merged.to_owned(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("HOME".into(), "/root".into())],
            cwd: "/".into(),
            hostname: format!("host-{name}"),
            log_dir: logs.to_owned(),
            memory_max: None,
            pids_max: None,
            boot: false,
        }
    }

    fn start(&self, name: &str, argv: &[&str]) -> Instance {
        self.start_with(name, argv, |_| {})
    }

    fn start_with(
        &self,
        name: &str,
        argv: &[&str],
        edit: impl FnOnce(&mut InstanceSpec),
    ) -> Instance {
        let (mount, upper, merged, logs) = self.prepare(name);
        let mut spec = self.spec(name, &merged, &logs, argv);
        edit(&mut spec);
        let running = RunningInstance::start(&spec).unwrap();
        Instance {
            name: name.to_owned(),
            running: Some(running),
            upper,
            merged,
            logs,
            _mount: mount,
        }
    }
}

fn httpd(port: u16) -> Vec<String> {
    tagged_httpd(port, 0)
}

/// The shell writes into the root and starts a `sleep TAG` that another
/// instance's `ps` must not show, then becomes the server, which stays the
/// main process.
fn tagged_httpd(port: u16, tag: u32) -> Vec<String> {
    let script = format!(
        "echo started > /var/tmp/started; echo to-stdout; echo to-stderr >&2; \
         sleep {} & exec httpd -f -p {port} -h /www",
        990_000 + tag
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

fn argv(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// An HTTP/1.0 GET inside the namespace; retried while the server is
/// still coming up.
fn get(ns: &NetNs, port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match ns.connect(port, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: kiln\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

fn pid_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn two_instances_share_a_port_in_private_namespaces() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let before = snapshot(&fx.lower);
    let listener = host_port();
    let port = listener.local_addr().unwrap().port();
    let a = fx.start("a", &argv(&tagged_httpd(port, 1)));
    let b = fx.start("b", &argv(&tagged_httpd(port, 2)));

    // Same port, each its own page.
    for inst in [&a, &b] {
        let page = get(inst.get().netns(), port, "/");
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(
            page.ends_with(&format!("page of {}\n", inst.name)),
            "{page}"
        );
    }

    // From the host the port is the test's own listener.
    listener.set_nonblocking(true).unwrap();
    let from_host = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let accepted = eventually(Duration::from_secs(2), || listener.accept().is_ok());
    assert!(
        accepted,
        "the host's connection did not reach the host's listener"
    );
    drop(from_host);

    // Each sees its own processes, hostname and files only.
    let look_a = get(a.get().netns(), port, "/cgi-bin/look");
    let look_b = get(b.get().netns(), port, "/cgi-bin/look");
    for (look, name, other, tag) in [(&look_a, "a", "b", 1), (&look_b, "b", "a", 2)] {
        assert!(look.contains(&format!("hostname: host-{name}\n")), "{look}");
        // Its own background process, not the other's.
        assert!(look.contains(&format!("sleep 99000{tag}")), "{look}");
        assert!(!look.contains(&format!("sleep 99000{}", 3 - tag)), "{look}");
        assert!(
            look.contains(&format!("sees: /www/marker-{name}\n")),
            "{look}"
        );
        assert!(!look.contains(&format!("marker-{other}")), "{look}");
        let host_dir = fx.instances_dir().display().to_string();
        assert!(!look.contains(&format!("sees: {host_dir}")), "{look}");
        let pids: Vec<u32> = look
            .lines()
            .find_map(|l| l.strip_prefix("pids: "))
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert!(pids.contains(&1) && pids.contains(&2), "{look}");
        // The CGI's own pipeline adds a few; the host has hundreds.
        assert!(pids.len() < 20 && pids.iter().all(|&p| p < 100), "{look}");
    }
    let (init_a, init_b) = (a.get().identity.init_pid, b.get().identity.init_pid);
    assert_ne!(
        std::fs::read_link(format!("/proc/{init_a}/ns/net")).unwrap(),
        std::fs::read_link(format!("/proc/{init_b}/ns/net")).unwrap()
    );

    // Writes landed in each instance's upper directory only.
    for inst in [&a, &b] {
        assert_eq!(
            std::fs::read(inst.upper.join("var/tmp/started")).unwrap(),
            b"started\n"
        );
        let out = std::fs::read_to_string(inst.logs.join("stdout.log")).unwrap();
        let err = std::fs::read_to_string(inst.logs.join("stderr.log")).unwrap();
        assert!(out.contains("to-stdout"), "{out}");
        assert!(err.contains("to-stderr"), "{err}");
    }

    // processes_with_root_below finds both, and nothing outside the dir.
    let found = processes_with_root_below(&fx.instances_dir());
    for inst in [&a, &b] {
        assert!(found.contains(&inst.get().identity), "{found:?}");
    }
    assert!(processes_with_root_below(&fx.t.path().join("elsewhere")).is_empty());
    assert_eq!(processes_with_root_below(&a.merged), [a.get().identity]);

    drop(a);
    drop(b);
    assert_eq!(snapshot(&fx.lower), before, "the image layer changed");
}

#[test]
fn kill_main_ends_the_instance_and_stop_leaves_nothing() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let port = host_port().local_addr().unwrap().port();
    let crash = fx.start("crash", &argv(&httpd(port)));
    let id = crash.get().identity;
    // Served: the shell has started its background `sleep` and become
    // the server.
    get(crash.get().netns(), port, "/");
    crash.get().kill_main().unwrap();
    assert!(eventually(Duration::from_secs(5), || !crash
        .get()
        .is_alive()));
    // bwrap exits as soon as its init reports the main process's end;
    // the init stays for the background `sleep` until the reaper of the
    // daemon that started the instance kills it.
    assert!(eventually(Duration::from_secs(5), || !pid_exists(
        id.init_pid
    )));
    assert!(eventually(Duration::from_secs(5), || crash
        .get()
        .exit_status()
        .is_some()));
    let status = crash.get().exit_status().unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(matches!(
        crash.get().kill_main(),
        Err(InstanceError::NotRunning { .. })
    ));
    crash.get().stop(Duration::from_secs(1)).unwrap();

    // A polite server stops at SIGTERM, well before the grace period.
    let polite = fx.start("polite", &argv(&httpd(port)));
    let id = polite.get().identity;
    get(polite.get().netns(), port, "/");
    let t = Instant::now();
    polite.get().stop(Duration::from_secs(20)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!pid_exists(id.pid) && !pid_exists(id.init_pid));
    assert!(processes_with_root_below(&polite.merged).is_empty());

    // One that ignores SIGTERM is killed after the grace period, with the
    // children it started.
    let stubborn = fx.start(
        "stubborn",
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM; touch /tmp/trapped; sleep 1000 & while true; do sleep 1; done",
        ],
    );
    let id = stubborn.get().identity;
    // start returns once the shell runs, maybe before its trap is set.
    assert!(eventually(Duration::from_secs(5), || stubborn
        .upper
        .join("tmp/trapped")
        .exists()));
    let t = Instant::now();
    stubborn.get().stop(Duration::from_millis(300)).unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert!(!pid_exists(id.pid) && !pid_exists(id.init_pid));
    assert!(processes_with_root_below(&stubborn.merged).is_empty());
    // Stopping twice is harmless.
    stubborn.get().stop(Duration::ZERO).unwrap();
}

#[test]
fn a_dropped_instance_is_adopted_again() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let port = host_port().local_addr().unwrap().port();
    let mut inst = fx.start("adopt", &argv(&httpd(port)));
    let identity = inst.get().identity;
    drop(inst.running.take());
    assert!(
        pid_exists(identity.pid),
        "dropping must not stop the instance"
    );

    let adopted = RunningInstance::adopt(identity)
        .unwrap()
        .expect("still running");
    assert!(adopted.is_alive());
    assert_eq!(adopted.identity, identity);
    let page = get(adopted.netns(), port, "/");
    assert!(page.ends_with("page of adopt\n"), "{page}");
    let connector = adopted.netns().connector().unwrap();
    connector.connect(port, Duration::from_secs(2)).unwrap();
    inst.running = Some(adopted);
    inst.get().stop(Duration::from_secs(5)).unwrap();
    assert!(RunningInstance::adopt(identity).unwrap().is_none());
    // The connector's namespace is empty now.
    assert!(connector.connect(port, Duration::from_secs(2)).is_err());
}

#[test]
fn start_failures_name_the_instance_and_quote_stderr() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let (_mount, _upper, merged, logs) = fx.prepare("broken");
    let spec = fx.spec("broken", &merged, &logs, &["/no/such/entrypoint"]);
    let err = RunningInstance::start(&spec).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, InstanceError::ExitedAtStart { .. }), "{text}");
    assert!(text.contains(&spec.id), "{text}");
    assert!(text.contains("/no/such/entrypoint"), "{text}");

    let mut bad_root = spec.clone();
    bad_root.root = fx.t.path().join("missing-root");
    let err = RunningInstance::start(&bad_root).unwrap_err();
    assert!(err.to_string().contains("missing-root"), "{err}");
}

#[test]
fn memory_and_pids_limits_hold_inside_the_instance() {
    if !can_run()
        || !kiln_sandbox::probe::require_for_test(
            "writable memory and pids cgroup controllers (v2, or v1 on a hybrid host)",
            limits_available(),
        )
    {
        return;
    }
    let fx = Fixture::new();
    // 100 MiB in one buffer against a 64 MiB limit, then more processes
    // than 32 allow (the shell gives up at the first fork refused).
    let script = "dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null; echo \"dd exit $?\"; \
                  i=0; while [ $i -lt 40 ]; do sleep 1000 & i=$((i+1)); done; \
                  echo all-forked";
    let inst = fx.start_with("limited", &["/bin/sh", "-c", script], |s| {
        s.memory_max = Some(64 << 20);
        s.pids_max = Some(32);
    });
    let id = inst.get().id().unwrap().to_owned();
    let init = inst.get().identity.init_pid;
    let own = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    assert!(
        own.lines().any(|l| l.ends_with(&format!(":/kiln/{id}"))),
        "{own}"
    );
    let read = |name: &str| std::fs::read_to_string(inst.logs.join(name)).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read("stderr.log").contains("can't fork") && !read("stdout.log").contains("all-forked") {
        assert!(
            Instant::now() < deadline,
            "the script never got to its forks: {}",
            read("stdout.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = read("stdout.log");
    assert!(
        out.contains("dd exit 137"),
        "the memory limit did not stop dd: {out}"
    );
    assert!(
        !out.contains("all-forked"),
        "the pids limit let 40 more processes start"
    );
    inst.get().stop(Duration::from_secs(5)).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if matches!(f.get(2), Some(&"cgroup") | Some(&"cgroup2")) {
            let group = Path::new(f[1]).join("kiln").join(&id);
            assert!(!group.exists(), "{} remains after stop", group.display());
        }
    }
}

/// The daemon half of `instances_survive_a_killed_daemon`, which runs
/// that same test in a copy of this binary with `DAEMON_ENV` set: starts
/// an instance, prints its identity, and waits to be killed.
fn daemon_child(root: String) {
    let port: u16 = std::env::var("KILN_INSTANCE_TEST_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let spec = InstanceSpec {
        id: format!("i-test-daemon-{}", std::process::id()),
        root: root.into(),
        argv: httpd(port),
        cwd: "/".into(),
        log_dir: std::env::var("KILN_INSTANCE_TEST_LOGS").unwrap().into(),
        ..Default::default()
    };
    let running = RunningInstance::start(&spec).unwrap();
    let InstanceIdentity {
        pid,
        start_time,
        init_pid,
    } = running.identity;
    println!("IDENTITY {pid} {start_time} {init_pid}");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn instances_survive_a_killed_daemon() {
    if let Ok(root) = std::env::var(DAEMON_ENV) {
        return daemon_child(root);
    }
    if !can_run() {
        return;
    }
    let fx = Fixture::new();
    let port = host_port().local_addr().unwrap().port();
    let (_mount, _upper, merged, logs) = fx.prepare("survivor");
    let mut daemon = Command::new(std::env::current_exe().unwrap())
        .args([
            "instances_survive_a_killed_daemon",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DAEMON_ENV, &merged)
        .env("KILN_INSTANCE_TEST_PORT", port.to_string())
        .env("KILN_INSTANCE_TEST_LOGS", &logs)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut identity = None;
    for line in BufReader::new(daemon.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // The harness prints the test's name on the same line first.
        if let Some((_, rest)) = line.split_once("IDENTITY ") {
            let n: Vec<u64> = rest.split(' ').map(|w| w.parse().unwrap()).collect();
            identity = Some(InstanceIdentity {
                pid: n[0] as u32,
                start_time: n[1],
                init_pid: n[2] as u32,
            });
            break;
        }
    }
    let identity = identity.expect("the daemon printed no identity");
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let adopted = RunningInstance::adopt(identity).unwrap();
    let Some(adopted) = adopted else {
        panic!("the instance died with its daemon");
    };
    let guard = Instance {
        name: "survivor".into(),
        running: Some(adopted),
        upper: PathBuf::new(),
        merged: merged.clone(),
        logs,
        _mount,
    };
    let page = get(guard.get().netns(), port, "/");
    assert!(page.ends_with("page of survivor\n"), "{page}");
    assert!(processes_with_root_below(&merged).contains(&identity));

    // A crash of an adopted instance: bwrap exits with the main process,
    // but its init stays for the background `sleep` (no reaper of this
    // process watches it) until stop ends the rest.
    guard.get().kill_main().unwrap();
    assert!(eventually(Duration::from_secs(5), || !guard
        .get()
        .is_alive()));
    assert!(pid_exists(identity.init_pid));
    assert_eq!(
        processes_with_root_below(&merged),
        [InstanceIdentity {
            pid: identity.init_pid,
            start_time: std::fs::read_to_string(format!("/proc/{}/stat", identity.init_pid))
                .unwrap()
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .nth(19)
                .unwrap()
                .parse()
                .unwrap(),
            init_pid: identity.init_pid,
        }],
        "the orphaned init is listed by itself"
    );
    guard.get().stop(Duration::from_secs(5)).unwrap();
    assert!(!guard.get().is_alive());
    assert!(!pid_exists(identity.init_pid));
}

/// A deployed application is as confined as a build step: the host's own
/// core_pattern written back (so a sandbox that let it through changes
/// nothing) is refused, /proc/keys reads empty, seccomp is on and a user
/// namespace cannot be made.
#[test]
fn an_instance_cannot_write_a_sysctl_or_make_namespaces() {
    assert!(can_run(), "instances need root, overlayfs and bwrap");
    let fx = Fixture::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let script = r#"
        v=$(cat /proc/sys/kernel/core_pattern)
        if echo "$v" > /proc/sys/kernel/core_pattern; then echo sysctl written; else echo sysctl refused; fi
        grep '^Seccomp:' /proc/self/status
        echo keys $(wc -c < /proc/keys)
        if unshare -U true; then echo unshare allowed; else echo unshare refused; fi
        echo done
    "#;
    let app = format!("({script}) > /var/tmp/probe 2>/var/tmp/probe.err; exec sleep 99000");
    let inst = fx.start("probe", &["/bin/sh", "-c", &app]);
    let probe = inst.upper.join("var/tmp/probe");
    assert!(
        eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(&probe).is_ok_and(|s| s.ends_with("done\n"))
        }),
        "the probe never finished: {:?}",
        std::fs::read_to_string(&probe)
    );
    let stderr = std::fs::read_to_string(inst.upper.join("var/tmp/probe.err")).unwrap();
    assert_eq!(
        std::fs::read_to_string(&probe).unwrap(),
        "sysctl refused\nSeccomp:\t2\nkeys 0\nunshare refused\ndone\n",
        "{stderr}"
    );
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        host
    );
}
