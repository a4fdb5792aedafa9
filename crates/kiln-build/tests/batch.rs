//! Batch builds over a busybox root: a graph runs in the order of its
//! dependencies, a failed build stops the builds that depend on it, and
//! fast-fail stops the rest; independent builds run at the same time.

use std::fs;
use std::path::Path;

use kiln_build::batch::{self, BatchReport};
use kiln_build::{BuildOptions, NoObserver, buildspec};

fn run(yaml: &str, extra: &[(&str, &str)]) -> (BatchReport, String, tempfile::TempDir) {
    run_parallel(yaml, extra, 1)
}

/// As [`run`], with up to `parallel` builds at once.
fn run_parallel(
    yaml: &str,
    extra: &[(&str, &str)],
    parallel: usize,
) -> (BatchReport, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    kiln_sandbox::busybox::assemble(&root).unwrap();
    let source = dir.path().join("source");
    fs::create_dir_all(&source).unwrap();
    for (name, text) in extra {
        fs::write(source.join(name), text).unwrap();
    }
    let mut opts =
        BuildOptions::new(root, source, dir.path().join("ws"), dir.path().join("out")).unwrap();
    opts.log_path = Some(dir.path().join("build.log"));
    opts.batch_parallel = parallel;
    let spec = buildspec::parse(yaml, Path::new("buildspec.yml")).unwrap_or_else(|e| panic!("{e}"));
    let report = batch::run(&spec, &opts, &mut NoObserver).unwrap();
    let log = fs::read_to_string(dir.path().join("build.log")).unwrap();
    (report, log, dir)
}

fn statuses(r: &BatchReport) -> Vec<(String, String)> {
    r.tasks
        .iter()
        .map(|t| (t.identifier.clone(), t.status.clone()))
        .collect()
}

const GRAPH: &str = r#"version: 0.2
batch:
  fast-fail: FAST
  build-graph:
    - identifier: package
      depend-on: [compile, lint]
    - identifier: compile
      env:
        variables: { STEP: compile }
    - identifier: lint
      env:
        variables: { STEP: lint }
    - identifier: docs
      env:
        variables: { STEP: docs }
phases:
  build:
    commands:
      - echo "$CODEBUILD_BATCH_BUILD_IDENTIFIER ${STEP:-package}" > out.txt
      - test "$STEP" != lint
artifacts:
  files: [out.txt]
"#;

#[test]
fn a_failed_dependency_stops_its_dependents_and_the_others_run() {
    let (report, log, dir) = run_parallel(&GRAPH.replace("FAST", "false"), &[], 4);
    assert!(!report.succeeded);
    // In dependency order: package after compile and lint.
    assert_eq!(
        statuses(&report),
        [
            ("compile".into(), "SUCCEEDED".into()),
            ("lint".into(), "FAILED".into()),
            ("package".into(), "NOT_RUN".into()),
            ("docs".into(), "SUCCEEDED".into()),
        ]
    );
    let package = &report.tasks[2];
    assert_eq!(
        package.message.as_deref(),
        Some("it depends on build lint, which did not succeed")
    );
    assert!(package.build.is_none());
    assert_eq!(
        fs::read_to_string(dir.path().join("out/compile/out.txt")).unwrap(),
        "compile compile\n"
    );
    assert!(!dir.path().join("out/package").exists());
    assert!(log.contains("Batch build docs"), "{log}");
}

#[test]
fn fast_fail_runs_nothing_after_a_failure() {
    // One build at a time: what has not started when lint fails never does.
    let (report, _, _dir) = run(&GRAPH.replace("FAST", "true"), &[]);
    assert!(!report.succeeded);
    assert_eq!(
        statuses(&report),
        [
            ("compile".into(), "SUCCEEDED".into()),
            ("lint".into(), "FAILED".into()),
            ("package".into(), "NOT_RUN".into()),
            ("docs".into(), "NOT_RUN".into()),
        ]
    );
    assert!(
        report.tasks[3]
            .message
            .as_deref()
            .unwrap()
            .contains("fast-fail")
    );
}

#[test]
fn a_matrix_builds_every_combination_and_a_list_takes_other_buildspecs() {
    let (report, _, dir) = run_parallel(
        r#"version: 0.2
batch:
  build-matrix:
    static:
      ignore-failure: false
      env:
        variables: { KIND: matrix }
    dynamic:
      env:
        variables:
          OS: [linux, bsd]
          ARCH: [amd64, arm64]
phases:
  build:
    commands: ['echo "$KIND $OS $ARCH" > out.txt']
artifacts:
  files: [out.txt]
"#,
        &[],
        4,
    );
    assert!(report.succeeded, "{report:?}");
    let outs: Vec<String> = report
        .tasks
        .iter()
        .map(|t| {
            fs::read_to_string(dir.path().join("out").join(&t.identifier).join("out.txt")).unwrap()
        })
        .collect();
    assert_eq!(
        outs,
        [
            "matrix linux amd64\n",
            "matrix linux arm64\n",
            "matrix bsd amd64\n",
            "matrix bsd arm64\n"
        ]
    );
    // As one build: the artifacts combined under each identifier.
    let one = report.as_build();
    let paths: Vec<&str> = one
        .artifacts
        .as_ref()
        .unwrap()
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "matrix1/out.txt",
            "matrix2/out.txt",
            "matrix3/out.txt",
            "matrix4/out.txt"
        ]
    );

    let (report, _, _dir) = run(
        "version: 0.2\nbatch:\n  build-list:\n    - identifier: other\n      buildspec: other.yml\n    - identifier: flaky\n      ignore-failure: true\n      buildspec: flaky.yml\n",
        &[
            (
                "other.yml",
                "version: 0.2\nphases:\n  build:\n    commands: [true]\n",
            ),
            (
                "flaky.yml",
                "version: 0.2\nphases:\n  build:\n    commands: [false]\n",
            ),
        ],
    );
    // A failure that may be ignored leaves the batch succeeding.
    assert!(report.succeeded, "{report:?}");
    assert_eq!(report.tasks[1].status, "FAILED");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn independent_builds_run_at_the_same_time() {
    // Each build can finish only while the other runs: the listener waits
    // for the sender's message, the sender for the listener to be there.
    // One after the other, the first would time out. (The listener hands
    // the connection to `cat`, which reads until the sender is done.)
    let port = free_port();
    let (report, log, dir) = run_parallel(
        &format!(
            r#"version: 0.2
batch:
  build-list:
    - identifier: listener
      env:
        variables: {{ ROLE: listen }}
    - identifier: sender
      env:
        variables: {{ ROLE: send }}
phases:
  build:
    commands:
      - |
        if [ "$ROLE" = listen ]; then
          timeout 60 nc -l -p {port} -e sh -c 'cat > heard.txt' && grep -q from-sender heard.txt
        else
          timeout 60 sh -c 'until echo from-sender | nc 127.0.0.1 {port}; do sleep 0.1; done' && echo sent > sent.txt
        fi
artifacts:
  files: ["*.txt"]
"#
        ),
        &[],
        2,
    );
    assert!(report.succeeded, "{log}");
    assert_eq!(
        statuses(&report),
        [
            ("listener".into(), "SUCCEEDED".into()),
            ("sender".into(), "SUCCEEDED".into()),
        ]
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("out/listener/heard.txt")).unwrap(),
        "from-sender\n"
    );
    // Each build's log is whole, under its own heading.
    for id in ["listener", "sender"] {
        let at = log.find(&format!("Batch build {id}\n")).unwrap();
        assert!(
            log[at..].contains("Phase complete: BUILD State: SUCCEEDED"),
            "{log}"
        );
    }
}

#[test]
fn fast_fail_stops_the_builds_still_running() {
    let (report, _, _dir) = run_parallel(
        r#"version: 0.2
batch:
  fast-fail: true
  build-list:
    - identifier: forever
      env:
        variables: { ROLE: wait }
    - identifier: broken
      env:
        variables: { ROLE: fail }
phases:
  build:
    commands:
      - 'if [ "$ROLE" = wait ]; then while true; do sleep 1; done; else exit 3; fi'
"#,
        &[],
        2,
    );
    assert!(!report.succeeded);
    assert_eq!(
        statuses(&report),
        [
            ("forever".into(), "STOPPED".into()),
            ("broken".into(), "FAILED".into()),
        ]
    );
    assert_eq!(
        report.tasks[0].message.as_deref(),
        Some("fast-fail: build broken failed, and the batch stopped it")
    );
}
