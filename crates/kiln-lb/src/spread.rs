//! Evens out the connections a balancer's threads serve. The kernel hands
//! each new connection to one thread's socket by a hash of its addresses
//! (`SO_REUSEPORT`), blind to how busy that thread is: sixteen keep-alive
//! connections often land eleven on one thread and five on the other, and
//! stay so for their lifetime, so the busier thread's clients wait longer.
//! nginx's workers avoid this because the kernel wakes an idle worker for
//! a new connection. Here, a thread that accepts a connection while it
//! serves more than [`SLACK`] more than the least busy thread passes the
//! connection to that thread instead.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// How many more connections than the least busy thread a thread serves
/// before it passes new ones on. Passing one costs a message and, when the
/// other thread sleeps, waking it; a small difference is not worth that.
const SLACK: usize = 1;

/// A connection passed from the thread that accepted it to another, with
/// its count against that thread.
pub(crate) type Passed = (TcpStream, SocketAddr, Ticket);

/// The connections one thread serves, on a cache line of its own: each
/// thread counts its own on every connection and reads the others' only
/// when it accepts.
#[repr(align(128))]
#[derive(Default)]
struct Load(AtomicUsize);

/// The counts and mailboxes of all of a balancer's threads.
struct Shared {
    loads: Box<[Load]>,
    mailboxes: Box<[mpsc::UnboundedSender<Passed>]>,
}

/// One thread's place among the balancer's threads.
pub(crate) struct Seat {
    index: usize,
    shared: Arc<Shared>,
    /// Connections other threads pass to this one.
    pub(crate) inbox: mpsc::UnboundedReceiver<Passed>,
}

/// A connection counted against a thread until dropped.
pub(crate) struct Ticket {
    index: usize,
    shared: Arc<Shared>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.shared.loads[self.index]
            .0
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The seats of `threads` threads, in thread order.
pub(crate) fn seats(threads: usize) -> Vec<Seat> {
    let (mailboxes, inboxes): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
    let shared = Arc::new(Shared {
        loads: (0..threads).map(|_| Load::default()).collect(),
        mailboxes: mailboxes.into(),
    });
    inboxes
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| Seat {
            index,
            shared: shared.clone(),
            inbox,
        })
        .collect()
}

impl Seat {
    /// Counts a new connection against this thread or the least busy one:
    /// the ticket's thread is where it goes.
    fn choose(&self) -> Ticket {
        let loads = &self.shared.loads;
        let mine = loads[self.index].0.load(Ordering::Relaxed);
        let (least, fewest) = loads
            .iter()
            .map(|load| load.0.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, n)| n)
            .unwrap_or((self.index, mine));
        if mine > fewest + SLACK {
            return self.count(least);
        }
        self.count(self.index)
    }

    fn count(&self, index: usize) -> Ticket {
        self.shared.loads[index].0.fetch_add(1, Ordering::Relaxed);
        Ticket {
            index,
            shared: self.shared.clone(),
        }
    }

    /// Keeps a connection this thread accepted (Some, counted against it)
    /// or passes it to the least busy thread (None).
    pub(crate) fn place(
        &self,
        stream: TcpStream,
        client: SocketAddr,
    ) -> Option<(TcpStream, Ticket)> {
        let ticket = self.choose();
        if ticket.index == self.index {
            return Some((stream, ticket));
        }
        // If that thread has stopped, this one is stopping too: it serves
        // the connection here until then.
        let (stream, _, ticket) = self.shared.mailboxes[ticket.index]
            .send((stream, client, ticket))
            .err()?
            .0;
        Some((stream, ticket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connection accepted from `listener` (as the accept loop has it),
    /// with its client's end.
    async fn connection(listener: &TcpListener) -> (TcpStream, SocketAddr, tokio::net::TcpStream) {
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (stream, addr) = accepted.unwrap();
        (stream.into_std().unwrap(), addr, client.unwrap())
    }

    #[tokio::test]
    async fn a_thread_that_accepts_every_connection_passes_half_of_them_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut seats = seats(2).into_iter();
        let (here, mut there) = (seats.next().unwrap(), seats.next().unwrap());
        let (mut kept, mut clients) = (Vec::new(), Vec::new());
        // As when the kernel's hash sends all sixteen to one thread.
        for _ in 0..16 {
            let (stream, addr, client) = connection(&listener).await;
            clients.push(client);
            if let Some(kept_one) = here.place(stream, addr) {
                kept.push(kept_one);
            }
        }
        let mut passed = Vec::new();
        while let Ok(one) = there.inbox.try_recv() {
            passed.push(one);
        }
        assert_eq!((kept.len(), passed.len()), (9, 7), "kept here, passed on");
        assert_eq!(here.shared.loads[0].0.load(Ordering::Relaxed), 9);
        assert_eq!(here.shared.loads[1].0.load(Ordering::Relaxed), 7);

        // A passed connection still reaches its client, from the other
        // thread's event loop.
        let (stream, addr, ticket) = passed.pop().unwrap();
        let mut stream = tokio::net::TcpStream::from_std(stream).unwrap();
        stream.write_all(b"from the other thread").await.unwrap();
        drop((stream, ticket));
        let client = clients
            .iter_mut()
            .find(|c| c.local_addr().unwrap() == addr)
            .expect("the passed connection's client");
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "from the other thread");

        // Connections that end give their count back: with fewer open here
        // than there, new ones stay here.
        drop(kept.drain(..5));
        drop(passed);
        assert_eq!(here.shared.loads[0].0.load(Ordering::Relaxed), 4);
        assert_eq!(here.shared.loads[1].0.load(Ordering::Relaxed), 0);
        let (stream, addr, _client) = connection(&listener).await;
        assert!(here.place(stream, addr).is_none(), "4 here, 0 there");
        assert!(there.inbox.try_recv().is_ok());
    }

    #[tokio::test]
    async fn a_connection_for_a_stopped_thread_is_served_where_it_was_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut seats = seats(2).into_iter();
        let here = seats.next().unwrap();
        drop(seats); // the other thread has stopped
        let mut clients = Vec::new();
        let mut kept = Vec::new();
        for _ in 0..4 {
            let (stream, addr, client) = connection(&listener).await;
            clients.push(client);
            kept.push(here.place(stream, addr).expect("kept here"));
        }
        // The third was counted against the stopped thread, and still is
        // until it closes.
        assert_eq!(here.shared.loads[0].0.load(Ordering::Relaxed), 3);
        assert_eq!(here.shared.loads[1].0.load(Ordering::Relaxed), 1);
        drop(kept);
        assert_eq!(here.shared.loads[0].0.load(Ordering::Relaxed), 0);
        assert_eq!(here.shared.loads[1].0.load(Ordering::Relaxed), 0);
    }
}
