//! Throughput and latency of the balancer against nginx as a reverse proxy
//! to the same backend, in one run: concurrency 16 and 256, with keep-alive
//! and with a connection per request, with one worker each (one balancer
//! thread, `Settings::threads`, against one nginx worker process) and then
//! two each.
//!
//! `cargo bench -p kiln-lb --bench throughput`. `KILN_BENCH_SECONDS`
//! (default 3) bounds each measurement, `KILN_BENCH_ROUNDS` (default 3) is
//! how many times each pair is measured, alternating which proxy goes
//! first; the figures are the medians, with the spread across rounds.
//! `KILN_BENCH_DIRECT=1` also measures the backend without a proxy.
//! `KILN_BENCH_ONLY` picks configurations to measure (for profiling one),
//! as a comma-separated list of `workers/connection/concurrency` with `*`
//! for any part: `2/new/*` is both concurrencies of two workers with a
//! connection per request.
//!
//! The backend and the load generator each get a runtime with one worker
//! thread. Everything shares the machine, so the figures compare the two
//! proxies with each other; they are not capacities. Throughput also
//! depends on how the two cores are shared with the load generator and the
//! backend; the CPU time each proxy spends per request (its threads' or
//! worker processes' time on a core, from `/proc`) is the steadier figure.
//! Under each row is the CPU time the load generator and the backend spent
//! per request beside each proxy: with one worker each, those two threads
//! together need about a core at full load, so they bound the throughput
//! before either proxy's thread does.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kiln_lb::loadgen::{self, LoadOptions, LoadReport};
use kiln_lb::{Connector, LoadBalancer, Settings};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const BODY: &str = "hello from the backend\n";

/// One configuration's medians over the rounds.
struct Figures {
    rps: f64,
    p99_ms: f64,
    /// The proxy's CPU time per request, in microseconds.
    cpu_us: f64,
    /// The load generator's and the backend's together.
    rest_us: f64,
    /// (max - min) / median of the throughput across rounds.
    spread: f64,
    failed: u64,
}

fn main() {
    let seconds = env_number("KILN_BENCH_SECONDS", 3);
    let rounds = env_number("KILN_BENCH_ROUNDS", 3).max(1) as usize;
    let direct = env_number("KILN_BENCH_DIRECT", 0) != 0;
    let only = std::env::var("KILN_BENCH_ONLY").unwrap_or_default();

    let backend_rt = runtime("backend", 1);
    let load_rt = runtime("load", 1);
    let backend = backend_rt.block_on(start_backend());
    println!(
        "{} cores; {rounds} rounds of at most {seconds} s per proxy and configuration; medians, spread = (max - min) / median",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "{:>7} {:>10} {:>5} | {:>9} {:>7} {:>6} {:>6} | {:>9} {:>7} {:>6} {:>6} | {:>6} {:>6} {:>6}",
        "workers",
        "connection",
        "conc",
        "kiln req/s",
        "p99 ms",
        "spread",
        "µs cpu",
        "nginx req/s",
        "p99 ms",
        "spread",
        "µs cpu",
        "ratio",
        "p99",
        "cpu"
    );
    let mut summary = Vec::new();
    for workers in [1usize, 2] {
        // Only binds and shuts down: the balancer serves on its own threads.
        let lb_rt = runtime("lb-control", 1);
        let settings = Settings {
            threads: workers,
            ..Settings::default()
        };
        let lb = lb_rt
            .block_on(LoadBalancer::bind(0, Arc::new(Fixed(backend)), settings))
            .expect("binding the balancer");
        lb.register("backend");
        lb.set_in_service("backend", true);
        let nginx = match Nginx::start(backend, workers) {
            Ok(Some(nginx)) => Some(nginx),
            Ok(None) => {
                println!(
                    "nginx: not installed (apt-get install nginx-light), measuring kiln-lb alone"
                );
                None
            }
            Err(e) => {
                println!("nginx: {e}");
                None
            }
        };
        for keep_alive in [true, false] {
            for concurrency in [16usize, 256] {
                let connection = if keep_alive { "keep-alive" } else { "new" };
                if !picked(&only, workers, connection, concurrency) {
                    continue;
                }
                let opts = LoadOptions {
                    concurrency,
                    max_requests: u64::MAX,
                    max_duration: Duration::from_secs(seconds),
                    path: "/".to_owned(),
                    keep_alive,
                    ..LoadOptions::default()
                };
                let mut kiln = Vec::new();
                let mut theirs = Vec::new();
                for round in 0..rounds {
                    // Alternating who goes first spreads slow drifts in the
                    // machine's load over both.
                    let kiln_first = round % 2 == 0;
                    if kiln_first {
                        kiln.push(measure(&load_rt, lb.local_addr(), &opts, kiln_cpu_ns));
                    }
                    if let Some(n) = &nginx {
                        theirs.push(measure(&load_rt, n.addr, &opts, || n.cpu_ns()));
                    }
                    if !kiln_first {
                        kiln.push(measure(&load_rt, lb.local_addr(), &opts, kiln_cpu_ns));
                    }
                }
                let k = figures(&kiln);
                let n = (!theirs.is_empty()).then(|| figures(&theirs));
                let (n_rps, n_p99, n_spread, n_cpu) = n
                    .as_ref()
                    .map_or((f64::NAN, f64::NAN, f64::NAN, f64::NAN), |n| {
                        (n.rps, n.p99_ms, n.spread, n.cpu_us)
                    });
                println!(
                    "{workers:>7} {connection:>10} {concurrency:>5} | {:>10.0} {:>7.3} {:>5.0}% {:>6.1} | {:>11.0} {:>7.3} {:>5.0}% {:>6.1} | {:>5.2}x {:>5.2}x {:>5.2}x",
                    k.rps,
                    k.p99_ms,
                    k.spread * 100.0,
                    k.cpu_us,
                    n_rps,
                    n_p99,
                    n_spread * 100.0,
                    n_cpu,
                    k.rps / n_rps,
                    k.p99_ms / n_p99,
                    k.cpu_us / n_cpu,
                );
                let failed = k.failed + n.as_ref().map_or(0, |n| n.failed);
                if failed > 0 {
                    println!("  failed requests: {failed}");
                }
                if let Some(n) = &n {
                    println!(
                        "{:>26} | load generator and backend: {:.1} µs per request with kiln-lb, {:.1} with nginx",
                        "", k.rest_us, n.rest_us
                    );
                }
                if direct {
                    let (d, _) = measure(&load_rt, backend, &opts, || 0);
                    println!(
                        "  direct to the backend: {:.0} req/s, p99 {:.3} ms",
                        d.requests_per_second, d.p99_ms
                    );
                }
                summary.push(k.rps / n_rps);
            }
        }
        if let Some(n) = nginx {
            n.stop();
        }
        lb_rt.block_on(lb.shutdown());
    }
    let at_or_above = summary.iter().filter(|r| **r >= 1.0).count();
    println!(
        "kiln-lb at or above nginx's throughput in {at_or_above} of {} configurations",
        summary.len()
    );
}

/// Whether `only` (see the module's doc) picks this configuration; an
/// empty `only` picks every one.
fn picked(only: &str, workers: usize, connection: &str, concurrency: usize) -> bool {
    let config = [
        workers.to_string(),
        connection.to_owned(),
        concurrency.to_string(),
    ];
    only.trim().is_empty()
        || only.split(',').any(|pattern| {
            let parts: Vec<&str> = pattern.trim().split('/').collect();
            parts.len() == 3 && parts.iter().zip(&config).all(|(p, c)| *p == "*" || p == c)
        })
}

/// CPU time per response in µs: the proxy's, and the load generator's and
/// backend's together. At one worker each these two threads, not the
/// proxy, are what the two cores run out of first.
struct Cpu {
    proxy: f64,
    rest: f64,
}

/// One run's report, with the CPU time spent on it.
fn measure(
    rt: &Runtime,
    addr: SocketAddr,
    opts: &LoadOptions,
    cpu_ns: impl Fn() -> u64,
) -> (LoadReport, Cpu) {
    // Warms up connection pools and caches so the run measures steady state.
    let warm_up = LoadOptions {
        max_requests: 2_000,
        ..opts.clone()
    };
    rt.block_on(loadgen::run(addr, warm_up));
    let rest_ns = || threads_ns(|name| name == "load" || name == "backend");
    let (before, rest_before) = (cpu_ns(), rest_ns());
    let report = rt.block_on(loadgen::run(addr, opts.clone()));
    let spent = cpu_ns().saturating_sub(before);
    let rest = rest_ns().saturating_sub(rest_before);
    if !report.errors.is_empty() {
        println!("  errors from {addr}: {:?}", report.errors);
    }
    let per_request = |ns: u64| ns as f64 / 1000.0 / report.ok.max(1) as f64;
    let cpu = Cpu {
        proxy: per_request(spent),
        rest: per_request(rest),
    };
    (report, cpu)
}

/// Time on a core of a thread or process, from its `schedstat`, in ns.
fn scheduled_ns(schedstat: &Path) -> u64 {
    std::fs::read_to_string(schedstat)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The balancer's threads' time on a core so far (they are this process's
/// threads named `kiln-lb-N`).
fn kiln_cpu_ns() -> u64 {
    threads_ns(|name| name.starts_with("kiln-lb-"))
}

/// The time on a core so far of this process's threads whose names pass
/// `named`.
fn threads_ns(named: impl Fn(&str) -> bool) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| named(comm.trim()))
        })
        .map(|task| scheduled_ns(&task.path().join("schedstat")))
        .sum()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn figures(runs: &[(LoadReport, Cpu)]) -> Figures {
    let reports: Vec<&LoadReport> = runs.iter().map(|(r, _)| r).collect();
    let rps: Vec<f64> = reports.iter().map(|r| r.requests_per_second).collect();
    let (lo, hi) = rps
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let m = median(rps);
    Figures {
        rps: m,
        p99_ms: median(reports.iter().map(|r| r.p99_ms).collect()),
        cpu_us: median(runs.iter().map(|(_, cpu)| cpu.proxy).collect()),
        rest_us: median(runs.iter().map(|(_, cpu)| cpu.rest).collect()),
        spread: (hi - lo) / m,
        failed: reports.iter().map(|r| r.failed).sum(),
    }
}

fn runtime(name: &str, workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("building a runtime")
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("binding the backend");
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    BODY.as_bytes(),
                ))))
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

/// Every backend id leads to the one backend.
struct Fixed(SocketAddr);

impl Connector for Fixed {
    fn connect(
        &self,
        _backend: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + '_>> {
        Box::pin(TcpStream::connect(self.0))
    }
}

struct Nginx {
    addr: SocketAddr,
    child: Child,
    conf: std::path::PathBuf,
    prefix: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx as a reverse proxy to `backend`; `None` if not installed.
    fn start(backend: SocketAddr, workers: usize) -> Result<Option<Nginx>, String> {
        let installed = Command::new("nginx")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            return Ok(None);
        }
        let prefix = tempfile::tempdir().map_err(|e| format!("creating nginx's directory: {e}"))?;
        // nginx's workers run as an unprivileged user when started as root,
        // and must reach the temp paths below.
        allow_others(prefix.path())?;
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let conf = prefix.path().join("nginx.conf");
        std::fs::write(&conf, nginx_conf(prefix.path(), addr, backend, workers))
            .map_err(|e| format!("writing {}: {e}", conf.display()))?;
        let child = Command::new("nginx")
            .arg("-e")
            .arg(prefix.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(prefix.path())
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting nginx: {e}"))?;
        let mut nginx = Nginx {
            addr,
            child,
            conf,
            prefix,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx.prefix.path().join("error.log"))
                    .unwrap_or_default();
                return Err(format!("nginx exited with {status}: {}", log.trim()));
            }
            if Instant::now() > deadline {
                nginx.stop();
                return Err(format!("nginx did not listen on {addr} within 5 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(nginx))
    }

    /// The worker processes' time on a core so far (the master's children;
    /// the master itself only waits).
    fn cpu_ns(&self) -> u64 {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .map(|worker| scheduled_ns(Path::new(&format!("/proc/{worker}/schedstat"))))
            .sum()
    }

    fn stop(mut self) {
        // A graceful quit through the master, which takes its workers along;
        // killing the master alone would leave the workers running.
        let quit = Command::new("nginx")
            .arg("-c")
            .arg(&self.conf)
            .arg("-p")
            .arg(self.prefix.path())
            .args(["-s", "quit"])
            .stderr(Stdio::null())
            .status();
        if !quit.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn nginx_conf(prefix: &Path, listen: SocketAddr, backend: SocketAddr, workers: usize) -> String {
    let p = prefix.display();
    format!(
        r#"worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000000;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    # The request id kiln-lb gives every request (X-Amzn-Trace-Id): the
    # client's if it sent one, a new one otherwise.
    map $http_x_amzn_trace_id $trace_id {{
        "" $request_id;
        default $http_x_amzn_trace_id;
    }}
    upstream backend {{
        server {backend};
        # As many idle connections as kiln-lb keeps per backend, and no
        # limit on requests per connection on either side, so that neither
        # proxy reconnects where the other does not.
        keepalive 256;
        keepalive_requests 1000000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The headers kiln-lb sets on every request, as ALB does, so
            # that both proxies do the same work.
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Amzn-Trace-Id $trace_id;
        }}
    }}
}}
"#
    )
}

fn allow_others(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("opening {} to nginx's workers: {e}", dir.display()))
}

fn free_port() -> Result<u16, String> {
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("finding a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}
