//! Clients that connect and then say nothing, or send half a request,
//! against the balancer: they neither lock out a client that sends a
//! request nor hold their connection past the header-read timeout.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use kiln_lb::{LoadBalancer, Settings};
use support::{Ports, TestServer, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW_CLIENTS: usize = 1000;

/// The test process holds both ends of every connection; with the common
/// soft limit of 1,024 descriptors it would measure itself, not the server.
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        now >= 3 * SLOW_CLIENTS as u64,
        "this test needs {} file descriptors and the hard limit is {now}",
        3 * SLOW_CLIENTS
    );
}

/// Opens `n` connections: half send nothing, half the start of a request
/// whose headers never end.
async fn hold_slow_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Wait: ")
                .await
                .unwrap();
        }
        held.push(s);
    }
    held
}

async fn balancer(server: &TestServer, settings: Settings) -> LoadBalancer {
    let ports = Arc::new(Ports::default());
    ports.add(server);
    let lb = LoadBalancer::bind(0, ports, settings).await.unwrap();
    lb.register(&server.id);
    lb.set_in_service(&server.id, true);
    lb
}

/// A request on a fresh connection, answered within `limit`.
async fn answered_within(addr: SocketAddr, limit: Duration) -> Duration {
    let started = Instant::now();
    let (resp, body) = tokio::time::timeout(limit, get(addr, "/"))
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?}"));
    assert_eq!((resp.status(), body.as_str()), (StatusCode::OK, "v1"));
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_connections_do_not_stop_the_balancer() {
    raise_fd_limit();
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, Settings::default()).await;
    let held = hold_slow_connections(lb.local_addr(), SLOW_CLIENTS).await;
    answered_within(lb.local_addr(), Duration::from_secs(2)).await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_idle_connections_make_room() {
    raise_fd_limit();
    let v1 = TestServer::start("v1", "v1").await;
    let mut settings = Settings::default();
    settings.client_limits.max_connections = 50;
    let lb = balancer(&v1, settings).await;
    let mut held = hold_slow_connections(lb.local_addr(), SLOW_CLIENTS).await;
    answered_within(lb.local_addr(), Duration::from_secs(2)).await;
    // The cap held: all but the newest connections were closed, long
    // before the header-read timeout.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut closed = 0;
    for s in &mut held {
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(2), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= SLOW_CLIENTS - 50,
        "{closed} of {SLOW_CLIENTS} connections closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let v1 = TestServer::start("v1", "v1").await;
    let mut settings = Settings::default();
    settings.client_limits.header_read_timeout = Duration::from_millis(500);
    let lb = balancer(&v1, settings).await;
    let mut partial = TcpStream::connect(lb.local_addr()).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(lb.local_addr()).await.unwrap();
    let started = Instant::now();
    for s in [&mut partial, &mut silent] {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("the connection is closed")
            .ok();
        assert!(
            rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&rest)
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    answered_within(lb.local_addr(), Duration::from_secs(2)).await;

    // A keep-alive connection left idle after its response closes as well.
    let mut idle = TcpStream::connect(lb.local_addr()).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")
        .await
        .unwrap();
    let mut response = vec![0u8; 1024];
    let n = idle.read(&mut response).await.unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .expect("the idle keep-alive connection is closed")
        .ok();
    assert!(
        answered.elapsed() >= Duration::from_millis(400),
        "closed after {:?}",
        answered.elapsed()
    );
}
