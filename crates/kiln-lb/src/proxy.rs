//! Relaying one client request to a backend, with retries.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use crate::body::{ProxyBody, TrackedBody, UpBody};
use crate::error::UpstreamError;
use crate::table::{Backend, Lease, Pick, Sender, Table};
use crate::upgrade;

/// Request bodies up to this size are buffered so that the request can be
/// sent again to another backend; larger ones are streamed, and can only be
/// retried while not a byte of them has been sent.
const MAX_BUFFERED_BODY: u64 = 1 << 20;

/// Attempts per request. Each attempt after a failure goes to a backend
/// that has not failed this request yet, so this also bounds how long a
/// client waits when several backends die at once.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// How long a pooled connection may take to signal it is ready. One handed
/// back the moment its response ended may not have been marked idle by its
/// connection task yet; more than this means it is stuck, so a new one is
/// cheaper.
const POOL_READY_WAIT: Duration = Duration::from_millis(500);

/// Headers that describe one connection rather than the message (RFC 9110
/// 7.6.1), plus the obsolete `Proxy-Connection` that some clients still send.
/// A static, not a const: a const array of header names is built and dropped
/// again wherever it is named, which was once per header of every request.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

// The bodies of the balancer's own answers, on either path.

/// 503: nothing to route to.
pub(crate) const NO_INSTANCE: &str = "service unavailable: no instance in service\n";
/// 502 once the request may have been seen, so that it is not repeated.
pub(crate) const BAD_RESPONSE: &str =
    "bad gateway: the instance closed the connection or sent a malformed response\n";
/// 504: no response head within the idle timeout.
pub(crate) const NO_ANSWER: &str =
    "gateway timeout: the instance did not answer within the idle timeout\n";
/// 504: every connection attempt timed out.
pub(crate) const NO_CONNECTION: &str =
    "gateway timeout: no instance accepted a connection in time\n";
/// 502: every attempt failed.
pub(crate) const UNREACHABLE: &str =
    "bad gateway: no instance could be reached or answered properly\n";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// ALB's request id header; a client's own value is kept, as ALB keeps it.
const X_AMZN_TRACE_ID: HeaderName = HeaderName::from_static("x-amzn-trace-id");
const VIA_KILN: HeaderValue = HeaderValue::from_static("1.1 kiln");

/// The tracing target of the access log: one line per request at info
/// level (`KILN_LOG=warn,kiln_lb::access=info`), off by default.
pub const ACCESS_LOG: &str = "kiln_lb::access";

pub(crate) fn access_log_on() -> bool {
    tracing::enabled!(target: ACCESS_LOG, tracing::Level::INFO)
}

/// Which backend answered, for the access log.
#[derive(Clone)]
pub(crate) struct ServedBy(pub(crate) Arc<Backend>);

pub(crate) async fn handle(
    table: Arc<Table>,
    local: SocketAddr,
    client: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = std::time::Instant::now();
    // Taken before the request moves on, so that the log line carries the
    // id the instance saw. One await of `forward` for both cases: two would
    // each hold its state, and hyper moves this future once per request.
    let log = access_log_on().then(|| LogFields::of(&mut req));
    let mut resp = forward(&table, local, client, req).await;
    table
        .traffic
        .record(resp.status().as_u16(), started.elapsed());
    if let Some(log) = log {
        let backend = resp.extensions_mut().remove::<ServedBy>();
        tracing::info!(
            target: ACCESS_LOG,
            %client,
            forwarded_for = log.forwarded_for,
            method = %log.method,
            target = log.target,
            status = resp.status().as_u16(),
            backend = backend.as_ref().map_or("-", |b| b.0.id.as_str()),
            trace_id = log.trace,
            ms = started.elapsed().as_secs_f64() * 1000.0,
        );
    }
    Ok(resp)
}

/// What the access log says of a request, taken before it is forwarded.
struct LogFields {
    trace: String,
    forwarded_for: String,
    method: hyper::Method,
    target: String,
}

impl LogFields {
    /// Also gives the request its id here rather than in
    /// `prepare_request_headers`, so that the log has the one the instance saw.
    fn of(req: &mut Request<Incoming>) -> LogFields {
        if !req.headers().contains_key(&X_AMZN_TRACE_ID) {
            if let Some(value) = trace_id() {
                req.headers_mut().insert(X_AMZN_TRACE_ID, value);
            }
        }
        LogFields {
            trace: join_values(req.headers(), &X_AMZN_TRACE_ID).unwrap_or_default(),
            forwarded_for: join_values(req.headers(), &X_FORWARDED_FOR).unwrap_or_default(),
            method: req.method().clone(),
            target: req.uri().to_string(),
        }
    }
}

/// The request body, kept so that a failed attempt can be repeated.
enum Payload {
    Buffered(Bytes),
    /// `None` while lent to an attempt.
    Streaming(Option<Incoming>),
}

impl Payload {
    fn take(&mut self) -> Option<UpBody> {
        match self {
            Payload::Buffered(bytes) => Some(UpBody::full(bytes.clone())),
            Payload::Streaming(incoming) => incoming.take().map(UpBody::Stream),
        }
    }

    fn restore(&mut self, body: UpBody) {
        if let (Payload::Streaming(slot), UpBody::Stream(incoming)) = (self, body) {
            *slot = Some(incoming);
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Payload::Buffered(_))
    }
}

async fn forward(
    table: &Table,
    local: SocketAddr,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if upgrade::requested(&req) {
        // Boxed: its state would otherwise make every request's future as
        // large as an upgrade's, and hyper moves that future per request.
        return Box::pin(upgrade::forward(table, local, client, req)).await;
    }
    let (mut parts, body) = req.into_parts();
    prepare_request_headers(&mut parts.headers, local, client);
    let uri = origin_form(std::mem::take(&mut parts.uri));
    let mut payload = match body.size_hint().exact() {
        // Most requests have no body: nothing to wait for.
        Some(0) => Payload::Buffered(Bytes::new()),
        Some(len) if len <= MAX_BUFFERED_BODY => match body.collect().await {
            Ok(collected) => Payload::Buffered(collected.to_bytes()),
            Err(e) => {
                debug!(%client, error = %e, "reading request body");
                return local_response(StatusCode::BAD_REQUEST, "bad request body\n");
            }
        },
        _ => Payload::Streaming(Some(body)),
    };

    let stickiness = table.attributes().routing.stickiness;
    let sticky = stickiness.and_then(|_| sticky_backend(&parts.headers));
    let mut failed: Vec<Arc<Backend>> = Vec::new();
    let mut last_error = None;
    // Failures on pooled connections do not use up attempts: a backend that
    // restarted or timed out its idle connections leaves several stale ones
    // behind, each failing once. The first such failure empties the pool, so
    // these cost at most a few extra tries; the loop bound is a backstop.
    for _ in 0..MAX_ATTEMPTS * 3 {
        if failed.len() >= MAX_ATTEMPTS {
            break;
        }
        let lease = match table.pick(&failed, sticky.as_deref()) {
            Pick::Leased(lease) => lease,
            Pick::NoneInService if last_error.is_none() => {
                return local_response(StatusCode::SERVICE_UNAVAILABLE, NO_INSTANCE);
            }
            Pick::NoneInService | Pick::Exhausted => break,
        };
        let backend = lease.backend.clone();
        let (mut sender, reused) = match acquire(table, &backend).await {
            Ok(conn) => conn,
            Err(e) => {
                debug!(error = %e, "retrying on another backend");
                lease.failed();
                table.mark_down(&backend);
                failed.push(backend);
                last_error = Some(e);
                continue;
            }
        };
        let Some(body) = payload.take() else {
            break;
        };
        let mut up = Request::new(body);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri.clone();
        *up.headers_mut() = parts.headers.clone();
        let idle_timeout = table.idle_timeout();
        let answer = tokio::time::timeout(idle_timeout, sender.try_send_request(up)).await;
        let mut e = match answer {
            Ok(Ok(resp)) => {
                table.mark_up(&backend);
                let mut resp = relay(resp, lease, sender, idle_timeout);
                if let Some(duration) = stickiness {
                    set_sticky_cookie(&mut resp, &backend.id, duration);
                }
                return resp;
            }
            Ok(Err(e)) => e,
            Err(_) => {
                // The request may have been seen: never repeated, as ALB.
                lease.failed();
                warn!(backend = %backend.id, ?idle_timeout, "backend did not answer in time");
                return local_response(StatusCode::GATEWAY_TIMEOUT, NO_ANSWER);
            }
        };
        if client_body_malformed(&e) {
            lease.failed();
            debug!(%client, "the request's chunked body is malformed");
            let mut resp = local_response(
                StatusCode::BAD_REQUEST,
                "bad request: malformed chunked body\n",
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        let unsent = e.take_message();
        let sent = unsent.is_none();
        let error = UpstreamError::Request {
            backend: backend.id.clone(),
            source: e.into_error(),
        };
        if let Some(unsent) = unsent {
            // Nothing reached the backend, so any request may be repeated.
            payload.restore(unsent.into_body());
        } else if !(parts.method.is_idempotent() && payload.replayable()) {
            // Only an idempotent request may be repeated once the backend
            // may have seen it (RFC 9110 9.2.2).
            lease.failed();
            warn!(error = %error, "request failed after it was sent");
            return local_response(StatusCode::BAD_GATEWAY, BAD_RESPONSE);
        }
        if sent || !reused {
            lease.failed();
        }
        if reused {
            // A pooled connection that died says little about the backend,
            // but its pool siblings are suspect: the next try connects anew,
            // and only a failure then rules the backend out.
            backend.close_idle();
        } else {
            failed.push(backend);
        }
        debug!(error = %error, "retrying");
        last_error = Some(error);
    }
    match &last_error {
        Some(e) => warn!(error = %e, "no backend could take the request"),
        None => warn!("no backend could take the request"),
    }
    if let Some(UpstreamError::ConnectTimeout { .. }) = last_error {
        return local_response(StatusCode::GATEWAY_TIMEOUT, NO_CONNECTION);
    }
    local_response(StatusCode::BAD_GATEWAY, UNREACHABLE)
}

/// Whether sending failed because the client's body did: its chunked
/// framing is malformed (found by hyper or by the framing check, both
/// reporting invalid data).
fn client_body_malformed(e: &hyper::client::conn::TrySendError<Request<UpBody>>) -> bool {
    let mut source = std::error::Error::source(e.error());
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The instance's response on its way to the client; its body may stall
/// for at most `idle`.
pub(crate) fn relay(
    resp: Response<Incoming>,
    lease: Lease,
    sender: Sender,
    idle: Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    if parts.headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        strip_hop_by_hop(&mut parts.headers);
    }
    parts.headers.append(header::VIA, VIA_KILN);
    if access_log_on() {
        parts.extensions.insert(ServedBy(lease.backend.clone()));
    }
    Response::from_parts(
        parts,
        ProxyBody::Stream(TrackedBody::new(body, lease, sender, idle)),
    )
}

/// A pooled connection if one is alive, otherwise a new one from the
/// connector. The flag says whether the connection was pooled.
pub(crate) async fn acquire(
    table: &Table,
    backend: &Backend,
) -> Result<(Sender, bool), UpstreamError> {
    while let Some(mut sender) = backend.take_idle() {
        if sender.is_closed() {
            continue;
        }
        if sender.is_ready() {
            return Ok((sender, true));
        }
        if let Ok(Ok(())) = tokio::time::timeout(POOL_READY_WAIT, sender.ready()).await {
            return Ok((sender, true));
        }
    }
    // Boxed: most requests find a pooled connection, and this state would
    // otherwise be part of every request's future.
    Box::pin(connect(table, backend)).await.map(|s| (s, false))
}

/// A new connection to `backend`, within the connect timeout.
async fn connect(table: &Table, backend: &Backend) -> Result<Sender, UpstreamError> {
    let timeout = table.settings.connect_timeout;
    let connect = async {
        let stream = table
            .connector
            .connect(&backend.id)
            .await
            .map_err(|source| UpstreamError::Connect {
                backend: backend.id.clone(),
                source,
            })?;
        // Responses are mostly small and written in one go; Nagle's
        // algorithm would hold back request bodies and headers otherwise.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(backend = %backend.id, error = %e, "setting TCP_NODELAY");
        }
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake {
                backend: backend.id.clone(),
                source,
            })?;
        let id = backend.id.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(backend = %id, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(sender) => sender,
        Err(_) => Err(UpstreamError::ConnectTimeout {
            backend: backend.id.clone(),
            timeout,
        }),
    }
}

pub(crate) fn prepare_request_headers(
    headers: &mut HeaderMap,
    local: SocketAddr,
    client: SocketAddr,
) {
    let unwanted =
        |k: &HeaderName| HOP_BY_HOP.contains(k) || k == header::EXPECT || k == header::UPGRADE;
    // Most requests carry none of these: one pass over the names finds out
    // more cheaply than the lookups that removing them would cost.
    if headers.keys().any(unwanted) {
        strip_hop_by_hop(headers);
        // The balancer has already read the body (or streams it right
        // away), so the backend must not wait for a 100 Continue that
        // nobody relays.
        headers.remove(header::EXPECT);
        // Upgrades are relayed only by `upgrade::forward`, which puts the
        // header back; elsewhere an instance must not switch protocols on
        // a pooled connection.
        headers.remove(header::UPGRADE);
    }

    // hyper sizes a parsed request's map to the headers it has; the up to
    // six added below would grow it in steps, each a reallocation.
    headers.reserve(6);
    let forwarded_for = match join_values(headers, &X_FORWARDED_FOR) {
        Some(earlier) => HeaderValue::from_str(&format!("{earlier}, {}", client.ip())).ok(),
        None => cached(&CLIENT_IP, client.ip()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    // The balancer listens on plain HTTP: whatever a client claims is replaced.
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(port) = cached(&LOCAL_PORT, local.port()) {
        headers.insert(X_FORWARDED_PORT, port);
    }
    if !headers.contains_key(&X_AMZN_TRACE_ID) {
        if let Some(value) = trace_id() {
            headers.insert(X_AMZN_TRACE_ID, value);
        }
    }
    headers.append(header::VIA, VIA_KILN);
    if !headers.contains_key(header::HOST) {
        // HTTP/1.0 clients may omit Host, but the upstream request is 1.1.
        if let Ok(value) = HeaderValue::from_str(&local.to_string()) {
            headers.insert(header::HOST, value);
        }
    }
}

type Cache<K> = std::cell::RefCell<Option<(K, HeaderValue)>>;

thread_local! {
    /// The last client address and balancer port formatted on this thread:
    /// consecutive requests mostly come from the same client to the same
    /// balancer, and a cloned value shares its bytes instead of allocating.
    static CLIENT_IP: Cache<std::net::IpAddr> = const { std::cell::RefCell::new(None) };
    static LOCAL_PORT: Cache<u16> = const { std::cell::RefCell::new(None) };
}

/// `key` formatted as a header value, from `cache` when it holds the same key.
fn cached<K: PartialEq + Copy + std::fmt::Display + 'static>(
    cache: &'static std::thread::LocalKey<Cache<K>>,
    key: K,
) -> Option<HeaderValue> {
    cache.with(|slot| {
        let mut slot = slot.borrow_mut();
        if let Some((k, v)) = slot.as_ref()
            && *k == key
        {
            return Some(v.clone());
        }
        let value = formatted(format_args!("{key}"))?;
        *slot = Some((key, value.clone()));
        Some(value)
    })
}

/// The load balancer's stickiness cookie, named as ALB names it.
const STICKY_COOKIE: &str = "AWSALB";

/// The backend id a client's stickiness cookie names (hex, so that any id
/// fits in a cookie).
fn sticky_backend(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(sticky_cookie)
}

/// The backend id in one Cookie header's value, if it has the cookie.
pub(crate) fn sticky_cookie(cookies: &str) -> Option<String> {
    let value = cookies
        .split(';')
        .find_map(|c| c.trim().strip_prefix(STICKY_COOKIE)?.strip_prefix('='))?;
    let bytes = (0..value.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(value.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn sticky_cookie_value(backend: &str, duration: Duration) -> String {
    let hex: String = backend.bytes().map(|b| format!("{b:02x}")).collect();
    format!(
        "{STICKY_COOKIE}={hex}; Max-Age={}; Path=/",
        duration.as_secs().max(1)
    )
}

fn set_sticky_cookie(resp: &mut Response<ProxyBody>, backend: &str, duration: Duration) {
    if let Ok(value) = HeaderValue::from_str(&sticky_cookie_value(backend, duration)) {
        resp.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The stickiness cookie as a header line of a response head being written.
pub(crate) fn write_sticky_cookie(head: &mut Vec<u8>, backend: &str, duration: Duration) {
    head.extend_from_slice(b"set-cookie: ");
    head.extend_from_slice(sticky_cookie_value(backend, duration).as_bytes());
    head.extend_from_slice(b"\r\n");
}

/// A request id in ALB's format, `Root=1-<epoch seconds, 8 hex>-<24 hex>`:
/// unique within the process by a counter, across restarts by the moment
/// the process made its first one.
pub(crate) fn trace_id() -> Option<HeaderValue> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SALT: OnceLock<u32> = OnceLock::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let salt = *SALT.get_or_init(|| now.subsec_nanos() ^ std::process::id().rotate_left(16));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Hex digits by hand: core::fmt's padding machinery cost more than
    // everything else this function does.
    let mut id = *b"Root=1-00000000-000000000000000000000000";
    hex(&mut id[7..15], now.as_secs() & 0xffff_ffff);
    hex(&mut id[16..24], u64::from(salt));
    hex(&mut id[24..], n);
    TRACE_IDS.with(|arena| {
        let mut arena = arena.borrow_mut();
        if arena.capacity() < TRACE_ID_LEN {
            *arena = BytesMut::with_capacity(TRACE_ID_LEN * TRACE_IDS_PER_BLOCK);
        }
        arena.extend_from_slice(&id);
        HeaderValue::from_maybe_shared(arena.split().freeze()).ok()
    })
}

/// `value` in lowercase hex, right-aligned in `out`, zero-padded.
fn hex(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// `Root=1-` and 8 + 1 + 24 hex digits.
const TRACE_ID_LEN: usize = 7 + 8 + 1 + 24;
const TRACE_IDS_PER_BLOCK: usize = 64;

thread_local! {
    /// Request ids are cut from blocks of this thread's memory: one
    /// allocation per block instead of two per request (the value, and the
    /// shared form it takes when the headers are copied for a retry).
    static TRACE_IDS: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// A header value formatted on the stack: one allocation (the value's own)
/// instead of a String's and then the value's. None past 64 bytes.
fn formatted(args: std::fmt::Arguments<'_>) -> Option<HeaderValue> {
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    std::io::Write::write_fmt(&mut cursor, args).ok()?;
    let len = usize::try_from(cursor.position()).ok()?;
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// Whether `name` is one of [`HOP_BY_HOP`], in any case.
pub(crate) fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().eq_ignore_ascii_case(name))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn join_values(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The request target as sent to a backend: path and query only, since the
/// backend is reached directly, not as a proxy.
pub(crate) fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri;
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    path.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

pub(crate) fn local_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn appends_client_to_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        let local: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let client: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        prepare_request_headers(&mut h, local, client);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.2");
        assert_eq!(h[header::VIA], "1.1 kiln");
        assert_eq!(h[header::HOST], "127.0.0.1:80");
        assert_eq!(
            (
                h[&X_FORWARDED_PROTO].as_bytes(),
                h[&X_FORWARDED_PORT].as_bytes()
            ),
            (&b"http"[..], &b"80"[..])
        );
        let id = h[&X_AMZN_TRACE_ID].to_str().unwrap().to_owned();
        assert!(
            id.starts_with("Root=1-") && id.len() == 7 + 8 + 1 + 24,
            "{id}"
        );
        let (epoch, rest) = id["Root=1-".len()..].split_once('-').unwrap();
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            u64::from_str_radix(epoch, 16).unwrap().abs_diff(secs) < 5,
            "{id}"
        );
        assert!(rest.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        // Each request gets its own; a client's is kept.
        prepare_request_headers(&mut h, local, client);
        assert_eq!(h[&X_AMZN_TRACE_ID], id.as_str());
        let mut fresh = HeaderMap::new();
        prepare_request_headers(&mut fresh, local, client);
        assert_ne!(fresh[&X_AMZN_TRACE_ID], id.as_str());
    }

    #[test]
    fn absolute_targets_become_origin_form() {
        let uri: Uri = "http://example.com/a?b=1".parse().unwrap();
        assert_eq!(origin_form(uri), "/a?b=1");
        let uri: Uri = "/x".parse().unwrap();
        assert_eq!(origin_form(uri), "/x");
    }
}
