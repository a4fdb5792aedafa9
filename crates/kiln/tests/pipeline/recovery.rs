//! Failures and their way back: a build that fails and is retried, and a
//! daemon killed in the middle of a bake.

use std::time::Duration;

use super::common::*;
use super::support::*;

#[test]
fn a_failed_build_stops_at_build_and_retry_resumes_from_it() {
    // Outside /tmp, which the build sandbox covers with a tmpfs anyway: the
    // build must see this directory to prove that kiln hides the state
    // directory in it, and to see the ready file. /var/tmp, since the
    // workspace itself (and so its target directory) may be under /tmp.
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let api_token = tmp.path().join("state/api-token");
    // The host's root is the build's, read-only: a file the test makes
    // lets the second attempt's command pass where the first one failed.
    let ready = tmp.path().join("ready");
    let buildspec = BUILDSPEC
        .replace(
            "phases:",
            "env:\n  parameter-store:\n    TOKEN: /retry/Token\nphases:",
        )
        .replace(
            "      - cp VERSION out/VERSION",
            &format!(
                "      - cp VERSION out/VERSION\n      - test -n \"$TOKEN\"\n      - test ! -e {}\n      - test -e {} || {{ echo \"attempt output, not ready yet\"; exit 3; }}",
                api_token.display(),
                ready.display()
            ),
        );
    let s = Setup::in_dir(tmp, &kiln_yaml("retry", ""), &buildspec, &component(0));
    let state = &s.state;
    let created = s.create(&[]);
    let id = created["execution"]["id"].as_str().unwrap().to_string();
    let failed = finished(state, &id);
    assert_eq!(failed["status"], "Failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .starts_with("stage Build failed"),
        "{failed}"
    );
    assert_eq!(stage(&failed, "Build")["status"], "Failed");
    for s in ["Version", "Bake", "Deploy"] {
        assert_eq!(stage(&failed, s)["status"], "Cancelled");
    }
    let log = ok(kiln(
        state,
        &["executions", "logs", &id, "--stage", "Build"],
    ));
    assert!(log.contains("/retry/Token"), "{log}");
    // Stage names only: the log endpoint reads no other file.
    let out = kiln(
        state,
        &["executions", "logs", &id, "--stage", "../../../../kiln"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a stage"));
    let source_started = stage(&failed, "Source")["started"].clone();

    ok(kiln(
        state,
        &["params", "put", "/retry/Token", "s3cr3t-value"],
    ));
    // The second attempt fails at a command, with output of its own.
    let out = kiln(state, &["executions", "retry", &id, "--follow"]);
    assert!(!out.status.success());
    assert_eq!(stage(&execution(state, &id), "Build")["status"], "Failed");
    std::fs::write(&ready, "").unwrap();
    let out = kiln(state, &["executions", "retry", &id, "--follow"]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}");
    let done = execution(state, &id);
    assert_eq!(done["status"], "Succeeded");
    // Resumed at Build: Source ran once, with the same commit.
    assert_eq!(stage(&done, "Source")["started"], source_started);
    assert_eq!(stage(&done, "Bake")["status"], "Succeeded");
    assert_eq!(done["variables"]["BakeVariables"]["Image"], "retry/1.0.0/1");
    // Every attempt's log stays, in order: a retry overwrites none.
    let log = ok(kiln(
        state,
        &["executions", "logs", &id, "--stage", "Build"],
    ));
    let attempts: Vec<&str> = log.split("retry: stage Build runs again").collect();
    assert_eq!(attempts.len(), 3, "three attempts: {log}");
    assert!(attempts[0].contains("/retry/Token\" not found"), "{log}");
    assert!(
        attempts[1].contains("attempt output, not ready yet"),
        "{log}"
    );
    assert!(
        attempts[1].contains("Phase complete: BUILD State: FAILED"),
        "{log}"
    );
    assert!(!attempts[2].contains("State: FAILED"), "{log}");
    assert!(
        attempts[2].contains("Phase complete: BUILD State: SUCCEEDED"),
        "{log}"
    );
    let all_logs = ok(kiln(state, &["executions", "logs", &id]));
    assert!(
        !all_logs.contains("s3cr3t-value"),
        "a secret reached the logs"
    );
    // Once a later execution has succeeded, an older failure is history.
    ok(kiln(state, &["params", "rm", "/retry/Token"]));
    let second = trigger(state, "retry");
    assert_eq!(finished(state, &second)["status"], "Failed");
    ok(kiln(
        state,
        &["params", "put", "/retry/Token", "s3cr3t-value"],
    ));
    let third = trigger(state, "retry");
    assert_eq!(finished(state, &third)["status"], "Succeeded");
    let out = kiln(state, &["executions", "retry", &second]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only the latest failure can be retried"),
        "{err}"
    );
    s.finish("retry");
}

#[test]
fn a_daemon_killed_during_a_bake_leaves_a_failed_execution_and_no_partial_image() {
    let mut s = Setup::new(&kiln_yaml("crash", ""), BUILDSPEC, &component(4));
    let state = s.state.clone();
    let created = s.create(&[]);
    let id = created["execution"]["id"].as_str().unwrap().to_string();
    wait_for("the bake's slow step", Duration::from_secs(60), || {
        let log = ok(kiln(
            &state,
            &["executions", "logs", &id, "--stage", "Bake"],
        ));
        log.contains("Success build/Download")
    });
    s.daemon.kill9();
    // The bake's sandbox dies with the daemon.
    wait_for(
        "the bake's processes to end",
        Duration::from_secs(10),
        || kiln_sandbox::instance::processes_with_root_below(&state).is_empty(),
    );

    s.daemon = Daemon::start(&state);
    let e = execution(&state, &id);
    assert_eq!(e["status"], "Failed", "{e}");
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("daemon stopped during stage Bake"),
        "{e}"
    );
    assert_eq!(stage(&e, "Bake")["status"], "Failed");
    let images = ok(kiln(&state, &["images", "ls"]));
    assert!(!images.contains("crash/"), "{images}");
    assert!(
        mounts_below(&state).is_empty(),
        "{:?}",
        mounts_below(&state)
    );
    let tmp_entries: Vec<_> = std::fs::read_dir(state.join("images/tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(tmp_entries.is_empty(), "{tmp_entries:?}");

    // Retry resumes at Bake, with the version handed out once.
    let out = kiln(&state, &["executions", "retry", &id, "--follow"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = execution(&state, &id);
    assert_eq!(e["variables"]["BakeVariables"]["Image"], "crash/1.0.0/1");
    assert_eq!(
        ok(kiln(&state, &["params", "get", "/crash/ImageVersion"])).trim(),
        "1.0.1"
    );
    s.finish("crash");
}
