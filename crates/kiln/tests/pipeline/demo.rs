//! What a user sees first: `kiln validate`, `kiln demo` end to end with
//! `kiln destroy` after it, and kiln.yaml mistakes refused with their line.

use super::common::*;
use super::support::*;

#[test]
fn validate_names_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(
        tmp.path().join("app"),
        &kiln_yaml(
            "checked",
            "triggers: { schedule: \"cron(0 9 * * *)\", on_comit: true }\n",
        ),
        BUILDSPEC,
        &component(0),
    );
    let out = kiln(
        tmp.path(),
        &["validate", repo.dir.join("kiln.yaml").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kiln.yaml:11:"), "{err}");
    assert!(err.contains("triggers.schedule:"), "{err}");
    assert!(err.contains("triggers.on_comit: unknown field"), "{err}");

    std::fs::write(repo.dir.join("kiln.yaml"), kiln_yaml("checked", "")).unwrap();
    let text = ok(kiln(
        tmp.path(),
        &["validate", repo.dir.join("kiln.yaml").to_str().unwrap()],
    ));
    assert!(text.contains("pipeline checked is valid"), "{text}");
    // The buildspec it names is checked too.
    std::fs::write(
        repo.dir.join("buildspec.yml"),
        "version: 0.2\nphases:\n  biuld: {}\n",
    )
    .unwrap();
    let out = kiln(
        tmp.path(),
        &["validate", repo.dir.join("kiln.yaml").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("buildspec.yml:3:"));
}

#[test]
fn validate_warns_on_what_codebuild_accepts_and_strict_refuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(
        tmp.path().join("app"),
        &kiln_yaml("lenient", ""),
        "version: 0.2\nphases:\n  install:\n    runtime-versions:\n      nodejs: 20\n  build:\n    commands:\n      - make\n  post_build:\n    commands:\ncache:\n  key: deps\n  paths: [deps/**/*]\n",
        &component(0),
    );
    let file = repo.dir.join("kiln.yaml");
    let out = kiln(tmp.path(), &["validate", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("buildspec.yml:12:8: cache.key: ignored"),
        "{err}"
    );
    assert!(
        err.contains("buildspec.yml:5:7: phases.install.runtime-versions"),
        "{err}"
    );

    let out = kiln(
        tmp.path(),
        &["validate", "--strict", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("buildspec.yml:12:8: cache.key"));
}

#[test]
fn demo_rolls_out_a_second_commit_without_a_failed_request_and_destroy_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let repo = tmp.path().join("demo-repo");
    let mut daemon = Daemon::start(&state);
    let report = json(kiln(
        &state,
        &[
            "demo",
            "--dir",
            repo.to_str().unwrap(),
            "--exit",
            "--keep",
            "--output",
            "json",
        ],
    ));
    assert!(
        report["requests_during_rollout"]["ok"].as_u64().unwrap() > 50,
        "{report}"
    );
    assert_eq!(report["requests_during_rollout"]["failed"], 0, "{report}");
    let url = report["url"].as_str().unwrap();
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let body = page(&format!("{url}/"));
    assert!(body.contains("second commit"), "{body}");
    assert!(
        body.contains(&format!("version 1.0.1, commit {head}")),
        "{body}"
    );

    // The launch template carries the sample's tags.
    let templates = json(kiln(&state, &["templates", "ls", "--output", "json"]));
    let last = templates.as_array().unwrap().last().unwrap();
    assert_eq!(last["tags"]["Version"], "1.0.1");
    assert_eq!(last["tags"]["Source/CommitId"], head.as_str());
    assert_eq!(last["tags"]["Source/BranchName"], "main");
    assert_eq!(last["tags"]["Source/RepositoryName"], "demo-repo");
    assert_eq!(last["tags"]["Application"], "demo-web");
    let list = executions(&state, "demo");
    assert_eq!(list.len(), 2);
    assert_eq!(
        list[1]["variables"]["SourceVariables"]["CommitMessage"],
        "A new greeting"
    );
    assert_eq!(list[1]["variables"]["VersionVariables"]["Version"], "1.0.1");
    assert_eq!(list[0]["trigger"], "CreatePipeline");
    assert_eq!(list[1]["trigger"], "Webhook");
    assert_eq!(
        ok(kiln(&state, &["params", "get", "/demo/ImageVersion"])).trim(),
        "1.0.2"
    );

    let out = ok(kiln(&state, &["destroy", "demo", "--yes"]));
    assert!(out.contains("removed group demo-web"), "{out}");
    // Idempotent: a second destroy finds nothing and succeeds.
    let again = ok(kiln(&state, &["destroy", "demo", "--yes"]));
    assert!(again.contains("nothing to destroy"), "{again}");
    assert!(kiln_sandbox::instance::processes_with_root_below(&state).is_empty());
    assert!(mounts_below(&state).is_empty());
    assert!(!state.join("pipelines/demo").exists());
    assert!(!state.join("artifacts/kiln-artifacts/demo").exists());
    assert!(
        std::fs::read_dir(state.join("instances"))
            .unwrap()
            .next()
            .is_none()
    );
    let images = ok(kiln(&state, &["images", "ls"]));
    assert!(!images.contains("demo/"), "{images}");
    assert!(
        kiln(&state, &["params", "get", "/demo/ImageVersion"])
            .status
            .code()
            != Some(0)
    );
    assert!(!repo.join(".git/hooks/post-commit").exists());
    assert!(executions(&state, "demo").is_empty());
    assert!(
        json(kiln(&state, &["templates", "ls", "--output", "json"]))
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The demo reused the test's daemon, which stops here.
    assert_eq!(daemon_pid(&state), daemon.child.as_ref().map(|c| c.id()));
    daemon.destroy(&[]);
}

#[test]
fn an_invalid_kiln_yaml_is_refused_at_create_and_fails_a_commit_at_source() {
    let s = Setup::new(
        &kiln_yaml("strict", "deploy: { group: strict, prot: 8080 }\n"),
        BUILDSPEC,
        &component(0),
    );
    let (state, repo) = (&s.state, &s.repo);
    let out = kiln(state, &["pipelines", "create", repo.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kiln.yaml:11:26: deploy.prot: unknown field"),
        "{err}"
    );
    assert!(!err.contains(s.tmp.path().to_str().unwrap()), "{err}");

    repo.commit("kiln.yaml", &kiln_yaml("strict", ""), "valid");
    s.create(&["--no-start"]);
    repo.commit(
        "kiln.yaml",
        &kiln_yaml("strict", "triggers: { schedule: \"cron(61 * * * ? *)\" }\n"),
        "a bad schedule",
    );
    let id = trigger(state, "strict");
    let e = finished(state, &id);
    assert_eq!(e["status"], "Failed");
    assert_eq!(stage(&e, "Source")["status"], "Failed");
    let reason = e["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("stage Source failed: kiln.yaml:11:"),
        "{reason}"
    );
    assert!(reason.contains("triggers.schedule"), "{reason}");
    s.finish("strict");
}
