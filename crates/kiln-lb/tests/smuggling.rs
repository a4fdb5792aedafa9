//! Requests whose framing an instance could read differently from the
//! balancer (request smuggling), and requests past the header limits, sent
//! as raw bytes: none of them puts a second request on an instance.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kiln_lb::{Attributes, LoadBalancer, Settings};
use support::{Ports, SLOW, TestServer, get};
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
    // Read as bytes: a bare CR or LF in `raw` must reach the balancer as is.
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

/// Every way of framing a request that two HTTP parsers could read
/// differently, each followed by (or hiding) a second request.
fn attacks() -> Vec<(&'static str, String, &'static str)> {
    let chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let n = SMUGGLED.len();
    vec![
        // The front end reads the length, the instance the chunks.
        (
            "CL.TE",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            "both Content-Length and Transfer-Encoding",
        ),
        // The front end reads the chunks, the instance the length.
        (
            "TE.CL",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunk}"
            ),
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "duplicate Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"
            ),
            "more than one Content-Length",
        ),
        (
            "identical duplicate Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"
            ),
            "more than one Content-Length",
        ),
        (
            "comma-listed Content-Length",
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0, {n}\r\n\r\n{SMUGGLED}"),
            "Content-Length is not one number",
        ),
        (
            "obsolete line folding",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n{chunk}"),
            "obsolete line folding",
        ),
        (
            "space before the colon",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n{chunk}"),
            "whitespace before a header's colon",
        ),
        (
            "chunked twice",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n{chunk}"
            ),
            "Transfer-Encoding other than chunked",
        ),
        (
            "chunked not last",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n{chunk}"
            ),
            "Transfer-Encoding other than chunked",
        ),
        (
            "two Transfer-Encoding lines",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{chunk}"
            ),
            "Transfer-Encoding other than chunked",
        ),
        (
            "unknown coding",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n{chunk}"),
            "Transfer-Encoding other than chunked",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"),
            "Transfer-Encoding in HTTP/1.0",
        ),
        // hyper itself accepts lines ended by a bare LF.
        (
            "bare LF",
            format!("POST / HTTP/1.1\nHost: x\nContent-Length: {n}\n\n{SMUGGLED}"),
            "bare LF",
        ),
        (
            "bare CR",
            format!("POST / HTTP/1.1\r\nHost: x\rContent-Length: {n}\r\n\r\n{SMUGGLED}"),
            "bare CR",
        ),
        (
            "control character in a header name",
            format!("POST / HTTP/1.1\r\nHost: x\r\n\x01Transfer-Encoding: chunked\r\n\r\n{chunk}"),
            "invalid character in a header name",
        ),
        (
            "malformed chunk size",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\n\r\n{SMUGGLED}"
            ),
            "malformed chunked body",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_nothing_reaches_an_instance() {
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, Settings::default()).await;
    let addr = lb.local_addr();
    for (name, raw, why) in attacks() {
        // Alone on a connection, and after a well-formed request on a
        // keep-alive connection, pipelined in one write.
        for pipelined in [false, true] {
            let before = v1.hits();
            let raw = if pipelined {
                format!("GET /first HTTP/1.1\r\nHost: x\r\n\r\n{raw}")
            } else {
                raw.clone()
            };
            let answer = exchange(addr, raw.as_bytes()).await;
            let forwarded = v1.hits() - before;
            let last = answer.rfind("HTTP/1.1 ").unwrap_or(0);
            assert!(
                answer[last..].starts_with("HTTP/1.1 400") && answer[last..].contains(why),
                "{name} (pipelined: {pipelined}): answered {answer:?}"
            );
            assert_eq!(
                responses(&answer),
                1 + usize::from(pipelined),
                "{name}: {answer:?}"
            );
            if pipelined {
                assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer:?}");
            }
            // A malformed chunk is found after the head went on: the
            // instance may have seen that request begin, never complete.
            let in_body = why.contains("chunked body");
            assert!(
                forwarded == u64::from(pipelined)
                    || (in_body && forwarded == u64::from(pipelined) + 1),
                "{name} (pipelined: {pipelined}): {:?}",
                v1.targets()
            );
            assert!(
                !v1.targets().iter().any(|t| t.contains("smuggled")),
                "{name}: {:?}",
                v1.targets()
            );
        }
    }
    // Well-formed requests still pass.
    let (resp, body) = get(addr, "/").await;
    assert_eq!((resp.status().as_u16(), body.as_str()), (200, "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_head_that_arrives_in_pieces_is_refused_too() {
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, Settings::default()).await;
    let mut s = TcpStream::connect(lb.local_addr()).await.unwrap();
    let raw = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    // The head's first part reaches hyper before the rest is seen; the
    // smuggled request comes with the head's last piece.
    let (head, last) = raw.as_bytes().split_at(50);
    for piece in head.chunks(25).chain([last]) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(closed.is_ok(), "not closed; answered {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(responses(&answer), 1, "{answer}");
    assert_eq!(v1.hits(), 0, "{:?}", v1.targets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_not_checked_as_http_but_a_refused_one_closes() {
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, Settings::default()).await;
    // The test backend does not switch protocols: its 200 is relayed, and
    // since what follows the upgrade request went unchecked, the
    // connection closes rather than read it as the next request.
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n{SMUGGLED}"
    );
    let answer = exchange(lb.local_addr(), raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(responses(&answer), 1, "{answer}");
    assert_eq!(v1.targets(), ["/"]);
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

/// ALB applies a changed idle_timeout.timeout_seconds without replacing
/// the load balancer; so does kiln's, from the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_idle_timeout_applies_to_the_next_request() {
    let v1 = TestServer::start("v1", "v1").await;
    let lb = balancer(&v1, Settings::default()).await;
    let (resp, _) = get(lb.local_addr(), "/slow").await;
    assert_eq!(resp.status().as_u16(), 200, "within the default 60 s");

    let short = Attributes {
        idle_timeout: SLOW / 4,
        ..lb.attributes()
    };
    lb.set_attributes(short);
    assert_eq!(lb.attributes(), short);
    let (resp, body) = get(lb.local_addr(), "/slow").await;
    assert_eq!(resp.status().as_u16(), 504, "{body}");

    lb.set_attributes(Attributes {
        idle_timeout: SLOW * 4,
        ..short
    });
    let (resp, _) = get(lb.local_addr(), "/slow").await;
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
