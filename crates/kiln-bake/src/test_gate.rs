//! The test gate: a fresh instance of the new image, its entrypoint
//! running, runs every component's test phase. Only an image that passes
//! may be deployed.
//!
//! In boot mode (the image's `dev.kiln.init` label, from the recipe's
//! `init: systemd`) the instance runs the image's systemd as pid 1; once
//! it has finished booting (`systemctl is-system-running --wait`, within
//! the recipe's test timeout; `degraded` counts) the test steps run inside
//! the booted system, with its /run, /tmp, processes and network, so that
//! `systemctl is-active` and requests to the service it started work.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::image::ImageConfiguration;

use crate::bake::LABEL_INIT;
use crate::recipe::Recipe;
use crate::sandbox::{Overlay, instance, run_options};
use crate::types::{BakeError, BakeObserver, BakeOptions, TestReport, file_name, setup};
use kiln_image::Store;
use kiln_sandbox::instance::{InstanceSpec, RunningInstance};
use kiln_toe::{Document, Instance};

/// Starts a fresh instance of the new image, its entrypoint running, and
/// runs every component's test phase there.
pub(crate) fn test_gate(
    store: &Store,
    recipe: &Recipe,
    opts: &BakeOptions,
    documents: &[Document],
    lowers: &[PathBuf],
    config: &ImageConfiguration,
    observer: &mut dyn BakeObserver,
) -> Result<TestReport, BakeError> {
    if !recipe.tests.enabled {
        observer.event("tests disabled by the recipe");
        return Ok(TestReport::Disabled);
    }
    if !documents.iter().any(|d| d.phase("test").is_some()) {
        return Ok(TestReport::None);
    }
    observer.event("testing a fresh instance of the new image");
    let mut overlay = Overlay::mount(store, lowers, "test")?;
    let mut inst = instance(&overlay.merged(), recipe, opts)?;
    let log_dir = opts.log_root.join(format!("test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&log_dir).map_err(|e| setup(&recipe.name, "test log", e))?;
    let log_path = log_dir.join("test.log");
    let boot = boots(config);
    let entrypoint = start_entrypoint(&inst, config, &log_dir, boot)
        .map_err(|e| setup(&recipe.name, "entrypoint", e))?;
    // The recipe's parser bounds the timeout; checked all the same, as a
    // recipe can also be built in code.
    let started = Instant::now();
    let deadline = started.checked_add(recipe.tests.timeout);
    let mut log = String::new();
    let mut failure = None;
    match &entrypoint {
        Some(running) if boot => {
            observer.event("waiting for systemd to finish booting");
            match running.booted() {
                Ok(booted) => {
                    match booted.wait_until_booted(recipe.tests.timeout) {
                        Ok(state) => {
                            log.push_str(&format!(
                                "== booted in {:.1}s: systemd is {state}\n",
                                started.elapsed().as_secs_f64()
                            ));
                        }
                        Err(e) => {
                            failure = Some(format!("the instance did not boot: {e}"));
                        }
                    }
                    // The steps run inside the booted system, which is
                    // also where its network is.
                    inst.isolation = std::sync::Arc::new(booted);
                }
                Err(e) => failure = Some(format!("the instance did not boot: {e}")),
            }
        }
        // The test steps share the instance's own network, as tests on a
        // fresh EC2 instance reach its service on localhost, and two bakes
        // testing the same port never meet.
        Some(running) => {
            inst.netns = Some(PathBuf::from(format!(
                "/proc/{}/ns/net",
                running.netns().pid()
            )));
        }
        None => {}
    }
    for (doc, component) in documents.iter().zip(&recipe.components) {
        if failure.is_some() {
            break;
        }
        if doc.phase("test").is_none() {
            continue;
        }
        let execution = kiln_toe::run(
            std::slice::from_ref(doc),
            &inst,
            &run_options(opts, &component.parameters, &["test"], deadline),
            observer,
        )
        .map_err(|e| setup(&component.path.display().to_string(), "test run", e))?;
        log.push_str(&format!(
            "== {} ({})\n",
            component.path.display(),
            execution.log_url
        ));
        log.push_str(
            &std::fs::read_to_string(Path::new(&execution.log_url).join("console.log"))
                .unwrap_or_default(),
        );
        if failure.is_none()
            && let Some((_, phase, step)) = execution.failed_step()
        {
            failure = Some(format!(
                "{}: phase {}, step {} failed: {}",
                file_name(&component.path),
                phase.name,
                step.name,
                step.failure_message
            ));
        }
    }
    if let Some(running) = entrypoint {
        if boot && failure.is_some() {
            // What systemd says about its units explains most failures.
            log.push_str(&booted_report(&running));
        }
        if let Err(e) = running.stop(Duration::from_secs(5)) {
            log.push_str(&format!("== stopping the entrypoint: {e}\n"));
        }
        for name in ["stdout.log", "stderr.log"] {
            log.push_str(&format!("== entrypoint {name}\n"));
            log.push_str(&std::fs::read_to_string(log_dir.join(name)).unwrap_or_default());
        }
    }
    drop(inst);
    overlay.unmount()?;
    std::fs::write(&log_path, &log).map_err(|e| setup(&recipe.name, "test log", e))?;
    let log = log_path.display().to_string();
    Ok(match failure {
        Some(message) => {
            observer.event(&format!("tests failed: {message}"));
            TestReport::Failed { log, message }
        }
        None => TestReport::Passed { log },
    })
}

/// The image was baked in boot mode.
pub(crate) fn boots(config: &ImageConfiguration) -> bool {
    config
        .config()
        .as_ref()
        .and_then(|c| c.labels().as_ref())
        .and_then(|l| l.get(LABEL_INIT))
        .is_some_and(|v| v == "systemd")
}

/// `systemctl --failed` and the journal's last lines, from inside the
/// booted instance, for the test log.
fn booted_report(running: &RunningInstance) -> String {
    let Ok(booted) = running.booted() else {
        return String::new();
    };
    let mut out = String::new();
    for argv in [
        &["systemctl", "--failed", "--no-pager"][..],
        &["journalctl", "--no-pager", "-n", "60"][..],
    ] {
        let spec = kiln_sandbox::ProcessSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            cwd: "/".into(),
            hostname: String::new(),
        };
        use kiln_sandbox::Isolation;
        if let Ok(mut cmd) = booted.command(Path::new("/"), &spec)
            && let Ok(output) = cmd.stdin(std::process::Stdio::null()).output()
        {
            out.push_str(&format!("== {}\n", argv.join(" ")));
            out.push_str(&String::from_utf8_lossy(&output.stdout));
            out.push_str(&String::from_utf8_lossy(&output.stderr));
        }
    }
    out
}

fn start_entrypoint(
    inst: &Instance,
    config: &ImageConfiguration,
    log_dir: &Path,
    boot: bool,
) -> Result<Option<RunningInstance>, String> {
    let Some(c) = config.config() else {
        return Ok(None);
    };
    let mut argv = c.entrypoint().clone().unwrap_or_default();
    argv.extend(c.cmd().clone().unwrap_or_default());
    if boot {
        argv = vec!["/sbin/init".to_string()];
    }
    if argv.is_empty() {
        return Ok(None);
    }
    let env = c
        .env()
        .clone()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let spec = InstanceSpec {
        id: format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        root: inst.root.host_path().to_path_buf(),
        argv,
        env,
        cwd: c.working_dir().clone().unwrap_or_else(|| "/".into()),
        hostname: inst.hostname.clone(),
        log_dir: log_dir.to_path_buf(),
        memory_max: None,
        pids_max: None,
        boot,
    };
    let running = RunningInstance::start(&spec).map_err(|e| e.to_string())?;
    if !boot {
        // Give the service a moment to bind before the tests start knocking;
        // tests should still retry, as they would against a booting server.
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Some(running))
}
