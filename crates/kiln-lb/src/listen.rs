//! The HTTP/1.1 accept loop the load balancer and the daemon's API share,
//! with the limits that keep a server answering when clients connect and
//! then say nothing, or send their headers a byte at a time.
//!
//! Two limits: a connection must deliver each request's headers within
//! `header_read_timeout` (counted from its start, and from the end of the
//! previous response on a keep-alive connection, so idle keep-alive
//! connections close after it too); and at most `max_connections` are open
//! at once. At the cap, a new connection does not wait: the one that has
//! been idle longest (no request in progress) is closed to make room, so
//! that clients holding sockets cannot lock out one that sends a request.
//! When every connection is busy with a request, the new one is closed.
//! All the servers of a process together (the API and every group's
//! balancer) also keep at most half of its open-file limit, evicting the
//! same way when they reach it. One client address may hold at most
//! `max_connections_per_client`; past that its own longest-idle connection
//! makes room, or the new one is closed. Request headers are bounded in
//! size and count: past either hyper answers 431 and closes. Every
//! request's framing is checked byte by byte before hyper parses it (see
//! `framing`): an ambiguous one gets a 400 and the connection closes.
//! A write that waits `write_timeout` for a client to read fails and the
//! connection closes (see `client`). The caps are kept, across a
//! balancer's threads, by `registry`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::body::Relay;
use crate::checked::{Checked, Refusal};
use crate::client::{Client, Listener};
use crate::registry::{Admitted, Busy, CLOSE, Conn, RUN, Registry, STOP};
use crate::spread::{Seat, Ticket};

/// Pause after a failed accept: the usual cause is running out of file
/// descriptors, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The share of the process's file descriptors one server may hold in
/// client connections, and (`ALL_SERVERS_SHARE`) all the servers of the
/// process together (the API and every group's load balancer): the rest
/// stay for the database, logs, images and backend connections.
const FD_SHARE: u64 = 4;
const ALL_SERVERS_SHARE: u64 = 2;

/// Connections accepted in one go when several are waiting.
const ACCEPT_BATCH: usize = 64;

/// Finished connection tasks the accept loop may leave unreaped until the
/// next connection arrives (each holds its task's memory, about a
/// kilobyte, until then).
const REAP_ABOVE: usize = 1024;

/// hyper's limit on header lines when none is set.
const HYPER_MAX_HEADERS: usize = 100;

fn soft_fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// How slow and how many clients a server tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest a client may take to send a request's headers, and the
    /// longest a keep-alive connection stays open between requests.
    pub header_read_timeout: Duration,
    /// Client connections open at once (see the module's documentation for
    /// what happens at the cap). Lowered to a quarter of the process's
    /// file-descriptor limit when that is smaller; and all servers of the
    /// process together keep at most half of it.
    pub max_connections: usize,
    /// Connections one client IP address may hold at once.
    pub max_connections_per_client: usize,
    /// Header lines per request.
    pub max_headers: usize,
    /// Bytes of request line and headers together (also of chunked trailers).
    pub max_header_bytes: usize,
    /// The longest a response waits on a client that reads none of it:
    /// past that the connection closes, as ALB's idle timeout closes it.
    /// A load balancer sets each connection's to its idle timeout.
    pub write_timeout: Duration,
}

impl Limits {
    /// ALB's limits on headers (64 KiB in all), an idle keep-alive
    /// connection closed after 30 s and a stalled one after 60 s.
    pub const DEFAULT: Limits = Limits {
        header_read_timeout: Duration::from_secs(30),
        max_connections: 4096,
        max_connections_per_client: 4096,
        max_headers: 100,
        max_header_bytes: 64 * 1024,
        write_timeout: Duration::from_secs(60),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

impl Limits {
    /// `max_connections` as it applies in this process: at most a quarter of
    /// the soft RLIMIT_NOFILE, and at least one.
    pub fn effective_max_connections(&self) -> usize {
        let share = usize::try_from(soft_fd_limit() / FD_SHARE).unwrap_or(usize::MAX);
        self.max_connections.min(share).max(1)
    }
}

/// A response body that keeps its connection marked busy until sent.
struct Guarded<B> {
    inner: B,
    _busy: Busy,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the server answers: the handler's response, or its own refusal of
/// a request whose framing the check found ambiguous.
type Answer<B> = Relay<Guarded<B>>;

fn refused<B>(why: &'static str) -> Response<Answer<B>> {
    let mut resp = Response::new(Relay::local(why));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Whether the request asks to switch protocols: after it the framing
/// check stops, so the connection must close unless the answer switches.
fn may_switch<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE) || req.method() == Method::CONNECT
}

fn switched<B>(method: &Method, resp: &Response<B>) -> bool {
    resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (method == Method::CONNECT && resp.status().is_success())
}

/// Serves HTTP/1.1 on `listener` until `stop` completes, then lets requests
/// in flight finish for up to `grace` and closes what remains. `handler`
/// answers one request from the given client address.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
    stop: impl Future<Output = ()>,
    grace: Duration,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let server = Server {
        registry: Arc::new(Registry::new()),
        front: None,
        seat: None,
    };
    serve_with(listener, server, limits, handler, stop, grace).await;
}

/// A connection's first stop: it serves what it can of the connection and
/// either closes it or hands it to hyper (and `handler`) with the bytes it
/// has read.
pub(crate) trait Front: Send + Sync + 'static {
    fn serve<'a>(
        &'a self,
        io: &'a mut Checked<Client>,
        client: SocketAddr,
        ctx: ConnCtx<'a>,
    ) -> Pin<Box<dyn Future<Output = FrontEnd> + Send + 'a>>;
}

pub(crate) enum FrontEnd {
    Closed,
    /// hyper serves the rest, starting with `buffered`; `requests` were
    /// answered before it.
    Handover {
        buffered: BytesMut,
        requests: u64,
    },
}

/// What waiting for a client's bytes ended with.
pub(crate) enum Wait {
    Read(usize),
    /// The connection failed, or the server closes it (evicted, or
    /// stopping while no request is in progress).
    Closed,
    TimedOut,
}

/// A [`Front`]'s view of its connection's place in the server.
pub(crate) struct ConnCtx<'a> {
    conn: &'a Arc<Conn>,
    registry: &'a Arc<Registry>,
    refusal: &'a Refusal,
    limits: &'a Limits,
}

impl ConnCtx<'_> {
    pub(crate) fn limits(&self) -> &Limits {
        self.limits
    }

    /// Marks the connection busy (not to be evicted) until dropped.
    pub(crate) fn busy(&self) -> impl Drop + use<> {
        Busy::new(self.conn.clone(), self.registry.clone())
    }

    /// Whether the framing check refused the connection's `index`th request.
    pub(crate) fn refused(&self, index: u64) -> bool {
        self.refusal.reason(index).is_some()
    }

    /// Whether the server wants the connection closed after this request.
    pub(crate) fn stopping(&self) -> bool {
        self.conn.signal.state.load(Ordering::Acquire) != RUN
    }

    /// Reads more of the client's bytes into `buf`, until `deadline`.
    pub(crate) async fn read(
        &self,
        io: &mut Checked<Client>,
        buf: &mut BytesMut,
        deadline: tokio::time::Instant,
    ) -> Wait {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let signal = std::future::poll_fn(|cx| match self.conn.signal.poll(cx) {
            RUN => Poll::Pending,
            _ => Poll::Ready(()),
        });
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        tokio::select! {
            biased;
            () = signal => Wait::Closed,
            read = tokio::io::AsyncReadExt::read_buf(io, buf) => match read {
                Ok(n) => Wait::Read(n),
                Err(e) => {
                    debug!(error = %e, "reading from a client");
                    Wait::Closed
                }
            },
            () = &mut sleep => Wait::TimedOut,
        }
    }
}

/// Bytes already read from a connection, delivered before the rest of it.
struct Rewind<T> {
    pre: Bytes,
    io: T,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What hyper needs to serve the rest of a connection the front handed
/// over (or all of it, with no front).
struct Hyper<H> {
    builder: http1::Builder,
    handler: H,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    refusal: Arc<Refusal>,
    client: SocketAddr,
    /// Requests the front answered before.
    first: u64,
}

impl<H> Hyper<H> {
    async fn serve<F, B>(self, io: Rewind<Checked<Client>>)
    where
        H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Hyper {
            builder,
            handler,
            conn,
            registry,
            refusal,
            client,
            first,
        } = self;
        let requests = AtomicU64::new(first);
        let c = conn.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let busy = Busy::new(c.clone(), registry.clone());
            let index = requests.fetch_add(1, Ordering::Relaxed);
            let why = refusal.reason(index);
            let switch = may_switch(&req).then(|| req.method().clone());
            let answer = why.is_none().then(|| handler(client, req));
            async move {
                let Some(answer) = answer else {
                    drop(busy);
                    return Ok(refused(why.unwrap_or_default()));
                };
                let mut resp = answer.await?;
                if let Some(method) = switch {
                    if !switched(&method, &resp) {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                Ok::<_, Infallible>(resp.map(|inner| Relay::Stream(Guarded { inner, _busy: busy })))
            }
        });
        let served = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(served);
        let mut finishing = false;
        // hyper-util's GracefulShutdown does not take connections that may
        // upgrade, so each connection has its own signal.
        let ended = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = served.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            match conn.signal.poll(cx) {
                CLOSE => Poll::Ready(None),
                STOP if !finishing => {
                    // Finishes the request in progress, then closes.
                    served.as_mut().graceful_shutdown();
                    finishing = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                _ => Poll::Pending,
            }
        })
        .await;
        match ended {
            Some(Err(e)) => debug!(%client, error = %e, "client connection ended"),
            Some(Ok(())) => {}
            None => debug!(%client, "closed an idle connection to make room for a new one"),
        }
    }
}

/// What one accept loop serves as part of: a server (one of whose threads
/// it may be) and what it does with connections.
pub(crate) struct Server {
    pub(crate) registry: Arc<Registry>,
    /// Takes each connection first.
    pub(crate) front: Option<Arc<dyn Front>>,
    /// With more than one thread serving the server, this one's place.
    pub(crate) seat: Option<Seat>,
}

/// [`serve`], for one of a server's accept loops.
pub(crate) async fn serve_with<H, F, B>(
    listener: TcpListener,
    server: Server,
    limits: Limits,
    handler: H,
    stop: impl Future<Output = ()>,
    grace: Duration,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Server {
        registry,
        front,
        mut seat,
    } = server;
    let listener = match Listener::new(listener) {
        Ok(listener) => listener,
        Err(e) => {
            warn!(error = %e, "taking over a listening socket");
            return;
        }
    };
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            warn!(error = %e, "listener has no local address");
            return;
        }
    };
    let max = limits.effective_max_connections();
    let per_client = limits.max_connections_per_client.max(1);
    let budget = usize::try_from(soft_fd_limit() / ALL_SERVERS_SHARE).unwrap_or(usize::MAX);
    debug!(%local, max_connections = max, header_read_timeout = ?limits.header_read_timeout, "serving");
    let mut connections = JoinSet::new();
    let mut batch = Vec::with_capacity(ACCEPT_BATCH);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    // hyper's own limit is 100; setting it, even to 100, makes hyper
    // initialise an array of that size for every request it parses.
    if limits.max_headers != HYPER_MAX_HEADERS {
        builder.max_headers(limits.max_headers);
    }
    let take = |connections: &mut JoinSet<()>,
                stream: std::net::TcpStream,
                client: SocketAddr,
                ticket: Option<Ticket>| {
        let Some((id, conn)) = registry.admit(max, budget, client.ip(), per_client) else {
            debug!(%local, %client, max, "every connection is busy; closing the new one");
            return;
        };
        // TCP_NODELAY: set by `Checked` when a second write needs it.
        let (handler, builder, front) = (handler.clone(), builder.clone(), front.clone());
        let registry = registry.clone();
        let admitted = Admitted {
            id,
            registry: registry.clone(),
        };
        connections.spawn(async move {
            let _counted = (admitted, ticket);
            let refusal = Arc::new(Refusal::default());
            let client_io = Client::new(stream, limits.write_timeout);
            let mut stream = Checked::new(client_io, refusal.clone());
            let (pre, first) = match &front {
                Some(front) => {
                    let ctx = ConnCtx {
                        conn: &conn,
                        registry: &registry,
                        refusal: &refusal,
                        limits: &limits,
                    };
                    match front.serve(&mut stream, client, ctx).await {
                        FrontEnd::Closed => return,
                        FrontEnd::Handover { buffered, requests } => (buffered.freeze(), requests),
                    }
                }
                None => (Bytes::new(), 0),
            };
            let io = Rewind { pre, io: stream };
            let hyper = Hyper {
                builder,
                handler,
                conn,
                registry,
                refusal,
                client,
                first,
            };
            // Boxed: a connection the front serves to its end (most of a
            // balancer's) never holds hyper's state.
            Box::pin(hyper.serve(io)).await;
        });
    };
    tokio::pin!(stop);
    loop {
        let passed_in = async {
            match seat.as_mut() {
                Some(seat) => seat.inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept(&mut batch, ACCEPT_BATCH) => {
                if let Err(e) = accepted {
                    warn!(%local, error = %e, "accepting a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                for (stream, client) in batch.drain(..) {
                    match &seat {
                        None => take(&mut connections, stream, client, None),
                        Some(seat) => {
                            if let Some((stream, ticket)) = seat.place(stream, client) {
                                take(&mut connections, stream, client, Some(ticket));
                            }
                        }
                    }
                }
                // Finished connection tasks are reaped here rather than
                // as each ends, which would wake this loop once more per
                // connection; the branch below bounds what a quiet spell
                // after a burst leaves unreaped.
                while connections.try_join_next().is_some() {}
            }
            Some((stream, client, ticket)) = passed_in => {
                take(&mut connections, stream, client, Some(ticket));
            }
            Some(_) = connections.join_next(), if connections.len() > REAP_ABOVE => {}
        }
    }
    drop(listener);
    if let Some(seat) = &mut seat {
        // Other threads serve what they accept from now on themselves;
        // what was already passed here closes with the inbox.
        seat.inbox.close();
    }
    for conn in registry.lock().conns.values() {
        conn.signal.raise(STOP);
    }
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, finished).await.is_err() {
        warn!(%local, ?grace, "connections still open after the grace period; closing them");
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_that_does_not_switch_protocols_closes_the_connection() {
        let upgrade = Request::get("/")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(may_switch(&upgrade));
        assert!(!may_switch(&Request::get("/").body(()).unwrap()));
        let resp = |status: u16| Response::builder().status(status).body(()).unwrap();
        assert!(switched(&Method::GET, &resp(101)));
        assert!(!switched(&Method::GET, &resp(200)));
        assert!(switched(&Method::CONNECT, &resp(200)));
        assert!(!switched(&Method::CONNECT, &resp(403)));
    }
}
