//! `reports` and `cache.paths` in real builds over a busybox root.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_build::buildspec;
use kiln_build::{BuildOptions, BuildReport, FileFormat, NoObserver};

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    source: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        kiln_sandbox::busybox::assemble(&root).unwrap();
        let source = dir.path().join("source");
        fs::create_dir_all(source.join("fixtures")).unwrap();
        Fixture { root, source, dir }
    }

    /// Runs `yaml` in workspace `name`, with the cache in `cache`.
    fn run(&self, yaml: &str, name: &str, cache: Option<&Path>) -> (BuildReport, String) {
        let ws = self.dir.path().join(name);
        let mut opts = BuildOptions::new(
            self.root.clone(),
            self.source.clone(),
            ws.clone(),
            self.dir.path().join(format!("{name}.out")),
        )
        .unwrap();
        opts.log_path = Some(ws.with_extension("log"));
        opts.cache_dir = cache.map(Path::to_path_buf);
        let spec =
            buildspec::parse(yaml, Path::new("buildspec.yml")).unwrap_or_else(|e| panic!("{e}"));
        let report = kiln_build::run(&spec, &opts, &mut NoObserver).unwrap();
        (
            report,
            fs::read_to_string(ws.with_extension("log")).unwrap(),
        )
    }
}

const JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="calc" tests="4">
    <testcase classname="calc.Add" name="adds_small_numbers"/>
    <testcase classname="calc.Add" name="overflows_cleanly"><failure message="expected 0, got 255">trace</failure></testcase>
    <testcase classname="calc.Div" name="by_zero"><error message="panicked"/></testcase>
    <testcase classname="calc.Div" name="later"><skipped/></testcase>
  </testsuite>
</testsuites>
"#;

const CUCUMBER: &str = r#"[{"name":"Login","elements":[
  {"type":"scenario","name":"good password","steps":[{"result":{"status":"passed"}}]},
  {"type":"scenario","name":"bad password","steps":[{"result":{"status":"passed"}},{"result":{"status":"failed","error_message":"expected 401\nat step 2"}}]}
]}]"#;

const TESTNG: &str = r#"<testng-results><suite name="s"><test name="t"><class name="app.Shop">
  <test-method status="PASS" name="setUp" is-config="true"/>
  <test-method status="PASS" name="buys"/>
  <test-method status="FAIL" name="refunds"><exception class="E"><message>no refund</message></exception></test-method>
  <test-method status="SKIP" name="ships"/>
</class></test></suite></testng-results>"#;

const NUNIT3: &str = r#"<test-run><test-suite>
  <test-case fullname="Lib.Tests.Parses" result="Passed"/>
  <test-case fullname="Lib.Tests.Rejects" result="Failed"><failure><message>bad input accepted</message></failure></test-case>
</test-suite></test-run>"#;

const TRX: &str = r#"<TestRun xmlns="http://microsoft.com/schemas/VisualStudio/TeamTest/2010"><Results>
  <UnitTestResult testName="Api.Gets" outcome="Passed"/>
  <UnitTestResult testName="Api.Posts" outcome="Failed"><Output><ErrorInfo><Message>500</Message></ErrorInfo></Output></UnitTestResult>
  <UnitTestResult testName="Api.Puts" outcome="NotExecuted"/>
</Results></TestRun>"#;

const COBERTURA: &str =
    r#"<coverage line-rate="0.75" branch-rate="0.5" version="1"><packages/></coverage>"#;

const REPORTS: &str = r#"version: 0.2
phases:
  build:
    commands:
      - mkdir -p reports/junit reports/other
      - cp fixtures/junit.xml reports/junit/TEST-calc.xml
      - cp fixtures/cucumber.json fixtures/testng.xml fixtures/nunit.xml fixtures/run.trx fixtures/coverage.xml reports/other/
      - TESTS_FAIL
reports:
  unit:
    files: ['**/*.xml']
    base-directory: reports/junit
  features:
    files: [reports/other/cucumber.json]
    file-format: CUCUMBERJSON
  ng:
    files: [reports/other/testng.xml]
    file-format: TESTNGXML
  nunit:
    files: [reports/other/nunit.xml]
    file-format: NUNIT3XML
  trx:
    files: [reports/other/run.trx]
    file-format: VISUALSTUDIOTRX
  coverage:
    files: [reports/other/coverage.xml]
    file-format: COBERTURAXML
  missing:
    files: [nowhere/*.xml]
"#;

fn write_fixtures(f: &Fixture) {
    for (name, text) in [
        ("junit.xml", JUNIT),
        ("cucumber.json", CUCUMBER),
        ("testng.xml", TESTNG),
        ("nunit.xml", NUNIT3),
        ("run.trx", TRX),
        ("coverage.xml", COBERTURA),
    ] {
        fs::write(f.source.join("fixtures").join(name), text).unwrap();
    }
}

fn failed_names(report: &BuildReport, group: &str) -> Vec<String> {
    let r = report.reports.iter().find(|r| r.group == group).unwrap();
    r.failed_tests.iter().map(|t| t.name.clone()).collect()
}

#[test]
fn reports_of_every_format_give_counts_and_failed_names_without_failing_the_build() {
    let f = Fixture::new();
    write_fixtures(&f);
    let (report, log) = f.run(&REPORTS.replace("TESTS_FAIL", "true"), "ws", None);
    // As on CodeBuild, failed tests in a report do not fail a build whose
    // commands succeeded.
    assert!(report.succeeded, "{log}");
    let get = |g: &str| report.reports.iter().find(|r| r.group == g).unwrap();
    let unit = get("unit");
    assert_eq!(unit.format, FileFormat::Junitxml);
    assert_eq!(
        (unit.total, unit.passed, unit.failed, unit.skipped),
        (4, 1, 2, 1)
    );
    assert_eq!(unit.status, "FAILED");
    assert_eq!(unit.files, ["reports/junit/TEST-calc.xml"]);
    assert_eq!(
        failed_names(&report, "unit"),
        ["calc.Add.overflows_cleanly", "calc.Div.by_zero"]
    );
    assert_eq!(unit.failed_tests[0].message, "expected 0, got 255");
    assert_eq!(failed_names(&report, "features"), ["Login: bad password"]);
    assert_eq!(get("features").failed_tests[0].message, "expected 401");
    assert_eq!(failed_names(&report, "ng"), ["app.Shop.refunds"]);
    assert_eq!((get("ng").total, get("ng").skipped), (3, 1));
    assert_eq!(failed_names(&report, "nunit"), ["Lib.Tests.Rejects"]);
    assert_eq!(failed_names(&report, "trx"), ["Api.Posts"]);
    assert_eq!((get("trx").passed, get("trx").skipped), (1, 1));
    let cov = get("coverage");
    assert_eq!(cov.kind, "CODE_COVERAGE");
    assert_eq!(cov.line_coverage, Some(75.0));
    assert_eq!(cov.status, "SUCCEEDED");
    assert_eq!(get("missing").status, "INCOMPLETE");
    assert!(
        log.contains(
            "Report group unit (JUNITXML): FAILED, 4 tests: 1 passed, 2 failed, 1 skipped"
        ),
        "{log}"
    );
    assert!(
        log.contains("failed: calc.Add.overflows_cleanly: expected 0, got 255"),
        "{log}"
    );
}

#[test]
fn a_failing_test_command_fails_the_build_and_its_report_is_still_collected() {
    let f = Fixture::new();
    write_fixtures(&f);
    let (report, log) = f.run(&REPORTS.replace("TESTS_FAIL", "exit 3"), "ws", None);
    assert!(!report.succeeded, "{log}");
    assert_eq!(
        failed_names(&report, "unit"),
        ["calc.Add.overflows_cleanly", "calc.Div.by_zero"]
    );
}

#[test]
fn a_report_with_a_dtd_is_incomplete_and_expands_nothing() {
    let f = Fixture::new();
    fs::write(
        f.source.join("fixtures/junit.xml"),
        r#"<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><testsuite><testcase name="&b;"/></testsuite>"#,
    )
    .unwrap();
    let yaml = "version: 0.2\nphases:\n  build:\n    commands: [true]\nreports:\n  unit:\n    files: [fixtures/junit.xml]\n";
    let (report, _) = f.run(yaml, "ws", None);
    assert!(report.succeeded);
    assert_eq!(report.reports[0].status, "INCOMPLETE");
    assert_eq!(report.reports[0].total, 0);
    assert!(
        report.reports[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("fixtures/junit.xml: ")
    );
}

const CACHED: &str = r#"version: 0.2
phases:
  install:
    commands:
      - |
        if [ ! -f deps/lib.txt ] || [ ! -f /root/.m2/repo.txt ]; then
          sleep 2
          mkdir -p deps/sub /root/.m2
          echo lib > deps/lib.txt
          echo sub > deps/sub/more.txt
          echo repo > /root/.m2/repo.txt
          echo fetched
        else
          echo from-cache
        fi
  build:
    commands:
      - cat deps/lib.txt /root/.m2/repo.txt
      - FAIL_HERE
cache:
  paths:
    - deps/**/*
    - /root/.m2/**/*
"#;

#[test]
fn cached_paths_come_back_in_the_next_build_and_the_time_saved_is_measured() {
    let f = Fixture::new();
    let cache = f.dir.path().join("cache");
    let yaml = CACHED.replace("FAIL_HERE", "true");
    let (first, log1) = f.run(&yaml, "ws1", Some(&cache));
    assert!(first.succeeded, "{log1}");
    assert!(log1.contains("fetched"), "{log1}");
    let c1 = first.cache.unwrap();
    assert_eq!(c1.restored_files, 0);
    assert_eq!(c1.saved_files, 3, "{log1}");
    assert!(c1.time_saved_ms.is_none());

    let (second, log2) = f.run(&yaml, "ws2", Some(&cache));
    assert!(second.succeeded, "{log2}");
    assert!(log2.contains("from-cache"), "{log2}");
    let c2 = second.cache.unwrap();
    assert_eq!(c2.restored_files, 3);
    assert!(log2.contains("Restored the cache: 3 files"), "{log2}");
    let saved = c2.time_saved_ms.unwrap();
    // The first build slept 2 s for what the second found in the cache;
    // how much of that shows as saved depends on the machine's load, so
    // only the accounting is held exact.
    let uncached = c2.uncached_phases_ms.unwrap();
    assert!(
        uncached >= 2000,
        "the uncached build took {uncached} ms: {log1}"
    );
    assert_eq!(
        saved,
        uncached as i64 - (c2.phases_ms + c2.restore_ms) as i64,
        "{c2:?}"
    );
    assert!(saved > 0, "saved {saved} ms: {log2}");
    assert!(log2.contains(&format!("{saved} ms saved")), "{log2}");
    eprintln!(
        "cache: uncached {} ms, cached {} ms, restore {} ms, saved {saved} ms",
        c2.uncached_phases_ms.unwrap(),
        c2.phases_ms,
        c2.restore_ms
    );
}

#[test]
fn a_failed_build_leaves_the_cache_as_it_was() {
    let f = Fixture::new();
    let cache = f.dir.path().join("cache");
    let (first, _) = f.run(&CACHED.replace("FAIL_HERE", "exit 1"), "ws1", Some(&cache));
    assert!(!first.succeeded);
    assert!(!cache.exists());
    assert_eq!(first.cache.unwrap().saved_files, 0);
}

#[test]
fn restoring_never_writes_through_a_symlink_in_the_source() {
    let f = Fixture::new();
    let cache = f.dir.path().join("cache");
    let yaml = CACHED.replace("FAIL_HERE", "true");
    let (first, log) = f.run(&yaml, "ws1", Some(&cache));
    assert!(first.succeeded, "{log}");
    // A later commit makes deps a link to a host directory.
    let host = f.dir.path().join("host-dir");
    fs::create_dir_all(&host).unwrap();
    std::os::unix::fs::symlink(&host, f.source.join("deps")).unwrap();
    let (second, _) = f.run(&yaml, "ws2", Some(&cache));
    assert_eq!(fs::read_dir(&host).unwrap().count(), 0);
    // Only /root/.m2/repo.txt came back.
    assert_eq!(second.cache.unwrap().restored_files, 1);
}
