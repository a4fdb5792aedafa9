//! A client connection whose bytes pass the [`framing`](crate::framing)
//! check before hyper reads them.
//!
//! hyper must never see a refused request as complete. When a read
//! contains the whole refused head, that head is replaced by a placeholder
//! request that the server answers with a 400 naming the reason (the
//! service knows it by its position on the connection: hyper answers
//! requests one at a time, in order). When part of the head already went to
//! hyper in an earlier read, a NUL byte follows it instead, which no HTTP
//! parser accepts, and hyper answers its own 400. Either way nothing more
//! is read from the client, and the connection closes after the answer.
//! A violation inside a chunked body fails the body with an error once the
//! bytes before it have been read: the balancer answers 400 then.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::Client;
use crate::framing::Scanner;

/// Stands in for a refused request; its index on the connection is in
/// [`Refusal`].
const PLACEHOLDER: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
/// Ends a partly delivered head so that hyper parses it (it looks for the
/// end of a head before parsing again) and fails at the NUL.
const POISON: &[u8] = b"\0\r\n\r\n";

/// The request (by its index on the connection) that stands for a refused
/// one, and why it was refused.
#[derive(Default)]
pub(crate) struct Refusal(OnceLock<(u64, &'static str)>);

impl Refusal {
    /// Why the `index`th request of the connection is refused, if it is.
    pub(crate) fn reason(&self, index: u64) -> Option<&'static str> {
        self.0
            .get()
            .filter(|(i, _)| *i == index)
            .map(|(_, why)| *why)
    }
}

pub(crate) struct Checked<T> {
    io: T,
    scanner: Scanner,
    refusal: Arc<Refusal>,
    refused: bool,
    /// A violation in a body, reported by the read after the one that
    /// delivered the bytes before it.
    failed: Option<&'static str>,
    /// Writes so far, up to 2 (see `poll_write`).
    writes: u8,
}

impl<T> Checked<T> {
    pub(crate) fn new(io: T, refusal: Arc<Refusal>) -> Self {
        Checked {
            io,
            scanner: Scanner::default(),
            refusal,
            refused: false,
            failed: None,
            writes: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Checked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(why) = this.failed {
            return Poll::Ready(Err(invalid(why)));
        }
        if this.refused {
            // The answer to the refused request closes the connection;
            // until then there is nothing more to read.
            return Poll::Pending;
        }
        if this.scanner.passthrough() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let Err(v) = this.scanner.scan(&buf.filled()[before..]) else {
            return Poll::Ready(Ok(()));
        };
        tracing::debug!(
            why = v.why.trim_end(),
            "refusing a request with ambiguous framing"
        );
        if !v.in_head {
            this.failed = Some(v.why);
            if v.at == 0 {
                return Poll::Ready(Err(invalid(v.why)));
            }
            buf.set_filled(before + v.at);
            return Poll::Ready(Ok(()));
        }
        this.refused = true;
        match v.head_start {
            Some(start) if buf.capacity() - (before + start) >= PLACEHOLDER.len() => {
                buf.set_filled(before + start);
                buf.put_slice(PLACEHOLDER);
                let _ = this.refusal.0.set((this.scanner.heads(), v.why));
            }
            _ if buf.capacity() - (before + v.at) >= POISON.len() => {
                buf.set_filled(before + v.at);
                buf.put_slice(POISON);
            }
            _ => return Poll::Ready(Err(invalid(v.why))),
        }
        Poll::Ready(Ok(()))
    }
}

fn invalid(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.trim_end())
}

impl Checked<Client> {
    /// See [`Client::set_write_timeout`].
    pub(crate) fn set_write_timeout(&mut self, timeout: std::time::Duration) {
        self.io.set_write_timeout(timeout);
    }

    /// Turns Nagle's algorithm off before the connection's second write.
    /// Nagle holds back a small write only while earlier data is
    /// unacknowledged, which the first write never is; so a connection that
    /// carries one response in one write (most that close after a request)
    /// is spared the system call, and every other gets it in time.
    fn before_write(&mut self) {
        if self.writes < 2 {
            self.writes += 1;
            if self.writes == 2
                && let Err(e) = self.io.set_nodelay(true)
            {
                tracing::debug!(error = %e, "setting TCP_NODELAY");
            }
        }
    }
}

impl AsyncWrite for Checked<Client> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.before_write();
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.before_write();
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// hyper shuts a connection down just before it drops it, and closing
    /// sends the same FIN: the separate shutdown is a system call per
    /// connection for nothing. An upgraded connection is different: a
    /// tunnel half-closes it when the instance is done sending and keeps
    /// relaying the client's bytes, so its shutdown goes through.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.scanner.passthrough() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
