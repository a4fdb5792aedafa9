//! The runner's own overhead per step: 1,000 trivial ExecuteBash steps,
//! against the same commands in one bash process. Prints its figures.
//!
//! `cargo bench -p kiln-toe --bench step_overhead [-- STEPS]`

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kiln_sandbox::{Bubblewrap, Isolation, ProcessSpec, Root};
use kiln_toe::{Instance, Quiet, RunOptions};

// The test suites' root set-up: busybox plus the host's bash.
#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    let steps: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let root_dir = dir.path().join("root");
    kiln_sandbox::busybox::assemble(&root_dir).unwrap();
    kiln_sandbox::busybox::add_host_program(&root_dir, Path::new("/bin/bash")).unwrap();

    let mut yaml =
        String::from("name: bench\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n");
    for i in 0..steps {
        yaml.push_str(&format!("      - name: S{i}\n        action: ExecuteBash\n        inputs:\n          commands: [\"echo {i}\"]\n"));
    }
    let path = dir.path().join("bench.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let doc = kiln_toe::load(&path).unwrap();
    let isolation = Arc::new(Bubblewrap::detect().unwrap());
    let instance = Instance {
        root: Root::open(&root_dir).unwrap(),
        isolation: isolation.clone(),
        hostname: "bench".into(),
        workdir: "/".into(),
        env: Vec::new(),
        allow_sh: false,
        netns: None,
    };
    let opts = RunOptions {
        log_root: dir.path().join("logs"),
        ..Default::default()
    };

    let t = Instant::now();
    let execution = kiln_toe::run(&[doc], &instance, &opts, &mut Quiet).unwrap();
    let runner = t.elapsed();
    assert_eq!(execution.executed_step_count as usize, steps);
    assert!(execution.status.is_success());

    // The same commands in one bash process, in one sandbox.
    let script: String = (0..steps).map(|i| format!("echo {i}\n")).collect();
    let spec = |argv: Vec<String>| ProcessSpec {
        argv,
        env: Vec::new(),
        cwd: "/".into(),
        hostname: "bench".into(),
    };
    let t = Instant::now();
    let out = isolation
        .command(
            &root_dir,
            &spec(vec!["/bin/bash".into(), "-c".into(), script]),
        )
        .unwrap()
        .output()
        .unwrap();
    let one_bash = t.elapsed();
    assert!(out.status.success());

    // What a sandbox costs by itself: one bubblewrap start per step.
    let t = Instant::now();
    for _ in 0..steps {
        let out = isolation
            .command(
                &root_dir,
                &spec(vec!["/bin/bash".into(), "-c".into(), "echo 1".into()]),
            )
            .unwrap()
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let sandboxes = t.elapsed();

    let per = |d: std::time::Duration| d.as_secs_f64() * 1000.0 / steps as f64;
    println!("steps:                                {steps}");
    println!(
        "runner, {steps} ExecuteBash steps:      {:>8.1} ms  ({:.3} ms/step)",
        runner.as_secs_f64() * 1000.0,
        per(runner)
    );
    println!(
        "same commands in one bash process:    {:>8.1} ms",
        one_bash.as_secs_f64() * 1000.0
    );
    println!(
        "one sandboxed bash per step, no runner:{:>8.1} ms  ({:.3} ms/step)",
        sandboxes.as_secs_f64() * 1000.0,
        per(sandboxes)
    );
    println!(
        "overhead vs one bash process:         {:>8.3} ms/step",
        per(runner.saturating_sub(one_bash))
    );
    println!(
        "runner's own share (beyond sandboxes): {:>8.3} ms/step",
        per(runner.saturating_sub(sandboxes))
    );
}
