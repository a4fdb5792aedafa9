//! Throughput and latency of the balancer against a direct connection to
//! the same backend, and against nginx as a reverse proxy when installed.
//!
//! `cargo bench -p kiln-lb`; `KILN_BENCH_CONCURRENCY` (default 16),
//! `KILN_BENCH_REQUESTS` (default 50000) and `KILN_BENCH_SECONDS` (default 5)
//! change the bounds of each run; `KILN_BENCH_KEEP_ALIVE=0` opens a
//! connection per request.
//!
//! The backend, the balancer and the load generator each get a runtime with
//! one worker thread, and nginx one worker process, so that the two proxies
//! compete for the CPU on equal terms. Everything shares the machine, so the
//! figures compare the setups with each other; they are not capacities.

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

fn main() {
    let concurrency = env_number("KILN_BENCH_CONCURRENCY", 16);
    let max_requests = env_number("KILN_BENCH_REQUESTS", 50_000);
    let seconds = env_number("KILN_BENCH_SECONDS", 5);
    let opts = LoadOptions {
        concurrency: concurrency as usize,
        max_requests,
        max_duration: Duration::from_secs(seconds),
        path: "/".to_owned(),
        keep_alive: env_number("KILN_BENCH_KEEP_ALIVE", 1) != 0,
        ..LoadOptions::default()
    };

    let backend_rt = runtime("backend");
    let lb_rt = runtime("lb");
    let load_rt = runtime("load");
    let backend = backend_rt.block_on(start_backend());

    let lb = lb_rt
        .block_on(LoadBalancer::bind(
            0,
            Arc::new(Fixed(backend)),
            Settings::default(),
        ))
        .expect("binding the balancer");
    lb.register("backend");
    lb.set_in_service("backend", true);

    println!(
        "{} cores; concurrency {concurrency}, {}, at most {max_requests} requests or {seconds} s per target",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if opts.keep_alive {
            "keep-alive"
        } else {
            "a connection per request"
        }
    );
    println!(
        "{:<10} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "target", "req/s", "p50 ms", "p99 ms", "sent", "failed"
    );
    let direct = measure(&load_rt, "direct", backend, &opts);
    let through_lb = measure(&load_rt, "kiln-lb", lb.local_addr(), &opts);
    let through_nginx = match Nginx::start(backend) {
        Ok(Some(nginx)) => {
            let report = measure(&load_rt, "nginx", nginx.addr, &opts);
            nginx.stop();
            Some(report)
        }
        Ok(None) => {
            println!("nginx: not installed, skipped");
            None
        }
        Err(e) => {
            println!("nginx: {e}");
            None
        }
    };

    println!(
        "kiln-lb / direct: {:.2} of the throughput, p50 {:+.3} ms",
        through_lb.requests_per_second / direct.requests_per_second,
        through_lb.p50_ms - direct.p50_ms
    );
    if let Some(nginx) = through_nginx {
        println!(
            "kiln-lb / nginx: {:.2} of the throughput, p50 {:+.3} ms; nginx / direct: {:.2}",
            through_lb.requests_per_second / nginx.requests_per_second,
            through_lb.p50_ms - nginx.p50_ms,
            nginx.requests_per_second / direct.requests_per_second
        );
    }
    let stats = lb.backends();
    println!(
        "balancer's own view of the backend: {} requests, p50 {:.3} ms, p99 {:.3} ms",
        stats[0].requests, stats[0].p50_ms, stats[0].p99_ms
    );
    lb_rt.block_on(lb.shutdown());
}

fn measure(rt: &Runtime, name: &str, addr: SocketAddr, opts: &LoadOptions) -> LoadReport {
    // Warms up connection pools and caches so the run measures steady state.
    let warm_up = LoadOptions {
        max_requests: 2_000,
        ..opts.clone()
    };
    rt.block_on(loadgen::run(addr, warm_up));
    let report = rt.block_on(loadgen::run(addr, opts.clone()));
    println!(
        "{name:<10} {:>10.0} {:>8.3} {:>8.3} {:>8} {:>8}",
        report.requests_per_second, report.p50_ms, report.p99_ms, report.sent, report.failed
    );
    if !report.errors.is_empty() {
        println!("  errors: {:?}", report.errors);
    }
    report
}

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
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
    fn start(backend: SocketAddr) -> Result<Option<Nginx>, String> {
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
        std::fs::write(&conf, nginx_conf(prefix.path(), addr, backend))
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

fn nginx_conf(prefix: &Path, listen: SocketAddr, backend: SocketAddr) -> String {
    let p = prefix.display();
    format!(
        r#"worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    upstream backend {{
        server {backend};
        keepalive 64;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
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
