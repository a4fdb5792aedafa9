//! Pipelines as a user runs them: a git repository with kiln.yaml, the
//! daemon, commits, executions stage by stage, and `kiln destroy`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, json, kiln, mounts_below, ok};
use serde_json::Value;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@kiln.invalid"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An application repository: kiln.yaml, a buildspec and one component.
struct Repo {
    dir: PathBuf,
}

impl Repo {
    fn new(dir: PathBuf, kiln_yaml: &str, buildspec: &str, component: &str) -> Repo {
        std::fs::create_dir_all(dir.join("components")).unwrap();
        std::fs::write(dir.join("kiln.yaml"), kiln_yaml).unwrap();
        std::fs::write(dir.join("buildspec.yml"), buildspec).unwrap();
        std::fs::write(dir.join("components/app.yaml"), component).unwrap();
        std::fs::write(dir.join("VERSION"), "first\n").unwrap();
        git(&dir, &["init", "--quiet", "--initial-branch=main"]);
        git(&dir, &["add", "."]);
        git(&dir, &["commit", "--quiet", "-m", "first"]);
        Repo { dir }
    }

    fn commit(&self, file: &str, text: &str, message: &str) -> String {
        std::fs::write(self.dir.join(file), text).unwrap();
        git(&self.dir, &["commit", "--quiet", "-am", message]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}

const BUILDSPEC: &str = r#"version: 0.2
phases:
  build:
    commands:
      - mkdir -p out
      - cp VERSION out/VERSION
artifacts:
  base-directory: out
  files: ['**/*']
"#;

/// Installs the artifact's VERSION file as /app/VERSION; sleeps `sleep`
/// seconds in build when asked to.
fn component(sleep: u32) -> String {
    format!(
        r#"name: App
schemaVersion: 1.0
parameters:
  - Artifact:
      type: string
phases:
  - name: build
    steps:
      - name: Folder
        action: CreateFolder
        inputs:
          - path: /app
      - name: Download
        action: S3Download
        inputs:
          - source: "{{{{ Artifact }}}}/*"
            destination: /app
      - name: Slow
        action: ExecuteBash
        inputs:
          commands:
            - sleep {sleep}
"#
    )
}

fn kiln_yaml(name: &str, extra: &str) -> String {
    format!(
        r##"name: {name}
source: {{ branch: main, poll_interval: 1h }}
build: {{ buildspec: buildspec.yml }}
image:
  parent: busybox
  shell: sh
  components:
    - path: components/app.yaml
      parameters: {{ Artifact: "#{{BuildVariables.ArtifactUri}}" }}
  tests: {{ enabled: false }}
{extra}"##
    )
}

/// A pipeline that deploys to group `name`, whose instances serve /app
/// (the artifact) with busybox httpd on port 8080.
fn serving_yaml(name: &str, deploy: &str) -> String {
    kiln_yaml(name, &format!("deploy:\n  group: {name}\n  port: 8080\n  deregistration_delay: 100ms\n{deploy}"))
        .replace(
            "  tests: { enabled: false }",
            "  tests: { enabled: false }\n  entrypoint: [\"/bin/sh\", \"-c\", \"exec httpd -f -p 8080 -h /app\"]",
        )
}

fn execution(state: &Path, id: &str) -> Value {
    json(kiln(state, &["executions", "show", id, "--output", "json"]))
}

fn executions(state: &Path, pipeline: &str) -> Vec<Value> {
    let list = json(kiln(
        state,
        &[
            "executions",
            "ls",
            "--pipeline",
            pipeline,
            "--output",
            "json",
        ],
    ));
    let mut list = list.as_array().unwrap().clone();
    list.sort_by_key(|e| e["seq"].as_i64());
    list
}

fn stage<'a>(e: &'a Value, name: &str) -> &'a Value {
    e["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finished(state: &Path, id: &str) -> Value {
    let mut last = Value::Null;
    wait_for(
        &format!("execution {id} to end"),
        Duration::from_secs(120),
        || {
            last = execution(state, id);
            !matches!(last["status"].as_str(), Some("Pending" | "InProgress"))
        },
    );
    last
}

fn trigger(state: &Path, pipeline: &str) -> String {
    json(kiln(state, &["trigger", pipeline, "--output", "json"]))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn page(url: &str) -> String {
    ureq::get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

fn daemon_pid(state: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(state.join("daemon.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

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
fn a_newer_commit_supersedes_waiting_and_running_executions() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let yaml = serving_yaml(
        "quick",
        "  capacity: { min: 1, max: 2, desired: 1 }\n  health: { path: /VERSION, interval: 200ms }\n",
    );
    let slow_build = BUILDSPEC.replace(
        "      - mkdir -p out",
        "      - sleep 2\n      - mkdir -p out",
    );
    let repo = Repo::new(tmp.path().join("app"), &yaml, &slow_build, &component(0));
    let mut daemon = Daemon::start(&state);
    ok(kiln(
        &state,
        &[
            "pipelines",
            "create",
            repo.dir.to_str().unwrap(),
            "--no-start",
        ],
    ));

    let first = trigger(&state, "quick");
    wait_for(
        "the first execution's build",
        Duration::from_secs(30),
        || stage(&execution(&state, &first), "Build")["status"] == "InProgress",
    );
    repo.commit("VERSION", "second\n", "second");
    let second = trigger(&state, "quick");
    let third_commit = repo.commit("VERSION", "third\n", "third");
    let third = trigger(&state, "quick");

    let second = execution(&state, &second);
    assert_eq!(second["status"], "Superseded", "{second}");
    assert!(
        second["reason"]
            .as_str()
            .unwrap()
            .contains("before it started")
    );
    let first = finished(&state, &first);
    assert_eq!(first["status"], "Superseded", "{first}");
    assert_eq!(stage(&first, "Build")["status"], "Succeeded");
    assert_eq!(stage(&first, "Bake")["status"], "Cancelled");
    let third = finished(&state, &third);
    assert_eq!(third["status"], "Succeeded", "{third}");
    assert_eq!(third["commit_id"], third_commit.as_str());

    let url = third["variables"]["DeployVariables"]["LoadBalancer"]
        .as_str()
        .unwrap();
    assert_eq!(page(&format!("{url}/VERSION")), "third\n");
    // Only the third commit got a version and an image.
    assert_eq!(
        ok(kiln(&state, &["params", "get", "/quick/ImageVersion"])).trim(),
        "1.0.1"
    );
    ok(kiln(&state, &["destroy", "quick", "--yes"]));
    daemon.destroy(&[]);
}

#[test]
fn a_failed_build_stops_at_build_and_retry_resumes_from_it() {
    // Outside /tmp (a tmpfs in the build sandbox anyway), so that the build
    // would see the state directory if kiln did not hide it.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = tmp.path().join("state");
    let buildspec = BUILDSPEC
        .replace(
            "phases:",
            "env:\n  parameter-store:\n    TOKEN: /retry/Token\nphases:",
        )
        .replace(
            "      - cp VERSION out/VERSION",
            &format!(
                "      - cp VERSION out/VERSION\n      - test -n \"$TOKEN\"\n      - test ! -e {}/api-token",
                state.display()
            ),
        );
    let repo = Repo::new(
        tmp.path().join("app"),
        &kiln_yaml("retry", ""),
        &buildspec,
        &component(0),
    );
    let mut daemon = Daemon::start(&state);
    let created = json(kiln(
        &state,
        &[
            "pipelines",
            "create",
            repo.dir.to_str().unwrap(),
            "--output",
            "json",
        ],
    ));
    let id = created["execution"]["id"].as_str().unwrap().to_string();
    let failed = finished(&state, &id);
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
        &state,
        &["executions", "logs", &id, "--stage", "Build"],
    ));
    assert!(log.contains("/retry/Token"), "{log}");
    // Stage names only: the log endpoint reads no other file.
    let out = kiln(
        &state,
        &["executions", "logs", &id, "--stage", "../../../../kiln"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a stage"));
    let source_started = stage(&failed, "Source")["started"].clone();

    ok(kiln(
        &state,
        &["params", "put", "/retry/Token", "s3cr3t-value"],
    ));
    let out = kiln(&state, &["executions", "retry", &id, "--follow"]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}");
    let done = execution(&state, &id);
    assert_eq!(done["status"], "Succeeded");
    // Resumed at Build: Source ran once, with the same commit.
    assert_eq!(stage(&done, "Source")["started"], source_started);
    assert_eq!(stage(&done, "Bake")["status"], "Succeeded");
    assert_eq!(done["variables"]["BakeVariables"]["Image"], "retry/1.0.0/1");
    let all_logs = ok(kiln(&state, &["executions", "logs", &id]));
    assert!(
        !all_logs.contains("s3cr3t-value"),
        "a secret reached the logs"
    );
    // Once a later execution has succeeded, an older failure is history.
    ok(kiln(&state, &["params", "rm", "/retry/Token"]));
    let second = trigger(&state, "retry");
    assert_eq!(finished(&state, &second)["status"], "Failed");
    ok(kiln(
        &state,
        &["params", "put", "/retry/Token", "s3cr3t-value"],
    ));
    let third = trigger(&state, "retry");
    assert_eq!(finished(&state, &third)["status"], "Succeeded");
    let out = kiln(&state, &["executions", "retry", &second]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only the latest failure can be retried"),
        "{err}"
    );
    ok(kiln(&state, &["destroy", "retry", "--yes"]));
    daemon.destroy(&[]);
}

/// Moves the pipeline's next scheduled time to now, as the passing of
/// time would; the daemon's scheduler then fires it.
fn make_schedule_due(state: &Path, pipeline: &str) {
    let db = rusqlite::Connection::open(state.join("kiln.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let n = db
        .execute(
            "UPDATE pipelines SET next_schedule = ?1 WHERE name = ?2",
            rusqlite::params![jiff::Timestamp::now().to_string(), pipeline],
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_schedule_with_only_if_changed_bakes_once_for_unchanged_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let yaml = kiln_yaml(
        "nightly",
        "triggers: { on_commit: false, schedule: \"cron(0 9 * * ? *)\", only_if_changed: true }\n",
    );
    let repo = Repo::new(tmp.path().join("app"), &yaml, BUILDSPEC, &component(0));
    let mut daemon = Daemon::start(&state);
    // A URL, as for a remote repository.
    let url = format!("file://{}", repo.dir.display());
    ok(kiln(&state, &["pipelines", "create", &url, "--no-start"]));
    let p = json(kiln(
        &state,
        &["pipelines", "show", "nightly", "--output", "json"],
    ));
    assert_eq!(p["repository"], url.as_str());
    wait_for("the next scheduled time", Duration::from_secs(10), || {
        let p = json(kiln(
            &state,
            &["pipelines", "show", "nightly", "--output", "json"],
        ));
        p["next_schedule"]
            .as_str()
            .is_some_and(|t| t.ends_with("09:00:00Z"))
    });
    for fired in 1..=2 {
        make_schedule_due(&state, "nightly");
        wait_for("a scheduled execution", Duration::from_secs(20), || {
            executions(&state, "nightly").len() == fired
        });
        let id = executions(&state, "nightly")[fired - 1]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let e = finished(&state, &id);
        assert_eq!(e["status"], "Succeeded", "{e}");
        assert_eq!(e["trigger"], "CloudWatchEvent");
    }
    let list = executions(&state, "nightly");
    assert_eq!(stage(&list[0], "Bake")["status"], "Succeeded");
    for s in ["Version", "Bake", "Deploy"] {
        assert_eq!(stage(&list[1], s)["status"], "Skipped", "{}", list[1]);
    }
    assert_eq!(
        list[0]["variables"]["SourceVariables"]["RepositoryName"],
        "app"
    );
    assert!(
        stage(&list[1], "Version")["summary"]
            .as_str()
            .unwrap()
            .contains("only_if_changed")
    );
    let images = ok(kiln(&state, &["images", "ls"]));
    assert_eq!(images.matches("nightly/").count(), 1, "{images}");
    assert_eq!(
        ok(kiln(&state, &["params", "get", "/nightly/ImageVersion"])).trim(),
        "1.0.1"
    );

    // A change to what the bake depends on bakes again.
    repo.commit("VERSION", "changed\n", "changed");
    make_schedule_due(&state, "nightly");
    wait_for("a third execution", Duration::from_secs(20), || {
        executions(&state, "nightly").len() == 3
    });
    let id = executions(&state, "nightly")[2]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let third = finished(&state, &id);
    assert_eq!(stage(&third, "Bake")["status"], "Succeeded", "{third}");
    assert_eq!(
        third["variables"]["BakeVariables"]["Image"],
        "nightly/1.0.1/1"
    );
    ok(kiln(&state, &["destroy", "nightly", "--yes"]));
    daemon.destroy(&[]);
}

#[test]
fn a_daemon_killed_during_a_bake_leaves_a_failed_execution_and_no_partial_image() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let repo = Repo::new(
        tmp.path().join("app"),
        &kiln_yaml("crash", ""),
        BUILDSPEC,
        &component(4),
    );
    let mut daemon = Daemon::start(&state);
    let created = json(kiln(
        &state,
        &[
            "pipelines",
            "create",
            repo.dir.to_str().unwrap(),
            "--output",
            "json",
        ],
    ));
    let id = created["execution"]["id"].as_str().unwrap().to_string();
    wait_for("the bake's slow step", Duration::from_secs(60), || {
        let log = ok(kiln(
            &state,
            &["executions", "logs", &id, "--stage", "Bake"],
        ));
        log.contains("Success build/Download")
    });
    daemon.kill9();
    // The bake's sandbox dies with the daemon.
    wait_for(
        "the bake's processes to end",
        Duration::from_secs(10),
        || kiln_sandbox::instance::processes_with_root_below(&state).is_empty(),
    );

    let mut daemon = Daemon::start(&state);
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
    ok(kiln(&state, &["destroy", "crash", "--yes"]));
    daemon.destroy(&[]);
}

#[test]
fn queued_executions_all_run_in_order_and_polling_finds_new_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // A build image baked by kiln: busybox plus a marker file, so that the
    // build shows it ran there and not on the host's root.
    let image_dir = tmp.path().join("build-image");
    std::fs::create_dir_all(&image_dir).unwrap();
    std::fs::write(
        image_dir.join("marker.yaml"),
        "name: Marker\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/build-image\n            content: toolchain-1\n",
    )
    .unwrap();
    std::fs::write(
        image_dir.join("recipe.yaml"),
        "name: toolchain\nversion: 1.0.0\nparent: busybox\ncomponents: [ { path: marker.yaml } ]\ntests: { enabled: false }\n",
    )
    .unwrap();
    ok(kiln(
        &state,
        &["bake", image_dir.join("recipe.yaml").to_str().unwrap()],
    ));

    let yaml = kiln_yaml(
        "inorder",
        "execution_mode: QUEUED\ntriggers: { on_commit: true }\nretention: { keep_images: 2 }\n",
    )
    .replace("poll_interval: 1h", "poll_interval: 1s")
    .replace(
        "build: { buildspec: buildspec.yml }",
        "build: { buildspec: buildspec.yml, image: \"kiln:toolchain/1.0.0\" }",
    );
    let buildspec = BUILDSPEC.replace(
        "      - cp VERSION out/VERSION",
        "      - sleep 1\n      - test ! -e /etc/debian_version\n      - cp /etc/build-image out/marker\n      - cp VERSION out/VERSION",
    );
    let repo = Repo::new(tmp.path().join("app"), &yaml, &buildspec, &component(0));
    let mut daemon = Daemon::start(&state);
    ok(kiln(
        &state,
        &[
            "pipelines",
            "create",
            repo.dir.to_str().unwrap(),
            "--no-start",
        ],
    ));
    // As a git hook would: the poller may see the same commit, and it
    // still runs once.
    let hook = |state: &Path| -> String {
        json(kiln(
            state,
            &["trigger", "--hook", "inorder", "--output", "json"],
        ))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut ids = vec![hook(&state)];
    for n in 2..=3 {
        repo.commit("VERSION", &format!("v{n}\n"), &format!("v{n}"));
        ids.push(hook(&state));
    }
    let done: Vec<Value> = ids.iter().map(|id| finished(&state, id)).collect();
    for (i, e) in done.iter().enumerate() {
        assert_eq!(e["status"], "Succeeded", "{e}");
        assert_eq!(
            e["variables"]["VersionVariables"]["Version"],
            format!("1.0.{i}")
        );
    }
    // One at a time, in the order they came.
    for pair in done.windows(2) {
        assert!(
            pair[0]["ended"].as_str() <= pair[1]["started"].as_str(),
            "{pair:?}"
        );
    }
    let artifact = state.join("artifacts/kiln-artifacts").join(
        done[0]["variables"]["BuildVariables"]["ArtifactKey"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        std::fs::read_to_string(artifact.join("marker")).unwrap(),
        "toolchain-1"
    );

    // retention.keep_images: the two newest images of the recipe remain.
    let images = ok(kiln(&state, &["images", "ls"]));
    assert!(!images.contains("inorder/1.0.0/"), "{images}");
    assert!(
        images.contains("inorder/1.0.1/1") && images.contains("inorder/1.0.2/1"),
        "{images}"
    );

    // A commit nobody announces is found by polling.
    let polled = repo.commit("VERSION", "v4\n", "v4");
    wait_for(
        "an execution for the polled commit",
        Duration::from_secs(20),
        || {
            executions(&state, "inorder")
                .iter()
                .any(|e| e["commit_id"] == polled.as_str())
        },
    );
    let e = executions(&state, "inorder")
        .into_iter()
        .find(|e| e["commit_id"] == polled.as_str())
        .unwrap();
    assert_eq!(e["trigger"], "PollForSourceChanges");
    assert_eq!(
        finished(&state, e["id"].as_str().unwrap())["status"],
        "Succeeded"
    );
    ok(kiln(&state, &["destroy", "inorder", "--yes"]));
    daemon.destroy(&[]);
}

#[test]
fn a_failed_rollout_fails_deploy_and_the_previous_version_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let yaml = serving_yaml(
        "guarded",
        "  capacity: { min: 1, max: 3, desired: 2 }\n  health: { path: /health, interval: 200ms }\n  rolling: { max_batch: 1, min_in_service: 1, batch_timeout: 3s }\nretention: { keep_images: 1 }\n",
    );
    // A VERSION of "broken" builds a site without /health.
    let buildspec = BUILDSPEC.replace(
        "      - cp VERSION out/VERSION",
        "      - cp VERSION out/VERSION\n      - if ! grep -q broken VERSION; then echo ok > out/health; fi",
    );
    let repo = Repo::new(tmp.path().join("app"), &yaml, &buildspec, &component(0));
    let mut daemon = Daemon::start(&state);
    let out = kiln(&state, &["run", "--repo", repo.dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = executions(&state, "guarded").pop().unwrap();
    let url = first["variables"]["DeployVariables"]["LoadBalancer"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(page(&format!("{url}/VERSION")), "first\n");

    repo.commit("VERSION", "broken\n", "break the health check");
    let id = trigger(&state, "guarded");
    let failed = finished(&state, &id);
    assert_eq!(failed["status"], "Failed", "{failed}");
    assert_eq!(stage(&failed, "Bake")["status"], "Succeeded");
    assert_eq!(stage(&failed, "Deploy")["status"], "Failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("rolled back to version 1"),
        "{failed}"
    );
    let log = ok(kiln(
        &state,
        &["executions", "logs", &id, "--stage", "Deploy"],
    ));
    assert!(log.contains("rolled back"), "{log}");
    assert_eq!(page(&format!("{url}/VERSION")), "first\n");
    let group = json(kiln(
        &state,
        &["groups", "inspect", "guarded", "--output", "json"],
    ));
    assert_eq!(group["version"], 1, "{group}");

    // Fixed: the group rolls from version 1 to 3. Retention keeps the
    // newest image and the one the previous template version uses, for a
    // rollback; the image whose rollout failed goes.
    repo.commit("VERSION", "fixed\n", "fix the health check");
    let id = trigger(&state, "guarded");
    assert_eq!(finished(&state, &id)["status"], "Succeeded");
    assert_eq!(page(&format!("{url}/VERSION")), "fixed\n");
    let images = ok(kiln(&state, &["images", "ls"]));
    assert!(images.contains("guarded/1.0.2/1"), "{images}");
    assert!(images.contains("guarded/1.0.0/1"), "{images}");
    assert!(!images.contains("guarded/1.0.1/1"), "{images}");
    ok(kiln(&state, &["destroy", "guarded", "--yes"]));
    daemon.destroy(&[]);
}

#[test]
fn an_invalid_kiln_yaml_is_refused_at_create_and_fails_a_commit_at_source() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let repo = Repo::new(
        tmp.path().join("app"),
        &kiln_yaml("strict", "deploy: { group: strict, prot: 8080 }\n"),
        BUILDSPEC,
        &component(0),
    );
    let mut daemon = Daemon::start(&state);
    let out = kiln(&state, &["pipelines", "create", repo.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kiln.yaml:11:26: deploy.prot: unknown field"),
        "{err}"
    );
    assert!(!err.contains(tmp.path().to_str().unwrap()), "{err}");

    repo.commit("kiln.yaml", &kiln_yaml("strict", ""), "valid");
    ok(kiln(
        &state,
        &[
            "pipelines",
            "create",
            repo.dir.to_str().unwrap(),
            "--no-start",
        ],
    ));
    repo.commit(
        "kiln.yaml",
        &kiln_yaml("strict", "triggers: { schedule: \"cron(61 * * * ? *)\" }\n"),
        "a bad schedule",
    );
    let id = trigger(&state, "strict");
    let e = finished(&state, &id);
    assert_eq!(e["status"], "Failed");
    assert_eq!(stage(&e, "Source")["status"], "Failed");
    let reason = e["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("stage Source failed: kiln.yaml:11:"),
        "{reason}"
    );
    assert!(reason.contains("triggers.schedule"), "{reason}");
    ok(kiln(&state, &["destroy", "strict", "--yes"]));
    daemon.destroy(&[]);
}
