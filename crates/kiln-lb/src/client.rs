//! A client's connection, registered with the event loop only once it has
//! to wait.
//!
//! Registering a socket with epoll and taking it out again are a system
//! call each. A connection that carries one request usually has that
//! request waiting by the time it is accepted and takes its answer in one
//! write, so it never waits: reading and writing it directly until a call
//! would block spares it both calls, two of the eight it would otherwise
//! cost the balancer (and the event loop's bookkeeping for it). The first
//! call that would block registers the socket; epoll then reports whatever
//! the socket is already ready for, so nothing is missed in between.
//!
//! Connections are accepted by [`Listener`] for the same reason: tokio's
//! listener registers each connection it accepts.
//!
//! A write that the client does not make room for fails after the write
//! timeout, so that a client that stops reading a response cannot hold its
//! connection, and the instance's, for ever.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::SocketFlags;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A listening socket whose connections are accepted unregistered.
pub(crate) struct Listener(AsyncFd<std::net::TcpListener>);

impl Listener {
    #[allow(unsafe_code)]
    pub(crate) fn new(listener: TcpListener) -> io::Result<Self> {
        let listener = listener.into_std()?;
        // SAFETY: the std listener owns its descriptor and the `AsyncFd`
        // owns the listener, which is never handed out mutably or taken
        // back: the descriptor stays open and the same while registered.
        let registered = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
        Ok(Listener(registered.map_err(io::Error::from)?))
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }

    /// Waits for a connection, then takes every one already waiting, up to
    /// `max` in `batch` (which should be empty). Cancelling the wait loses
    /// no connection: none is taken until the last wait is over.
    pub(crate) async fn accept(
        &self,
        batch: &mut Vec<(std::net::TcpStream, SocketAddr)>,
        max: usize,
    ) -> io::Result<()> {
        loop {
            let mut ready = self.0.readable().await?;
            while batch.len() < max {
                let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
                match rustix::net::acceptfrom_with(self.0.get_ref(), flags) {
                    Ok((fd, addr)) => {
                        let stream = std::net::TcpStream::from(fd);
                        let addr = addr.and_then(|a| SocketAddr::try_from(a).ok());
                        if let Some(addr) = addr.or_else(|| stream.peer_addr().ok()) {
                            batch.push((stream, addr));
                        }
                    }
                    Err(Errno::AGAIN) => {
                        ready.clear_ready();
                        break;
                    }
                    // A client that gave up while it waited.
                    Err(Errno::INTR | Errno::CONNABORTED) => {}
                    Err(e) if batch.is_empty() => return Err(e.into()),
                    // The next call reports it.
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                return Ok(());
            }
        }
    }
}

pub(crate) struct Client {
    state: State,
    write_timeout: Duration,
    /// Since the current write has waited: armed only when one waits.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

enum State {
    /// Not registered with the event loop (non-blocking).
    Fresh(std::net::TcpStream),
    Polled(TcpStream),
    /// Registration failed; the socket is closed.
    Lost,
}

impl Client {
    /// `stream` must be in non-blocking mode.
    pub(crate) fn new(stream: std::net::TcpStream, write_timeout: Duration) -> Self {
        Client {
            state: State::Fresh(stream),
            write_timeout,
            stalled: None,
        }
    }

    /// Takes effect from the next write that has to wait.
    pub(crate) fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match &self.state {
            State::Fresh(s) => s.set_nodelay(on),
            State::Polled(s) => s.set_nodelay(on),
            State::Lost => Err(lost()),
        }
    }

    /// The socket, registered with the event loop from now on.
    fn polled(&mut self) -> io::Result<&mut TcpStream> {
        if let State::Fresh(_) = self.state
            && let State::Fresh(fresh) = std::mem::replace(&mut self.state, State::Lost)
        {
            self.state = State::Polled(TcpStream::from_std(fresh)?);
        }
        match &mut self.state {
            State::Polled(s) => Ok(s),
            _ => Err(lost()),
        }
    }

    /// Does `op` on the socket directly while it is fresh, unless that
    /// would block.
    fn direct<T>(
        &mut self,
        op: impl FnOnce(&mut std::net::TcpStream) -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        let State::Fresh(s) = &mut self.state else {
            return None;
        };
        match op(s) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            done => Some(done),
        }
    }

    /// Writes directly while the socket is fresh, else through the event
    /// loop; fails once the write has waited for the write timeout without
    /// the client making room.
    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        direct: impl FnOnce(&mut std::net::TcpStream) -> io::Result<usize>,
        polled: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if let Some(done) = self.direct(direct) {
            return Poll::Ready(done);
        }
        let write = polled(Pin::new(self.polled()?), cx);
        if write.is_ready() {
            self.stalled = None;
            return write;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read none of the response for {timeout:?}"),
        )))
    }
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection could not be registered with the event loop",
    )
}

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(done) = this.direct(|s| s.read(buf.initialize_unfilled())) {
            return Poll::Ready(done.map(|n| buf.advance(n)));
        }
        Pin::new(this.polled()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for Client {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, |s| s.write(buf), |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_with(
            cx,
            |s| s.write_vectored(bufs),
            |s, cx| s.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Fresh(s) => Poll::Ready(s.shutdown(std::net::Shutdown::Write)),
            State::Polled(s) => Pin::new(s).poll_shutdown(cx),
            State::Lost => Poll::Ready(Err(lost())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether an event loop (epoll instance) of this process watches `fd`,
    /// as `/proc/self/fdinfo` shows it.
    fn watched(fd: i32) -> bool {
        let fd = fd.to_string();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .any(|e| {
                let link = std::fs::read_link(e.path()).unwrap_or_default();
                let info = std::fs::read_to_string(format!(
                    "/proc/self/fdinfo/{}",
                    e.file_name().to_string_lossy()
                ));
                link.to_string_lossy() == "anon_inode:[eventpoll]"
                    && info.unwrap_or_default().lines().any(|line| {
                        line.strip_prefix("tfd:")
                            .and_then(|rest| rest.split_whitespace().next())
                            == Some(fd.as_str())
                    })
            })
    }

    /// A listener (as the accept loop has it) and a client connected to it.
    async fn pair() -> (Listener, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = Listener::new(listener).unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener, peer)
    }

    async fn accept_one(listener: &Listener) -> (Client, i32) {
        let mut batch = Vec::new();
        listener.accept(&mut batch, 1).await.unwrap();
        let (stream, _) = batch.pop().unwrap();
        let fd = stream.as_raw_fd();
        (Client::new(stream, Duration::from_secs(5)), fd)
    }

    #[tokio::test]
    async fn a_request_already_waiting_is_read_and_answered_without_the_event_loop() {
        let (listener, mut peer) = pair().await;
        peer.write_all(b"ping").await.unwrap();
        let (mut client, fd) = accept_one(&listener).await;
        let mut got = [0; 4];
        client.read_exact(&mut got).await.unwrap();
        client.write_all(b"pong").await.unwrap();
        assert_eq!(&got, b"ping");
        assert!(
            !watched(fd),
            "a connection that never waited is not registered"
        );
        drop(client);
        let mut answer = String::new();
        peer.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "pong");
    }

    #[tokio::test]
    async fn a_read_that_must_wait_is_woken_by_the_bytes_that_arrive_later() {
        let (listener, mut peer) = pair().await;
        let (mut client, fd) = accept_one(&listener).await;
        let reader = tokio::spawn(async move {
            let mut got = [0; 5];
            client.read_exact(&mut got).await.map(|_| got)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(watched(fd), "waiting registers the connection");
        peer.write_all(b"hello").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the read was woken")
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffers_finishes_as_the_peer_reads() {
        let (listener, mut peer) = pair().await;
        let (mut client, _) = accept_one(&listener).await;
        let sent: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await?;
            client.shutdown().await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut got))
            .await
            .expect("the write was woken as the peer read")
            .unwrap();
        writer.await.unwrap().unwrap();
        assert!(
            got == expected,
            "{} bytes of {} arrived intact",
            got.len(),
            expected.len()
        );
    }

    #[tokio::test]
    async fn connections_waiting_together_are_accepted_together_up_to_the_batch() {
        let listener = Listener::new(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peers = Vec::new();
        for _ in 0..5 {
            peers.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut batch = Vec::new();
        listener.accept(&mut batch, 3).await.unwrap();
        assert_eq!(batch.len(), 3);
        batch.clear();
        listener.accept(&mut batch, 3).await.unwrap();
        assert_eq!(batch.len(), 2);
        let mut clients: Vec<SocketAddr> = batch.iter().map(|(_, addr)| *addr).collect();
        let mut local: Vec<SocketAddr> =
            peers[3..].iter().map(|p| p.local_addr().unwrap()).collect();
        clients.sort();
        local.sort();
        assert_eq!(
            clients, local,
            "each connection comes with its client's address"
        );
    }
}
