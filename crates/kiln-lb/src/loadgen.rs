//! A bounded HTTP/1.1 load generator for tests and benchmarks.
//!
//! Workers send GET requests in a closed loop (each waits for its response
//! before sending the next), so `concurrency` is the number of requests in
//! flight. A run ends at whichever comes first: `max_requests` sent,
//! `max_duration` elapsed, or [`StopHandle::stop`].

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::table::percentile;

/// How many distinct error messages a report keeps.
const MAX_ERRORS: usize = 10;

/// Response bodies are counted by their first this many bytes: enough to
/// tell "v1" from "v2", bounded for large responses.
const BODY_KEY_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Requests in flight at once (one connection each when keeping alive).
    pub concurrency: usize,
    pub max_requests: u64,
    pub max_duration: Duration,
    /// Request target, such as `/` or `/health?x=1`.
    pub path: String,
    /// Reuse each worker's connection; otherwise one connection per request.
    pub keep_alive: bool,
    /// A request without a complete response after this long counts as failed.
    pub request_timeout: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            concurrency: 8,
            max_requests: 10_000,
            max_duration: Duration::from_secs(10),
            path: "/".to_owned(),
            keep_alive: true,
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    pub sent: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Other responses, and requests that got no response.
    pub failed: u64,
    /// The first few distinct errors, including non-2xx statuses.
    pub errors: Vec<String>,
    /// Responses per distinct body (trimmed, cut to 64 bytes).
    pub bodies: BTreeMap<String, u64>,
    /// Latency of the requests that got a response.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub elapsed: Duration,
    pub requests_per_second: f64,
}

/// Ends a run started with [`spawn`]; requests in flight still complete.
#[derive(Debug, Clone)]
pub struct StopHandle {
    stop: Arc<watch::Sender<bool>>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// Runs load against `addr` until one of the bounds in `opts` is reached.
pub async fn run(addr: SocketAddr, opts: LoadOptions) -> LoadReport {
    let (_stop, stopped) = watch::channel(false);
    run_until(addr, opts, stopped).await
}

/// Runs load in the background; the report arrives when a bound in `opts`
/// is reached or the returned handle is used to stop it.
pub fn spawn(addr: SocketAddr, opts: LoadOptions) -> (JoinHandle<LoadReport>, StopHandle) {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run_until(addr, opts, stopped));
    (
        task,
        StopHandle {
            stop: Arc::new(stop),
        },
    )
}

struct Shared {
    addr: SocketAddr,
    opts: LoadOptions,
    uri: Uri,
    host: HeaderValue,
    tickets: AtomicU64,
    deadline: Instant,
    stopped: watch::Receiver<bool>,
}

impl Shared {
    /// Whether another request may be sent; claims it if so.
    fn claim(&self) -> bool {
        if *self.stopped.borrow() || Instant::now() >= self.deadline {
            return false;
        }
        self.tickets.fetch_add(1, Ordering::Relaxed) < self.opts.max_requests
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    bodies: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn error(&mut self, message: String) {
        if self.errors.len() < MAX_ERRORS && !self.errors.contains(&message) {
            self.errors.push(message);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.failed += other.failed;
        for e in other.errors {
            self.error(e);
        }
        for (body, n) in other.bodies {
            *self.bodies.entry(body).or_default() += n;
        }
        self.latencies_us.extend(other.latencies_us);
    }
}

async fn run_until(
    addr: SocketAddr,
    opts: LoadOptions,
    stopped: watch::Receiver<bool>,
) -> LoadReport {
    let started = Instant::now();
    let uri = opts.path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    let host =
        HeaderValue::from_str(&addr.to_string()).unwrap_or(HeaderValue::from_static("localhost"));
    let shared = Arc::new(Shared {
        addr,
        uri,
        host,
        tickets: AtomicU64::new(0),
        deadline: started + opts.max_duration,
        stopped,
        opts,
    });
    let workers: Vec<_> = (0..shared.opts.concurrency.max(1))
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    let mut total = Tally::default();
    for w in workers {
        match w.await {
            Ok(tally) => total.merge(tally),
            Err(e) => total.error(format!("load worker failed: {e}")),
        }
    }
    let elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    let ms = |p| f64::from(percentile(&total.latencies_us, p)) / 1000.0;
    LoadReport {
        sent: total.sent,
        ok: total.ok,
        failed: total.failed,
        errors: total.errors,
        bodies: total.bodies,
        p50_ms: ms(50.0),
        p99_ms: ms(99.0),
        elapsed,
        requests_per_second: total.sent as f64 / elapsed.as_secs_f64().max(1e-9),
    }
}

async fn worker(shared: Arc<Shared>) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    while shared.claim() {
        tally.sent += 1;
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(shared.opts.request_timeout, request(&shared, &mut conn)).await;
        match outcome {
            Ok(Ok((status, body))) => {
                tally
                    .latencies_us
                    .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                let key = body_key(&body);
                if (200..300).contains(&status) {
                    tally.ok += 1;
                } else {
                    tally.failed += 1;
                    tally.error(format!("HTTP {status}: {key}"));
                }
                *tally.bodies.entry(key).or_default() += 1;
            }
            Ok(Err(e)) => {
                tally.failed += 1;
                tally.error(e);
                conn = None;
            }
            Err(_) => {
                tally.failed += 1;
                tally.error(format!(
                    "no response within {:?}",
                    shared.opts.request_timeout
                ));
                conn = None;
            }
        }
        if !shared.opts.keep_alive {
            conn = None;
        }
    }
    tally
}

async fn request(
    shared: &Shared,
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
) -> Result<(u16, Bytes), String> {
    let sender = match conn {
        Some(sender) if !sender.is_closed() => sender,
        _ => conn.insert(connect(shared.addr).await?),
    };
    sender
        .ready()
        .await
        .map_err(|e| chain("connection not ready", &e))?;
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = shared.uri.clone();
    req.headers_mut().insert(header::HOST, shared.host.clone());
    if !shared.opts.keep_alive {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| chain("request", &e))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| chain("response body", &e))?
        .to_bytes();
    Ok((status, body))
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| chain(&format!("connecting to {addr}"), &e))?;
    // Requests are tiny; without this Nagle's algorithm delays them.
    stream
        .set_nodelay(true)
        .map_err(|e| chain("setting TCP_NODELAY", &e))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| chain("handshake", &e))?;
    tokio::spawn(connection);
    Ok(sender)
}

fn body_key(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut end = text.len().min(BODY_KEY_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The error with its causes, since hyper's own message is often only
/// "connection error" with the reason one level down.
fn chain(context: &str, error: &(dyn StdError + 'static)) -> String {
    let mut message = format!("{context}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_keys_are_trimmed_and_cut_on_char_boundaries() {
        assert_eq!(body_key(b" v1\n"), "v1");
        let long = "é".repeat(40);
        let key = body_key(long.as_bytes());
        assert_eq!(key.len(), 64);
        assert!(key.chars().all(|c| c == 'é'));
    }
}
