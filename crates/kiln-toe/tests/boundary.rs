//! What the AWSTOE runner asks of the OS boundary, seen through a
//! recording isolation that runs each process on the host: the shell and
//! script of each step, the environment, the working directory, one
//! process per loop iteration and attempt, and a step past its timeout
//! killed. No root needed, so these hold on any machine.

use std::sync::Arc;

use kiln_sandbox::recording::Recording;
use kiln_toe::{Instance, Quiet, RunOptions, Status};

struct Setup {
    dir: tempfile::TempDir,
    recording: Arc<Recording>,
    instance: Instance,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    kiln_sandbox::busybox::assemble(&root).unwrap();
    std::fs::create_dir_all(root.join("srv/app")).unwrap();
    let recording = Arc::new(Recording::default());
    let instance = Instance {
        root: kiln_sandbox::Root::open(&root).unwrap(),
        isolation: recording.clone(),
        hostname: "builder".into(),
        workdir: "/srv/app".into(),
        env: vec![("STAGE".into(), "test".into())],
        allow_sh: true,
        netns: None,
    };
    Setup {
        dir,
        recording,
        instance,
    }
}

fn run(s: &Setup, phases: &str) -> kiln_toe::Execution {
    let path = s.dir.path().join("doc.yaml");
    std::fs::write(
        &path,
        format!("name: t\nschemaVersion: 1.0\nphases:\n{phases}"),
    )
    .unwrap();
    let doc = kiln_toe::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let opts = RunOptions {
        log_root: s.dir.path().join("logs"),
        ..Default::default()
    };
    kiln_toe::run(&[doc], &s.instance, &opts, &mut Quiet).unwrap()
}

#[test]
fn each_step_asks_for_one_shell_with_its_script_environment_and_directory() {
    let s = setup();
    let e = run(
        &s,
        r#"
  - name: build
    steps:
      - name: Hello
        action: ExecuteBash
        inputs:
          commands: ["echo one", "echo two > written"]
      - name: Each
        action: ExecuteBash
        loop:
          forEach: [a, b, c]
        inputs:
          commands: ["echo {{ loop.value }}"]
"#,
    );
    assert_eq!(e.status, Status::Success);
    let calls = s.recording.calls();
    assert_eq!(
        calls.len(),
        4,
        "one process for Hello, one per iteration: {calls:#?}"
    );
    let hello = &calls[0];
    assert_eq!(hello.root, s.dir.path().join("root"));
    assert_eq!(
        hello.spec.argv,
        ["/bin/sh", "-c", "echo one\necho two > written", "input.sh"]
    );
    assert_eq!(hello.spec.cwd, "/srv/app");
    assert_eq!(hello.spec.hostname, "builder");
    let env = |name: &str| {
        hello
            .spec
            .env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(env("HOME"), Some("/root"));
    assert_eq!(env("STAGE"), Some("test"));
    assert!(env("PATH").is_some_and(|p| p.contains("/usr/bin")));
    // Nothing of the runner's own environment crosses the boundary.
    assert_eq!(env("CARGO_PKG_NAME"), None);
    let scripts: Vec<&str> = calls[1..].iter().map(|c| c.spec.argv[2].as_str()).collect();
    assert_eq!(scripts, ["echo a", "echo b", "echo c"]);
    // The process ran where it was asked to: the root's /srv/app.
    assert_eq!(
        std::fs::read_to_string(s.dir.path().join("root/srv/app/written")).unwrap(),
        "two\n"
    );
}

#[test]
fn attempts_ask_again_and_a_step_past_its_timeout_is_killed() {
    let s = setup();
    let e = run(
        &s,
        r#"
  - name: build
    steps:
      - name: Flaky
        action: ExecuteBash
        maxAttempts: 3
        inputs:
          commands: ["n=$(cat tries 2>/dev/null || echo 0); echo $((n+1)) > tries; [ $n -ge 2 ]"]
      - name: Slow
        action: ExecuteBash
        timeoutSeconds: 1
        onFailure: Continue
        inputs:
          commands: ["exec sleep 30"]
"#,
    );
    let calls = s.recording.calls();
    assert_eq!(calls.len(), 4, "three attempts, then Slow: {calls:#?}");
    let (_, _, slow) = e.steps().find(|(_, _, s)| s.name == "Slow").unwrap();
    assert_eq!(slow.status, Status::Failed);
    assert!(
        slow.failure_message.contains("timed out"),
        "{}",
        slow.failure_message
    );
    let (_, _, flaky) = e.steps().find(|(_, _, s)| s.name == "Flaky").unwrap();
    assert_eq!(flaky.status, Status::Success);
}
