//! The client-facing listener.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::proxy;
use crate::table::Table;

/// Pause after a failed accept: the usual cause is running out of file
/// descriptors, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts clients until `stop` turns true, then lets in-flight requests
/// finish for up to `grace` and closes what remains.
pub(crate) async fn serve(
    listener: TcpListener,
    table: Arc<Table>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            warn!(error = %e, "listener has no local address");
            return;
        }
    };
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut builder = http1::Builder::new();
    // The timer enables hyper's header read timeout, so that idle or slow
    // clients cannot hold connections open forever.
    builder.timer(TokioTimer::new());
    loop {
        tokio::select! {
            // A dropped sender (every handle gone) also stops the listener.
            // The guard `wait_for` returns is not Send; drop it at once.
            () = async { drop(stop.wait_for(|stopped| *stopped).await) } => break,
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(%local, error = %e, "accepting a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(%client, error = %e, "setting TCP_NODELAY");
                }
                let table = table.clone();
                let service = service_fn(move |req| proxy::handle(table.clone(), local, client, req));
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(%client, error = %e, "client connection ended");
                    }
                });
            }
            // Reaps finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(%local, ?grace, "connections still open after the grace period; closing them");
    }
    connections.shutdown().await;
}
