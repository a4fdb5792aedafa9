//! The daemon's API as another local user or a hostile client meets it:
//! every call needs a token, the read-only token only reads, secrets never
//! leave in a listing, and a thousand slow clients do not lock it up.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, json, kiln, ok};
use serde_json::Value;

fn address(state: &Path) -> SocketAddr {
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("daemon.json")).unwrap()).unwrap();
    info["address"].as_str().unwrap().parse().unwrap()
}

fn token(state: &Path, file: &str) -> String {
    std::fs::read_to_string(state.join(file))
        .unwrap()
        .trim()
        .to_string()
}

/// One call: its status and its body (JSON, or the text as a JSON string).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut request = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(auth) = &auth {
        request = request.header("Authorization", auth);
    }
    let resp = match body {
        Some(b) => agent.run(
            request
                .header("Content-Type", "application/json")
                .body(b.to_string())
                .unwrap(),
        ),
        None => agent.run(request.body(()).unwrap()),
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (resp.status().as_u16(), value)
}

#[test]
fn every_call_needs_a_token_and_the_read_only_token_only_reads() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(&state);
    let addr = address(&state);
    for file in ["api-token", "api-token-read"] {
        let mode = std::fs::metadata(state.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let (full, read) = (token(&state, "api-token"), token(&state, "api-token-read"));

    // Reads without a token, or with a wrong one, are refused and told how
    // to authenticate.
    for path in [
        "/v1/health",
        "/v1/templates",
        "/v1/groups",
        "/v1/instances",
        "/v1/pipelines",
        "/v1/executions",
    ] {
        for given in [None, Some("wrong"), Some(&full[..full.len() - 1])] {
            let (status, body) = call(addr, "GET", path, given, None);
            assert_eq!(status, 401, "GET {path} with {given:?}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains("api-token"),
                "{body}"
            );
        }
        assert_eq!(call(addr, "GET", path, Some(&read), None).0, 200, "{path}");
        assert_eq!(call(addr, "GET", path, Some(&full), None).0, 200, "{path}");
    }
    assert_eq!(call(addr, "HEAD", "/v1/groups", None, None).0, 401);
    assert_eq!(call(addr, "HEAD", "/v1/groups", Some(&read), None).0, 200);

    // Changes: 401 without a token, 403 with the read-only one, and with
    // the full token they go through (and fail on their merits).
    let template = r#"{"name": "x", "image": "nothing"}"#;
    assert_eq!(
        call(addr, "POST", "/v1/templates", None, Some(template)).0,
        401
    );
    let (status, body) = call(addr, "POST", "/v1/templates", Some(&read), Some(template));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("api-token-read"),
        "{body}"
    );
    assert_eq!(
        call(addr, "DELETE", "/v1/groups/x", Some(&read), None).0,
        403
    );
    assert_eq!(
        call(addr, "POST", "/v1/templates", Some(&full), Some(template)).0,
        422
    );
    assert_eq!(
        call(addr, "DELETE", "/v1/groups/x", Some(&full), None).0,
        404
    );

    // The CLI sends its token on reads too; a user who can read only the
    // read-only token can list but not change.
    assert_eq!(
        json(kiln(&state, &["groups", "ls", "--output", "json"])),
        serde_json::json!([])
    );
    std::fs::remove_file(state.join("api-token")).unwrap();
    assert_eq!(
        json(kiln(&state, &["templates", "ls", "--output", "json"])),
        serde_json::json!([])
    );
    let out = kiln(&state, &["groups", "rm", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 403") && err.contains("api-token-read"),
        "{err}"
    );
    daemon.destroy(&[]);
}

/// A header a response must carry.
fn header(addr: SocketAddr, path: &str, token: Option<&str>, name: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        request = request.header("Authorization", &format!("Bearer {t}"));
    }
    let resp = request.call().unwrap();
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn the_running_daemon_serves_the_committed_openapi_document_and_the_new_resources() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(&state);
    let addr = address(&state);
    let (full, read) = (token(&state, "api-token"), token(&state, "api-token-read"));

    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(call(addr, "GET", "/openapi.json", None, None).0, 401);
    let (status, served) = call(addr, "GET", "/openapi.json", Some(&read), None);
    assert_eq!(status, 200);
    assert!(
        served == committed,
        "the served document differs from docs/openapi.json"
    );
    // `kiln openapi` prints the same document.
    let printed: Value = serde_json::from_str(&ok(kiln(&state, &["openapi"]))).unwrap();
    assert!(printed == committed);

    // Every new resource reads with the read-only token, and not without.
    for path in [
        "/v1/images",
        "/v1/parameters",
        "/metrics",
        "/v1/events?max_seconds=1",
    ] {
        assert_eq!(call(addr, "GET", path, None, None).0, 401, "{path}");
        assert_eq!(call(addr, "GET", path, Some(&read), None).0, 200, "{path}");
    }
    assert_eq!(
        header(addr, "/metrics", Some(&read), "content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(
        header(
            addr,
            "/v1/events?max_seconds=1",
            Some(&read),
            "content-type"
        ),
        "text/event-stream"
    );
    // The actions: refused without a token and with the read-only one.
    for (path, body) in [
        ("/v1/groups/g/scale", Some(r#"{"desired": 2}"#)),
        ("/v1/groups/g/rollback", None),
        ("/v1/pipelines/p/executions", Some("{}")),
        ("/v1/executions/e/retry", None),
    ] {
        let (status, err) = call(addr, "POST", path, None, body);
        assert_eq!(status, 401, "{path}: {err}");
        assert_eq!(call(addr, "POST", path, Some(&read), body).0, 403, "{path}");
        assert_eq!(call(addr, "POST", path, Some(&full), body).0, 404, "{path}");
    }
    // Errors are JSON even when axum rejects the input itself.
    let (status, err) = call(addr, "GET", "/v1/executions?limit=-1", Some(&read), None);
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("limit"), "{err}");
    daemon.destroy(&[]);
}

#[test]
fn the_console_signs_in_with_a_one_time_code_and_its_session_keeps_the_token_access() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(&state);
    let addr = address(&state);
    let read = token(&state, "api-token-read");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();

    // The page itself holds nothing and needs no token; it says what it
    // may load.
    let page = call(addr, "GET", "/", None, None);
    assert_eq!(page.0, 200);
    assert!(page.1.as_str().unwrap().contains("/console/app.js"));
    let csp = header(addr, "/", None, "content-security-policy");
    assert!(csp.starts_with("default-src 'self'"), "{csp}");

    // `kiln console` prints the URL with a code; the code works once.
    let url = ok(kiln(&state, &["console", "--no-open"]));
    let code = url.trim().rsplit_once("#login=").unwrap().1.to_string();
    assert!(url.starts_with(&format!("http://{addr}/")), "{url}");
    let exchange = |code: &str| {
        agent
            .post(format!("http://{addr}/console/session"))
            .header("Content-Type", "application/json")
            .send(serde_json::json!({ "code": code }).to_string())
            .unwrap()
    };
    let first = exchange(&code);
    assert_eq!(first.status(), 200);
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert_eq!(exchange(&code).status(), 401, "a code works once");
    let session = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |method: &str, path: &str| {
        let r = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("Cookie", &session)
            .header("Content-Type", "application/json")
            .body(r#"{"desired": 1}"#.to_string())
            .unwrap();
        agent.run(r).unwrap().status().as_u16()
    };
    // The CLI used the full token: the session reads and changes.
    assert_eq!(with_cookie("GET", "/v1/groups"), 200);
    assert_eq!(with_cookie("POST", "/v1/groups/g/scale"), 404);

    // A code asked for with the read-only token gives a session that
    // only reads.
    let (status, answer) = call(addr, "POST", "/v1/console/codes", Some(&read), None);
    assert_eq!(status, 201);
    assert_eq!(answer["access"], "read-only");
    let reader = exchange(answer["code"].as_str().unwrap());
    let reader = reader.headers()["set-cookie"].to_str().unwrap();
    let reader = reader.split(';').next().unwrap();
    let r = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/v1/groups/g/scale"))
        .header("Cookie", reader)
        .header("Content-Type", "application/json")
        .body(r#"{"desired": 1}"#.to_string())
        .unwrap();
    assert_eq!(agent.run(r).unwrap().status().as_u16(), 403);
    // A forged cookie is no session.
    let r = ureq::http::Request::builder()
        .uri(format!("http://{addr}/v1/groups"))
        .header("Cookie", "kiln_session=00000000")
        .body(())
        .unwrap();
    assert_eq!(agent.run(r).unwrap().status().as_u16(), 401);
    daemon.destroy(&[]);
}

/// More connections than the 1,024 descriptors a process gets by default.
const SLOW_CLIENTS: usize = 1200;

fn set_soft_fd_limit(soft: Option<u64>) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: soft.or(hard),
            maximum: hard,
        },
    )
    .unwrap();
}

fn soft_fd_limit_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

#[test]
fn slow_clients_do_not_stop_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // The daemon starts with the common default of 1,024 descriptors, as
    // it does from a login shell; kiln raises its own limit. The test
    // process itself holds every client socket, so it takes the hard limit.
    set_soft_fd_limit(Some(1024));
    let mut daemon = Daemon::start(&state);
    set_soft_fd_limit(None);
    let pid = daemon.child.as_ref().unwrap().id();
    let (soft, hard) = soft_fd_limit_of(pid);
    assert_eq!(soft, hard, "kiln raises its soft open-file limit");
    assert!(
        hard.parse::<usize>().unwrap() > 2 * SLOW_CLIENTS,
        "this test needs a hard open-file limit above {}, not {hard}",
        2 * SLOW_CLIENTS
    );
    let addr = address(&state);
    let full = token(&state, "api-token");

    let mut held = Vec::with_capacity(SLOW_CLIENTS);
    let mut last_opened = Instant::now();
    for i in 0..SLOW_CLIENTS {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        if i % 2 == 1 {
            s.write_all(b"GET /v1/groups HTTP/1.1\r\nHost: slow\r\nX-Wait: ")
                .unwrap();
        }
        last_opened = Instant::now();
        held.push(s);
    }
    let started = Instant::now();
    let (status, body) = call(addr, "GET", "/v1/groups", Some(&full), None);
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );

    // The newest slow connection was not pushed out by the cap; the
    // header-read timeout (10 s) closes it.
    let newest = held.last_mut().unwrap();
    newest
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    match newest.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the slow connection was not closed: {e}"),
    }
    let open_for = last_opened.elapsed();
    assert!(
        open_for > Duration::from_secs(8) && open_for < Duration::from_secs(15),
        "closed after {open_for:?}"
    );
    drop(held);
    assert_eq!(call(addr, "GET", "/v1/health", Some(&full), None).0, 200);
    daemon.destroy(&[]);
}

/// Bakes web/1.0.0: busybox httpd answering on `port`.
fn bake_web(dir: &Path, state: &Path, port: u16) {
    let component = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-service.yaml");
    let recipe = dir.join("web.yaml");
    std::fs::write(
        &recipe,
        format!(
            "name: web\nversion: 1.0.0\nparent: busybox\nshell: sh\ncomponents:\n  - path: {}\n    parameters: {{ Port: \"{port}\" }}\nworking_directory: /opt/hello\nentrypoint: [\"/usr/local/bin/hello-service\"]\nport: {port}\n",
            component.display()
        ),
    )
    .unwrap();
    let out = ok(kiln(state, &["bake", recipe.to_str().unwrap()]));
    assert!(out.contains("available"), "{out}");
}

#[test]
fn secret_values_are_masked_in_every_listing_and_reach_the_instances() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = 18640;
    bake_web(dir.path(), &state, port);
    let mut daemon = Daemon::start(&state);

    // One secret on the command line, one from kiln's own environment.
    let create = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--state-dir")
        .arg(&state)
        .args(["templates", "create", "web", "--image", "web/1.0.0"])
        .args(["--env", "GREETING=hello", "--secret", "DB_PASSWORD=hunter2"])
        .args(["--secret", "API_KEY", "--output", "json"])
        .env("API_KEY", "s3cr3t-from-env")
        .output()
        .unwrap();
    let created = ok(create);
    let listed = ok(kiln(&state, &["templates", "ls", "--output", "json"]));
    let (_, raw) = call(
        address(&state),
        "GET",
        "/v1/templates",
        Some(&token(&state, "api-token")),
        None,
    );
    for shown in [&created, &listed, &raw.to_string()] {
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
    let t = &json_list(&listed)[0];
    assert_eq!(t["spec"]["env"]["GREETING"], "hello");
    assert_eq!(t["spec"]["secrets"]["DB_PASSWORD"], "***");
    assert_eq!(t["spec"]["secrets"]["API_KEY"], "***");

    // A name given both ways is refused.
    let out = kiln(
        &state,
        &[
            "templates",
            "create",
            "web",
            "--image",
            "web/1.0.0",
            "--env",
            "K=a",
            "--secret",
            "K=b",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("K is both in env and in secrets"), "{err}");

    // The instance receives the real values.
    ok(kiln(
        &state,
        &[
            "groups",
            "create",
            "web",
            "--template",
            "web",
            "--version",
            "1",
            "--port",
            &port.to_string(),
        ],
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let instance = loop {
        let g = json(kiln(
            &state,
            &["groups", "inspect", "web", "--output", "json"],
        ));
        if let Some(i) = g["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["state"] == "in-service")
        {
            break i.clone();
        }
        assert!(Instant::now() < deadline, "no instance in service: {g:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let init = instance["init_pid"].as_u64().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    let app = children.split_whitespace().next().unwrap();
    let environ = std::fs::read(format!("/proc/{app}/environ")).unwrap();
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    for expected in [
        "GREETING=hello",
        "DB_PASSWORD=hunter2",
        "API_KEY=s3cr3t-from-env",
    ] {
        assert!(vars.iter().any(|v| v == expected), "{expected}: {vars:?}");
    }
    daemon.destroy(&["web"]);
}

fn json_list(text: &str) -> Vec<Value> {
    serde_json::from_str(text).unwrap()
}
