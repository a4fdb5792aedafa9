//! Requests whose framing an instance could read differently from the
//! balancer (request smuggling), and requests past the header limits, sent
//! as raw bytes: none of them puts a second request on an instance.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kiln_lb::{LoadBalancer, Settings};
use support::{Ports, TestServer, get};
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

/// Sends `raw` and reads until the balancer closes the connection.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the balancer did not close the connection after {:?}; it sent {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(60)]),
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

fn responses(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_never_reaches_an_instance_as_two_requests() {
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, Settings::default()).await;
    let addr = lb.local_addr();
    let chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let cases: Vec<(&str, String)> = vec![
        // The front end reads the length, the instance the chunks.
        (
            "CL.TE",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
        ),
        // The front end reads the chunks, the instance the length.
        (
            "TE.CL",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunk}"
            ),
        ),
        (
            "duplicate Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
        ),
        (
            "obsolete line folding",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 0\r\n\r\n{chunk}"
            ),
        ),
        (
            "space before the colon",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n{chunk}"
            ),
        ),
        (
            "chunked twice",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n{chunk}"
            ),
        ),
        (
            "two Transfer-Encoding lines",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{chunk}"
            ),
        ),
        (
            "unknown coding",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 0\r\n\r\n{chunk}"
            ),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!(
                "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{chunk}"
            ),
        ),
    ];
    for (i, (name, raw)) in cases.iter().enumerate() {
        let before = v1.hits();
        let answer = exchange(addr, raw.as_bytes()).await;
        let forwarded = v1.hits() - before;
        // Refused outright, or (both framings present) read as chunked with
        // the length dropped and the connection closed after one response.
        let refused = answer.starts_with("HTTP/1.1 400");
        // Only the two with both framings are read as chunked; the rest are refused.
        assert!(i < 2 || refused, "{name}: answered {answer:?}");
        assert!(
            refused || (forwarded == 1 && responses(&answer) == 1),
            "{name}: forwarded {forwarded}, answered {answer:?}"
        );
        assert!(forwarded <= 1, "{name}: {forwarded} requests reached v1");
        assert!(
            !v1.targets().iter().any(|t| t.contains("smuggled")),
            "{name}: {:?}",
            v1.targets()
        );
    }
    // Those refused by the balancer itself say why.
    let answer = exchange(addr, cases[5].1.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 400")
            && answer.contains("Transfer-Encoding other than chunked"),
        "{answer}"
    );
    // Well-formed requests still pass.
    let (resp, body) = get(addr, "/").await;
    assert_eq!((resp.status().as_u16(), body.as_str()), (200, "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_are_refused_with_431() {
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, Settings::default()).await;
    let addr = lb.local_addr();

    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let big = "a".repeat(70 * 1024);
    let answer = exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(v1.hits(), 0);

    // A client's `Connection: close` closes the connection after the answer.
    let answer = exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Within the limits: 90 headers of 500 bytes pass.
    let fine: String = (0..90)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(500)))
        .collect();
    let answer = exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{fine}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_slower_than_the_idle_timeout_gets_a_504_that_says_so() {
    let v1 = TestServer::start("v1", "v1").await;
    let settings = Settings {
        idle_timeout: Duration::from_millis(100),
        ..Settings::default()
    };
    let lb = balancer(&v1, settings).await;
    let (resp, body) = get(lb.local_addr(), "/slow").await;
    assert_eq!(resp.status().as_u16(), 504);
    assert!(
        body.contains("did not answer within the idle timeout"),
        "{body}"
    );
    // Not repeated on the instance.
    assert_eq!(v1.hits(), 1);
    let (resp, _) = get(lb.local_addr(), "/").await;
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_instance_gets_a_502_that_says_so() {
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, Settings::default()).await;
    v1.kill().await;
    let (resp, body) = get(lb.local_addr(), "/").await;
    assert_eq!(resp.status().as_u16(), 502);
    assert!(body.starts_with("bad gateway: "), "{body}");
}
