//! How executions follow one another and where they end: superseded and
//! queued executions, schedules with only_if_changed, polling, a build
//! image, and a rollout that fails health.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::common::*;
use super::support::*;

#[test]
fn a_newer_commit_supersedes_waiting_and_running_executions() {
    let yaml = serving_yaml(
        "quick",
        "  capacity: { min: 1, max: 2, desired: 1 }\n  health: { path: /VERSION, interval: 200ms }\n",
    );
    let slow_build = BUILDSPEC.replace(
        "      - mkdir -p out",
        "      - sleep 2\n      - mkdir -p out",
    );
    let s = Setup::new(&yaml, &slow_build, &component(0));
    let (state, repo) = (&s.state, &s.repo);
    s.create(&["--no-start"]);

    let first = trigger(state, "quick");
    wait_for(
        "the first execution's build",
        Duration::from_secs(30),
        || stage(&execution(state, &first), "Build")["status"] == "InProgress",
    );
    repo.commit("VERSION", "second\n", "second");
    let second = trigger(state, "quick");
    let third_commit = repo.commit("VERSION", "third\n", "third");
    let third = trigger(state, "quick");

    let second = execution(state, &second);
    assert_eq!(second["status"], "Superseded", "{second}");
    assert!(
        second["reason"]
            .as_str()
            .unwrap()
            .contains("before it started")
    );
    let first = finished(state, &first);
    assert_eq!(first["status"], "Superseded", "{first}");
    assert_eq!(stage(&first, "Build")["status"], "Succeeded");
    assert_eq!(stage(&first, "Bake")["status"], "Cancelled");
    let third = finished(state, &third);
    assert_eq!(third["status"], "Succeeded", "{third}");
    assert_eq!(third["commit_id"], third_commit.as_str());

    let url = third["variables"]["DeployVariables"]["LoadBalancer"]
        .as_str()
        .unwrap();
    assert_eq!(page(&format!("{url}/VERSION")), "third\n");
    // Only the third commit got a version and an image.
    assert_eq!(
        ok(kiln(state, &["params", "get", "/quick/ImageVersion"])).trim(),
        "1.0.1"
    );
    s.finish("quick");
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
    // As the README has it: a component parameter takes the version that
    // the Version stage sets, which is new for every execution and so is
    // not an input that changed.
    let yaml = kiln_yaml(
        "nightly",
        "triggers: { on_commit: false, schedule: \"cron(0 9 * * ? *)\", only_if_changed: true }\n",
    )
    .replace(
        "parameters: { Artifact: \"#{BuildVariables.ArtifactUri}\" }",
        "parameters: { Artifact: \"#{BuildVariables.ArtifactUri}\", Version: \"#{VersionVariables.Version}\" }",
    );
    assert!(yaml.contains("VersionVariables"), "{yaml}");
    let component = component(0)
        .replace("phases:\n", "  - Version:\n      type: string\nphases:\n")
        + "      - name: Stamp\n        action: CreateFile\n        inputs:\n          - path: /app/IMAGE_VERSION\n            content: \"{{ Version }}\"\n";
    let s = Setup::new(&yaml, BUILDSPEC, &component);
    let (state, repo) = (&s.state, &s.repo);
    // A URL, as for a remote repository.
    let url = format!("file://{}", repo.dir.display());
    ok(kiln(state, &["pipelines", "create", &url, "--no-start"]));
    let p = json(kiln(
        state,
        &["pipelines", "show", "nightly", "--output", "json"],
    ));
    assert_eq!(p["repository"], url.as_str());
    wait_for("the next scheduled time", Duration::from_secs(10), || {
        let p = json(kiln(
            state,
            &["pipelines", "show", "nightly", "--output", "json"],
        ));
        p["next_schedule"]
            .as_str()
            .is_some_and(|t| t.ends_with("09:00:00Z"))
    });
    for fired in 1..=2 {
        make_schedule_due(state, "nightly");
        wait_for("a scheduled execution", Duration::from_secs(20), || {
            executions(state, "nightly").len() == fired
        });
        let id = executions(state, "nightly")[fired - 1]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let e = finished(state, &id);
        assert_eq!(e["status"], "Succeeded", "{e}");
        assert_eq!(e["trigger"], "CloudWatchEvent");
    }
    let list = executions(state, "nightly");
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
    let images = ok(kiln(state, &["images", "ls"]));
    assert_eq!(images.matches("nightly/").count(), 1, "{images}");
    assert_eq!(
        ok(kiln(state, &["params", "get", "/nightly/ImageVersion"])).trim(),
        "1.0.1"
    );

    // A change to what the bake depends on bakes again.
    repo.commit("VERSION", "changed\n", "changed");
    make_schedule_due(state, "nightly");
    wait_for("a third execution", Duration::from_secs(20), || {
        executions(state, "nightly").len() == 3
    });
    let id = executions(state, "nightly")[2]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let third = finished(state, &id);
    assert_eq!(stage(&third, "Bake")["status"], "Succeeded", "{third}");
    assert_eq!(
        third["variables"]["BakeVariables"]["Image"],
        "nightly/1.0.1/1"
    );
    s.finish("nightly");
}

#[test]
fn queued_executions_all_run_in_order_and_polling_finds_new_commits() {
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
    let s = Setup::new(&yaml, &buildspec, &component(0));
    let (state, repo) = (&s.state, &s.repo);
    // A build image baked by kiln: busybox plus a marker file, so that the
    // build shows it ran there and not on the host's root.
    let image_dir = s.tmp.path().join("build-image");
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
        state,
        &["bake", image_dir.join("recipe.yaml").to_str().unwrap()],
    ));

    s.create(&["--no-start"]);
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
    let mut ids = vec![hook(state)];
    for n in 2..=3 {
        repo.commit("VERSION", &format!("v{n}\n"), &format!("v{n}"));
        ids.push(hook(state));
    }
    let done: Vec<Value> = ids.iter().map(|id| finished(state, id)).collect();
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
    let images = ok(kiln(state, &["images", "ls"]));
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
            executions(state, "inorder")
                .iter()
                .any(|e| e["commit_id"] == polled.as_str())
        },
    );
    let e = executions(state, "inorder")
        .into_iter()
        .find(|e| e["commit_id"] == polled.as_str())
        .unwrap();
    assert_eq!(e["trigger"], "PollForSourceChanges");
    assert_eq!(
        finished(state, e["id"].as_str().unwrap())["status"],
        "Succeeded"
    );
    s.finish("inorder");
}

#[test]
fn a_failed_rollout_fails_deploy_and_the_previous_version_keeps_serving() {
    let yaml = serving_yaml(
        "guarded",
        // The grace period spares a new instance's httpd that starts slowly
        // on a loaded machine: two refused checks 200 ms apart failed it.
        "  capacity: { min: 1, max: 3, desired: 2 }\n  health: { path: /health, interval: 200ms, grace_period: 1s }\n  rolling: { max_batch: 1, min_in_service: 1, batch_timeout: 10s }\nretention: { keep_images: 1 }\n",
    );
    // A VERSION of "broken" builds a site without /health.
    let buildspec = BUILDSPEC.replace(
        "      - cp VERSION out/VERSION",
        "      - cp VERSION out/VERSION\n      - if ! grep -q broken VERSION; then echo ok > out/health; fi",
    );
    let s = Setup::new(&yaml, &buildspec, &component(0));
    let (state, repo) = (&s.state, &s.repo);
    let out = kiln(state, &["run", "--repo", repo.dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = executions(state, "guarded").pop().unwrap();
    let url = first["variables"]["DeployVariables"]["LoadBalancer"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(page(&format!("{url}/VERSION")), "first\n");

    repo.commit("VERSION", "broken\n", "break the health check");
    let id = trigger(state, "guarded");
    let failed = finished(state, &id);
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
        state,
        &["executions", "logs", &id, "--stage", "Deploy"],
    ));
    assert!(log.contains("rolled back"), "{log}");
    assert_eq!(page(&format!("{url}/VERSION")), "first\n");
    let group = json(kiln(
        state,
        &["groups", "inspect", "guarded", "--output", "json"],
    ));
    assert_eq!(group["version"], 1, "{group}");

    // Fixed: the group rolls from version 1 to 3. Retention keeps the
    // newest image and the one the previous template version uses, for a
    // rollback; the image whose rollout failed goes.
    repo.commit("VERSION", "fixed\n", "fix the health check");
    let id = trigger(state, "guarded");
    assert_eq!(finished(state, &id)["status"], "Succeeded");
    assert_eq!(page(&format!("{url}/VERSION")), "fixed\n");
    let images = ok(kiln(state, &["images", "ls"]));
    assert!(images.contains("guarded/1.0.2/1"), "{images}");
    assert!(images.contains("guarded/1.0.0/1"), "{images}");
    assert!(!images.contains("guarded/1.0.1/1"), "{images}");
    s.finish("guarded");
}

#[test]
fn deploy_secrets_come_from_the_parameter_store_and_never_show() {
    let yaml = serving_yaml(
        "vault",
        "  capacity: { min: 0, max: 1, desired: 1 }\n  health: { path: /VERSION, interval: 200ms }\n  secrets: { DB_PASSWORD: /vault/DbPassword }\n",
    )
    .replace(
        "exec httpd -f -p 8080 -h /app",
        "echo \\\"$DB_PASSWORD\\\" > /app/secret && exec httpd -f -p 8080 -h /app",
    );
    assert!(yaml.contains("/app/secret"), "{yaml}");
    let s = Setup::new(&yaml, BUILDSPEC, &component(0));
    let (state, repo) = (&s.state, &s.repo);
    // No such parameter yet: Deploy fails and says which secret.
    let out = kiln(state, &["run", "--repo", repo.dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let failed = executions(state, "vault").pop().unwrap();
    assert_eq!(stage(&failed, "Deploy")["status"], "Failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("deploy.secrets.DB_PASSWORD") && reason.contains("/vault/DbPassword"),
        "{reason}"
    );

    ok(kiln(
        state,
        &["params", "put", "/vault/DbPassword", "hunter2-secret"],
    ));
    let id = failed["id"].as_str().unwrap();
    ok(kiln(state, &["executions", "retry", id, "--follow"]));
    let done = execution(state, id);
    assert_eq!(done["status"], "Succeeded", "{done}");
    let url = done["variables"]["DeployVariables"]["LoadBalancer"]
        .as_str()
        .unwrap();
    // The instance has the value; no listing, execution or log shows it.
    assert_eq!(page(&format!("{url}/secret")), "hunter2-secret\n");
    // Nor does any command line, which every local user can read.
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if let Ok(line) = std::fs::read(entry.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&line).replace('\0', " ");
            assert!(
                !line.contains("hunter2"),
                "a command line shows the secret: {line}"
            );
        }
    }
    let templates = ok(kiln(state, &["templates", "ls", "--output", "json"]));
    assert!(!templates.contains("hunter2"), "{templates}");
    let listed: serde_json::Value = serde_json::from_str(&templates).unwrap();
    let newest = listed.as_array().unwrap().last().unwrap().clone();
    assert_eq!(newest["spec"]["secrets"]["DB_PASSWORD"], "***", "{newest}");
    for shown in [
        ok(kiln(state, &["executions", "show", id, "--output", "json"])),
        ok(kiln(state, &["executions", "logs", id])),
    ] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    s.finish("vault");
}
