//! Runs documents for real, in bubblewrap over a busybox root, and checks
//! the step outcomes the AWSTOE documentation specifies for loops,
//! conditions, chaining, onFailure, maxAttempts, timeouts and reboots.

mod common;

use common::{Fixture, outputs, step};
use kiln_toe::Status;
use serde_json::json;

fn doc(phases: &str) -> String {
    format!("name: t\nschemaVersion: 1.0\nphases:\n{phases}")
}

#[test]
fn for_loops_count_both_ends_and_join_outputs_with_newlines() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Up
        action: ExecuteBash
        loop:
          for: { start: 1, end: 5, updateBy: 2 }
        inputs:
          commands: ["echo {{ loop.index }}:{{ loop.value }}"]
      - name: Down
        action: ExecuteBash
        loop:
          name: countdown
          for: { start: 3, end: 1, updateBy: -1 }
        inputs:
          commands: ["echo {{ countdown.value }}"]
"#));
    assert_eq!(e.status, Status::Success);
    assert_eq!(
        outputs(step(&e, "build", "Up")),
        json!([{"stdout": "0:1\n1:3\n2:5"}])
    );
    assert_eq!(
        outputs(step(&e, "build", "Down")),
        json!([{"stdout": "3\n2\n1"}])
    );
    assert_eq!(
        step(&e, "build", "Up")
            .loop_record
            .as_ref()
            .unwrap()
            .iterations,
        3
    );
}

#[test]
fn for_each_takes_lists_and_delimited_strings() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Items
        action: CreateFile
        loop:
          forEach: [a, b]
        inputs:
          - path: "/out/{{ loop.value }}"
            content: "item {{ loop.index }}"
      - name: Split
        action: ExecuteBash
        loop:
          name: parts
          forEach: { list: "x;y;z", delimiter: ";" }
        inputs:
          commands: ["echo {{ parts.index }}={{ parts.value }}"]
"#));
    assert_eq!(e.status, Status::Success);
    assert_eq!(f.file("/out/a"), "item 0");
    assert_eq!(f.file("/out/b"), "item 1");
    assert_eq!(
        outputs(step(&e, "build", "Split")),
        json!([{"stdout": "0=x\n1=y\n2=z"}])
    );
}

#[test]
fn a_failing_iteration_fails_the_loop_and_names_it() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Loop
        action: ExecuteBash
        loop:
          forEach: [ok, bad, never]
        inputs:
          commands: ['test "{{ loop.value }}" != bad']
"#));
    let s = step(&e, "build", "Loop");
    assert_eq!(s.status, Status::Failed);
    assert!(
        s.failure_message.contains("iteration 1"),
        "{}",
        s.failure_message
    );
    assert_eq!(
        s.loop_record.as_ref().unwrap().iterations,
        2,
        "the loop stops at the failing iteration"
    );
}

#[test]
fn conditions_decide_execute_skip_and_abort_from_the_roots_files() {
    let f = Fixture::with_bash();
    std::fs::write(f.root_dir.join("etc/marker"), "x").unwrap();
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: RunsWhenTrue
        action: ExecuteBash
        if:
          and:
            - fileExists: /etc/marker
            - folderExists: /etc
            - binaryExists: sh
            - not:
                fileExists: /etc/absent
        inputs:
          commands: ["echo ran"]
      - name: SkippedWhenFalse
        action: ExecuteBash
        if:
          stringEquals: "a"
          value: "b"
        inputs:
          commands: ["echo no"]
      - name: ThenSkip
        action: ExecuteBash
        if:
          numberLessThan: 2
          value: "1.5"
          then: Skip
        inputs:
          commands: ["echo no"]
      - name: ElseAbort
        action: ExecuteBash
        onFailure: Continue
        if:
          - patternMatches: "^v[0-9]+$"
            value: "release"
            else: Abort
        inputs:
          commands: ["echo no"]
"#));
    assert_eq!(step(&e, "build", "RunsWhenTrue").status, Status::Success);
    assert_eq!(
        outputs(step(&e, "build", "RunsWhenTrue")),
        json!([{"stdout": "ran"}])
    );
    assert_eq!(
        step(&e, "build", "SkippedWhenFalse").status,
        Status::Skipped
    );
    assert_eq!(step(&e, "build", "ThenSkip").status, Status::Skipped);
    let abort = step(&e, "build", "ElseAbort");
    assert_eq!(abort.status, Status::Failed);
    assert!(abort.failure_message.contains("Abort"));
    assert_eq!(e.status, Status::Failed);
    // A skipped step counts as a success and is not an executed step.
    assert_eq!(e.executed_step_count, 2);
}

#[test]
fn host_files_are_invisible_to_conditions() {
    let f = Fixture::with_bash();
    let host = f.dir.path().join("host-only");
    std::fs::write(&host, "x").unwrap();
    let e = f.run_doc(&doc(&format!(
        r#"
  - name: build
    steps:
      - name: Check
        action: Assert
        inputs:
          not:
            fileExists: {}
"#,
        host.display()
    )));
    assert_eq!(e.status, Status::Success);
}

#[test]
fn chaining_passes_outputs_and_inputs_between_steps_and_phases() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Version
        action: ExecuteBash
        inputs:
          commands: ["echo 2.5"]
      - name: Write
        action: CreateFile
        inputs:
          - path: /a.txt
            content: first
          - path: /version.txt
            content: "{{ build.Version.outputs.stdout }}"
  - name: validate
    steps:
      - name: Read
        action: ReadFile
        inputs:
          - path: "{{ build.Write.inputs[1].path }}"
      - name: Compare
        action: Assert
        inputs:
          and:
            - stringEquals: "2.5"
              value: "{{ validate.Read.outputs.content }}"
            - numberGreaterThan: 2
              value: "{{ build.Version.outputs.stdout }}"
"#));
    assert_eq!(
        e.status,
        Status::Success,
        "{:#?}",
        e.failed_step().map(|s| s.2.failure_message.clone())
    );
    assert_eq!(f.file("/version.txt"), "2.5");
}

#[test]
fn abort_stops_everything_continue_goes_on_and_ignore_succeeds() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Ignored
        action: ExecuteBash
        onFailure: Ignore
        inputs:
          commands: ["exit 3"]
      - name: After
        action: ExecuteBash
        inputs:
          commands: ["true"]
"#));
    assert_eq!(step(&e, "build", "Ignored").status, Status::IgnoredFailure);
    assert_eq!(e.status, Status::SuccessWithIgnoredFailure);
    assert_eq!(e.ignored_failed_step_count, 1);

    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Fails
        action: ExecuteBash
        onFailure: Continue
        inputs:
          commands: ["echo oops >&2", "exit 3"]
      - name: StillRuns
        action: ExecuteBash
        inputs:
          commands: ["true"]
  - name: validate
    steps:
      - name: AlsoRuns
        action: ExecuteBash
        inputs:
          commands: ["true"]
"#));
    assert_eq!(step(&e, "build", "StillRuns").status, Status::Success);
    assert_eq!(step(&e, "validate", "AlsoRuns").status, Status::Success);
    let fails = step(&e, "build", "Fails");
    assert!(
        fails.failure_message.contains("status 3") && fails.failure_message.contains("oops"),
        "{}",
        fails.failure_message
    );
    assert_eq!(e.status, Status::Failed);

    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Fails
        action: ExecuteBash
        inputs:
          commands: ["exit 1"]
      - name: NeverRuns
        action: ExecuteBash
        inputs:
          commands: ["true"]
  - name: validate
    steps:
      - name: NeverRunsEither
        action: ExecuteBash
        inputs:
          commands: ["true"]
"#));
    assert_eq!(e.status, Status::Failed);
    assert_eq!(
        e.steps().count(),
        1,
        "Abort runs nothing after the failed step"
    );
    assert!(e.failure_message.contains("doc.yaml"));
}

#[test]
fn max_attempts_retries_until_success() {
    let f = Fixture::with_bash();
    let flaky = r#"
  - name: build
    steps:
      - name: Flaky
        action: ExecuteBash
        maxAttempts: ATTEMPTS
        inputs:
          commands:
            - n=$(cat /count 2>/dev/null || echo 0)
            - echo $((n + 1)) > /count
            - test $n -ge 2
"#;
    let e = f.run_doc(&doc(&flaky.replace("ATTEMPTS", "3")));
    let s = step(&e, "build", "Flaky");
    assert_eq!((s.status, s.attempts), (Status::Success, 3));

    std::fs::remove_file(f.root_dir.join("count")).unwrap();
    let e = f.run_doc(&doc(&flaky.replace("ATTEMPTS", "2")));
    let s = step(&e, "build", "Flaky");
    assert_eq!((s.status, s.attempts), (Status::Failed, 2));
    assert!(s.failure_message.contains("after 2 attempts"));
}

#[test]
fn a_step_past_its_timeout_is_killed_and_fails() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Slow
        action: ExecuteBash
        timeoutSeconds: 1
        onFailure: Continue
        inputs:
          commands: ["sleep 3017 & echo started; sleep 3017"]
"#));
    let s = step(&e, "build", "Slow");
    assert_eq!(s.status, Status::Failed);
    assert!(
        s.failure_message.contains("timed out after 1 seconds"),
        "{}",
        s.failure_message
    );
    // Nothing the killed step started survives it, seen from the host
    // (a later step has a pid namespace of its own and could not see one).
    let sleeping = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| c.as_slice() == b"sleep\x003017\x00")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sleeping() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(sleeping(), 0, "a process the killed step started survives");
}

#[test]
fn exit_code_194_reboots_and_reruns_the_same_step_without_reevaluating_its_condition() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: RebootOnce
        action: ExecuteBash
        if:
          not:
            fileExists: /rebooted
        inputs:
          commands:
            - echo run >> /runs
            - if [ -f /rebooted ]; then
            -   echo resumed
            -   exit 0
            - fi
            - touch /rebooted
            - exit 194
      - name: After
        action: Reboot
        inputs:
          delaySeconds: 0
      - name: Last
        action: ExecuteBash
        inputs:
          commands: ["echo last"]
"#));
    let s = step(&e, "build", "RebootOnce");
    assert_eq!(s.status, Status::Success);
    assert_eq!((s.reboots, s.attempts), (1, 1));
    assert_eq!(f.file("/runs"), "run\nrun\n");
    assert_eq!(outputs(s), json!([{"stdout": "resumed"}]));
    assert_eq!(step(&e, "build", "After").status, Status::Success);
    assert_eq!(step(&e, "build", "Last").status, Status::Success);
}

#[test]
fn a_step_that_always_asks_for_a_reboot_fails() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc("  - name: build\n    steps:\n      - name: Loop\n        action: ExecuteBash\n        inputs:\n          commands: [\"exit 194\"]\n"));
    let s = step(&e, "build", "Loop");
    assert_eq!(s.status, Status::Failed);
    assert!(s.failure_message.contains("reboot"));
}

#[test]
fn commands_of_one_step_form_one_script() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Script
        action: ExecuteBash
        inputs:
          commands:
            - GREETING=hello
            - if [ -n "$GREETING" ]; then
            -   echo "$GREETING from $BASH"
            - fi
"#));
    assert_eq!(
        outputs(step(&e, "build", "Script")),
        json!([{"stdout": "hello from /bin/bash"}])
    );
}

#[test]
fn execute_bash_refuses_a_root_without_bash_unless_sh_is_allowed() {
    let f = Fixture::busybox();
    let yaml = doc(
        "  - name: build\n    steps:\n      - name: S\n        action: ExecuteBash\n        inputs:\n          commands: [\"echo via sh\"]\n",
    );
    let e = f.run_doc(&yaml);
    let s = step(&e, "build", "S");
    assert_eq!(s.status, Status::Failed);
    assert!(
        s.failure_message.contains("/bin/bash") && s.failure_message.contains("--shell sh"),
        "{}",
        s.failure_message
    );

    let e = f.run_with(&yaml, &f.instance(true), &f.options());
    assert_eq!(
        outputs(step(&e, "build", "S")),
        json!([{"stdout": "via sh"}])
    );
}

#[test]
fn powershell_needs_pwsh_in_the_root() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc("  - name: build\n    steps:\n      - name: IIS\n        action: ExecutePowerShell\n        inputs:\n          commands: [\"Install-WindowsFeature Web-Server\"]\n"));
    let s = step(&e, "build", "IIS");
    assert_eq!(s.status, Status::Failed);
    assert!(s.failure_message.contains("pwsh"), "{}", s.failure_message);
}

#[test]
fn update_os_names_the_missing_package_manager() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(
        "  - name: build\n    steps:\n      - name: Update\n        action: UpdateOS\n",
    ));
    let s = step(&e, "build", "Update");
    assert!(
        s.failure_message.contains("apt-get, dnf or yum"),
        "{}",
        s.failure_message
    );
}

#[test]
fn parameters_need_a_value_or_a_default() {
    let f = Fixture::with_bash();
    let yaml = "name: p\nschemaVersion: 1.0\nparameters:\n  - Needed:\n      type: string\nphases:\n  - name: build\n    steps:\n      - name: Echo\n        action: ExecuteBash\n        inputs:\n          commands: [\"echo {{ Needed }}\"]\n";
    let path = f.write_doc("p.yaml", yaml);
    let doc = kiln_toe::load(&path).unwrap();
    let err = kiln_toe::run(
        std::slice::from_ref(&doc),
        &f.instance(false),
        &f.options(),
        &mut kiln_toe::Quiet,
    )
    .unwrap_err();
    assert!(err.to_string().contains("Needed"), "{err}");
    let mut opts = f.options();
    opts.parameters = vec![
        ("Needed".into(), "given".into()),
        ("Unknown".into(), "ignored".into()),
    ];
    let e = kiln_toe::run(&[doc], &f.instance(false), &opts, &mut kiln_toe::Quiet).unwrap();
    assert_eq!(
        outputs(step(&e, "build", "Echo")),
        json!([{"stdout": "given"}])
    );
}

#[test]
fn execute_document_runs_a_nested_document_and_refuses_cycles() {
    let f = Fixture::with_bash();
    f.write_doc(
        "child.yaml",
        "name: child\nschemaVersion: 1.0\nparameters:\n  - Who:\n      type: string\nphases:\n  - name: build\n    steps:\n      - name: Hello\n        action: CreateFile\n        inputs:\n          - path: /hello\n            content: \"hello {{ Who }}\"\n  - name: test\n    steps:\n      - name: NotSelected\n        action: CreateFile\n        inputs:\n          - path: /not-selected\n",
    );
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Nested
        action: ExecuteDocument
        inputs:
          document: child.yaml
          phases: build
          parameters:
            - name: Who
              value: parent
"#));
    let s = step(&e, "build", "Nested");
    assert_eq!(s.status, Status::Success, "{}", s.failure_message);
    assert_eq!(f.file("/hello"), "hello parent");
    assert!(!f.root_dir.join("not-selected").exists());
    assert_eq!(outputs(s)[0]["status"], "success");
    assert_eq!(s.detailed_output.as_ref().unwrap().len(), 1);

    f.write_doc("self.yaml", "name: s\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Again\n        action: ExecuteDocument\n        inputs:\n          document: self.yaml\n");
    let doc = kiln_toe::load(&f.dir.path().join("self.yaml")).unwrap();
    let e = kiln_toe::run(
        &[doc],
        &f.instance(false),
        &f.options(),
        &mut kiln_toe::Quiet,
    )
    .unwrap();
    let s = step(&e, "build", "Again");
    assert_eq!(s.status, Status::Failed);
    assert!(s.failure_message.contains("cycle"), "{}", s.failure_message);
}

#[test]
fn s3_uris_resolve_to_the_artifact_bucket_only() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc(r#"
  - name: build
    steps:
      - name: Make
        action: CreateFile
        inputs:
          - path: /dist/app/bin
            content: binary
          - path: /dist/app/conf/app.conf
            content: conf
      - name: Upload
        action: S3Upload
        inputs:
          - source: /dist/app/*
            destination: s3://kiln-artifacts/builds/1/
            recurse: true
      - name: Download
        action: S3Download
        inputs:
          - source: s3://kiln-artifacts/builds/1/conf/app.conf
            destination: /etc/app.conf
      - name: Elsewhere
        action: S3Download
        onFailure: Continue
        inputs:
          - source: s3://someone-elses-bucket/x
            destination: /x
"#));
    assert_eq!(step(&e, "build", "Download").status, Status::Success);
    assert_eq!(f.file("/etc/app.conf"), "conf");
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("artifacts/builds/1/bin")).unwrap(),
        "binary"
    );
    let other = step(&e, "build", "Elsewhere");
    assert!(
        other.failure_message.contains("someone-elses-bucket")
            && other.failure_message.contains("kiln-artifacts")
    );
}

#[test]
fn a_prefix_keeps_a_pipeline_to_its_own_artifacts() {
    let f = Fixture::with_bash();
    for (dir, content) in [("mine/1", "ours"), ("theirs/1", "not ours")] {
        let d = f.dir.path().join("artifacts").join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("file"), content).unwrap();
    }
    let mut opts = f.options();
    if let Some(store) = &mut opts.artifacts {
        store.prefix = "mine/".into();
    }
    let yaml = doc(r#"
  - name: build
    steps:
      - name: Own
        action: S3Download
        inputs:
          - source: s3://kiln-artifacts/mine/1/file
            destination: /own
      - name: Other
        action: S3Download
        onFailure: Continue
        inputs:
          - source: s3://kiln-artifacts/theirs/1/file
            destination: /other
"#);
    let e = f.run_with(&yaml, &f.instance(false), &opts);
    assert_eq!(step(&e, "build", "Own").status, Status::Success);
    assert_eq!(f.file("/own"), "ours");
    let other = step(&e, "build", "Other");
    assert_eq!(other.status, Status::Failed);
    assert!(
        other.failure_message.contains("s3://kiln-artifacts/mine/"),
        "{}",
        other.failure_message
    );
}

#[test]
fn web_download_checks_the_checksum_and_creates_folders() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\npayload",
            );
        }
    });
    let f = Fixture::with_bash();
    let sha = kiln_toe::digest::hex_digest("SHA256", b"payload").unwrap();
    let e = f.run_doc(&doc(&format!(
        r#"
  - name: build
    steps:
      - name: Get
        action: WebDownload
        inputs:
          - source: http://127.0.0.1:{port}/files/tool.bin
            destination: /opt/downloads/
            checksum: {sha}
            algorithm: SHA256
      - name: Bad
        action: WebDownload
        onFailure: Continue
        inputs:
          - source: http://127.0.0.1:{port}/files/tool.bin
            destination: /opt/other.bin
            checksum: "0000"
            algorithm: MD5
"#
    )));
    server.join().unwrap();
    let get = step(&e, "build", "Get");
    assert_eq!(get.status, Status::Success, "{}", get.failure_message);
    assert_eq!(
        outputs(get),
        json!([{"destination": "/opt/downloads/tool.bin"}])
    );
    assert_eq!(f.file("/opt/downloads/tool.bin"), "payload");
    let bad = step(&e, "build", "Bad");
    assert!(
        bad.failure_message.contains("checksum"),
        "{}",
        bad.failure_message
    );
    assert!(!f.root_dir.join("opt/other.bin").exists());
}

#[test]
fn the_log_directory_holds_what_awstoe_writes() {
    let f = Fixture::with_bash();
    let e = f.run_doc(&doc("  - name: build\n    steps:\n      - name: Say\n        action: ExecuteBash\n        inputs:\n          commands: [\"echo to-stdout\", \"echo to-stderr >&2\"]\n"));
    let dir = std::path::PathBuf::from(&e.log_url);
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("TOE_")
    );
    assert!(dir.to_string_lossy().ends_with(&e.execution_id));
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
    assert!(console.contains("CmdExecution: Stdout: to-stdout"));
    assert!(console.contains("CmdExecution: Stderr: to-stderr"));
    let detailed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("detailedoutput.json")).unwrap()).unwrap();
    let s = &detailed["documents"][0]["phases"][0]["steps"][0];
    assert_eq!(s["status"], "success");
    assert_eq!(s["timeoutSeconds"], 7200);
    assert_eq!(s["stderr"], "to-stderr\n");
    assert!(dir.join("document.yaml").exists() && dir.join("chaining.json").exists());
}
