//! The ways an instance may frame its response (RFC 9112 6.3), relayed to
//! the client as sent: chunked with extensions and trailers, no body (204,
//! HEAD), interim 1xx responses, a body that runs until the instance closes,
//! `Connection: close`; and a response whose framing is ambiguous refused
//! with a 502. Also requests of both kinds on one pipelined connection:
//! those the balancer's own path takes and those it hands to hyper.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kiln_lb::{LoadBalancer, Settings};
use support::Ports;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An instance that writes fixed bytes for each request target, on
/// connections it keeps open unless the answer says otherwise.
struct Scripted {
    port: u16,
    /// Connections accepted.
    accepted: Arc<AtomicU64>,
}

/// What the instance answers to `target` (a request head's second word),
/// and whether it closes the connection after.
fn script(target: &str) -> (Vec<u8>, bool) {
    let text: &[u8] = match target {
        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
        "/no-content" => b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n",
        "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly",
        "/until-close" => return (b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\nruns until the close".to_vec(), true),
        "/bye" => return (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye".to_vec(), true),
        "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // A hostile instance's answers.
        "/endless-head" => {
            let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..20_000 {
                text.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(10)).as_bytes());
            }
            return (text, false);
        }
        "/many-headers" => {
            let mut text = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
            for i in 0..150 {
                text.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
            }
            text.extend_from_slice(b"\r\n");
            return (text, false);
        }
        "/huge-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx",
        "/short-body" => return (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec(), true),
        "/keep-alive" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, x-private\r\nKeep-Alive: timeout=5\r\nX-Private: 1\r\n\r\nka",
        other => {
            let body = format!("plain {other}");
            return (
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes(),
                false,
            );
        }
    };
    (text.to_vec(), false)
}

impl Scripted {
    /// `close_after`: the instance also closes every connection this long
    /// after each answer, as a server with a short keep-alive timeout does.
    async fn start(close_after: Option<Duration>) -> Scripted {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(stream, close_after));
            }
        });
        Scripted { port, accepted }
    }
}

async fn answer(mut stream: TcpStream, close_after: Option<Duration>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let (mut text, close) = script(&target);
        if head.starts_with("HEAD ") {
            // The head alone, as HTTP says a HEAD answer goes.
            let end = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            text.truncate(end + 4);
        }
        if stream.write_all(&text).await.is_err() || close {
            return;
        }
        if let Some(after) = close_after {
            tokio::time::sleep(after).await;
            return;
        }
    }
}

async fn balancer(instance: &Scripted) -> LoadBalancer {
    let ports = Arc::new(Ports::default());
    ports.insert("i", instance.port);
    let lb = LoadBalancer::bind(0, ports, Settings::default())
        .await
        .unwrap();
    lb.register("i");
    lb.set_in_service("i", true);
    lb
}

/// Writes `requests` on one connection and reads until the balancer closes it.
async fn exchange(addr: SocketAddr, requests: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut text))
        .await
        .expect("the balancer closes the connection after the last answer")
        .unwrap();
    String::from_utf8_lossy(&text).into_owned()
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: kiln\r\n\r\n")
}

/// Each of `parts` in `text`, in this order, ignoring case (header names
/// are case-insensitive).
fn in_order(text: &str, parts: &[&str]) {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    for part in parts {
        let Some(at) = lower[from..].find(&part.to_ascii_lowercase()) else {
            panic!("{part:?} not found (in order) in:\n{text}");
        };
        from += at + part.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_an_instance_may_use_is_relayed_as_sent() {
    let instance = Scripted::start(None).await;
    let lb = balancer(&instance).await;
    let requests = [
        get("/chunked"),
        get("/no-content"),
        "HEAD /plain HTTP/1.1\r\nHost: kiln\r\n\r\n".to_owned(),
        get("/early"),
        get("/keep-alive"),
        "GET /last HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n".to_owned(),
    ]
    .concat();
    let text = exchange(lb.local_addr(), &requests).await;
    in_order(
        &text,
        &[
            "HTTP/1.1 200 OK\r\n",
            "transfer-encoding: chunked",
            "\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n",
            "HTTP/1.1 204 No Content\r\n",
            "HTTP/1.1 200 OK\r\n",
            "content-length: 12\r\n",
            "HTTP/1.1 200 OK\r\n",
            "\r\n\r\nearly",
            "HTTP/1.1 200 OK\r\n",
            "\r\n\r\nka",
            "plain /last",
        ],
    );
    let lower = text.to_ascii_lowercase();
    assert!(!lower.contains("103 early hints"), "{text}");
    assert!(
        !lower.contains("x-private") && !lower.contains("keep-alive: timeout"),
        "{text}"
    );
    assert_eq!(lower.matches("connection: close").count(), 1, "{text}");
    assert_eq!(lower.matches("via: 1.1 kiln").count(), 6, "{text}");
    // The HEAD answer carries the length of the body it does not send.
    assert!(!text.contains("plain /plain"), "{text}");
    assert_eq!(
        instance.accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );

    // A request with a body goes to hyper's path, for the rest of its
    // connection; the answers still come in order.
    let requests = [
        get("/first"),
        "POST /posted HTTP/1.1\r\nHost: kiln\r\nContent-Length: 3\r\n\r\nabc".to_owned(),
        get("/after"),
        "GET /last HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n".to_owned(),
    ]
    .concat();
    let text = exchange(lb.local_addr(), &requests).await;
    in_order(
        &text,
        &[
            "plain /first",
            "plain /posted",
            "plain /after",
            "plain /last",
        ],
    );
    // A client's Connection: close is answered in kind, by either path.
    let closes = text
        .to_ascii_lowercase()
        .matches("connection: close")
        .count();
    assert_eq!(closes, 1, "{text}");
}

/// What a hostile instance may send: a head that never ends, more header
/// lines than any parser takes, a chunk size past 64 bits, a body shorter
/// than its length. The client gets a 502, or a connection closed midway
/// when the head had gone out, never a hang, and the balancer keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_instance_gets_its_clients_a_502_or_a_closed_connection() {
    let instance = Scripted::start(None).await;
    let lb = balancer(&instance).await;
    for target in ["/endless-head", "/many-headers"] {
        let text = exchange(
            lb.local_addr(),
            &format!("GET {target} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{target}: {text}"
        );
    }
    // A body whose first bytes, read with the head, show it malformed (a
    // chunk size past 64 bits): nothing has gone out, so the answer is a
    // 502, and the client's connection serves its next request.
    let text = exchange(
        lb.local_addr(),
        &[
            get("/huge-chunk"),
            "GET /next HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n".to_owned(),
        ]
        .concat(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
    assert!(text.ends_with("plain /next"), "{text}");
    // The body turns out wrong once the head has gone out: the client sees
    // the connection close before the body ends.
    let text = exchange(
        lb.local_addr(),
        &[get("/short-body"), get("/never")].concat(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("/never"), "{text}");
    let text = exchange(
        lb.local_addr(),
        "GET /still HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.contains("plain /still"), "{text}");
    // The figures count each answer as the client got it.
    let traffic = lb.traffic();
    assert_eq!(
        traffic.responses.get("5xx"),
        Some(&3),
        "{:?}",
        traffic.responses
    );
    assert_eq!(
        traffic.responses.get("2xx"),
        Some(&3),
        "{:?}",
        traffic.responses
    );
}
