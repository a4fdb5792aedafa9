//! A balancer's own threads ([`Settings::threads`](crate::Settings)), as
//! nginx runs worker processes: each thread has its own event loop and its
//! own listening socket on the balancer's port, and serves each connection
//! it takes from the first byte to the last. The kernel spreads new
//! connections over the sockets (`SO_REUSEPORT`), and a thread waiting for
//! work sleeps in its own `epoll_wait` rather than on a lock shared with
//! the others; a thread well ahead of another in connections passes new
//! ones on when it accepts them (see `spread`). The routing table, the
//! connection caps and the traffic figures are shared by every thread.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::spread::{self, Seat};

/// Connections the kernel queues for each socket before `accept`; tokio's
/// own `TcpListener::bind` takes the same.
const BACKLOG: u32 = 1024;

/// How long a stopping thread waits for the blocking work its event loop
/// started (a connector's `spawn_blocking`) before it ends anyway.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// Binds `threads` sockets to 127.0.0.1:`port` (0 = a free port), not yet
/// listening.
///
/// `SO_REUSEPORT` would let a socket join another process's group on the
/// same port (one of the same user that set it too) instead of failing, so
/// the port is first bound alone: that fails as any bind does when the port
/// is taken, and it picks the port when none is given.
pub(crate) fn bind(port: u16, threads: usize) -> io::Result<(SocketAddr, Vec<TcpSocket>)> {
    let probe = StdListener::bind((Ipv4Addr::LOCALHOST, port))?;
    let addr = probe.local_addr()?;
    drop(probe);
    let sockets = (0..threads.max(1))
        .map(|_| {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            if threads > 1 {
                socket.set_reuseport(true)?;
            }
            socket.bind(addr)?;
            Ok(socket)
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok((addr, sockets))
}

/// Starts a thread per socket, each serving with `serve(listener)`
/// on an event loop of its own, and returns once every socket listens.
/// The returned task ends when every thread has ended, after the futures
/// `serve` made have returned. The threads are named `kiln-lb-PORT-INDEX`,
/// as `top -H` and `/proc` show them.
pub(crate) async fn start<S, F>(
    port: u16,
    sockets: Vec<TcpSocket>,
    serve: S,
) -> io::Result<JoinHandle<()>>
where
    S: Fn(TcpListener, Option<Seat>) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let mut seats: Vec<Option<Seat>> = match sockets.len() {
        1 => vec![None],
        n => spread::seats(n).into_iter().map(Some).collect(),
    };
    let mut listening = Vec::with_capacity(sockets.len());
    let mut ended = Vec::with_capacity(sockets.len());
    for ((index, socket), seat) in sockets.into_iter().enumerate().zip(seats.drain(..)) {
        let (ready, is_ready) = oneshot::channel::<io::Result<()>>();
        let (end, has_ended) = oneshot::channel::<()>();
        let serve = serve.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kiln-lb-{port}-{index}"))
            .spawn(move || run(index, socket, seat, serve, ready, end))?;
        listening.push(is_ready);
        ended.push((has_ended, thread));
    }
    for is_ready in listening {
        match is_ready.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(io::Error::other(
                    "a balancer thread ended before it listened",
                ));
            }
        }
    }
    Ok(tokio::spawn(async move {
        for (has_ended, thread) in ended {
            if has_ended.await.is_err() {
                warn!("a balancer thread ended abnormally");
            }
            // The thread still exists for a moment after it says it has
            // ended; joining it (briefly blocking) makes "ended" true of
            // the thread itself, as `/proc` and `top -H` see it.
            if let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await {
                warn!("a balancer thread panicked");
            }
        }
    }))
}

fn run<S, F>(
    index: usize,
    socket: TcpSocket,
    seat: Option<Seat>,
    serve: S,
    ready: oneshot::Sender<io::Result<()>>,
    end: oneshot::Sender<()>,
) where
    S: Fn(TcpListener, Option<Seat>) -> F,
    F: Future<Output = ()>,
{
    crate::table::use_raw_pool(index);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        // Listening registers the socket with this thread's event loop.
        let listener = match socket.listen(BACKLOG) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        serve(listener, seat).await;
    });
    rt.shutdown_timeout(BLOCKING_GRACE);
    let _ = end.send(());
}
