//! schemathesis drives every operation of docs/openapi.json against a
//! running daemon, with the full token: no answer may be a server error,
//! break its documented schema, status or content type, accept input the
//! schema forbids, or ignore a missing token (`--checks all`, except that
//! schema-valid input must succeed: most inputs name a repository, image or
//! group that does not exist). The tool comes from scripts/deps.sh
//! (kiln_install_console_test_tools), pinned in its own venv.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Daemon, kiln, ok};

fn schemathesis() -> PathBuf {
    let venv = std::env::var_os("KILN_API_VENV").unwrap_or_else(|| "/opt/kiln-api-test".into());
    let bin = Path::new(&venv).join("bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run `source scripts/deps.sh && kiln_install_console_test_tools`",
        bin.display()
    );
    bin
}

fn run(bin: &Path, addr: &str, token: &str, extra: &[&str]) {
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let reports = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .current_dir(reports.path())
        .args(["run", doc, "--url", &format!("http://{addr}")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--request-timeout", "40", "--seed", "7", "--no-color"])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "schemathesis {extra:?} found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("Server error"), "{text}");
}

#[test]
fn every_operation_of_the_openapi_document_holds_against_the_running_daemon() {
    let bin = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(&state);
    // Something to find: a parameter with history.
    ok(kiln(&state, &["params", "put", "/app/Color", "blue"]));
    ok(kiln(&state, &["params", "put", "/app/Color", "green"]));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("daemon.json")).unwrap()).unwrap();
    let addr = info["address"].as_str().unwrap().to_string();
    let token = std::fs::read_to_string(state.join("api-token")).unwrap();
    // Streams last up to 30 s each: a few examples of those, many of the rest.
    let streams = "/(events|logs/stream)$";
    run(
        &bin,
        &addr,
        token.trim(),
        &["-n", "20", "--exclude-path-regex", streams],
    );
    run(
        &bin,
        &addr,
        token.trim(),
        &[
            "-n",
            "3",
            "--phases",
            "examples,fuzzing",
            "--include-path-regex",
            streams,
        ],
    );
    daemon.destroy(&[]);
}
