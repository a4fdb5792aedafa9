//! What the pipeline tests share: an application repository with
//! kiln.yaml, a buildspec and one component; a daemon beside it; and ways
//! to follow executions through the CLI as a user does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::{Daemon, json, kiln, ok};

/// One test's world: a temporary directory holding the state directory
/// and the application repository, and a daemon for that state.
pub struct Setup {
    pub state: PathBuf,
    pub repo: Repo,
    pub daemon: Daemon,
    // Dropped last: the daemon and its instances go before their files.
    pub tmp: tempfile::TempDir,
}

impl Setup {
    pub fn new(kiln_yaml: &str, buildspec: &str, component: &str) -> Setup {
        Setup::in_dir(
            tempfile::tempdir().unwrap(),
            kiln_yaml,
            buildspec,
            component,
        )
    }

    pub fn in_dir(
        tmp: tempfile::TempDir,
        kiln_yaml: &str,
        buildspec: &str,
        component: &str,
    ) -> Setup {
        let state = tmp.path().join("state");
        let repo = Repo::new(tmp.path().join("app"), kiln_yaml, buildspec, component);
        let daemon = Daemon::start(&state);
        Setup {
            state,
            repo,
            daemon,
            tmp,
        }
    }

    /// `kiln pipelines create` for the repository, with `args`.
    pub fn create(&self, args: &[&str]) -> Value {
        let mut all = vec!["pipelines", "create", self.repo.dir.to_str().unwrap()];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--output", "json"]);
        json(kiln(&self.state, &all))
    }

    /// Destroys the pipeline, as every test ends, and stops the daemon.
    pub fn finish(mut self, pipeline: &str) {
        ok(kiln(&self.state, &["destroy", pipeline, "--yes"]));
        self.daemon.destroy(&[]);
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
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
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn new(dir: PathBuf, kiln_yaml: &str, buildspec: &str, component: &str) -> Repo {
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

    pub fn commit(&self, file: &str, text: &str, message: &str) -> String {
        std::fs::write(self.dir.join(file), text).unwrap();
        git(&self.dir, &["commit", "--quiet", "-am", message]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}

pub const BUILDSPEC: &str = r#"version: 0.2
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
pub fn component(sleep: u32) -> String {
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

pub fn kiln_yaml(name: &str, extra: &str) -> String {
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
pub fn serving_yaml(name: &str, deploy: &str) -> String {
    kiln_yaml(name, &format!("deploy:\n  group: {name}\n  port: 8080\n  deregistration_delay: 100ms\n{deploy}"))
        .replace(
            "  tests: { enabled: false }",
            "  tests: { enabled: false }\n  entrypoint: [\"/bin/sh\", \"-c\", \"exec httpd -f -p 8080 -h /app\"]",
        )
}

pub fn execution(state: &Path, id: &str) -> Value {
    json(kiln(state, &["executions", "show", id, "--output", "json"]))
}

pub fn executions(state: &Path, pipeline: &str) -> Vec<Value> {
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

pub fn stage<'a>(e: &'a Value, name: &str) -> &'a Value {
    e["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn finished(state: &Path, id: &str) -> Value {
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

pub fn trigger(state: &Path, pipeline: &str) -> String {
    json(kiln(state, &["trigger", pipeline, "--output", "json"]))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn page(url: &str) -> String {
    ureq::get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

pub fn daemon_pid(state: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(state.join("daemon.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}
