//! The balancer against real loopback backends.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use kiln_lb::loadgen::{self, LoadOptions};
use kiln_lb::{DrainOutcome, LoadBalancer, Settings};
use support::{Ports, SLOW, TestServer, eventually, get, send};

fn quick() -> Settings {
    Settings {
        deregistration_delay: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(1),
        ..Settings::default()
    }
}

async fn balancer(servers: &[&TestServer], settings: Settings) -> (LoadBalancer, Arc<Ports>) {
    let ports = Arc::new(Ports::default());
    for s in servers {
        ports.add(s);
    }
    let lb = LoadBalancer::bind(0, ports.clone(), settings)
        .await
        .unwrap();
    (lb, ports)
}

fn stats(lb: &LoadBalancer, id: &str) -> kiln_lb::BackendStats {
    lb.backends().into_iter().find(|b| b.id == id).unwrap()
}

fn opts(concurrency: usize, max_requests: u64) -> LoadOptions {
    LoadOptions {
        concurrency,
        max_requests,
        max_duration: Duration::from_secs(30),
        ..LoadOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_across_in_service_backends_with_stats() {
    let v1 = TestServer::start("v1", "v1").await;
    let v2 = TestServer::start("v2", "v2").await;
    let (lb, ports) = balancer(&[&v1, &v2], quick()).await;
    for id in ["v1", "v2"] {
        lb.register(id);
        lb.set_in_service(id, true);
    }

    let report = loadgen::run(lb.local_addr(), opts(1, 10)).await;

    assert_eq!(
        (report.sent, report.ok, report.failed),
        (10, 10, 0),
        "{report:?}"
    );
    assert_eq!(report.bodies.get("v1"), Some(&5), "{report:?}");
    assert_eq!(report.bodies.get("v2"), Some(&5), "{report:?}");
    eventually("nothing in flight", || {
        lb.backends().iter().all(|b| b.in_flight == 0)
    })
    .await;
    for id in ["v1", "v2"] {
        let s = stats(&lb, id);
        assert_eq!(
            (s.requests, s.failures, s.response_bytes),
            (5, 0, 10),
            "{s:?}"
        );
        assert!(s.in_service && !s.draining, "{s:?}");
        assert!(
            s.p50_ms > 0.0 && s.p50_ms <= s.p90_ms && s.p90_ms <= s.p99_ms,
            "{s:?}"
        );
        // Keep-alive upstream: one client connection in sequence needs one
        // upstream connection per backend.
        assert_eq!(ports.attempts(id), 1, "connections to {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_not_in_service_get_nothing() {
    let v1 = TestServer::start("v1", "v1").await;
    let v2 = TestServer::start("v2", "v2").await;
    let (lb, _) = balancer(&[&v1, &v2], quick()).await;
    lb.register("v1");
    lb.register("v2");
    lb.set_in_service("v1", true);

    let report = loadgen::run(lb.local_addr(), opts(4, 40)).await;

    assert_eq!(report.ok, 40, "{report:?}");
    assert_eq!(report.bodies.len(), 1, "{report:?}");
    assert_eq!(v2.hits(), 0);
    assert_eq!(stats(&lb, "v2").requests, 0);

    // Taken out of service again, v1 gets nothing either.
    lb.set_in_service("v1", false);
    let (resp, _) = get(lb.local_addr(), "/").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v1.hits(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_in_service_is_503() {
    let v1 = TestServer::start("v1", "v1").await;
    let (lb, _) = balancer(&[&v1], quick()).await;

    let (resp, body) = get(lb.local_addr(), "/").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "service unavailable: no instance in service\n");

    lb.register("v1");
    let report = loadgen::run(lb.local_addr(), opts(2, 10)).await;
    assert_eq!((report.ok, report.failed), (0, 10), "{report:?}");
    assert_eq!(
        report
            .bodies
            .get("service unavailable: no instance in service"),
        Some(&10)
    );
    assert_eq!(
        report.errors,
        vec!["HTTP 503: service unavailable: no instance in service"]
    );
    assert_eq!(v1.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_under_load_fails_no_request() {
    let old = [
        TestServer::start("v1-a", "v1").await,
        TestServer::start("v1-b", "v1").await,
    ];
    let new = [
        TestServer::start("v2-a", "v2").await,
        TestServer::start("v2-b", "v2").await,
    ];
    let (lb, ports) = balancer(&[], quick()).await;
    for s in old.iter().chain(&new) {
        ports.add(s);
    }
    for s in &old {
        lb.register(&s.id);
        lb.set_in_service(&s.id, true);
    }

    let (load, stop) = loadgen::spawn(
        lb.local_addr(),
        LoadOptions {
            concurrency: 8,
            max_requests: u64::MAX,
            max_duration: Duration::from_secs(60),
            keep_alive: true,
            ..LoadOptions::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (old, new) in old.into_iter().zip(&new) {
        lb.register(&new.id);
        lb.set_in_service(&new.id, true);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = lb.drain(&old.id).await;
        assert_eq!(report.outcome, DrainOutcome::Drained, "{report:?}");
        assert_eq!(report.in_flight_at_end, 0, "{report:?}");
        assert!(report.waited >= quick().deregistration_delay, "{report:?}");
        assert!(old.hits() > 0, "{} served nothing", old.id);
        old.kill().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.stop();
    let report = load.await.unwrap();

    assert!(report.sent > 100, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        report.bodies["v1"] > 0 && report.bodies["v2"] > 0,
        "{report:?}"
    );
    assert_eq!(report.bodies.len(), 2, "{report:?}");

    let ids: Vec<String> = lb.backends().into_iter().map(|b| b.id).collect();
    assert_eq!(ids, ["v2-a", "v2-b"]);
    let after = loadgen::run(lb.local_addr(), opts(8, 200)).await;
    assert_eq!(after.bodies.get("v2"), Some(&200), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_not_failed() {
    let v1 = TestServer::start("v1", "v1").await;
    let v2 = TestServer::start("v2", "v2").await;
    let (lb, ports) = balancer(&[&v1, &v2], quick()).await;
    for id in ["v1", "v2"] {
        lb.register(id);
        lb.set_in_service(id, true);
    }
    let (load, stop) = loadgen::spawn(
        lb.local_addr(),
        LoadOptions {
            concurrency: 8,
            max_requests: u64::MAX,
            max_duration: Duration::from_secs(60),
            ..LoadOptions::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let attempts_before = ports.attempts("v2");
    // No drain: the process just dies, and its port refuses connections.
    v2.kill().await;
    // Long enough for v2's "down" mark to expire, so it is tried again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.stop();
    let report = load.await.unwrap();

    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.bodies["v2"] > 0, "{report:?}");
    assert!(
        ports.attempts("v2") >= attempts_before + 2,
        "v2 was not retried"
    );
    let s = stats(&lb, "v2");
    assert!(s.failures >= 2, "{s:?}");
    assert_eq!(stats(&lb, "v1").failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_post_is_retried_on_another_backend() {
    let dead = TestServer::start("dead", "dead").await;
    let v2 = TestServer::start("v2", "v2").await;
    let (lb, _) = balancer(&[&dead, &v2], quick()).await;
    for id in ["dead", "v2"] {
        lb.register(id);
        lb.set_in_service(id, true);
    }
    dead.kill().await;

    for _ in 0..4 {
        let req = Request::post("/")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let (resp, body) = send(lb.local_addr(), req).await;
        assert_eq!((resp.status(), body.as_str()), (StatusCode::OK, "v2:5"));
    }
    assert!(stats(&lb, "dead").failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_streamed() {
    let v1 = TestServer::start("v1", "v1").await;
    let (lb, _) = balancer(&[&v1], quick()).await;
    lb.register("v1");
    lb.set_in_service("v1", true);

    let body = Bytes::from(vec![b'x'; 3 << 20]);
    let (resp, text) = send(
        lb.local_addr(),
        Request::post("/").body(Full::new(body)).unwrap(),
    )
    .await;
    assert_eq!(
        (resp.status(), text.as_str()),
        (StatusCode::OK, "v1:3145728")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added_and_hop_by_hop_ones_stripped() {
    let v1 = TestServer::start("v1", "v1").await;
    let (lb, _) = balancer(&[&v1], quick()).await;
    lb.register("v1");
    lb.set_in_service("v1", true);

    let req = Request::get("/headers")
        .header("host", "app.example")
        .header("x-forwarded-for", "10.1.1.1")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-proto", "https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (resp, body) = send(lb.local_addr(), req).await;

    let port = lb.local_addr().port();
    assert_eq!(
        body,
        format!(
            "xff=10.1.1.1, 127.0.0.1 via=1.1 kiln hop=- host=app.example proto=http port={port} trace=40"
        )
    );
    assert_eq!(resp.headers()["via"], "1.1 kiln");
}

/// A request's raw answer from `addr`, on a connection of its own.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    answer
}

/// The status line, header names (lowercased, sorted, without the date)
/// and body of a raw answer.
fn shape(answer: &str) -> (String, Vec<String>, String) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap().replace("HTTP/1.0", "HTTP/1.1");
    let mut names: Vec<String> = lines
        .map(|l| l.split(':').next().unwrap().to_ascii_lowercase())
        .filter(|n| n != "date")
        .collect();
    names.sort();
    (status, names, body.to_owned())
}

/// Requests without a body reach the instance on the balancer's own path
/// or, when a hop-by-hop header or HTTP/1.0 sends them to hyper's, on that
/// one: the instance sees the same forwarding headers either way, and the
/// client gets the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_requests_get_the_same_answer_on_either_path() {
    let v1 = TestServer::start("v1", "v1").await;
    let (lb, _) = balancer(&[&v1], quick()).await;
    lb.register("v1");
    lb.set_in_service("v1", true);
    let addr = lb.local_addr();
    let head = "Host: app.example\r\nX-Forwarded-For: 10.1.1.1\r\nConnection: close\r\n";
    let fast = exchange(addr, &format!("GET /headers HTTP/1.1\r\n{head}\r\n")).await;
    let port = addr.port();
    let expected = format!(
        "xff=10.1.1.1, 127.0.0.1 via=1.1 kiln hop=- host=app.example proto=http port={port} trace=40"
    );
    assert_eq!(shape(&fast).2, expected, "{fast}");
    let (status, names, body) = shape(&fast);
    for (why, request) in [
        (
            "a hop-by-hop header",
            format!("GET /headers HTTP/1.1\r\n{head}TE: trailers\r\n\r\n"),
        ),
        ("HTTP/1.0", format!("GET /headers HTTP/1.0\r\n{head}\r\n")),
    ] {
        let other = exchange(addr, &request).await;
        let mut expected = names.clone();
        if why == "HTTP/1.0" {
            // Closing is HTTP/1.0's default: no header needed to say so.
            expected.retain(|n| n != "connection");
        }
        assert_eq!(
            shape(&other),
            (status.clone(), expected, body.clone()),
            "{why}:\n{other}\nagainst\n{fast}"
        );
    }
    // Each went to the instance once.
    assert_eq!(v1.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_slow_request() {
    let v1 = TestServer::start("v1", "v1").await;
    let (lb, _) = balancer(&[&v1], quick()).await;
    lb.register("v1");
    lb.set_in_service("v1", true);

    let addr = lb.local_addr();
    let slow = tokio::spawn(async move { get(addr, "/slow").await });
    eventually("the slow request is in flight", || {
        stats(&lb, "v1").in_flight == 1
    })
    .await;
    let report = lb.drain("v1").await;
    let (resp, body) = slow.await.unwrap();

    assert_eq!((resp.status(), body.as_str()), (StatusCode::OK, "v1"));
    assert_eq!(report.outcome, DrainOutcome::Drained, "{report:?}");
    assert_eq!((report.in_flight_at_start, report.in_flight_at_end), (1, 0));
    // Most of SLOW was still to go when the drain began, then the delay.
    assert!(
        report.waited >= SLOW / 2 + quick().deregistration_delay,
        "{report:?}"
    );
    assert!(lb.backends().is_empty());
    let (resp, _) = get(addr, "/").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_after_its_timeout() {
    let v1 = TestServer::start("v1", "v1").await;
    let settings = Settings {
        drain_timeout: Duration::from_millis(100),
        ..quick()
    };
    let (lb, _) = balancer(&[&v1], settings).await;
    lb.register("v1");
    lb.set_in_service("v1", true);

    let addr = lb.local_addr();
    let slow = tokio::spawn(async move { get(addr, "/slow").await });
    eventually("the slow request is in flight", || {
        stats(&lb, "v1").in_flight == 1
    })
    .await;
    let report = lb.drain("v1").await;

    assert_eq!(report.outcome, DrainOutcome::TimedOut, "{report:?}");
    assert_eq!(report.in_flight_at_end, 1, "{report:?}");
    assert!(lb.backends().is_empty());
    // Removal stops new requests; the one under way still completes.
    let (resp, body) = slow.await.unwrap();
    assert_eq!((resp.status(), body.as_str()), (StatusCode::OK, "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let v1 = TestServer::start("v1", "v1").await;
    let (lb, _) = balancer(&[&v1], quick()).await;
    lb.register("v1");
    lb.set_in_service("v1", true);

    let addr = lb.local_addr();
    let slow = tokio::spawn(async move { get(addr, "/slow").await });
    eventually("the slow request is in flight", || {
        stats(&lb, "v1").in_flight == 1
    })
    .await;
    lb.shutdown().await;

    let (resp, body) = slow.await.unwrap();
    assert_eq!((resp.status(), body.as_str()), (StatusCode::OK, "v1"));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
