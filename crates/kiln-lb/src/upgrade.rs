//! Relaying `Connection: Upgrade` requests (WebSocket and others): once the
//! instance answers 101, the client's and the instance's connections are
//! spliced and bytes flow both ways until either side closes or the
//! instance is deregistered, which closes them as ALB does when the
//! deregistration delay ends. As ALB's, an upgraded connection on which
//! neither side sends anything for the idle timeout is closed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, warn};

use crate::body::{ProxyBody, UpBody};
use crate::proxy::{
    MAX_ATTEMPTS, acquire, local_response, origin_form, prepare_request_headers, relay,
};
use crate::table::{Backend, Pick, Table};

/// Whether the client asks to switch protocols on this connection.
pub(crate) fn requested<B>(req: &Request<B>) -> bool {
    req.version() == hyper::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub(crate) async fn forward(
    table: &Table,
    local: SocketAddr,
    client: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let client_side = hyper::upgrade::on(&mut req);
    let protocol = req.headers().get(header::UPGRADE).cloned();
    // An upgrade request's body, if any, is not relayed: the protocol it
    // switches to starts after the headers.
    let (mut parts, _body) = req.into_parts();
    prepare_request_headers(&mut parts.headers, local, client);
    if let Some(protocol) = protocol {
        parts.headers.insert(header::UPGRADE, protocol);
    }
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let uri = origin_form(std::mem::take(&mut parts.uri));

    let mut failed: Vec<Arc<Backend>> = Vec::new();
    while failed.len() < MAX_ATTEMPTS {
        let lease = match table.pick(&failed, None) {
            Pick::Leased(lease) => lease,
            Pick::NoneInService if failed.is_empty() => {
                return local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service unavailable: no instance in service\n",
                );
            }
            Pick::NoneInService | Pick::Exhausted => break,
        };
        let backend = lease.backend.clone();
        let mut sender = match acquire(table, &backend).await {
            Ok((sender, _)) => sender,
            Err(e) => {
                debug!(error = %e, "upgrade: retrying on another backend");
                lease.failed();
                table.mark_down(&backend);
                failed.push(backend);
                continue;
            }
        };
        let mut up = Request::new(UpBody::full(Bytes::new()));
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri.clone();
        *up.headers_mut() = parts.headers.clone();
        let idle_timeout = table.idle_timeout();
        let mut resp = match tokio::time::timeout(idle_timeout, sender.send_request(up)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                lease.failed();
                warn!(backend = %backend.id, error = %e, "upgrade request failed");
                return local_response(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway: the instance closed the connection or sent a malformed response\n",
                );
            }
            Err(_) => {
                lease.failed();
                return local_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout: the instance did not answer within the idle timeout\n",
                );
            }
        };
        table.mark_up(&backend);
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // The instance declined; its answer is an ordinary response.
            return relay(resp, lease, sender, idle_timeout);
        }
        let instance_side = hyper::upgrade::on(&mut resp);
        lease.succeeded(0);
        // From here on the connection is no request in flight: a drain does
        // not wait for it, and it closes when the backend is removed.
        drop(lease);
        tokio::spawn(splice(
            client_side,
            instance_side,
            backend.clone(),
            client,
            idle_timeout,
        ));
        let (mut head, _) = resp.into_parts();
        if crate::proxy::access_log_on() {
            head.extensions
                .insert(crate::proxy::ServedBy(backend.clone()));
        }
        head.headers
            .append(header::VIA, HeaderValue::from_static("1.1 kiln"));
        return Response::from_parts(head, ProxyBody::full(Bytes::new()));
    }
    local_response(
        StatusCode::BAD_GATEWAY,
        "bad gateway: no instance could be reached or answered properly\n",
    )
}

async fn splice(
    client_side: OnUpgrade,
    instance_side: OnUpgrade,
    backend: Arc<Backend>,
    client: SocketAddr,
    idle_timeout: Duration,
) {
    let mut removal = backend.removal();
    let (client_io, instance_io) = match tokio::try_join!(client_side, instance_side) {
        Ok(both) => both,
        Err(e) => {
            debug!(%client, backend = %backend.id, error = %e, "upgrade did not complete");
            return;
        }
    };
    let last_read = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut client_io = Watched::new(TokioIo::new(client_io), &last_read, started);
    let mut instance_io = Watched::new(TokioIo::new(instance_io), &last_read, started);
    let removed = async move {
        // The guard `wait_for` returns is not Send; drop it at once.
        let _ = removal.wait_for(|removed| *removed).await.is_ok();
    };
    let idle = async {
        let mut tick = tokio::time::interval(idle_timeout / 4);
        loop {
            tick.tick().await;
            let quiet_since = Duration::from_micros(last_read.load(Ordering::Relaxed));
            if started.elapsed().saturating_sub(quiet_since) >= idle_timeout {
                return;
            }
        }
    };
    tokio::select! {
        () = idle => {
            debug!(%client, backend = %backend.id, ?idle_timeout, "closing an idle upgraded connection");
        }
        copied = tokio::io::copy_bidirectional(&mut client_io, &mut instance_io) => {
            if let Err(e) = copied {
                debug!(%client, backend = %backend.id, error = %e, "upgraded connection ended");
            }
        }
        () = removed => {
            debug!(%client, backend = %backend.id, "closing an upgraded connection: its instance was deregistered");
        }
    }
}

/// One side of an upgraded connection, noting when it last delivered bytes
/// (microseconds since `started`) in a stamp both sides share.
struct Watched<T> {
    io: T,
    last_read: Arc<AtomicU64>,
    started: Instant,
}

impl<T> Watched<T> {
    fn new(io: T, last_read: &Arc<AtomicU64>, started: Instant) -> Self {
        Watched {
            io,
            last_read: last_read.clone(),
            started,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = u64::try_from(this.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            this.last_read.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
