//! The load balancer in front of a group of instances.
//!
//! One [`LoadBalancer`] listens on a loopback port for one group and relays
//! each HTTP/1.1 request (not each TCP connection) to one of the group's
//! in-service backends, choosing the one with the fewest requests in flight
//! and breaking ties round robin. Instances live in their own network
//! namespaces, so the balancer never dials an address: it asks a
//! [`Connector`] for a stream to a backend id, and keeps those connections
//! alive in a pool per backend. It serves on threads of its own
//! ([`Settings::threads`]), each with its event loop and its listening
//! socket, as nginx serves from worker processes.
//!
//! A rolling update goes: [`register`](LoadBalancer::register) the new
//! backend, [`set_in_service`](LoadBalancer::set_in_service) once it is
//! healthy, then [`drain`](LoadBalancer::drain) an old one before stopping
//! it. A drained backend receives no new request, and the drain returns only
//! when its last response has been relayed; together with retrying requests
//! that could not reach a backend, this makes a rollout under load fail no
//! request.
//!
//! [`loadgen`] is a small load generator for tests and benchmarks.

mod body;
mod checked;
mod client;
mod error;
mod fast;
mod framing;
pub mod listen;
pub mod loadgen;
mod proxy;
mod registry;
mod spread;
mod table;
mod threads;
mod traffic;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

pub use listen::Limits;
pub use proxy::ACCESS_LOG;
use table::Table;
pub use traffic::{LATENCY_BUCKETS, LatencyBucket, TrafficStats};

/// Opens a connection to a backend; implemented by the fleet (it connects
/// inside the instance's network namespace) and by tests (plain loopback).
pub trait Connector: Send + Sync + 'static {
    fn connect(
        &self,
        backend: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + '_>>;
}

/// How a group's balancer chooses an instance for a request, as ALB's
/// target group attributes choose it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// The instance with the fewest requests in flight; ties round robin.
    /// Slow start does not apply, as with ALB.
    #[default]
    LeastOutstandingRequests,
    RoundRobin,
    /// Random, in proportion to each instance's weight (all equal, except
    /// while slow start ramps a new one up).
    WeightedRandom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routing {
    pub algorithm: Algorithm,
    /// With a duration, a client is kept on the instance that answered it
    /// by an `AWSALB` cookie that lasts that long, until the instance
    /// drains or leaves service.
    pub stickiness: Option<Duration>,
    /// A new instance's share rises linearly from a tenth to a full one over
    /// this long after it enters service (round robin and weighted random).
    pub slow_start: Duration,
}

/// The target group attributes a balancer takes while it serves
/// ([`LoadBalancer::set_attributes`]), as ALB applies a changed attribute
/// without replacing the load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributes {
    /// Applies to drains that reach their delay after the change.
    pub deregistration_delay: Duration,
    /// ALB's idle_timeout.timeout_seconds (see [`Settings::idle_timeout`]).
    /// Applies from the next request; how long a response may wait on a
    /// client that reads none of it is taken when the connection opens.
    pub idle_timeout: Duration,
    /// Applies from the next request.
    pub routing: Routing,
}

impl Default for Attributes {
    fn default() -> Self {
        let settings = Settings::default();
        Attributes {
            deregistration_delay: settings.deregistration_delay,
            idle_timeout: settings.idle_timeout,
            routing: settings.routing,
        }
    }
}

/// Timing of drains and connections, and what clients may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long a drained backend stays registered after its last request
    /// finished, so that requests racing with the drain (a client that
    /// resolved the route just before) still find it.
    pub deregistration_delay: Duration,
    /// The longest a drain (and a graceful shutdown) waits for in-flight
    /// requests before removing the backend anyway.
    pub drain_timeout: Duration,
    /// The longest the connector may take to produce a connection; after
    /// that the request is retried on another backend.
    pub connect_timeout: Duration,
    /// ALB's idle timeout (its first value: see [`Attributes`]): how long
    /// an instance may take to answer a request (its response headers)
    /// before the client gets a 504, and the longest a response body may
    /// stall, waiting on the instance to send more or on the client to
    /// read, before the connection closes (each client connection's write
    /// timeout is set to it when the connection opens).
    pub idle_timeout: Duration,
    /// Header-read timeout (also the keep-alive idle timeout), the caps on
    /// client connections and on request headers.
    pub client_limits: Limits,
    pub routing: Routing,
    /// Threads of the balancer's own (at least one), each with its event
    /// loop and its listening socket on the port, as nginx has worker
    /// processes. The balancer serves nothing on the runtime that calls
    /// [`bind`](LoadBalancer::bind), so a group's traffic does not wait on
    /// the daemon's other work, nor the daemon on it.
    pub threads: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            deregistration_delay: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            // Headers come much faster than the idle timeout from any
            // client that means to send a request.
            client_limits: Limits::DEFAULT,
            routing: Routing::default(),
            // As much as one core serves; a group that needs more sets it.
            threads: 1,
        }
    }
}

/// The `fast` path in front of each client connection of a balancer.
struct FastFront {
    table: Arc<Table>,
    local: SocketAddr,
}

impl listen::Front for FastFront {
    fn serve<'a>(
        &'a self,
        io: &'a mut checked::Checked<client::Client>,
        client: SocketAddr,
        ctx: listen::ConnCtx<'a>,
    ) -> Pin<Box<dyn Future<Output = listen::FrontEnd> + Send + 'a>> {
        // The idle timeout in force now, rather than the one `serve` began with.
        io.set_write_timeout(self.table.idle_timeout());
        Box::pin(fast::serve(&self.table, self.local, client, io, ctx))
    }
}

/// Serves `listener` (one of the balancer's threads') until
/// `stopped` says so or its sender is dropped (every handle gone).
fn serve(
    table: Arc<Table>,
    addr: SocketAddr,
    registry: Arc<registry::Registry>,
    mut stopped: watch::Receiver<bool>,
    listener: TcpListener,
    seat: Option<spread::Seat>,
) -> impl Future<Output = ()> + Send + 'static {
    let routes = table.clone();
    let handler = move |client, req| proxy::handle(routes.clone(), addr, client, req);
    // The guard `wait_for` returns is not Send; drop it at once.
    let stopping = async move { drop(stopped.wait_for(|stopped| *stopped).await) };
    let front: Arc<dyn listen::Front> = Arc::new(FastFront {
        table: table.clone(),
        local: addr,
    });
    let server = listen::Server {
        registry,
        front: Some(front),
        seat,
    };
    // The write timeout in them is replaced by the idle timeout per
    // connection (`FastFront`).
    let limits = table.settings.client_limits;
    listen::serve_with(
        listener,
        server,
        limits,
        handler,
        stopping,
        table.settings.drain_timeout,
    )
}

/// One backend as seen by the balancer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BackendStats {
    pub id: String,
    pub in_service: bool,
    pub draining: bool,
    /// Attempts routed to this backend, including failed ones.
    pub requests: u64,
    /// Attempts that produced no complete response: connection failures,
    /// upstream errors, responses cut off midway. Most were retried on
    /// another backend and did not fail the client's request.
    pub failures: u64,
    pub in_flight: usize,
    /// Latency percentiles over the last 1024 completed responses, from
    /// choosing the backend to relaying the last byte of the response.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Response body bytes relayed to clients.
    pub response_bytes: u64,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainOutcome {
    /// Every in-flight request finished, then the deregistration delay passed.
    Drained,
    /// The drain timeout expired first; requests still in flight continue
    /// on their connections, but the backend is removed.
    TimedOut,
    /// No backend of that id was registered.
    Unknown,
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    pub backend: String,
    pub outcome: DrainOutcome,
    /// Requests in flight when the drain began.
    pub in_flight_at_start: usize,
    /// Requests still in flight when the backend was removed.
    pub in_flight_at_end: usize,
    /// From the start of the drain to the removal.
    pub waited: Duration,
}

/// A listener for one group. Clones share the listener; it stops when
/// [`shutdown`](Self::shutdown) is called or the last clone is dropped.
#[derive(Clone)]
pub struct LoadBalancer {
    inner: Arc<Inner>,
}

struct Inner {
    table: Arc<Table>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // In-flight requests still finish, in the background.
        self.stop.send_replace(true);
    }
}

impl LoadBalancer {
    /// Binds 127.0.0.1:port (0 = a free port) and serves until shutdown,
    /// on `settings.threads` threads of its own; returns once they listen.
    pub async fn bind(
        port: u16,
        connector: Arc<dyn Connector>,
        settings: Settings,
    ) -> std::io::Result<LoadBalancer> {
        let table = Arc::new(Table::new(connector, settings));
        let registry = Arc::new(registry::Registry::new());
        let (stop, stopped) = watch::channel(false);
        let (addr, sockets) = threads::bind(port, settings.threads)?;
        let serving = table.clone();
        let task = threads::start(addr.port(), sockets, move |listener, seat| {
            serve(
                serving.clone(),
                addr,
                registry.clone(),
                stopped.clone(),
                listener,
                seat,
            )
        })
        .await?;
        Ok(LoadBalancer {
            inner: Arc::new(Inner {
                table,
                addr,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Adds a backend, not yet receiving traffic. Registering an id that is
    /// already registered does nothing, unless it is draining: then it is
    /// replaced by a fresh entry that the drain will not remove.
    pub fn register(&self, backend: &str) {
        self.inner.table.register(backend);
    }

    /// Starts (true) or stops (false) routing new requests to it. Requests
    /// already in flight finish either way.
    pub fn set_in_service(&self, backend: &str, in_service: bool) {
        if !self.inner.table.set_in_service(backend, in_service) {
            warn!(%backend, in_service, "set_in_service on a backend that is not registered");
        }
    }

    /// Stops new requests to the backend, waits until its in-flight
    /// requests finish and then the deregistration delay passes (or
    /// `settings.drain_timeout` expires), removes it.
    pub async fn drain(&self, backend: &str) -> DrainReport {
        let started = Instant::now();
        let table = &self.inner.table;
        let Some(entry) = table.begin_drain(backend) else {
            return DrainReport {
                backend: backend.to_owned(),
                outcome: DrainOutcome::Unknown,
                in_flight_at_start: 0,
                in_flight_at_end: 0,
                waited: Duration::ZERO,
            };
        };
        let in_flight_at_start = entry.in_flight();
        let deadline = tokio::time::Instant::from_std(started) + table.settings.drain_timeout;
        let idle = entry.wait_quiet(deadline).await;
        if idle {
            let delay = table.attributes().deregistration_delay;
            let delay_end = tokio::time::Instant::now() + delay;
            tokio::time::sleep_until(delay_end.min(deadline)).await;
        }
        table.remove_entry(&entry);
        let in_flight_at_end = entry.in_flight();
        DrainReport {
            backend: backend.to_owned(),
            outcome: if idle {
                DrainOutcome::Drained
            } else {
                DrainOutcome::TimedOut
            },
            in_flight_at_start,
            in_flight_at_end,
            waited: started.elapsed(),
        }
    }

    /// Changes the deregistration delay, idle timeout and routing of a
    /// balancer that is serving; connections and backends are kept.
    pub fn set_attributes(&self, attributes: Attributes) {
        self.inner.table.set_attributes(attributes);
    }

    /// The attributes in force.
    pub fn attributes(&self) -> Attributes {
        self.inner.table.attributes()
    }

    /// Removes the backend immediately; requests in flight on it finish,
    /// but its connections are not reused.
    pub fn deregister(&self, backend: &str) {
        if !self.inner.table.deregister(backend) {
            warn!(%backend, "deregister of a backend that is not registered");
        }
    }

    /// Every registered backend, draining ones included, in registration order.
    pub fn backends(&self) -> Vec<BackendStats> {
        self.inner.table.stats()
    }

    /// Every response sent since the balancer started, by status class
    /// and time to answer.
    pub fn traffic(&self) -> TrafficStats {
        self.inner.table.traffic.snapshot()
    }

    /// Stops accepting connections and waits until the requests in flight
    /// have been answered (at most `settings.drain_timeout`). Other clones
    /// stop serving too.
    pub async fn shutdown(self) {
        self.inner.stop.send_replace(true);
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                warn!(addr = %self.inner.addr, error = %e, "listener task failed");
            }
        }
    }
}
