//! Real builds in a bubblewrap sandbox over a busybox root. They need
//! bwrap and a static busybox on the host, and run as root or with
//! unprivileged user namespaces.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_build::buildspec;
use kiln_build::{BuildOptions, BuildReport, NoObserver, PhaseName, PhaseStatus};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    source: PathBuf,
    workspace: PathBuf,
    out: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        kiln_sandbox::busybox::assemble(&root).unwrap();
        let source = dir.path().join("source");
        fs::create_dir_all(source.join("lib")).unwrap();
        fs::write(source.join("app.txt"), "app source\n").unwrap();
        fs::write(source.join("lib/util.txt"), "util\n").unwrap();
        Fixture {
            workspace: dir.path().join("ws"),
            out: dir.path().join("out"),
            root,
            source,
            _dir: dir,
        }
    }

    fn options(&self) -> BuildOptions {
        let mut opts = BuildOptions::new(
            self.root.clone(),
            self.source.clone(),
            self.workspace.clone(),
            self.out.clone(),
        )
        .unwrap();
        opts.env = vec![
            ("CODEBUILD_RESOLVED_SOURCE_VERSION".into(), "abc123".into()),
            ("CODEBUILD_BUILD_ID".into(), "demo:1".into()),
        ];
        opts.log_path = Some(self.workspace.with_extension("log"));
        opts
    }

    fn run(&self, yaml: &str) -> BuildReport {
        self.run_with(yaml, &self.options())
    }

    fn run_with(&self, yaml: &str, opts: &BuildOptions) -> BuildReport {
        let spec =
            buildspec::parse(yaml, Path::new("buildspec.yml")).unwrap_or_else(|e| panic!("{e}"));
        kiln_build::run(&spec, opts, &mut NoObserver).unwrap()
    }

    fn src(&self, rel: &str) -> String {
        fs::read_to_string(self.workspace.join("src").join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.workspace.with_extension("log")).unwrap()
    }
}

fn phase(report: &BuildReport, name: PhaseName) -> &kiln_build::PhaseReport {
    report.phases.iter().find(|p| p.phase == name).unwrap()
}

#[test]
fn a_build_carries_env_and_cwd_and_collects_artifacts() {
    let f = Fixture::new();
    let report = f.run(
        r#"
version: 0.2
env:
  variables:
    GREETING: hello
  exported-variables: [BUILT_VERSION, NEVER_SET]
phases:
  install:
    runtime-versions:
      nodejs: 20
    commands:
      - export FROM_INSTALL="from install"
  pre_build:
    commands:
      - mkdir -p dist/site/js
      - cd dist
  build:
    commands:
      - echo "$GREETING $FROM_INSTALL" > site/index.html
      - BUILT_VERSION=1.2.3
      - echo "$BUILT_VERSION $CODEBUILD_RESOLVED_SOURCE_VERSION" > site/js/version.txt
      - cat "$CODEBUILD_SRC_DIR/app.txt" > site/js/app.js
      - pwd > site/pwd.txt
  post_build:
    commands:
      - echo "$CODEBUILD_BUILD_SUCCEEDING" > site/succeeding
artifacts:
  name: site
  base-directory: dist/site
  files:
    - '**/*'
  discard-paths: yes
"#,
    );
    assert!(report.succeeded, "{report:#?}\n{}", f.log());
    assert_eq!(f.src("dist/site/index.html"), "hello from install\n");
    assert_eq!(f.src("dist/site/js/version.txt"), "1.2.3 abc123\n");
    assert_eq!(f.src("dist/site/pwd.txt"), "/codebuild/output/src/dist\n");
    assert_eq!(f.src("dist/site/succeeding"), "1\n");
    assert_eq!(
        report.exported,
        [("BUILT_VERSION".to_string(), "1.2.3".to_string())]
    );
    assert_eq!(report.build_id, "demo:1");
    let set = report.artifacts.unwrap();
    let names: Vec<&str> = set.files.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "app.js",
            "index.html",
            "pwd.txt",
            "succeeding",
            "version.txt"
        ]
    );
    assert_eq!(
        fs::read_to_string(f.out.join("app.js")).unwrap(),
        "app source\n"
    );
    assert!(set.digest.starts_with("sha256:") && set.digest.len() == 71);
    assert_eq!(set.name.as_deref(), Some("site"));
    let log = f.log();
    assert!(log.contains("Entering phase BUILD"), "{log}");
    assert!(log.contains("Running command BUILT_VERSION=1.2.3"), "{log}");
    assert!(report.notes.iter().any(|n| n.contains("runtime-versions")));
    // The caller's source is untouched.
    assert!(!f.source.join("dist").exists());
}

#[test]
fn a_failing_build_command_fails_the_phase_and_post_build_still_runs() {
    let f = Fixture::new();
    let report = f.run(
        r#"
version: 0.2
phases:
  pre_build:
    commands:
      - echo pre > pre
  build:
    commands:
      - echo one > one
      - "false"
      - echo never > never
    finally:
      - echo fin > fin
  post_build:
    commands:
      - echo "$CODEBUILD_BUILD_SUCCEEDING" > post
artifacts:
  files: [one, post]
"#,
    );
    assert!(!report.succeeded);
    let build = phase(&report, PhaseName::Build);
    assert_eq!(build.status, PhaseStatus::Failed);
    assert_eq!(build.failed_command.as_deref(), Some("false"));
    assert_eq!(build.exit_code, Some(1));
    assert_eq!(
        phase(&report, PhaseName::PostBuild).status,
        PhaseStatus::Succeeded
    );
    assert_eq!(f.src("one"), "one\n");
    assert_eq!(f.src("fin"), "fin\n");
    assert_eq!(f.src("post"), "0\n");
    assert!(!f.workspace.join("src/never").exists());
    // UPLOAD_ARTIFACTS is attempted after a failed build phase.
    assert_eq!(report.artifacts.unwrap().files.len(), 2);
    assert!(f.log().contains("Error while executing command: false"));
}

#[test]
fn a_failing_install_skips_everything_after_it() {
    let f = Fixture::new();
    let report = f.run(
        "version: 0.2\nphases:\n  install:\n    commands: [exit 3]\n    finally: [echo fin > fin]\n  build:\n    commands: [echo b > b]\n  post_build:\n    commands: [echo p > p]\nartifacts:\n  files: ['*']\n",
    );
    assert!(!report.succeeded);
    let install = phase(&report, PhaseName::Install);
    assert_eq!(install.status, PhaseStatus::Failed, "{install:?}");
    assert_eq!(
        phase(&report, PhaseName::Build).status,
        PhaseStatus::Skipped
    );
    assert_eq!(
        phase(&report, PhaseName::PostBuild).status,
        PhaseStatus::Skipped
    );
    assert!(!f.workspace.join("src/b").exists());
    assert!(report.artifacts.is_none());
}

#[test]
fn on_failure_continue_runs_the_next_phase_but_fails_the_build() {
    let f = Fixture::new();
    let report = f.run(
        "version: 0.2\nphases:\n  pre_build:\n    on-failure: CONTINUE\n    commands: ['false']\n    finally: ['false', echo never > never]\n  build:\n    commands: [echo \"$CODEBUILD_BUILD_SUCCEEDING\" > b]\n",
    );
    assert!(!report.succeeded);
    let pre = phase(&report, PhaseName::PreBuild);
    assert_eq!(pre.status, PhaseStatus::Failed);
    assert!(!pre.in_finally);
    assert!(!f.workspace.join("src/never").exists());
    assert_eq!(
        phase(&report, PhaseName::Build).status,
        PhaseStatus::Succeeded
    );
    assert_eq!(f.src("b"), "0\n");
}

#[test]
fn a_build_can_write_only_its_workspace() {
    let f = Fixture::new();
    let listing = |p: &Path| {
        let mut v: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let before = listing(&f.root);
    let etc_before = listing(&f.root.join("etc"));
    let report = f.run(
        r#"
version: 0.2
phases:
  build:
    on-failure: CONTINUE
    commands:
      - echo evil >> /etc/passwd
  post_build:
    commands:
      - if touch /newfile 2>/dev/null; then echo wrote-root > result; fi
      - if touch /bin/newfile 2>/dev/null; then echo wrote-bin >> result; fi
      - echo scratch > /tmp/scratch && echo tmp-ok >> result
      - echo ok >> result
"#,
    );
    assert_eq!(phase(&report, PhaseName::Build).status, PhaseStatus::Failed);
    assert_eq!(f.src("result"), "tmp-ok\nok\n");
    assert!(f.log().contains("Read-only file system"), "{}", f.log());
    assert_eq!(listing(&f.root), before);
    assert_eq!(listing(&f.root.join("etc")), etc_before);
    assert!(
        !fs::read_to_string(f.root.join("etc/passwd"))
            .unwrap_or_default()
            .contains("evil")
    );
}

#[test]
fn parse_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buildspec.yml");
    fs::write(&path, "version: 0.2\nphases:\n  build:\n    commands:\n      - make\n    on-failure: MAYBE\nartifacts:\n  file: [x]\n").unwrap();
    let err = buildspec::load(&path).unwrap_err().to_string();
    let p = path.display();
    assert!(
        err.contains(&format!(
            "{p}:6:17: phases.build.on-failure: must be ABORT or CONTINUE"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:8:3: artifacts.file: unknown key")),
        "{err}"
    );
}

#[test]
fn parameter_store_variables_come_from_the_callback() {
    let f = Fixture::new();
    let mut opts = f.options();
    opts.parameters = Some(Arc::new(|name: &str| {
        (name == "/demo/ImageVersion").then(|| kiln_build::ParameterValue {
            value: "1.0.7".to_string(),
            secure: false,
        })
    }));
    let report = f.run_with(
        "version: 0.2\nenv:\n  parameter-store:\n    IMAGE_VERSION: /demo/ImageVersion\nphases:\n  build:\n    commands: [echo \"$IMAGE_VERSION\" > v]\n",
        &opts,
    );
    assert!(report.succeeded);
    assert_eq!(f.src("v"), "1.0.7\n");

    let spec = buildspec::parse(
        "version: 0.2\nenv:\n  parameter-store:\n    X: /missing\nphases:\n  build:\n    commands: [true]\n",
        Path::new("buildspec.yml"),
    )
    .unwrap();
    let err = kiln_build::run(&spec, &opts, &mut NoObserver).unwrap_err();
    assert!(err.to_string().contains("/missing"), "{err}");
}

#[test]
fn version_01_runs_every_command_in_its_own_shell() {
    let f = Fixture::new();
    let report = f.run(
        "version: 0.1\nphases:\n  build:\n    commands:\n      - mkdir d\n      - cd d\n      - pwd > where\n",
    );
    assert!(report.succeeded, "{report:?}");
    assert_eq!(f.src("where"), "/codebuild/output/src\n");
}

#[test]
fn a_build_is_killed_at_its_timeout() {
    let f = Fixture::new();
    let mut opts = f.options();
    opts.timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let report = f.run_with(
        "version: 0.2\nphases:\n  build:\n    commands: [sleep 30]\n  post_build:\n    commands: [echo p > p]\n",
        &opts,
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!report.succeeded);
    assert_eq!(
        phase(&report, PhaseName::Build).status,
        PhaseStatus::TimedOut
    );
    assert_eq!(
        phase(&report, PhaseName::PostBuild).status,
        PhaseStatus::Skipped
    );
}

#[test]
fn bash_carries_state_across_phases_too() {
    let f = Fixture::new();
    kiln_sandbox::busybox::add_host_program(&f.root, Path::new("/bin/bash")).unwrap();
    let report = f.run(
        r#"
version: 0.2
env:
  shell: bash
  exported-variables: [QUOTED]
phases:
  pre_build:
    commands:
      - QUOTED="it's \"quoted\" $HOME"
      - mkdir -p out && cd out
  build:
    commands:
      - printf '%s\n' "$QUOTED" "${BASH_VERSION:+bash}" > got
"#,
    );
    assert!(report.succeeded, "{report:?}\n{}", f.log());
    assert_eq!(f.src("out/got"), "it's \"quoted\" /root\nbash\n");
    assert_eq!(
        report.exported,
        [("QUOTED".to_string(), "it's \"quoted\" /root".to_string())]
    );
}

#[derive(Default)]
struct Recorder {
    events: Vec<String>,
}

impl kiln_build::BuildObserver for Recorder {
    fn phase_started(&mut self, phase: PhaseName) {
        self.events.push(format!("start {phase}"));
    }
    fn output(&mut self, line: &str) {
        self.events.push(format!("out {line}"));
    }
    fn phase_finished(&mut self, report: &kiln_build::PhaseReport) {
        self.events
            .push(format!("end {} {:?}", report.phase, report.status));
    }
}

#[test]
fn the_observer_hears_phases_and_output() {
    let f = Fixture::new();
    let spec = buildspec::parse(
        "version: 0.2\nphases:\n  build:\n    commands: [echo hi]\n",
        Path::new("buildspec.yml"),
    )
    .unwrap();
    let mut rec = Recorder::default();
    let report = kiln_build::run(&spec, &f.options(), &mut rec).unwrap();
    assert!(report.succeeded);
    assert_eq!(
        rec.events,
        [
            "start build",
            "out [Container] Running command echo hi",
            "out hi",
            "end build Succeeded"
        ]
    );
}

#[test]
fn secondary_artifacts_are_collected_as_sets_of_their_own() {
    let f = Fixture::new();
    let report = f.run(
        r#"
version: 0.2
phases:
  build:
    commands:
      - mkdir -p site docs
      - echo page > site/index.html
      - echo manual > docs/manual.txt
artifacts:
  files: ['site/**/*']
  secondary-artifacts:
    docs:
      base-directory: docs
      files: ['*.txt']
    everything:
      files: ['**/*']
      exclude-paths: ['site/**/*']
"#,
    );
    assert!(report.succeeded, "{report:#?}\n{}", f.log());
    let primary: Vec<&str> = report
        .artifacts
        .as_ref()
        .unwrap()
        .files
        .iter()
        .map(|a| a.path.as_str())
        .collect();
    assert_eq!(primary, ["site/index.html"]);
    let docs = &report.secondary_artifacts["docs"];
    assert_eq!(docs.files.len(), 1);
    assert_eq!(docs.files[0].path, "manual.txt");
    let docs_dir = kiln_build::run::secondary_dir(&f.out, "docs");
    assert_eq!(
        fs::read_to_string(docs_dir.join("manual.txt")).unwrap(),
        "manual\n"
    );
    assert_ne!(docs.digest, report.artifacts.unwrap().digest);
    let everything: Vec<&str> = report.secondary_artifacts["everything"]
        .files
        .iter()
        .map(|a| a.path.as_str())
        .collect();
    assert!(everything.contains(&"docs/manual.txt"), "{everything:?}");
    assert!(
        !everything.iter().any(|p| p.starts_with("site/")),
        "{everything:?}"
    );

    let bad = buildspec::parse(
        "version: 0.2\nphases:\n  build:\n    commands: [true]\nartifacts:\n  files: [a]\n  secondary-artifacts:\n    bad-id:\n      files: [b]\n",
        Path::new("buildspec.yml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("buildspec.yml:8:5: artifacts.secondary-artifacts.bad-id"),
        "{bad}"
    );
}

/// Writes the host's own core_pattern back: if the sandbox let it
/// through, the command would succeed without changing the host.
const WRITE_CORE_PATTERN: &str =
    r#"v=$(cat /proc/sys/kernel/core_pattern) && echo "$v" > /proc/sys/kernel/core_pattern"#;

fn core_pattern() -> String {
    fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap()
}

#[test]
fn a_build_cannot_write_a_sysctl_or_make_namespaces() {
    let f = Fixture::new();
    let host = core_pattern();
    let report = f.run(&format!(
        r#"
version: 0.2
phases:
  build:
    on-failure: CONTINUE
    commands:
      - '{WRITE_CORE_PATTERN}'
  post_build:
    commands:
      - grep '^Seccomp:' /proc/self/status > result
      - echo keys $(wc -c < /proc/keys) >> result
      - if unshare -U true; then echo unshare allowed >> result; else echo unshare refused >> result; fi
"#
    ));
    assert_eq!(
        phase(&report, PhaseName::Build).status,
        PhaseStatus::Failed,
        "the sysctl write got through"
    );
    assert!(f.log().contains("Read-only file system"), "{}", f.log());
    assert_eq!(core_pattern(), host);
    assert_eq!(
        phase(&report, PhaseName::PostBuild).status,
        PhaseStatus::Succeeded
    );
    assert_eq!(f.src("result"), "Seccomp:\t2\nkeys 0\nunshare refused\n");
}

/// A build on the host's own root sees the host's sysfs, read-only: its
/// firmware tables are masked there, and /proc/sys is as read-only as in
/// an image.
#[test]
fn a_build_on_the_host_root_sees_no_firmware_and_no_writable_sysctl() {
    let f = Fixture::new();
    let host_firmware = fs::read_dir("/sys/firmware")
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        host_firmware > 0,
        "this host has no /sys/firmware entries to mask"
    );
    let mut opts = f.options();
    opts.root = PathBuf::from("/");
    let host = core_pattern();
    let report = f.run_with(
        &format!(
            r#"
version: 0.2
phases:
  build:
    commands:
      - echo firmware $(ls -A /sys/firmware | wc -l) > result
      - if {WRITE_CORE_PATTERN}; then echo sysctl written >> result; else echo sysctl refused >> result; fi
"#
        ),
        &opts,
    );
    assert_eq!(
        phase(&report, PhaseName::Build).status,
        PhaseStatus::Succeeded,
        "{}",
        f.log()
    );
    assert_eq!(f.src("result"), "firmware 0\nsysctl refused\n");
    assert_eq!(core_pattern(), host);
}

/// Every process's command line on the host, as any local user reads them.
fn host_command_lines() -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

#[test]
fn parameter_values_never_reach_a_command_line_other_users_can_read() {
    const VALUE: &str = "pw-7f3a9c-kept-off-cmdlines";
    let f = Fixture::new();
    let mut opts = f.options();
    opts.parameters = Some(Arc::new(|name: &str| {
        (name == "/app/DbPassword").then(|| kiln_build::ParameterValue {
            value: VALUE.to_string(),
            secure: false,
        })
    }));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scanner = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut saw_sandbox, mut leaked) = (false, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for line in host_command_lines() {
                    saw_sandbox |= line.contains("bwrap") && line.contains("kiln-build");
                    if line.contains(VALUE) {
                        leaked.push(line);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            (saw_sandbox, leaked)
        })
    };
    let report = f.run_with(
        "version: 0.2\nenv:\n  parameter-store:\n    DB_PASSWORD: /app/DbPassword\nphases:\n  build:\n    commands: [sleep 1, echo \"$DB_PASSWORD\" > v]\n",
        &opts,
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (saw_sandbox, leaked) = scanner.join().unwrap();
    assert!(report.succeeded, "{report:?}");
    assert_eq!(f.src("v"), format!("{VALUE}\n"));
    assert!(saw_sandbox, "the scan never saw the build's bwrap");
    assert!(
        leaked.is_empty(),
        "the value is on a command line: {leaked:?}"
    );
}
