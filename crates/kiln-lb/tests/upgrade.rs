//! `Connection: Upgrade` (WebSocket) through the balancer: bytes flow both
//! ways after the 101, and a drain keeps open upgraded connections until
//! the deregistration delay ends while new ones reach the new version.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_lb::{DrainOutcome, LoadBalancer, Settings};
use support::{Ports, TestServer, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An application that accepts any WebSocket upgrade, sends its version
/// label on a line, then echoes every byte back.
async fn echo_app(label: &'static str) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                if !head.to_ascii_lowercase().contains("upgrade: websocket") {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let hello = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n{label}\n"
                );
                s.write_all(hello.as_bytes()).await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Reads up to the end of an HTTP head, byte by byte so that nothing after
/// it is consumed.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "head cut short: {head:?}"
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Opens a WebSocket through the balancer; returns it and the version line.
async fn open(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut s))
        .await
        .expect("an answer to the handshake");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    let mut label = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        s.read_exact(&mut byte).await.unwrap();
        label.push(byte[0]);
    }
    (s, String::from_utf8(label).unwrap().trim().to_owned())
}

async fn echo(s: &mut TcpStream, message: &str) -> String {
    s.write_all(message.as_bytes()).await.unwrap();
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("the echo comes back")
        .unwrap();
    String::from_utf8(back).unwrap()
}

async fn balancer(apps: &[(&str, u16)], settings: Settings) -> LoadBalancer {
    let ports = Arc::new(Ports::default());
    for (id, port) in apps {
        ports.insert(id, *port);
    }
    LoadBalancer::bind(0, ports, settings).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_echo_through_the_balancer() {
    let v1 = echo_app("v1").await;
    let lb = balancer(&[("v1", v1)], Settings::default()).await;
    lb.register("v1");
    lb.set_in_service("v1", true);
    let (mut ws, label) = open(lb.local_addr()).await;
    assert_eq!(label, "v1");
    for i in 0..100 {
        let message = format!("message {i}");
        assert_eq!(echo(&mut ws, &message).await, message);
    }
    // A large message streams through both ways.
    let big = "x".repeat(4 << 20);
    let writer = {
        let (mut r, mut w) = ws.into_split();
        let out = big.clone();
        let sent = tokio::spawn(async move { w.write_all(out.as_bytes()).await.map(|()| w) });
        let mut back = vec![0u8; big.len()];
        r.read_exact(&mut back).await.unwrap();
        assert!(back == big.as_bytes());
        sent.await.unwrap().unwrap()
    };
    drop(writer);
    // The upgraded connection is not a request in flight.
    let stats = &lb.backends()[0];
    assert_eq!((stats.in_flight, stats.failures), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_declines_the_upgrade_answers_as_usual() {
    let plain = TestServer::start("plain", "plain").await;
    let lb = balancer(&[("plain", plain.port)], Settings::default()).await;
    lb.register("plain");
    lb.set_in_service("plain", true);
    let mut s = TcpStream::connect(lb.local_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (resp, body) = get(lb.local_addr(), "/").await;
    assert_eq!((resp.status().as_u16(), body.as_str()), (200, "plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_keeps_websockets_until_the_deregistration_delay_ends() {
    let delay = Duration::from_millis(800);
    let (v1, v2) = (echo_app("v1").await, echo_app("v2").await);
    let settings = Settings {
        deregistration_delay: delay,
        ..Settings::default()
    };
    let lb = balancer(&[("v1", v1), ("v2", v2)], settings).await;
    lb.register("v1");
    lb.set_in_service("v1", true);
    let mut old = Vec::new();
    for _ in 0..5 {
        let (ws, label) = open(lb.local_addr()).await;
        assert_eq!(label, "v1");
        old.push(ws);
    }

    // The rolling update: the new version in service, the old one drained.
    lb.register("v2");
    lb.set_in_service("v2", true);
    let started = Instant::now();
    let drain = tokio::spawn({
        let lb = lb.clone();
        async move { lb.drain("v1").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut new = Vec::new();
    for _ in 0..5 {
        let (ws, label) = open(lb.local_addr()).await;
        assert_eq!(label, "v2", "a new connection during the drain");
        new.push(ws);
    }
    // Halfway through the delay the old connections still carry messages.
    tokio::time::sleep(delay / 2).await;
    for ws in &mut old {
        assert_eq!(echo(ws, "still here").await, "still here");
    }
    let report = drain.await.unwrap();
    assert_eq!(report.outcome, DrainOutcome::Drained, "{report:?}");
    assert!(
        started.elapsed() >= delay,
        "drained after {:?}",
        started.elapsed()
    );
    // Then they are closed.
    for ws in &mut old {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), ws.read(&mut buf))
            .await
            .expect("the old connection is closed after the delay");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    for ws in &mut new {
        assert_eq!(echo(ws, "new").await, "new");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_closes_after_the_idle_timeout_and_a_busy_one_stays() {
    let v1 = echo_app("v1").await;
    let idle = Duration::from_millis(400);
    let settings = Settings {
        idle_timeout: idle,
        ..Settings::default()
    };
    let lb = balancer(&[("v1", v1)], settings).await;
    lb.register("v1");
    lb.set_in_service("v1", true);
    let (mut silent, _) = open(lb.local_addr()).await;
    let (mut busy, _) = open(lb.local_addr()).await;
    let started = Instant::now();
    // The busy one talks every 100 ms for three idle timeouts.
    while started.elapsed() < idle * 3 {
        assert_eq!(echo(&mut busy, "ping").await, "ping");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_millis(10), silent.read(&mut buf))
        .await
        .expect("the silent connection was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(echo(&mut busy, "still").await, "still");
}
