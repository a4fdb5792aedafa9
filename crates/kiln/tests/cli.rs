//! The `kiln toe` commands as a user runs them: exit codes, messages and
//! JSON output.

mod common;

use common::{kiln, ok};
use std::path::{Path, PathBuf};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-service.yaml")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_reports_file_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: A\n        action: ExecuteBassh\n").unwrap();
    let out = kiln(
        dir.path(),
        &[
            "toe",
            "validate",
            example().to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("hello-service.yaml: valid"));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:6:17: phases[build].steps[A].action: unknown action module \"ExecuteBassh\"",
            bad.display()
        )),
        "{err}"
    );

    let out = kiln(
        dir.path(),
        &["toe", "validate", "--output", "json", bad.to_str().unwrap()],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["valid"], false);
    assert_eq!(json[0]["errors"][0]["line"], 6);
    assert_eq!(
        json[0]["errors"][0]["field"],
        "phases[build].steps[A].action"
    );
}

#[test]
fn validate_warns_on_what_awstoe_accepts_and_strict_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("smoke.yaml");
    std::fs::write(&doc, "name: smoke\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Rm\n        action: DeleteFile\n        inputs:\n          - path: /tmp/x\n            force: true\n  - name: smoke\n    steps:\n      - name: A\n        action: ExecuteBash\n        inputs:\n          commands: [echo ok]\n").unwrap();
    let path = doc.to_str().unwrap();
    let out = kiln(dir.path(), &["toe", "validate", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("valid (2 phases, 2 steps, 2 warnings)"));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "warning: {path}:10:13: phases[build].steps[Rm].inputs[0].force: DeleteFile has no input \"force\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "warning: {path}:11:11: phases[smoke].name: not a phase Image Builder runs"
        )),
        "{err}"
    );

    let out = kiln(dir.path(), &["toe", "validate", "--strict", path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&format!("{path}:10:13: ")));

    let out = kiln(dir.path(), &["toe", "validate", "--output", "json", path]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["valid"], true);
    assert_eq!(json[0]["warnings"][1]["line"], 11);
}

#[test]
fn run_executes_the_example_in_a_busybox_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln(
        dir.path(),
        &[
            "toe",
            "run",
            example().to_str().unwrap(),
            "--root",
            "busybox",
            "--shell",
            "sh",
            "--parameters",
            "Port=18181",
            "--output",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"], "success");
    assert_eq!(json["executedStepCount"], 10);
    let log = PathBuf::from(json["logUrl"].as_str().unwrap());
    assert!(log.starts_with(dir.path().join("toe/logs")));
    assert!(log.join("detailedoutput.json").exists());
}

#[test]
fn a_failed_step_fails_the_command_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln(
        dir.path(),
        &[
            "toe",
            "run",
            example().to_str().unwrap(),
            "--root",
            "busybox",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("phase validate, step CheckStartScript (ExecuteBash) failed")
            && err.contains("/bin/bash"),
        "{err}"
    );
}

#[test]
fn overlay_mode_keeps_the_root_and_reports_the_upper_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    kiln_sandbox::busybox::assemble(&root).unwrap();
    let upper = dir.path().join("changes");
    let out = kiln(
        &dir.path().join("state"),
        &[
            "toe",
            "run",
            example().to_str().unwrap(),
            "--phases",
            "build,validate",
            "--root",
            root.to_str().unwrap(),
            "--overlay",
            "--upper",
            upper.to_str().unwrap(),
            "--shell",
            "sh",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("changes (upper directory): {}", upper.display())));
    assert!(upper.join("opt/hello/www/index.html").exists());
    assert!(
        !root.join("opt/hello").exists(),
        "the root itself is untouched"
    );
}

#[test]
fn bad_arguments_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln(
        dir.path(),
        &[
            "toe",
            "run",
            example().to_str().unwrap(),
            "--root",
            "/nonexistent-root",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent-root: not a directory"));
    let out = kiln(
        dir.path(),
        &[
            "toe",
            "run",
            example().to_str().unwrap(),
            "--root",
            "busybox",
            "--parameters",
            "Port=",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("NAME=VALUE"));
}

#[test]
fn params_keep_every_version() {
    let dir = tempfile::tempdir().unwrap();
    ok(kiln(
        dir.path(),
        &["params", "put", "/demo/ImageVersion", "1.0.0"],
    ));
    assert_eq!(
        ok(kiln(
            dir.path(),
            &["params", "put", "/demo/ImageVersion", "1.0.1"]
        ))
        .trim(),
        "/demo/ImageVersion version 2"
    );
    assert_eq!(
        ok(kiln(dir.path(), &["params", "get", "/demo/ImageVersion"])).trim(),
        "1.0.1"
    );
    let history: serde_json::Value = serde_json::from_str(&ok(kiln(
        dir.path(),
        &[
            "params",
            "history",
            "/demo/ImageVersion",
            "--output",
            "json",
        ],
    )))
    .unwrap();
    let values: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["1.0.0", "1.0.1"]);
    ok(kiln(dir.path(), &["params", "rm", "/demo/ImageVersion"]));
    let missing = kiln(dir.path(), &["params", "get", "/demo/ImageVersion"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("parameter \"/demo/ImageVersion\" does not exist")
    );
}
