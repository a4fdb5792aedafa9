//! ALB's routing choices: least outstanding requests, round robin, weighted
//! random, stickiness by cookie and slow start.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use kiln_lb::loadgen::{self, LoadOptions};
use kiln_lb::{Algorithm, Attributes, DrainOutcome, LoadBalancer, Routing, Settings};
use support::{Ports, TestServer, send};

async fn balancer(servers: &[&TestServer], routing: Routing) -> LoadBalancer {
    let ports = Arc::new(Ports::default());
    for s in servers {
        ports.add(s);
    }
    let settings = Settings {
        deregistration_delay: Duration::from_millis(100),
        routing,
        ..Settings::default()
    };
    let lb = LoadBalancer::bind(0, ports, settings).await.unwrap();
    for s in servers {
        lb.register(&s.id);
        lb.set_in_service(&s.id, true);
    }
    lb
}

fn routing(algorithm: Algorithm) -> Routing {
    Routing {
        algorithm,
        ..Routing::default()
    }
}

/// Requests answered by each body, out of `n` sent `concurrency` at a time.
async fn spread(lb: &LoadBalancer, concurrency: usize, n: u64) -> (u64, u64) {
    let report = loadgen::run(
        lb.local_addr(),
        LoadOptions {
            concurrency,
            max_requests: n,
            max_duration: Duration::from_secs(60),
            ..LoadOptions::default()
        },
    )
    .await;
    assert_eq!(report.failed, 0, "{report:?}");
    let get = |b: &str| report.bodies.get(b).copied().unwrap_or(0);
    (get("fast"), get("slow"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_requests_sends_less_to_a_slow_instance() {
    let fast = TestServer::start("fast", "fast").await;
    let slow = TestServer::start_delayed("slow", "slow", Duration::from_millis(50)).await;

    let lb = balancer(&[&fast, &slow], routing(Algorithm::RoundRobin)).await;
    let (f, s) = spread(&lb, 8, 200).await;
    eprintln!("round robin: fast {f}, slow {s}");
    assert_eq!((f, s), (100, 100));

    let lb = balancer(
        &[&fast, &slow],
        routing(Algorithm::LeastOutstandingRequests),
    )
    .await;
    let (f, s) = spread(&lb, 8, 200).await;
    eprintln!("least outstanding requests: fast {f}, slow {s}");
    assert!(s * 4 < f, "fast {f}, slow {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_random_spreads_evenly_between_equal_instances() {
    let a = TestServer::start("fast", "fast").await;
    let b = TestServer::start("slow", "slow").await;
    let lb = balancer(&[&a, &b], routing(Algorithm::WeightedRandom)).await;
    let (x, y) = spread(&lb, 4, 1000).await;
    eprintln!("weighted random: {x} / {y}");
    assert!((350..=650).contains(&x), "{x} / {y}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_new_instance_up() {
    let old = TestServer::start("fast", "fast").await;
    let new = TestServer::start("slow", "slow").await;
    let ramp = Duration::from_secs(1);
    let lb = balancer(
        &[&old, &new],
        Routing {
            algorithm: Algorithm::RoundRobin,
            slow_start: ramp,
            ..Routing::default()
        },
    )
    .await;
    lb.set_in_service("slow", false);
    tokio::time::sleep(ramp).await;
    lb.set_in_service("slow", true);
    let (o, n) = spread(&lb, 1, 200).await;
    eprintln!("slow start, at first: old {o}, new {n}");
    assert!(n * 3 < o, "old {o}, new {n}");
    tokio::time::sleep(ramp).await;
    let (o, n) = spread(&lb, 1, 200).await;
    eprintln!("slow start, after the ramp: old {o}, new {n}");
    assert_eq!((o, n), (100, 100));
}

async fn get_with_cookie(lb: &LoadBalancer, cookie: Option<&str>) -> (String, Option<String>) {
    let mut req = Request::get("/");
    if let Some(c) = cookie {
        req = req.header("cookie", format!("theme=dark; {c}"));
    }
    let (resp, body) = send(lb.local_addr(), req.body(Full::new(Bytes::new())).unwrap()).await;
    let set = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    (body, set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_client_stays_on_its_instance_until_it_drains() {
    let a = TestServer::start("a", "a").await;
    let b = TestServer::start("b", "b").await;
    let lb = balancer(
        &[&a, &b],
        Routing {
            algorithm: Algorithm::RoundRobin,
            stickiness: Some(Duration::from_secs(3600)),
            ..Routing::default()
        },
    )
    .await;
    let (first, cookie) = get_with_cookie(&lb, None).await;
    let cookie = cookie.expect("a stickiness cookie");
    assert!(cookie.starts_with("AWSALB="), "{cookie}");
    for _ in 0..20 {
        let (body, again) = get_with_cookie(&lb, Some(&cookie)).await;
        assert_eq!(body, first);
        assert_eq!(again.as_deref(), Some(cookie.as_str()));
    }
    // Without the cookie, round robin alternates.
    let bodies: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(get_with_cookie(&lb, None).await.0);
        }
        v
    };
    assert!(bodies.contains(&"a".to_owned()) && bodies.contains(&"b".to_owned()));

    lb.drain(&first).await;
    let (body, moved) = get_with_cookie(&lb, Some(&cookie)).await;
    assert_ne!(
        body, first,
        "the drained instance still got the sticky client"
    );
    let moved = moved.expect("a new cookie");
    assert_ne!(moved, cookie);
    let (again, _) = get_with_cookie(&lb, Some(&moved)).await;
    assert_eq!(again, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_change_while_the_balancer_serves() {
    let a = TestServer::start("a", "a").await;
    let b = TestServer::start("b", "b").await;
    let lb = balancer(&[&a, &b], Routing::default()).await;
    let (_, cookie) = get_with_cookie(&lb, None).await;
    assert_eq!(cookie, None, "no stickiness was asked for");

    let sticky = Attributes {
        deregistration_delay: Duration::from_millis(1500),
        idle_timeout: Duration::from_secs(60),
        routing: Routing {
            algorithm: Algorithm::RoundRobin,
            stickiness: Some(Duration::from_secs(60)),
            slow_start: Duration::ZERO,
        },
    };
    lb.set_attributes(sticky);
    assert_eq!(lb.attributes(), sticky);
    let (first, cookie) = get_with_cookie(&lb, None).await;
    let cookie = cookie.expect("a stickiness cookie once stickiness is on");
    assert!(cookie.starts_with("AWSALB="), "{cookie}");
    for _ in 0..10 {
        assert_eq!(get_with_cookie(&lb, Some(&cookie)).await.0, first);
    }

    // The new delay holds the drained instance for its full length.
    let report = lb.drain(&first).await;
    assert_eq!(report.outcome, DrainOutcome::Drained);
    assert!(
        report.waited >= Duration::from_millis(1500),
        "drained after {:?}, before the new deregistration delay",
        report.waited
    );

    // Turning stickiness off again: no cookie, and a client's old one is ignored.
    lb.set_attributes(Attributes {
        deregistration_delay: Duration::from_millis(100),
        routing: Routing::default(),
        ..sticky
    });
    let (body, set) = get_with_cookie(&lb, Some(&cookie)).await;
    assert_ne!(body, first, "the drained instance got a request");
    assert_eq!(set, None);
    let ramping = Attributes {
        deregistration_delay: Duration::ZERO,
        idle_timeout: Duration::from_secs(4000),
        routing: Routing {
            algorithm: Algorithm::WeightedRandom,
            stickiness: Some(Duration::from_secs(7 * 86_400)),
            slow_start: Duration::from_secs(900),
        },
    };
    lb.set_attributes(ramping);
    assert_eq!(lb.attributes(), ramping);
}
