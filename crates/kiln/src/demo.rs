//! `kiln demo`: the whole pipeline on a sample repository. It writes the
//! repository, starts a daemon if none runs, runs the first execution to a
//! two-instance group behind the load balancer, then commits a change and
//! rolls it out under load, and reports each stage's time.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::client::Client;
use crate::output::{Format, print_json};
use crate::pipeline_cmd::follow_execution;
use crate::state::StateDir;

/// The sample repository, as committed first.
pub const FILES: &[(&str, &str, u32)] = &[
    ("kiln.yaml", include_str!("demo/kiln.yaml"), 0o644),
    ("buildspec.yml", include_str!("demo/buildspec.yml"), 0o644),
    (
        "components/app.yaml",
        include_str!("demo/components/app.yaml"),
        0o644,
    ),
    ("app/index.html", include_str!("demo/app/index.html"), 0o644),
    ("app/serve", include_str!("demo/app/serve"), 0o755),
];

/// Marks a directory `kiln demo` made, which it may replace.
const MARK: &str = ".kiln-demo";

#[derive(Args)]
pub struct DemoArgs {
    /// Where the sample repository goes (replaced if an earlier demo made it).
    #[arg(long, default_value = "kiln-demo")]
    dir: PathBuf,
    /// Leave the pipeline, group and daemon running when the demo ends.
    #[arg(long)]
    keep: bool,
    /// End after the second rollout instead of serving until Ctrl-C
    /// (the default when not attached to a terminal).
    #[arg(long)]
    exit: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

static STOP: AtomicBool = AtomicBool::new(false);

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Ctrl-C and SIGTERM set STOP; the demo then cleans up at its next step.
fn catch_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            STOP.store(true, Ordering::SeqCst);
        });
    });
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=kiln demo",
            "-c",
            "user.email=demo@kiln.invalid",
        ])
        .args(args);
    let out = kiln_sandbox::tool::run(&mut cmd).context("git (apt-get install git)")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Writes the sample repository and commits it on main.
pub fn write_repo(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        anyhow::ensure!(
            dir.join(MARK).exists(),
            "{} exists and was not made by kiln demo; choose another --dir",
            dir.display()
        );
        std::fs::remove_dir_all(dir)?;
    }
    for (path, text, mode) in FILES {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("a parent"))?;
        std::fs::write(&p, text)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
    }
    std::fs::write(dir.join(MARK), "made by kiln demo\n")?;
    std::fs::write(dir.join(".gitignore"), format!("{MARK}\n"))?;
    git(dir, &["init", "--quiet", "--initial-branch=main"])?;
    git(dir, &["add", "."])?;
    git(
        dir,
        &["commit", "--quiet", "-m", "The demo site, first version"],
    )?;
    Ok(())
}

/// The change the demo rolls out second.
pub fn second_commit(dir: &Path) -> anyhow::Result<String> {
    let page = dir.join("app/index.html");
    let text = std::fs::read_to_string(&page)?.replace(
        "<h1>Hello from kiln</h1>",
        "<h1>Hello again from kiln: a second commit</h1>",
    );
    std::fs::write(&page, text)?;
    git(dir, &["commit", "--quiet", "-am", "A new greeting"])?;
    git(dir, &["rev-parse", "HEAD"])
}

/// A daemon for this state directory: the running one, or a new child.
struct Daemon {
    child: Option<std::process::Child>,
}

impl Daemon {
    fn ensure(state: &StateDir) -> anyhow::Result<(Daemon, Client)> {
        if let Ok(c) = Client::connect(state)
            && c.get("/v1/health").is_ok()
        {
            say!(
                "==> using the kiln daemon already running for {}",
                state.path.display()
            );
            return Ok((Daemon { child: None }, c));
        }
        std::fs::create_dir_all(&state.path)?;
        // A stale file from a daemon that is not running (checked above);
        // the new daemon writes its own, and waiting for it below fails loudly.
        let _ = std::fs::remove_file(state.join(crate::serve::DAEMON_FILE));
        let log = std::fs::File::create(state.join("demo-daemon.log"))?;
        // Its own process group: Ctrl-C reaches the demo, which destroys
        // the pipeline through the daemon before stopping it.
        use std::os::unix::process::CommandExt;
        let child = Command::new(std::env::current_exe()?)
            .arg("--state-dir")
            .arg(&state.path)
            .arg("serve")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kiln serve")?;
        let mut daemon = Daemon { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(c) = Client::connect(state)
                && c.get("/v1/health").is_ok()
            {
                say!(
                    "==> started a kiln daemon (log: {})",
                    state.join("demo-daemon.log").display()
                );
                return Ok((daemon, c));
            }
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the kiln daemon exited ({status}); see {}",
                    state.join("demo-daemon.log").display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the kiln daemon did not start in 60s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The demo is ending; a daemon already gone is what is wanted.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(child.id() as i32).expect("a child pid"),
                rustix::process::Signal::TERM,
            );
            // Reaps it; an error means it was reaped already.
            let _ = child.wait();
        }
    }
}

/// Requests to the load balancer in a loop, until stopped: kiln-lb's
/// load generator, one request at a time, on a runtime of its own.
struct Load {
    stop: kiln_lb::loadgen::StopHandle,
    thread: std::thread::JoinHandle<Option<kiln_lb::loadgen::LoadReport>>,
}

impl Load {
    fn start(url: &str) -> anyhow::Result<Load> {
        let addr: std::net::SocketAddr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("the load balancer's address {url}"))?;
        let opts = kiln_lb::loadgen::LoadOptions {
            concurrency: 1,
            max_requests: u64::MAX,
            max_duration: Duration::from_secs(24 * 3600),
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            rt.block_on(async {
                let (task, stop) = kiln_lb::loadgen::spawn(addr, opts);
                tx.send(stop).ok()?;
                task.await.ok()
            })
        });
        let stop = rx.recv().context("the load generator did not start")?;
        Ok(Load { stop, thread })
    }

    /// Stops the load; the requests that got a 2xx and those that did not.
    fn finish(self) -> (u64, u64) {
        self.stop.stop();
        match self.thread.join() {
            Ok(Some(report)) => (report.ok, report.failed),
            // The load thread only counts requests; if it panicked the
            // counts are lost, and the demo says so by reporting none.
            _ => (0, 0),
        }
    }
}

fn page(url: &str) -> String {
    ureq::get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

fn seconds_between(a: &str, b: &str) -> f64 {
    match (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()) {
        (Ok(a), Ok(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    }
}

/// Each stage's wall time, and the execution's from creation to its end.
fn timings(e: &Value) -> Value {
    let mut stages = Vec::new();
    for s in e["stages"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or_default();
        stages.push(json!({
                "name": name,
                "seconds": seconds_between(s["started"].as_str().unwrap_or_default(), s["ended"].as_str().unwrap_or_default()),
                "commands_seconds": e["outputs"]["commands_ms"][name].as_f64().map(|ms| ms / 1000.0),
                "status": s["status"],
        }));
    }
    json!({
        "execution": e["id"],
        "seq": e["seq"],
        "status": e["status"],
        "queued_seconds": seconds_between(e["created"].as_str().unwrap_or_default(), e["started"].as_str().unwrap_or_default()),
        "total_seconds": seconds_between(e["created"].as_str().unwrap_or_default(), e["ended"].as_str().unwrap_or_default()),
        "stages": stages,
    })
}

fn print_timings(label: &str, t: &Value, commit_to_serving: f64) {
    say!("    {label}: commit to serving {commit_to_serving:.2}s");
    for s in t["stages"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or_default();
        let commands = s["commands_seconds"]
            .as_f64()
            .map(|c| {
                format!(
                    " (user commands {c:.2}s, kiln {:.2}s)",
                    s["seconds"].as_f64().unwrap_or(0.0) - c
                )
            })
            .unwrap_or_default();
        say!(
            "      {name:<8} {:>6.2}s {}{commands}",
            s["seconds"].as_f64().unwrap_or(0.0),
            s["status"].as_str().unwrap_or_default()
        );
    }
}

pub fn main(args: DemoArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    catch_signals();
    let dir = if args.dir.is_absolute() {
        args.dir.clone()
    } else {
        std::env::current_dir()?.join(&args.dir)
    };
    write_repo(&dir)?;
    say!("==> wrote the sample repository to {}", dir.display());
    let (mut daemon, client) = Daemon::ensure(state)?;
    let result = run(&args, &dir, &client, state);
    let interrupted = stopping();
    if !args.keep {
        say!("==> cleaning up: kiln destroy demo");
        if let Err(e) = client.send("DELETE", "/v1/pipelines/demo", None) {
            say!("warning: {e:#}");
        }
        daemon.stop();
    } else if daemon.child.is_some() {
        // The daemon goes on serving the group; forget the child.
        daemon.child.take();
    }
    match result {
        Ok(report) => {
            if args.output == Format::Json {
                print_json(&report)?;
            }
            Ok(if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(e) if interrupted => {
            say!("interrupted: {e:#}");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

fn run(args: &DemoArgs, dir: &Path, client: &Client, state: &StateDir) -> anyhow::Result<Value> {
    // A pipeline left by an earlier demo that kept it goes first.
    client.send("DELETE", "/v1/pipelines/demo", None)?;
    let first_commit = Instant::now();
    let created = client.send(
        "POST",
        "/v1/pipelines",
        Some(json!({ "repository": dir.display().to_string(), "start": true })),
    )?;
    let id = created["execution"]["id"]
        .as_str()
        .context("the daemon started no execution")?
        .to_string();
    say!("==> pipeline demo created; execution #1 runs the first commit");
    let first = follow_until(client, &id)?;
    let cold = first_commit.elapsed().as_secs_f64();
    anyhow::ensure!(
        first["status"] == "Succeeded",
        "execution #1 {}: {}",
        first["status"],
        first["reason"]
    );
    let url = first["variables"]["DeployVariables"]["LoadBalancer"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    say!("==> serving at {url}/");
    say!("{}", page(&format!("{url}/")).trim());

    // The post-commit hook triggers the next execution as the commit lands.
    let exe = std::env::current_exe()?;
    let hooked = Command::new(&exe)
        .arg("--state-dir")
        .arg(&state.path)
        .args(["hooks", "install", "demo"])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(hooked.success(), "kiln hooks install demo failed");
    let load = Load::start(&url)?;
    let second_start = Instant::now();
    let commit = second_commit(dir)?;
    say!(
        "==> committed {} (\"A new greeting\"); the hook triggers execution #2 while requests run against {url}",
        &commit[..12]
    );
    let second_id = wait_for_execution(client, &commit)?;
    let second = follow_until(client, &second_id);
    let (ok, failed) = load.finish();
    let second = second?;
    let warm = second_start.elapsed().as_secs_f64();
    anyhow::ensure!(
        second["status"] == "Succeeded",
        "execution #2 {}: {}",
        second["status"],
        second["reason"]
    );
    say!("==> {ok} requests during the rollout, {failed} failed");
    say!("{}", page(&format!("{url}/")).trim());
    let report = json!({
        "url": url,
        "repository": dir.display().to_string(),
        "cold": { "commit_to_serving_seconds": cold, "execution": timings(&first) },
        "warm": { "commit_to_serving_seconds": warm, "execution": timings(&second) },
        "requests_during_rollout": { "ok": ok, "failed": failed },
    });
    say!("==> timings");
    print_timings("first commit (cold)", &report["cold"]["execution"], cold);
    print_timings("second commit (warm)", &report["warm"]["execution"], warm);
    let wait = !args.exit && std::io::stdin().is_terminal();
    if wait {
        say!(
            "==> the demo group serves at {url}/ ; try `kiln executions ls` in another terminal. Ctrl-C stops everything."
        );
        while !stopping() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(report)
}

fn follow_until(client: &Client, id: &str) -> anyhow::Result<Value> {
    anyhow::ensure!(!stopping(), "stopped");
    let e = follow_execution(client, id, true, false, &stopping)?;
    anyhow::ensure!(!stopping(), "stopped");
    Ok(e)
}

/// The execution the hook started for `commit`.
fn wait_for_execution(client: &Client, commit: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(!stopping(), "stopped");
        let list = client.get("/v1/executions?pipeline=demo&limit=5")?;
        if let Some(e) = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["commit_id"] == commit)
        {
            return Ok(e["id"].as_str().unwrap_or_default().to_string());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no execution started for commit {commit} within 60s: is the post-commit hook installed?"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
