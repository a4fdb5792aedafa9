//! Buildspec features real files use, through a pipeline: test reports
//! shown by `kiln executions show`, and `cache.paths` kept from one
//! execution to the next.

use super::common::*;
use super::support::*;

const JUNIT_FAILING: &str = r#"<testsuite name="app"><testcase classname="app.Version" name="is_set"/><testcase classname="app.Version" name="is_semver"><failure message="first is not a version"/></testcase><testcase classname="app.Http" name="serves"><error message="connection refused"/></testcase></testsuite>"#;

const JUNIT_PASSING: &str =
    r#"<testsuite name="app"><testcase classname="app.Version" name="is_set"/></testsuite>"#;

/// Runs the suite in `tests.xml` (copied as its report), failing when it
/// has a failure; fetches `deps` slowly unless the cache has them.
const BUILDSPEC: &str = r#"version: 0.2
phases:
  install:
    commands:
      - if [ -f deps/lib.txt ]; then echo deps from the cache; else sleep 2; mkdir -p deps; echo lib > deps/lib.txt; fi
  build:
    commands:
      - mkdir -p out test-results
      - cp VERSION out/VERSION
      - cp tests.xml test-results/TEST-app.xml
      - "! grep -q -e '<failure' -e '<error' tests.xml"
reports:
  unit-tests:
    files: ['**/*.xml']
    base-directory: test-results
cache:
  paths: ['deps/**/*']
artifacts:
  base-directory: out
  files: ['**/*']
"#;

#[test]
fn a_failing_suite_shows_its_tests_and_a_second_build_restores_the_cache() {
    let s = Setup::new(&kiln_yaml("tested", ""), BUILDSPEC, &component(0));
    let (state, repo) = (&s.state, &s.repo);
    std::fs::write(repo.dir.join("tests.xml"), JUNIT_FAILING).unwrap();
    git(&repo.dir, &["add", "tests.xml"]);
    git(&repo.dir, &["commit", "--quiet", "-m", "tests"]);
    s.create(&["--no-start"]);

    let id = trigger(state, "tested");
    let failed = finished(state, &id);
    assert_eq!(failed["status"], "Failed", "{failed}");
    assert_eq!(stage(&failed, "Build")["status"], "Failed", "{failed}");
    let report = &failed["outputs"]["build_reports"][0];
    assert_eq!(report["group"], "unit-tests", "{failed}");
    assert_eq!(report["status"], "FAILED");
    assert_eq!(
        (report["total"].as_u64(), report["failed"].as_u64()),
        (Some(3), Some(2))
    );
    let text = ok(kiln(state, &["executions", "show", &id]));
    assert!(
        text.contains("unit-tests (JUNITXML) FAILED: 3 tests: 1 passed, 2 failed, 0 skipped"),
        "{text}"
    );
    assert!(
        text.contains("failed: app.Version.is_semver: first is not a version"),
        "{text}"
    );
    assert!(
        text.contains("failed: app.Http.serves: connection refused"),
        "{text}"
    );
    // A failed build keeps no cache.
    assert!(text.contains("saved 0 files"), "{text}");

    repo.commit("tests.xml", JUNIT_PASSING, "fixed");
    let cold = finished(state, &trigger(state, "tested"));
    assert_eq!(cold["status"], "Succeeded", "{cold}");
    assert_eq!(cold["outputs"]["build_cache"]["saved_files"], 1, "{cold}");
    assert!(
        stage(&cold, "Build")["summary"]
            .as_str()
            .unwrap()
            .ends_with("; 1 tests, 0 failed"),
        "{cold}"
    );

    let id = trigger(state, "tested");
    let warm = finished(state, &id);
    assert_eq!(warm["status"], "Succeeded", "{warm}");
    let cache = &warm["outputs"]["build_cache"];
    assert_eq!(cache["restored_files"], 1, "{warm}");
    let saved = cache["time_saved_ms"].as_i64().unwrap();
    assert!(saved > 1500, "{warm}");
    let text = ok(kiln(state, &["executions", "show", &id]));
    assert!(
        text.contains(&format!(
            "cache     restored 1 files (4 bytes), saved 1 files; {saved} ms saved"
        )),
        "{text}"
    );
    let log = ok(kiln(
        state,
        &["executions", "logs", &id, "--stage", "Build"],
    ));
    assert!(log.contains("deps from the cache"), "{log}");
    assert!(
        log.contains("Restored the cache: 1 files, 4 bytes"),
        "{log}"
    );
    assert!(log.contains(&format!("{saved} ms saved")), "{log}");
    eprintln!("pipeline cache: {cache}");
    s.finish("tested");
}

/// compile and lint run; package depends on both, and lint fails.
const GRAPH: &str = r#"version: 0.2
batch:
  build-graph:
    - identifier: package
      depend-on: [compile, lint]
    - identifier: compile
    - identifier: lint
      env:
        variables: { LINT: strict }
phases:
  build:
    commands:
      - mkdir -p out
      - echo "$CODEBUILD_BATCH_BUILD_IDENTIFIER" > out/VERSION
      - test "$LINT" != strict
artifacts:
  base-directory: out
  files: ['**/*']
"#;

#[test]
fn a_batch_graph_with_a_failing_dependency_stops_its_dependents() {
    let s = Setup::new(&kiln_yaml("batched", ""), GRAPH, &component(0));
    let state = &s.state;
    s.create(&["--no-start"]);
    let id = trigger(state, "batched");
    let e = finished(state, &id);
    assert_eq!(e["status"], "Failed", "{e}");
    let build = stage(&e, "Build");
    assert_eq!(build["status"], "Failed", "{e}");
    let summary = build["summary"].as_str().unwrap();
    assert!(summary.contains("build lint FAILED"), "{summary}");
    assert!(
        summary.contains("build package NOT_RUN: it depends on build lint, which did not succeed"),
        "{summary}"
    );
    assert!(!summary.contains("compile"), "{summary}");
    let log = ok(kiln(
        state,
        &["executions", "logs", &id, "--stage", "Build"],
    ));
    assert!(
        log.contains("Batch build compile") && log.contains("Batch build lint"),
        "{log}"
    );
    assert!(!log.contains("Batch build package"), "{log}");
    s.finish("batched");
}

/// Prints the secret and a SecureString parameter, as a careless build
/// does, and writes them in exported variables.
const SECRET_SPEC: &str = r#"version: 0.2
env:
  secrets-manager:
    DB_PASSWORD: prod/db:password
  parameter-store:
    API_KEY: /prod/api-key
    REGION: /prod/region
  exported-variables: [DB_PASSWORD, API_KEY]
phases:
  build:
    commands:
      - echo "connecting with $DB_PASSWORD"
      - echo "calling with $API_KEY in $REGION"
      - mkdir -p out
      - cp VERSION out/VERSION
artifacts:
  base-directory: out
  files: ['**/*']
"#;

#[test]
fn a_secret_and_a_secure_parameter_reach_the_build_and_never_show() {
    let s = Setup::new(&kiln_yaml("secretive", ""), SECRET_SPEC, &component(0));
    let state = &s.state;
    let mut put = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "secrets",
            "put",
            "prod/db",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    put.stdin
        .take()
        .unwrap()
        .write_all(br#"{"password":"Tr0ub4dor-and-3"}"#)
        .unwrap();
    assert!(put.wait().unwrap().success());
    let listed = ok(kiln(state, &["secrets", "ls"]));
    assert_eq!(listed, "prod/db\n");
    ok(kiln(
        state,
        &[
            "params",
            "put",
            "/prod/api-key",
            "k3y-9d8e-secure",
            "--type",
            "SecureString",
        ],
    ));
    ok(kiln(state, &["params", "put", "/prod/region", "eu-west-1"]));
    // Listings leave a SecureString's value out unless asked.
    assert_eq!(
        ok(kiln(state, &["params", "get", "/prod/api-key"])),
        "***\n"
    );
    assert_eq!(
        ok(kiln(
            state,
            &["params", "get", "/prod/api-key", "--with-decryption"]
        )),
        "k3y-9d8e-secure\n"
    );
    s.create(&["--no-start"]);
    let id = trigger(state, "secretive");
    let e = finished(state, &id);
    assert_eq!(e["status"], "Succeeded", "{e}");
    let log = ok(kiln(
        state,
        &["executions", "logs", &id, "--stage", "Build"],
    ));
    assert!(log.contains("connecting with ***"), "{log}");
    assert!(log.contains("calling with *** in eu-west-1"), "{log}");
    for shown in [
        log,
        ok(kiln(state, &["executions", "show", &id])),
        ok(kiln(
            state,
            &["executions", "show", &id, "--output", "json"],
        )),
        ok(kiln(state, &["secrets", "ls", "--output", "json"])),
        ok(kiln(state, &["params", "ls", "--output", "json"])),
        ok(kiln(state, &["params", "history", "/prod/api-key"])),
    ] {
        assert!(!shown.contains("Tr0ub4dor"), "{shown}");
        assert!(!shown.contains("k3y-9d8e"), "{shown}");
    }
    assert_eq!(e["variables"]["BuildVariables"]["DB_PASSWORD"], "***");
    assert_eq!(e["variables"]["BuildVariables"]["API_KEY"], "***");
    ok(kiln(state, &["secrets", "rm", "prod/db"]));
    assert_eq!(ok(kiln(state, &["secrets", "ls"])), "");
    s.finish("secretive");
}
