//! The routing table: which backends exist, which may take new requests,
//! and what each has done.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use tokio::sync::{Notify, watch};

use crate::body::UpBody;
use crate::fast::Upstream;
use crate::{Algorithm, Attributes, BackendStats, Connector, Routing, Settings};

/// Latency percentiles are taken over this many most recent requests, so
/// that they follow the backend's current behaviour rather than its history.
const LATENCY_WINDOW: usize = 1024;

/// More idle connections than this per backend only hold sockets open: the
/// number needed is bounded by the peak concurrency, which the pool reaches
/// again on its own.
const MAX_IDLE_PER_BACKEND: usize = 256;

/// After a failed connection attempt the backend is avoided for this long
/// (unless nothing else is in service), so that a dead instance costs one
/// retry per interval instead of one per request until the fleet's health
/// check takes it out.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// Pooled connections idle longer than this are closed rather than reused.
/// Servers close idle keep-alive connections on their own schedule (Node.js
/// after 5 s), and a request sent just as the server closes fails in a way
/// that cannot be retried unless the request is idempotent; staying under
/// the common timeouts makes that race rare.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

pub(crate) type Sender = SendRequest<UpBody>;

/// The `fast` path's plain connections are pooled apart for each of a
/// balancer's threads (see `Settings::threads`): a connection belongs to
/// the event loop of the thread that opened it, and used from another
/// thread each of its reads would cost a wake-up of that one. Threads past
/// this many share pools, which still works.
const RAW_POOLS: usize = 8;

thread_local! {
    /// This thread's pool; 0 on threads that are not a balancer's own.
    static RAW_POOL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes the calling thread, a balancer's `index`th, use its own pool.
pub(crate) fn use_raw_pool(index: usize) {
    RAW_POOL.set(index % RAW_POOLS);
}

fn raw_pool() -> usize {
    RAW_POOL.get()
}

pub(crate) struct Backend {
    pub(crate) id: String,
    in_service: AtomicBool,
    draining: AtomicBool,
    removed: AtomicBool,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    response_bytes: AtomicU64,
    /// Milliseconds since the table's epoch; 0 when not marked down.
    down_until_ms: AtomicU64,
    /// Milliseconds since the table's epoch when it last entered service,
    /// for slow start.
    in_service_since_ms: AtomicU64,
    latencies: Mutex<LatencyWindow>,
    /// Oldest first, each with the moment it became idle.
    idle: Mutex<Vec<(Sender, Instant)>>,
    /// The same for the plain connections of the `fast` path, a pool per
    /// balancer thread.
    raw: [Mutex<Vec<(Upstream, Instant)>>; RAW_POOLS],
    quiet: Notify,
    /// Set once the backend is removed: upgraded connections (WebSocket)
    /// to it close then, as ALB closes them when the deregistration delay ends.
    closing: watch::Sender<bool>,
}

impl Backend {
    fn new(id: &str) -> Self {
        Backend {
            id: id.to_owned(),
            in_service: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
            in_service_since_ms: AtomicU64::new(0),
            latencies: Mutex::new(LatencyWindow::default()),
            idle: Mutex::new(Vec::new()),
            raw: std::array::from_fn(|_| Mutex::new(Vec::new())),
            quiet: Notify::new(),
            closing: watch::Sender::new(false),
        }
    }

    fn routable(&self) -> bool {
        self.in_service.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && !self.removed.load(Ordering::Acquire)
    }

    /// Whether a finished connection may go back to the pool: a draining or
    /// removed backend must not get new requests, so its connections close.
    fn keeps_connections(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && !self.removed.load(Ordering::Acquire)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn take_idle(&self) -> Option<Sender> {
        take_fresh(&self.idle).map(|(sender, _)| sender)
    }

    pub(crate) fn put_idle(&self, sender: Sender) {
        if !sender.is_closed() {
            self.put(&self.idle, sender);
        }
    }

    /// A pooled plain connection, with the moment it became idle.
    pub(crate) fn take_raw(&self) -> Option<(Upstream, Instant)> {
        take_fresh(&self.raw[raw_pool()])
    }

    pub(crate) fn put_raw(&self, conn: Upstream) {
        self.put(&self.raw[raw_pool()], conn);
    }

    fn put<T>(&self, pool: &Mutex<Vec<(T, Instant)>>, conn: T) {
        if !self.keeps_connections() {
            return;
        }
        let mut idle = lock(pool);
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push((conn, Instant::now()));
        }
        drop(idle);
        // A drain or removal may have cleared the pool between the check
        // above and the push; clearing again closes what slipped in.
        if !self.keeps_connections() {
            self.close_idle();
        }
    }

    /// Resolves to true once the backend has been removed.
    pub(crate) fn removal(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn close_tunnels(&self) {
        self.closing.send_replace(true);
    }

    pub(crate) fn close_idle(&self) {
        let senders = std::mem::take(&mut *lock(&self.idle));
        // Dropping the last sender of a connection closes it once idle.
        drop(senders);
        for pool in &self.raw {
            drop(std::mem::take(&mut *lock(pool)));
        }
    }

    fn stats(&self) -> BackendStats {
        let [p50_ms, p90_ms, p99_ms] = lock(&self.latencies).percentiles_ms([50.0, 90.0, 99.0]);
        BackendStats {
            id: self.id.clone(),
            in_service: self.in_service.load(Ordering::Acquire),
            draining: self.draining.load(Ordering::Acquire),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
            p50_ms,
            p90_ms,
            p99_ms,
            response_bytes: self.response_bytes.load(Ordering::Relaxed),
        }
    }

    /// Waits until no request is in flight, or the deadline passes.
    /// Returns whether the backend became idle.
    pub(crate) async fn wait_quiet(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let changed = self.quiet.notified();
            tokio::pin!(changed);
            // Registering before the check closes the window in which the
            // last request could finish unseen.
            changed.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

/// The most recently used connection of `pool` (the oldest are the
/// likeliest to have been closed by the backend meanwhile), unless it has
/// been idle past the pool's timeout.
fn take_fresh<T>(pool: &Mutex<Vec<(T, Instant)>>) -> Option<(T, Instant)> {
    let mut idle = lock(pool);
    let (conn, since) = idle.pop()?;
    if since.elapsed() <= POOL_IDLE_TIMEOUT {
        return Some((conn, since));
    }
    // Everything below the newest entry is older still.
    let expired = std::mem::take(&mut *idle);
    drop(idle);
    drop((conn, expired));
    None
}

/// One request's claim on a backend: counts as in flight until dropped.
pub(crate) struct Lease {
    pub(crate) backend: Arc<Backend>,
    started: Instant,
}

impl Lease {
    pub(crate) fn succeeded(&self, response_bytes: u64) {
        self.backend
            .response_bytes
            .fetch_add(response_bytes, Ordering::Relaxed);
        lock(&self.backend.latencies).push(self.started.elapsed());
    }

    pub(crate) fn failed(&self) {
        self.backend.failures.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.backend.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.backend.quiet.notify_waiters();
        }
    }
}

pub(crate) enum Pick {
    Leased(Lease),
    /// No backend is in service at all.
    NoneInService,
    /// Backends are in service, but every one has already failed this request.
    Exhausted,
}

/// The backends a request may go to: those of `all` that `candidate` takes.
struct Candidates<'a, 'f> {
    all: &'a [Arc<Backend>],
    candidate: &'f dyn Fn(&Arc<Backend>) -> bool,
}

impl<'a> Candidates<'a, '_> {
    fn iter(&self) -> impl Iterator<Item = &'a Arc<Backend>> + '_ {
        self.all.iter().filter(|b| (self.candidate)(b))
    }
}

pub(crate) struct Table {
    backends: RwLock<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    /// xorshift state for weighted random choices.
    rng: AtomicU64,
    epoch: Instant,
    /// What a group update may change while the balancer serves; the
    /// `settings` fields of the same name are only their first values.
    attributes: LiveAttributes,
    pub(crate) settings: Settings,
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) traffic: crate::traffic::Traffic,
}

impl Table {
    pub(crate) fn new(connector: Arc<dyn Connector>, settings: Settings) -> Self {
        Table {
            backends: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            rng: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
                    | 1,
            ),
            epoch: Instant::now(),
            attributes: LiveAttributes::new(Attributes {
                deregistration_delay: settings.deregistration_delay,
                idle_timeout: settings.idle_timeout,
                routing: settings.routing,
            }),
            settings,
            connector,
            traffic: Default::default(),
        }
    }

    pub(crate) fn attributes(&self) -> Attributes {
        self.attributes.load()
    }

    /// The idle timeout in force (read on every request, without the rest).
    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_nanos(self.attributes.idle_timeout_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn set_attributes(&self, attributes: Attributes) {
        self.attributes.store(attributes);
    }

    pub(crate) fn register(&self, id: &str) {
        let mut backends = write(&self.backends);
        if let Some(pos) = backends.iter().position(|b| b.id == id) {
            if !backends[pos].draining.load(Ordering::Acquire) {
                return;
            }
            // Re-registering a draining backend starts it afresh; the drain
            // still under way removes only its own entry, not this one.
            let old = backends.remove(pos);
            old.removed.store(true, Ordering::Release);
            old.close_idle();
            old.close_tunnels();
        }
        backends.push(Arc::new(Backend::new(id)));
    }

    pub(crate) fn set_in_service(&self, id: &str, in_service: bool) -> bool {
        // The write lock orders this against `pick`, so no request is routed
        // to the backend after this returns with `false`.
        let backends = write(&self.backends);
        match backends.iter().find(|b| b.id == id) {
            Some(b) => {
                if in_service && !b.in_service.load(Ordering::Acquire) {
                    b.in_service_since_ms
                        .store(self.now_ms(), Ordering::Relaxed);
                }
                b.in_service.store(in_service, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Marks the backend draining and closes its idle connections.
    pub(crate) fn begin_drain(&self, id: &str) -> Option<Arc<Backend>> {
        let backends = write(&self.backends);
        let backend = backends.iter().find(|b| b.id == id)?.clone();
        // Set under the write lock: see `pick`.
        backend.draining.store(true, Ordering::Release);
        drop(backends);
        backend.close_idle();
        Some(backend)
    }

    /// Removes this very backend entry (not a newer one with the same id).
    pub(crate) fn remove_entry(&self, backend: &Arc<Backend>) {
        let mut backends = write(&self.backends);
        backends.retain(|b| !Arc::ptr_eq(b, backend));
        drop(backends);
        backend.removed.store(true, Ordering::Release);
        backend.close_idle();
        backend.close_tunnels();
    }

    pub(crate) fn deregister(&self, id: &str) -> bool {
        let mut backends = write(&self.backends);
        let Some(pos) = backends.iter().position(|b| b.id == id) else {
            return false;
        };
        let backend = backends.remove(pos);
        drop(backends);
        backend.removed.store(true, Ordering::Release);
        backend.close_idle();
        backend.close_tunnels();
        true
    }

    pub(crate) fn stats(&self) -> Vec<BackendStats> {
        read(&self.backends).iter().map(|b| b.stats()).collect()
    }

    /// Chooses an in-service backend by the group's algorithm; `sticky`
    /// names the backend a stickiness cookie points at, taken while it is
    /// routable. Backends in `exclude` already failed this request.
    pub(crate) fn pick(&self, exclude: &[Arc<Backend>], sticky: Option<&str>) -> Pick {
        let now_ms = self.now_ms();
        let routing = self.attributes().routing;
        let ramp = routing.slow_start;
        // The read lock is held until `in_flight` is raised, so a drain
        // (which takes the write lock) either sees this request or prevents it.
        let backends = read(&self.backends);
        // Two passes over the list instead of collecting the candidates:
        // this runs for every request, and allocates nothing.
        let mut any_routable = false;
        let mut any_healthy = false;
        let mut any_down = false;
        for b in backends.iter().filter(|b| b.routable()) {
            any_routable = true;
            if exclude.iter().any(|e| Arc::ptr_eq(e, b)) {
                continue;
            }
            if b.down_until_ms.load(Ordering::Relaxed) > now_ms {
                any_down = true;
            } else {
                any_healthy = true;
            }
        }
        if !any_routable {
            return Pick::NoneInService;
        }
        if !any_healthy && !any_down {
            return Pick::Exhausted;
        }
        // A backend marked down may have recovered; trying it beats failing.
        let candidate = |b: &Arc<Backend>| {
            b.routable()
                && !exclude.iter().any(|e| Arc::ptr_eq(e, b))
                && (b.down_until_ms.load(Ordering::Relaxed) > now_ms) != any_healthy
        };
        let candidates = Candidates {
            all: &backends,
            candidate: &candidate,
        };
        let stuck = sticky.and_then(|id| candidates.iter().find(|b| b.id == id));
        let chosen = match (stuck, routing.algorithm) {
            (Some(b), _) => Some(b),
            (None, Algorithm::LeastOutstandingRequests) => self.least_outstanding(&candidates),
            (None, Algorithm::RoundRobin) if !slow_starting(&candidates, ramp, now_ms) => {
                let n = candidates.iter().count().max(1);
                let k = self.next.fetch_add(1, Ordering::Relaxed) % n;
                candidates.iter().nth(k)
            }
            (None, _) => self.weighted_random(&candidates, ramp, now_ms),
        };
        // A backend marked down or up between the two passes can leave no
        // candidate: any routable one that has not failed this request will do.
        let fallback = || {
            backends
                .iter()
                .find(|b| b.routable() && !exclude.iter().any(|e| Arc::ptr_eq(e, b)))
        };
        let Some(best) = chosen.or_else(fallback) else {
            return Pick::Exhausted;
        };
        best.in_flight.fetch_add(1, Ordering::AcqRel);
        best.requests.fetch_add(1, Ordering::Relaxed);
        Pick::Leased(Lease {
            backend: best.clone(),
            started: Instant::now(),
        })
    }

    /// The fewest requests in flight, starting the scan at a rotating
    /// position so that ties are broken round robin.
    fn least_outstanding<'a>(&self, candidates: &Candidates<'a, '_>) -> Option<&'a Arc<Backend>> {
        let all = candidates.all;
        let start = self.next.fetch_add(1, Ordering::Relaxed) % all.len();
        let mut best: Option<(&'a Arc<Backend>, usize)> = None;
        for i in 0..all.len() {
            let b = &all[(start + i) % all.len()];
            if !(candidates.candidate)(b) {
                continue;
            }
            let load = b.in_flight();
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((b, load));
            }
        }
        best.map(|(b, _)| b)
    }

    fn weighted_random<'a>(
        &self,
        candidates: &Candidates<'a, '_>,
        ramp: Duration,
        now_ms: u64,
    ) -> Option<&'a Arc<Backend>> {
        let total: f64 = candidates.iter().map(|b| weight(b, ramp, now_ms)).sum();
        let mut point = self.random_unit() * total;
        let mut last = None;
        for b in candidates.iter() {
            let w = weight(b, ramp, now_ms);
            if point < w {
                return Some(b);
            }
            point -= w;
            last = Some(b);
        }
        last
    }

    /// A uniform number in [0, 1) from a shared xorshift64 generator; races
    /// between threads only mix the state further.
    fn random_unit(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn mark_down(&self, backend: &Backend) {
        let until = self.now_ms() + DOWN_FOR.as_millis() as u64;
        backend.down_until_ms.store(until, Ordering::Relaxed);
    }

    pub(crate) fn mark_up(&self, backend: &Backend) {
        // Loading first keeps the common path from writing a shared cache line.
        if backend.down_until_ms.load(Ordering::Relaxed) != 0 {
            backend.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that a live mark is never 0, which means "not down".
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

#[derive(Default)]
struct LatencyWindow {
    micros: Vec<u32>,
    next: usize,
}

impl LatencyWindow {
    fn push(&mut self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        if self.micros.len() < LATENCY_WINDOW {
            self.micros.push(micros);
        } else {
            self.micros[self.next] = micros;
        }
        self.next = (self.next + 1) % LATENCY_WINDOW;
    }

    fn percentiles_ms<const N: usize>(&self, percents: [f64; N]) -> [f64; N] {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        percents.map(|p| percentile(&sorted, p) as f64 / 1000.0)
    }
}

/// [`Attributes`] in atomics rather than behind a lock: every request
/// reads them, and a lock's reader count would be written by every worker
/// thread in turn. A request that races with an update may see some fields
/// old and some new, which is harmless: each is valid on its own.
struct LiveAttributes {
    algorithm: AtomicU8,
    /// u64::MAX when off.
    stickiness_ns: AtomicU64,
    slow_start_ns: AtomicU64,
    deregistration_delay_ns: AtomicU64,
    idle_timeout_ns: AtomicU64,
}

const OFF: u64 = u64::MAX;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(OFF - 1)
}

impl LiveAttributes {
    fn new(attributes: Attributes) -> Self {
        let live = LiveAttributes {
            algorithm: AtomicU8::new(0),
            stickiness_ns: AtomicU64::new(OFF),
            slow_start_ns: AtomicU64::new(0),
            deregistration_delay_ns: AtomicU64::new(0),
            idle_timeout_ns: AtomicU64::new(0),
        };
        live.store(attributes);
        live
    }

    fn store(&self, a: Attributes) {
        let algorithm = match a.routing.algorithm {
            Algorithm::LeastOutstandingRequests => 0,
            Algorithm::RoundRobin => 1,
            Algorithm::WeightedRandom => 2,
        };
        self.algorithm.store(algorithm, Ordering::Relaxed);
        let sticky = a.routing.stickiness.map_or(OFF, nanos);
        self.stickiness_ns.store(sticky, Ordering::Relaxed);
        let slow_start = nanos(a.routing.slow_start);
        self.slow_start_ns.store(slow_start, Ordering::Relaxed);
        let delay = nanos(a.deregistration_delay);
        self.deregistration_delay_ns.store(delay, Ordering::Relaxed);
        let idle = nanos(a.idle_timeout);
        self.idle_timeout_ns.store(idle, Ordering::Relaxed);
    }

    fn load(&self) -> Attributes {
        let algorithm = match self.algorithm.load(Ordering::Relaxed) {
            1 => Algorithm::RoundRobin,
            2 => Algorithm::WeightedRandom,
            _ => Algorithm::LeastOutstandingRequests,
        };
        let sticky = self.stickiness_ns.load(Ordering::Relaxed);
        Attributes {
            deregistration_delay: Duration::from_nanos(
                self.deregistration_delay_ns.load(Ordering::Relaxed),
            ),
            idle_timeout: Duration::from_nanos(self.idle_timeout_ns.load(Ordering::Relaxed)),
            routing: Routing {
                algorithm,
                stickiness: (sticky != OFF).then(|| Duration::from_nanos(sticky)),
                slow_start: Duration::from_nanos(self.slow_start_ns.load(Ordering::Relaxed)),
            },
        }
    }
}

/// A backend's share while in slow start: from a tenth up to a full
/// share, linearly over the slow-start duration `ramp`, as ALB ramps it.
fn weight(b: &Backend, ramp: Duration, now_ms: u64) -> f64 {
    let ramp = ramp.as_millis() as f64;
    if ramp == 0.0 {
        return 1.0;
    }
    let since = b.in_service_since_ms.load(Ordering::Relaxed);
    let elapsed = now_ms.saturating_sub(since) as f64;
    (elapsed / ramp).clamp(0.1, 1.0)
}

fn slow_starting(candidates: &Candidates<'_, '_>, ramp: Duration, now_ms: u64) -> bool {
    candidates.iter().any(|b| weight(b, ramp, now_ms) < 1.0)
}

/// Nearest-rank percentile of sorted samples; 0 when there are none.
pub(crate) fn percentile(sorted: &[u32], percent: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// A panic while holding one of these locks leaves plain counters and lists
// behind, which stay usable, so poisoning is ignored rather than spread.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), 50);
        assert_eq!(percentile(&samples, 99.0), 99);
        assert_eq!(percentile(&samples, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 1.0), 7);
    }

    #[test]
    fn latency_window_keeps_only_recent_samples() {
        let mut w = LatencyWindow::default();
        for _ in 0..LATENCY_WINDOW {
            w.push(Duration::from_millis(100));
        }
        for _ in 0..LATENCY_WINDOW {
            w.push(Duration::from_millis(1));
        }
        assert_eq!(w.percentiles_ms([99.0]), [1.0]);
    }
}
