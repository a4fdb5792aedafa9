//! The open connections of one server and the caps they are held to: at
//! the server's cap, or the process's, the connection idle longest makes
//! room; a client at its own cap gives up one of its own. Connections learn
//! they must close through their [`Signal`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::Instant;

/// Client connections open in this process, across every server.
pub(crate) static OPEN_IN_PROCESS: AtomicUsize = AtomicUsize::new(0);

/// One client connection, as the cap sees it.
pub(crate) struct Conn {
    /// Requests whose response has not been sent completely.
    pub(crate) busy: AtomicUsize,
    /// When it last became idle, in microseconds since the server started;
    /// ties go to the older connection (the smaller id).
    pub(crate) idle_since: AtomicU64,
    pub(crate) client: IpAddr,
    pub(crate) signal: Signal,
}

/// Tells a connection's task to finish its request in progress and close
/// (the server stops) or to close at once (evicted). The task polls it at
/// every wake-up, so it is an atomic and a waker rather than a Notify and
/// a watch channel, which take locks and allocate on each poll.
#[derive(Default)]
pub(crate) struct Signal {
    pub(crate) state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

pub(crate) const RUN: u8 = 0;
pub(crate) const STOP: u8 = 1;
pub(crate) const CLOSE: u8 = 2;

impl Signal {
    pub(crate) fn raise(&self, to: u8) {
        self.state.fetch_max(to, Ordering::AcqRel);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> u8 {
        let state = self.state.load(Ordering::Acquire);
        if state != RUN {
            return state;
        }
        {
            let mut slot = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        // Raised between the first look and the registration.
        self.state.load(Ordering::Acquire)
    }
}

/// The open connections, and how many each client address holds (so that
/// the per-client cap costs a lookup, not a scan, on every accept).
#[derive(Default)]
pub(crate) struct Open {
    pub(crate) conns: HashMap<u64, Arc<Conn>>,
    per_client: HashMap<IpAddr, usize>,
}

impl Open {
    fn insert(&mut self, id: u64, conn: Arc<Conn>) {
        *self.per_client.entry(conn.client).or_default() += 1;
        self.conns.insert(id, conn);
    }

    fn remove(&mut self, id: u64) -> Option<Arc<Conn>> {
        let conn = self.conns.remove(&id)?;
        if let Some(n) = self.per_client.get_mut(&conn.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&conn.client);
            }
        }
        Some(conn)
    }
}

/// The open connections of one server, however many accept loops (one per
/// thread of a balancer) take them: the caps hold for the server as a whole.
pub(crate) struct Registry {
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<Open>,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            started: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(Open::default()),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes room for one more connection, within this server's cap and
    /// the process's budget; None when every connection of this server is
    /// busy and the new one must be turned away.
    pub(crate) fn admit(
        &self,
        max: usize,
        budget: usize,
        client: IpAddr,
        per_client: usize,
    ) -> Option<(u64, Arc<Conn>)> {
        let mut open = self.lock();
        let evict = |open: &mut Open, only: Option<IpAddr>| {
            let oldest_idle = open
                .conns
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .filter(|(_, c)| only.is_none_or(|ip| c.client == ip))
                .min_by_key(|(id, c)| (c.idle_since.load(Ordering::Acquire), **id))
                .map(|(id, _)| *id)?;
            let evicted = open.remove(oldest_idle)?;
            OPEN_IN_PROCESS.fetch_sub(1, Ordering::AcqRel);
            evicted.signal.raise(CLOSE);
            Some(())
        };
        // A client at its own cap gives up one of its own connections, not
        // someone else's.
        if open.per_client.get(&client).copied().unwrap_or(0) >= per_client {
            evict(&mut open, Some(client))?;
        } else if open.conns.len() >= max || OPEN_IN_PROCESS.load(Ordering::Acquire) >= budget {
            evict(&mut open, None)?;
        }
        OPEN_IN_PROCESS.fetch_add(1, Ordering::AcqRel);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now()),
            client,
            signal: Signal::default(),
        });
        open.insert(id, conn.clone());
        Some((id, conn))
    }

    pub(crate) fn release(&self, id: u64) {
        if self.lock().remove(id).is_some() {
            OPEN_IN_PROCESS.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A connection's place in the registry, given back when its task ends,
/// however it ends (also when aborted at shutdown).
pub(crate) struct Admitted {
    pub(crate) id: u64,
    pub(crate) registry: Arc<Registry>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.registry.release(self.id);
    }
}

/// Marks a connection busy from the moment its request's headers arrived
/// until its response has been sent (or abandoned).
pub(crate) struct Busy {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Busy {
    pub(crate) fn new(conn: Arc<Conn>, registry: Arc<Registry>) -> Busy {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy { conn, registry }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.registry.now(), Ordering::Release);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process budget is one counter: tests that move it take turns.
    static COUNTER: Mutex<()> = Mutex::new(());

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new())
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room_and_busy_ones_stay() {
        let _turn = COUNTER.lock().unwrap_or_else(PoisonError::into_inner);
        let reg = registry();
        let (a, conn_a) = reg.admit(2, usize::MAX, IP, usize::MAX).unwrap();
        let (b, conn_b) = reg.admit(2, usize::MAX, IP, usize::MAX).unwrap();
        // b went idle after a request; a never sent one and is older.
        drop(Busy::new(conn_b.clone(), reg.clone()));
        let (c, conn_c) = reg.admit(2, usize::MAX, IP, usize::MAX).unwrap();
        let open: Vec<u64> = reg.lock().conns.keys().copied().collect();
        assert!(!open.contains(&a) && open.contains(&b) && open.contains(&c));
        drop(conn_a);
        // Both busy: the new one is turned away and nothing is closed.
        let _busy = (
            Busy::new(conn_b, reg.clone()),
            Busy::new(conn_c, reg.clone()),
        );
        assert!(reg.admit(2, usize::MAX, IP, usize::MAX).is_none());
        assert_eq!(reg.lock().conns.len(), 2);
        reg.release(b);
        reg.release(c);
    }

    #[test]
    fn a_client_at_its_own_cap_gives_up_its_own_idle_connection() {
        let _turn = COUNTER.lock().unwrap_or_else(PoisonError::into_inner);
        let reg = registry();
        let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
        let (o, _) = reg.admit(10, usize::MAX, other, 2).unwrap();
        let (a, conn_a) = reg.admit(10, usize::MAX, IP, 2).unwrap();
        let (b, conn_b) = reg.admit(10, usize::MAX, IP, 2).unwrap();
        // The third from IP evicts IP's oldest idle one, not the other client's.
        let (c, conn_c) = reg.admit(10, usize::MAX, IP, 2).unwrap();
        let open: Vec<u64> = reg.lock().conns.keys().copied().collect();
        assert!(open.contains(&o) && !open.contains(&a) && open.contains(&b) && open.contains(&c));
        drop(conn_a);
        let _busy = (
            Busy::new(conn_b, reg.clone()),
            Busy::new(conn_c, reg.clone()),
        );
        assert!(reg.admit(10, usize::MAX, IP, 2).is_none());
        // Another client still gets in.
        let (o2, _) = reg.admit(10, usize::MAX, other, 2).unwrap();
        for id in [o, b, c, o2] {
            reg.release(id);
        }
    }

    #[test]
    fn the_process_budget_caps_every_server_together() {
        let _turn = COUNTER.lock().unwrap_or_else(PoisonError::into_inner);
        let before = OPEN_IN_PROCESS.load(Ordering::Acquire);
        let (first, second) = (registry(), registry());
        let admitted = first
            .admit(100, before + 1, IP, usize::MAX)
            .map(|(id, _)| Admitted {
                id,
                registry: first.clone(),
            });
        assert!(admitted.is_some());
        // The other server has nothing idle to give up: turned away.
        assert!(second.admit(100, before + 1, IP, usize::MAX).is_none());
        drop(admitted);
        assert_eq!(OPEN_IN_PROCESS.load(Ordering::Acquire), before);
        let (id, _) = second.admit(100, before + 1, IP, usize::MAX).unwrap();
        second.release(id);
        assert_eq!(OPEN_IN_PROCESS.load(Ordering::Acquire), before);
    }
}
