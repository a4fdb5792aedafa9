//! The balancer's own HTTP/1.1 path for the requests most traffic is made
//! of: HTTP/1.1, no request body, no upgrade, no hop-by-hop header other
//! than `Connection: keep-alive|close`. It parses the head in place and
//! writes the upstream request and the client's response each in one go,
//! over a pool of plain upstream connections, without the per-request
//! allocations, tasks and channels that hyper's server and client cost.
//!
//! Anything else (a body, an upgrade, HTTP/1.0, a malformed or refused head,
//! a head past the limits) is handed to hyper with the bytes read so far,
//! for the rest of the connection: hyper and `proxy` remain the reference
//! behaviour, and this path gives the same answers for what it takes.

mod response;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hyper::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::checked::Checked;
use crate::client::Client;
use crate::listen::{ConnCtx, FrontEnd, Wait};
use crate::proxy::{self, MAX_ATTEMPTS};
use crate::table::{Backend, Pick, Table};
use response::{BodyLen, Cut, exchange, relay_body};

/// Header lines in a request head this path parses; hyper takes heads
/// with more (and answers 431 past its own limit).
const MAX_HEADERS: usize = 64;
/// A response head larger than this is a broken instance: 502.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// A pooled connection idle for less than this is taken without checking
/// that the instance still has it open: if it closed it just now, the
/// request fails as it would have a moment later anyway, and is retried
/// when it may be.
const FRESH: Duration = Duration::from_millis(50);
/// Bytes read from an instance at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A plain connection to an instance, with what was read past the last
/// response (nothing, when it is reusable).
pub(crate) struct Upstream {
    io: TcpStream,
    buf: BytesMut,
}

impl Upstream {
    /// Whether the instance has closed it or sent bytes nobody asked for.
    /// Readiness says so without a system call when the last read ended
    /// with nothing left to read; otherwise one read tells.
    fn stale(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => false,
            std::task::Poll::Ready(_) => {
                // Readable: either the close or stray bytes; both end it.
                let mut probe = [0u8; 1];
                !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// What the request head says that the rest of the exchange needs.
struct Head {
    len: usize,
    method: hyper::Method,
    close: bool,
    /// The client's own X-Forwarded-For, joined.
    forwarded_for: Option<String>,
    sticky: Option<String>,
}

/// Serves the connection's requests until it closes or a request needs
/// hyper.
pub(crate) async fn serve(
    table: &Table,
    local: SocketAddr,
    client: SocketAddr,
    io: &mut Checked<Client>,
    ctx: ConnCtx<'_>,
) -> FrontEnd {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut response: Vec<u8> = Vec::with_capacity(1024);
    let mut index = 0u64;
    loop {
        // The head, within the header-read timeout counted from the end of
        // the previous response (or the connection's start).
        let deadline = tokio::time::Instant::now() + ctx.limits().header_read_timeout;
        let head = loop {
            match parse_head(&buf, &mut out, local, client, table) {
                Parsed::Complete(head) => break head,
                Parsed::Hyper => {
                    return FrontEnd::Handover {
                        buffered: buf,
                        requests: index,
                    };
                }
                Parsed::Partial if buf.len() >= ctx.limits().max_header_bytes => {
                    return FrontEnd::Handover {
                        buffered: buf,
                        requests: index,
                    };
                }
                Parsed::Partial => {}
            }
            match ctx.read(io, &mut buf, deadline).await {
                Wait::Read(0) | Wait::Closed | Wait::TimedOut => return FrontEnd::Closed,
                Wait::Read(_) => {}
            }
        };
        if ctx.refused(index) {
            return FrontEnd::Handover {
                buffered: buf,
                requests: index,
            };
        }
        let busy = ctx.busy();
        let mut answered = Answered {
            table,
            close: head.close,
            client,
            started: Instant::now(),
            log: proxy::access_log_on().then(|| LogLine::of(&out, &head)),
        };
        buf.advance(head.len);
        let keep = relay(table, io, &head, &out, &mut response, &mut answered).await;
        drop(busy);
        index += 1;
        if !keep || head.close || ctx.stopping() {
            return FrontEnd::Closed;
        }
    }
}

enum Parsed {
    Complete(Head),
    Partial,
    /// Not for this path: hyper takes the connection from here.
    Hyper,
}

/// Parses the request head at the start of `buf` and, when this path
/// takes it, writes the upstream request head into `out`.
fn parse_head(
    buf: &[u8],
    out: &mut Vec<u8>,
    local: SocketAddr,
    client: SocketAddr,
    table: &Table,
) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Hyper;
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Parsed::Hyper;
    }
    let mut close = false;
    let mut host = 0;
    let mut forwarded_for: Option<String> = None;
    let mut has_trace_id = false;
    let mut sticky = None;
    let stickiness = table.attributes().routing.stickiness;
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        let eq = |n: &str| name.eq_ignore_ascii_case(n);
        if eq("content-length") {
            if h.value != b"0" {
                return Parsed::Hyper;
            }
        } else if eq("connection") {
            match trim(h.value) {
                v if v.eq_ignore_ascii_case(b"close") => close = true,
                v if v.eq_ignore_ascii_case(b"keep-alive") => {}
                _ => return Parsed::Hyper,
            }
            continue;
        } else if eq("upgrade") || eq("expect") || proxy::hop_by_hop(name) {
            return Parsed::Hyper;
        } else if eq("host") {
            host += 1;
        } else if eq("x-forwarded-for") {
            let Ok(v) = std::str::from_utf8(h.value) else {
                return Parsed::Hyper;
            };
            match &mut forwarded_for {
                Some(joined) => {
                    joined.push_str(", ");
                    joined.push_str(v);
                }
                None => forwarded_for = Some(v.to_owned()),
            }
            continue;
        } else if eq("x-forwarded-proto") || eq("x-forwarded-port") {
            continue;
        } else if eq("x-amzn-trace-id") {
            has_trace_id = true;
        } else if eq("cookie") && stickiness.is_some() && sticky.is_none() {
            sticky = std::str::from_utf8(h.value)
                .ok()
                .and_then(proxy::sticky_cookie);
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if host != 1 {
        return Parsed::Hyper;
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(earlier) = &forwarded_for {
        out.extend_from_slice(earlier.as_bytes());
        out.extend_from_slice(b", ");
    }
    let _ = std::io::Write::write_fmt(out, format_args!("{}\r\n", client.ip()));
    let _ = std::io::Write::write_fmt(
        out,
        format_args!(
            "x-forwarded-proto: http\r\nx-forwarded-port: {}\r\n",
            local.port()
        ),
    );
    if !has_trace_id {
        if let Some(id) = proxy::trace_id() {
            out.extend_from_slice(b"x-amzn-trace-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"via: 1.1 kiln\r\n\r\n");
    let Ok(method) = hyper::Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    Parsed::Complete(Head {
        len,
        method,
        close,
        forwarded_for,
        sticky,
    })
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// One request: the instance's response relayed to the client, or the
/// balancer's own answer. Returns whether the client connection may carry
/// another request.
async fn relay(
    table: &Table,
    io: &mut Checked<Client>,
    head: &Head,
    request: &[u8],
    response: &mut Vec<u8>,
    answered: &mut Answered<'_>,
) -> bool {
    let mut failed: Vec<Arc<Backend>> = Vec::new();
    let mut last_error: Option<LastError> = None;
    for _ in 0..MAX_ATTEMPTS * 3 {
        if failed.len() >= MAX_ATTEMPTS {
            break;
        }
        let lease = match table.pick(&failed, head.sticky.as_deref()) {
            Pick::Leased(lease) => lease,
            Pick::NoneInService if last_error.is_none() => {
                return local(
                    io,
                    answered,
                    StatusCode::SERVICE_UNAVAILABLE,
                    proxy::NO_INSTANCE,
                )
                .await;
            }
            Pick::NoneInService | Pick::Exhausted => break,
        };
        let backend = lease.backend.clone();
        let (mut up, reused) = match acquire(table, &backend).await {
            Ok(conn) => conn,
            Err(e) => {
                debug!(backend = %backend.id, error = %e, "retrying on another backend");
                lease.failed();
                table.mark_down(&backend);
                failed.push(backend);
                last_error = Some(e);
                continue;
            }
        };
        let idle_timeout = table.idle_timeout();
        let answer = tokio::time::timeout(
            idle_timeout,
            exchange(
                &mut up,
                request,
                head.method == hyper::Method::HEAD,
                response,
            ),
        )
        .await;
        let framing = match answer {
            Ok(Ok(framing)) => framing,
            Ok(Err(e)) => {
                // Whether the instance saw the request is unknown: only an
                // idempotent one may go to another (RFC 9110 9.2.2). A
                // pooled connection that died says little about the
                // instance, so it counts as a failure only when final.
                if !head.method.is_idempotent() || !reused {
                    lease.failed();
                }
                if !head.method.is_idempotent() {
                    warn!(backend = %backend.id, error = %e, "request failed after it was sent");
                    return local(io, answered, StatusCode::BAD_GATEWAY, proxy::BAD_RESPONSE).await;
                }
                if reused {
                    backend.close_idle();
                } else {
                    failed.push(backend);
                }
                last_error = Some(LastError::Other);
                continue;
            }
            Err(_) => {
                lease.failed();
                warn!(backend = %backend.id, ?idle_timeout, "backend did not answer in time");
                return local(io, answered, StatusCode::GATEWAY_TIMEOUT, proxy::NO_ANSWER).await;
            }
        };
        table.mark_up(&backend);
        let stickiness = table.attributes().routing.stickiness;
        // The client's `Connection: close` is answered in kind (RFC 9112 9.6).
        let keep_client = !matches!(framing.body, BodyLen::UntilClose) && !head.close;
        if !keep_client {
            response.extend_from_slice(b"connection: close\r\n");
        }
        if let Some(duration) = stickiness {
            proxy::write_sticky_cookie(response, &backend.id, duration);
        }
        response.extend_from_slice(b"\r\n");
        up.buf.advance(framing.head_len);
        let mut head_sent = false;
        let on_head = || {
            head_sent = true;
            answered.status(framing.status, Some(&backend.id));
        };
        match relay_body(io, &mut up, response, framing.body, idle_timeout, on_head).await {
            Ok((bytes, reusable)) => {
                lease.succeeded(bytes);
                if reusable && framing.keep_upstream {
                    backend.put_raw(up);
                }
                drop(lease);
                return keep_client;
            }
            Err(Cut::Client(e)) => {
                // The upstream connection, mid-response, closes with `up`.
                debug!(backend = %backend.id, error = %e, "the client left mid-response");
                return false;
            }
            Err(Cut::Instance(e)) => {
                lease.failed();
                if head_sent {
                    debug!(backend = %backend.id, error = %e, "relaying a response body");
                    return false;
                }
                // The body's first bytes already show it malformed: the
                // client has had nothing yet, so it gets ALB's answer to an
                // invalid response, on a connection that stays usable.
                warn!(backend = %backend.id, error = %e, "malformed response");
                return local(io, answered, StatusCode::BAD_GATEWAY, proxy::BAD_RESPONSE).await;
            }
        }
    }
    match &last_error {
        Some(LastError::ConnectTimeout) => {
            warn!("no backend could take the request");
            local(
                io,
                answered,
                StatusCode::GATEWAY_TIMEOUT,
                proxy::NO_CONNECTION,
            )
            .await
        }
        _ => {
            warn!("no backend could take the request");
            local(io, answered, StatusCode::BAD_GATEWAY, proxy::UNREACHABLE).await
        }
    }
}

#[derive(Debug)]
enum LastError {
    ConnectTimeout,
    Other,
}

impl std::fmt::Display for LastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastError::ConnectTimeout => f.write_str("connect timeout"),
            LastError::Other => f.write_str("connection failed"),
        }
    }
}

/// A pooled connection if one is alive, otherwise a new one.
async fn acquire(table: &Table, backend: &Backend) -> Result<(Upstream, bool), LastError> {
    while let Some((up, since)) = backend.take_raw() {
        // One handed back just now is as alive as it was then; checking it
        // would cost a system call per request (see `stale`).
        if since.elapsed() < FRESH || !up.stale() {
            return Ok((up, true));
        }
    }
    let timeout = table.settings.connect_timeout;
    match tokio::time::timeout(timeout, table.connector.connect(&backend.id)).await {
        Ok(Ok(io)) => {
            if let Err(e) = io.set_nodelay(true) {
                debug!(backend = %backend.id, error = %e, "setting TCP_NODELAY");
            }
            Ok((
                Upstream {
                    io,
                    buf: BytesMut::with_capacity(READ_CHUNK),
                },
                false,
            ))
        }
        Ok(Err(e)) => {
            debug!(backend = %backend.id, error = %e, "connecting");
            Err(LastError::Other)
        }
        Err(_) => Err(LastError::ConnectTimeout),
    }
}

/// The balancer's own answer (503, 502, 504); the connection stays open
/// for the next request, as on hyper's path, unless the client asked to
/// close it.
async fn local(
    io: &mut Checked<Client>,
    answered: &mut Answered<'_>,
    status: StatusCode,
    text: &'static str,
) -> bool {
    answered.status(status.as_u16(), None);
    let mut out = Vec::with_capacity(160 + text.len());
    let _ = std::io::Write::write_fmt(
        &mut out,
        format_args!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{text}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default(),
            text.len(),
            if answered.close {
                "connection: close\r\n"
            } else {
                ""
            },
        ),
    );
    io.write_all(&out).await.is_ok()
}

/// A request's place in the traffic figures and the access log, taken once
/// its answer's status is known and before the answer is sent, as the hyper
/// path takes it.
struct Answered<'a> {
    table: &'a Table,
    /// The client asked for the connection to close after this answer.
    close: bool,
    client: SocketAddr,
    started: Instant,
    log: Option<LogLine>,
}

impl Answered<'_> {
    fn status(&mut self, status: u16, backend: Option<&str>) {
        self.table.traffic.record(status, self.started.elapsed());
        if let Some(log) = self.log.take() {
            log.emit(self.client, status, backend, self.started);
        }
    }
}

/// What the access log says of a request handled here.
struct LogLine {
    method: String,
    target: String,
    forwarded_for: String,
    trace: String,
}

impl LogLine {
    /// From the upstream request head: it carries the request id the
    /// instance sees, the client's or a new one.
    fn of(request: &[u8], head: &Head) -> LogLine {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
        let mut req = httparse::Request::new(&mut headers);
        let _ = req.parse(request);
        let trace = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-amzn-trace-id"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<_>>()
            .join(", ");
        LogLine {
            method: req.method.unwrap_or_default().to_owned(),
            target: req.path.unwrap_or_default().to_owned(),
            forwarded_for: head.forwarded_for.clone().unwrap_or_default(),
            trace,
        }
    }

    fn emit(self, client: SocketAddr, status: u16, backend: Option<&str>, started: Instant) {
        tracing::info!(
            target: proxy::ACCESS_LOG,
            %client,
            forwarded_for = self.forwarded_for,
            method = %self.method,
            target = self.target,
            status,
            backend = backend.unwrap_or("-"),
            trace_id = self.trace,
            ms = started.elapsed().as_secs_f64() * 1000.0,
        );
    }
}
