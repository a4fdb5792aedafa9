//! The access log: one line per request with the client, what it asked,
//! the answer, the instance and the request id the instance saw.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use kiln_lb::{ACCESS_LOG, LoadBalancer, Settings};
use support::{Ports, TestServer, get, send};

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_a_line_with_its_request_id() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{ACCESS_LOG}=info"
        )))
        .with_writer(|| Capture)
        .with_ansi(false)
        .init();
    let v1 = TestServer::start("v1", "v1").await;
    let ports = Arc::new(Ports::default());
    ports.add(&v1);
    let lb = LoadBalancer::bind(0, ports, Settings::default())
        .await
        .unwrap();

    let (resp, _) = get(lb.local_addr(), "/nothing-yet").await;
    assert_eq!(resp.status().as_u16(), 503);
    lb.register("v1");
    lb.set_in_service("v1", true);
    let req = Request::get("/headers?x=1")
        .header(
            "x-amzn-trace-id",
            "Root=1-00000001-abcdefabcdefabcdefabcdef",
        )
        .header("x-forwarded-for", "10.9.8.7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (resp, _) = send(lb.local_addr(), req).await;
    assert_eq!(resp.status().as_u16(), 200);
    let (resp, _) = get(lb.local_addr(), "/generated").await;
    assert_eq!(resp.status().as_u16(), 200);

    let log = String::from_utf8(LOG.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines[0].contains("target=\"/nothing-yet\"")
            && lines[0].contains("status=503")
            && lines[0].contains("backend=\"-\""),
        "{log}"
    );
    assert!(
        lines[1].contains("method=GET")
            && lines[1].contains("target=\"/headers?x=1\"")
            && lines[1].contains("status=200")
            && lines[1].contains("backend=\"v1\"")
            && lines[1].contains("forwarded_for=\"10.9.8.7\"")
            && lines[1].contains("trace_id=\"Root=1-00000001-abcdefabcdefabcdefabcdef\"")
            && lines[1].contains("client=127.0.0.1:"),
        "{log}"
    );
    assert!(lines[2].contains("trace_id=\"Root=1-"), "{log}");
}
