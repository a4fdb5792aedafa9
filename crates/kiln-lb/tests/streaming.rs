//! Bodies stream through the balancer instead of being buffered whole:
//! server-sent events arrive one by one, and a 1 GiB upload and download
//! pass with the process's memory staying flat.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kiln_lb::{Connector, LoadBalancer, Settings};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;
static ZEROES: [u8; CHUNK] = [0; CHUNK];

/// A body fed through a small channel: the producer waits whenever the
/// consumer does, which is the backpressure under test.
struct Channel(mpsc::Receiver<Bytes>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn produce(total: u64) -> Channel {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut sent = 0;
        while sent < total {
            let n = CHUNK.min(usize::try_from(total - sent).unwrap());
            if tx.send(Bytes::from_static(&ZEROES[..n])).await.is_err() {
                return;
            }
            sent += n as u64;
        }
    });
    Channel(rx)
}

async fn count(mut body: Incoming) -> u64 {
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            n += data.len() as u64;
        }
    }
    n
}

/// `/download` sends 1 GiB, `/upload` counts what it receives, `/stall`
/// sends one chunk and then nothing while it keeps the connection,
/// `/events` sends five events 100 ms apart.
async fn app(req: Request<Incoming>) -> Result<Response<Channel>, Infallible> {
    Ok(match req.uri().path() {
        "/download" => Response::new(produce(GIB)),
        "/stall" => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"first chunk")).await.unwrap();
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(tx);
            });
            Response::new(Channel(rx))
        }
        "/upload" => {
            let n = count(req.into_body()).await;
            let (tx, rx) = mpsc::channel(1);
            tx.send(Bytes::from(n.to_string())).await.unwrap();
            Response::new(Channel(rx))
        }
        _ => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for i in 0..5 {
                    let event = Bytes::from(format!("data: event {i}\n\n"));
                    if tx.send(event).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let mut resp = Response::new(Channel(rx));
            resp.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            resp
        }
    })
}

struct Port(u16);

impl Connector for Port {
    fn connect(
        &self,
        _backend: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + '_>> {
        Box::pin(TcpStream::connect((Ipv4Addr::LOCALHOST, self.0)))
    }
}

async fn setup() -> LoadBalancer {
    setup_with(Settings::default()).await
}

async fn setup_with(settings: Settings) -> LoadBalancer {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(s), service_fn(app)));
        }
    });
    let lb = LoadBalancer::bind(0, Arc::new(Port(port)), settings)
        .await
        .unwrap();
    lb.register("app");
    lb.set_in_service("app", true);
    lb
}

async fn request<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

/// Kilobytes of the process's peak and current resident memory.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_up_and_down_keeps_memory_flat() {
    let lb = setup().await;
    let (_, rss_before) = memory_kib();
    let started = Instant::now();

    let upload = Request::post("/upload")
        .header("host", "app")
        .body(produce(GIB))
        .unwrap();
    let resp = request(lb.local_addr(), upload).await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, GIB.to_string());
    let up = started.elapsed();

    let download = Request::get("/download")
        .header("host", "app")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = request(lb.local_addr(), download).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(count(resp.into_body()).await, GIB);

    let (peak, _) = memory_kib();
    eprintln!(
        "1 GiB up in {up:?}, down in {:?}; resident {} MiB before, peak {} MiB",
        started.elapsed() - up,
        rss_before / 1024,
        peak / 1024
    );
    // Client, balancer and application share this process; buffering a
    // body whole anywhere would add a gibibyte.
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "peak {peak} KiB against {rss_before} KiB before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_one_by_one() {
    let lb = setup().await;
    let req = Request::get("/events")
        .header("host", "app")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let started = Instant::now();
    let mut body = request(lb.local_addr(), req).await.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            arrivals.push((
                String::from_utf8_lossy(data).into_owned(),
                started.elapsed(),
            ));
        }
    }
    let text: String = arrivals.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(text.matches("data: event").count(), 5, "{text}");
    // The first event arrived well before the stream ended (400 ms later).
    let (first, last) = (arrivals[0].1, arrivals.last().unwrap().1);
    assert!(
        last - first >= Duration::from_millis(300),
        "events arrived together: {arrivals:?}"
    );
}

/// A client that leaves halfway through a download is no failure of the
/// instance (ALB counts it in neither the target's errors nor its 5xx),
/// on the balancer's own path and on hyper's (which a hop-by-hop header
/// picks); the instance is free of it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_download_is_no_failure_of_the_instance() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lb = setup().await;
    let stats = || lb.backends().into_iter().find(|b| b.id == "app").unwrap();
    for (n, extra) in ["", "TE: trailers\r\n"].into_iter().enumerate() {
        let mut conn = TcpStream::connect(lb.local_addr()).await.unwrap();
        let head = format!("GET /download HTTP/1.1\r\nHost: app\r\n{extra}\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 1 << 20];
        conn.read_exact(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200"), "{extra:?}");
        drop(conn);
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats().in_flight > 0 {
            assert!(Instant::now() < deadline, "still in flight: {:?}", stats());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let s = stats();
        assert_eq!(
            (s.requests, s.failures),
            (n as u64 + 1, 0),
            "{extra:?}: {s:?}"
        );
    }
}

/// The balancer's own path, and hyper's (which a hop-by-hop header picks).
const PATHS: [&str; 2] = ["", "TE: trailers\r\n"];

fn idle(timeout: Duration) -> Settings {
    Settings {
        idle_timeout: timeout,
        ..Settings::default()
    }
}

/// Waits until the instance has no request in flight, for at most `limit`.
async fn settled(lb: &LoadBalancer, limit: Duration) -> kiln_lb::BackendStats {
    let deadline = Instant::now() + limit;
    loop {
        let stats = lb.backends().into_iter().find(|b| b.id == "app").unwrap();
        if stats.in_flight == 0 {
            return stats;
        }
        assert!(Instant::now() < deadline, "still in flight: {stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads what is left of a connection until it ends, however it ends.
async fn rest(conn: &mut TcpStream) -> u64 {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    while let Ok(n) = conn.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

/// A client that stops reading a download holds neither its connection
/// nor the instance past the idle timeout (ALB's), on either path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lb = setup_with(idle(Duration::from_millis(300))).await;
    for extra in PATHS {
        let mut conn = TcpStream::connect(lb.local_addr()).await.unwrap();
        let head = format!("GET /download HTTP/1.1\r\nHost: app\r\n{extra}\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 1 << 20];
        conn.read_exact(&mut got).await.unwrap();
        // Stops reading, with the connection open; the balancer gives up
        // on it once its writes have waited 300 ms.
        let stopped = Instant::now();
        let stats = settled(&lb, Duration::from_secs(10)).await;
        let waited = stopped.elapsed();
        assert!(
            waited >= Duration::from_millis(300),
            "{extra:?}: {waited:?}"
        );
        assert_eq!(
            stats.failures, 0,
            "{extra:?}: the client's doing: {stats:?}"
        );
        // What the balancer had sent before is all there is.
        let after = rest(&mut conn).await;
        assert!(after < GIB / 2, "{extra:?}: {after} more bytes");
    }
}

/// An instance that stops sending a response body midway is given up on
/// after the idle timeout: the client's connection closes instead of
/// hanging, and the instance is charged with the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stalls_mid_body_is_cut_off_after_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let lb = setup_with(idle(Duration::from_millis(300))).await;
    for (n, extra) in PATHS.into_iter().enumerate() {
        let mut conn = TcpStream::connect(lb.local_addr()).await.unwrap();
        let head = format!("GET /stall HTTP/1.1\r\nHost: app\r\n{extra}\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(10), rest(&mut conn))
            .await
            .expect("the balancer closed the connection");
        let waited = started.elapsed();
        assert!(got > 0, "{extra:?}: the head and first chunk came");
        assert!(
            waited >= Duration::from_millis(300),
            "{extra:?}: {waited:?}"
        );
        let stats = settled(&lb, Duration::from_secs(5)).await;
        assert_eq!(stats.failures, n as u64 + 1, "{extra:?}: {stats:?}");
    }
}
