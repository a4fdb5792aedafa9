//! Loopback backends and a connector that maps backend ids to their ports.

#![allow(dead_code)] // Each test binary uses a different part of this.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kiln_lb::Connector;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long `/slow` takes to answer.
pub const SLOW: Duration = Duration::from_millis(300);

/// A backend answering its `body` (such as "v1"). `/slow` answers after
/// [`SLOW`], `/headers` echoes what the balancer added, and a POST answers
/// `body:LENGTH`.
pub struct TestServer {
    pub id: String,
    pub port: u16,
    pub hits: Arc<AtomicU64>,
    /// Every request target the backend parsed, in order.
    pub targets: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(id: &str, body: &'static str) -> TestServer {
        TestServer::start_delayed(id, body, Duration::ZERO).await
    }

    /// Like `start`, but every answer takes at least `delay`.
    pub async fn start_delayed(id: &str, body: &'static str, delay: Duration) -> TestServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every
            // connection at once, like a process that dies.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (counter, seen) = (counter.clone(), seen.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    seen.lock().unwrap().push(req.uri().to_string());
                    answer(body, delay, req)
                });
                connections
                    .spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
                while connections.try_join_next().is_some() {}
            }
        });
        TestServer {
            id: id.to_owned(),
            port,
            hits,
            targets,
            task,
        }
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Stops at once: the port refuses connections and open ones are cut.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn answer(
    body: &'static str,
    delay: Duration,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let text = match (req.method().as_str(), req.uri().path()) {
        ("POST", _) => {
            let received = req.into_body().collect().await.map(|c| c.to_bytes().len());
            format!("{body}:{}", received.unwrap_or(0))
        }
        (_, "/slow") => {
            tokio::time::sleep(SLOW).await;
            body.to_owned()
        }
        (_, "/headers") => {
            let h = req.headers();
            let get = |name: &str| {
                h.get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            format!(
                "xff={} via={} hop={} host={} proto={} port={} trace={}",
                get("x-forwarded-for"),
                get("via"),
                get("x-hop"),
                get("host"),
                get("x-forwarded-proto"),
                get("x-forwarded-port"),
                get("x-amzn-trace-id").len(),
            )
        }
        _ => body.to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// Maps backend ids to loopback ports and counts connection attempts.
#[derive(Default)]
pub struct Ports {
    ports: Mutex<HashMap<String, u16>>,
    attempts: Mutex<HashMap<String, u64>>,
}

impl Ports {
    pub fn add(&self, server: &TestServer) {
        self.ports
            .lock()
            .unwrap()
            .insert(server.id.clone(), server.port);
    }

    /// Maps `id` to any loopback port.
    pub fn insert(&self, id: &str, port: u16) {
        self.ports.lock().unwrap().insert(id.to_owned(), port);
    }

    pub fn attempts(&self, id: &str) -> u64 {
        self.attempts.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

impl Connector for Ports {
    fn connect(
        &self,
        backend: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + '_>> {
        *self
            .attempts
            .lock()
            .unwrap()
            .entry(backend.to_owned())
            .or_default() += 1;
        let port = self.ports.lock().unwrap().get(backend).copied();
        Box::pin(async move {
            let port = port.ok_or_else(|| std::io::Error::other("unknown backend"))?;
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await
        })
    }
}

/// One request on a fresh connection.
pub async fn send(addr: SocketAddr, mut req: Request<Full<Bytes>>) -> (Response<()>, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    if !req.headers().contains_key("host") {
        req.headers_mut()
            .insert("host", addr.to_string().parse().unwrap());
    }
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        Response::from_parts(parts, ()),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

pub async fn get(addr: SocketAddr, path: &str) -> (Response<()>, String) {
    let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
    send(addr, req).await
}

/// Polls until `check` holds, failing the test after five seconds.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
