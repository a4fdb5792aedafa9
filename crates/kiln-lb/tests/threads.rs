//! A balancer on several threads of its own (`Settings::threads`): every
//! thread takes connections, and as many as the others however the kernel
//! hands them out; the port stays its alone, the connection caps hold for
//! the balancer as a whole, and shutdown ends every thread.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use kiln_lb::{LoadBalancer, Settings};
use support::{Ports, TestServer, eventually, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn balancer(server: &TestServer, settings: Settings) -> LoadBalancer {
    let ports = Arc::new(Ports::default());
    ports.add(server);
    let lb = LoadBalancer::bind(0, ports, settings).await.unwrap();
    lb.register(&server.id);
    lb.set_in_service(&server.id, true);
    lb
}

fn threads(n: usize) -> Settings {
    Settings {
        threads: n,
        ..Settings::default()
    }
}

/// The balancer's threads, by name, with each one's time on a core (ns).
fn balancer_threads(lb: &LoadBalancer) -> Vec<(String, u64)> {
    let prefix = format!("kiln-lb-{}-", lb.local_addr().port());
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue; // the thread ended meanwhile
        };
        let comm = comm.trim().to_owned();
        if comm.starts_with(&prefix) {
            let ran = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            found.push((comm, ran));
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_thread_takes_connections() {
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, threads(4)).await;
    let before = balancer_threads(&lb);
    assert_eq!(before.len(), 4, "{before:?}");
    // Each request on a connection of its own: the kernel spreads them by
    // their source port, so 200 leave none of four threads out (each would
    // be left out with a chance of (3/4)^200).
    for _ in 0..200 {
        let (resp, body) = get(lb.local_addr(), "/").await;
        assert_eq!((resp.status(), body.as_str()), (StatusCode::OK, "v1"));
    }
    let after = balancer_threads(&lb);
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert!(is > was, "{name} served nothing: {before:?} then {after:?}");
    }
    // The traffic figures are the balancer's, not one thread's.
    assert_eq!(lb.traffic().responses.get("2xx"), Some(&200));
    lb.shutdown().await;
}

/// The established connections to `port` on this machine: each server
/// end's socket inode (`/proc/net/tcp`: the ends whose local port it is)
/// with its client's port.
fn accepted_sockets(port: u16) -> HashMap<String, u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // State 01 is ESTABLISHED; field 9 the inode.
            (port_of(fields[1])? == port && fields[3] == "01")
                .then(|| Some((fields[9].to_owned(), port_of(fields[2])?)))?
        })
        .collect()
}

/// For each event loop (epoll instance) of this process that watches any
/// of `sockets` (by inode), the ones it watches: the connections each of
/// the balancer's threads serves, as `/proc/PID/fdinfo` shows them.
fn connections_per_event_loop(sockets: &HashMap<String, u16>) -> Vec<HashSet<String>> {
    let inode = |fd: &str| {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
        let link = link.to_string_lossy().into_owned();
        Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
    };
    let mut loops = Vec::new();
    // An event loop may hold its epoll instance under two descriptors
    // (mio duplicates it); the same instance lists the same entries.
    let mut seen = HashSet::new();
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let link = std::fs::read_link(fd.path()).unwrap_or_default();
        if link.to_string_lossy() != "anon_inode:[eventpoll]" {
            continue;
        }
        let name = fd.file_name().to_string_lossy().into_owned();
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{name}")) else {
            continue;
        };
        let entries: Vec<&str> = info
            .lines()
            .filter_map(|line| line.strip_prefix("tfd:")?.split_whitespace().next())
            .collect();
        let watched: HashSet<String> = entries
            .iter()
            .filter_map(|fd| inode(fd))
            .filter(|i| sockets.contains_key(i))
            .collect();
        if !watched.is_empty() && seen.insert(entries.join(" ")) {
            loops.push(watched);
        }
    }
    loops
}

/// How many connections to `lb` each of its threads serves, fewest first.
fn counts(lb: &LoadBalancer) -> Vec<usize> {
    let sockets = accepted_sockets(lb.local_addr().port());
    let mut counts: Vec<usize> = connections_per_event_loop(&sockets)
        .iter()
        .map(HashSet::len)
        .collect();
    counts.sort();
    counts
}

/// Waits until `lb`'s threads together wait on `n` connections.
async fn waiting(lb: &LoadBalancer, n: usize) {
    eventually(&format!("{n} connections wait for a request"), || {
        counts(lb).iter().sum::<usize>() == n
    })
    .await;
}

/// `n` keep-alive connections to `lb`, each answered once.
async fn open(lb: &LoadBalancer, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut conn = TcpStream::connect(lb.local_addr()).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"v1") {
            let mut buf = [0u8; 512];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer: {answer:?}");
            answer.extend_from_slice(&buf[..n]);
        }
        held.push(conn);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_connections_are_shared_evenly_between_the_threads() {
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, threads(2)).await;
    // The kernel picks a thread by a hash of each connection's addresses:
    // of 128, one thread would get 64 ± 1 about one time in five.
    let mut held = open(&lb, 128).await;
    let sockets = accepted_sockets(lb.local_addr().port());
    assert_eq!(sockets.len(), 128, "open connections to the balancer");
    // A connection joins its thread's event loop when it first waits: here
    // just after its answer went out.
    waiting(&lb, 128).await;
    let per_thread = counts(&lb);
    assert!(
        per_thread.len() == 2 && per_thread[1] - per_thread[0] <= 2,
        "connections per thread: {per_thread:?}"
    );

    // Every client of one thread leaves. The kernel would hand half of the
    // next 64 to the other thread, leaving 96 there and 32 here; they all
    // come here instead.
    let first = connections_per_event_loop(&sockets).swap_remove(0);
    let leaving: HashSet<u16> = first.iter().map(|inode| sockets[inode]).collect();
    held.retain(|conn| !leaving.contains(&conn.local_addr().unwrap().port()));
    waiting(&lb, held.len()).await;
    held.extend(open(&lb, 128 - held.len()).await);
    waiting(&lb, 128).await;
    let per_thread = counts(&lb);
    assert!(
        per_thread.len() == 2 && per_thread[1] - per_thread[0] <= 2,
        "connections per thread after one thread's clients left: {per_thread:?}"
    );

    // All still served, by whichever thread holds them.
    for conn in &mut held {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("v1"),
            "{answer}"
        );
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn a_port_in_use_is_refused_however_many_threads_share_it() {
    let v1 = TestServer::start("v1", "v1").await;
    let first = balancer(&v1, threads(2)).await;
    let port = first.local_addr().port();
    // Both would set SO_REUSEPORT; the second must still fail as a bind to
    // a taken port fails, not split the first one's connections.
    let ports = Arc::new(Ports::default());
    for n in [1, 2] {
        let second = LoadBalancer::bind(port, ports.clone(), threads(n)).await;
        let err = second.err().expect("a second balancer on a taken port");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    }
    for _ in 0..20 {
        let (resp, body) = get(first.local_addr(), "/").await;
        assert_eq!((resp.status(), body.as_str()), (StatusCode::OK, "v1"));
    }
    // The port is free again once the balancer is gone.
    first.shutdown().await;
    let again = LoadBalancer::bind(port, ports, threads(2)).await.unwrap();
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_caps_hold_across_threads() {
    let v1 = TestServer::start("v1", "v1").await;
    let mut settings = threads(4);
    settings.client_limits.max_connections_per_client = 10;
    let lb = balancer(&v1, settings).await;
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(TcpStream::connect(lb.local_addr()).await.unwrap());
    }
    // One client address holds at most 10 of the balancer's connections,
    // whichever threads accepted them: the oldest idle ones were closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut open = 0;
    for s in &mut held {
        let mut buf = [0u8; 16];
        if tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf))
            .await
            .is_err()
        {
            open += 1;
        }
    }
    assert_eq!(open, 10, "connections left open of 40");
    let (resp, _) = get(lb.local_addr(), "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    lb.shutdown().await;
}

#[tokio::test]
async fn shutdown_and_dropping_every_handle_end_the_threads() {
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, threads(3)).await;
    let (resp, _) = get(lb.local_addr(), "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let probe = lb.clone();
    lb.shutdown().await;
    assert_eq!(balancer_threads(&probe), vec![], "threads after shutdown");
    assert!(
        TcpStream::connect(probe.local_addr()).await.is_err(),
        "the port still takes connections"
    );

    let dropped = balancer(&v1, threads(3)).await;
    let port = dropped.local_addr().port();
    let (resp, _) = get(dropped.local_addr(), "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    drop(dropped);
    eventually("the threads end once no handle is left", || {
        !std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.starts_with(&format!("kiln-lb-{port}-")))
            })
    })
    .await;
}
