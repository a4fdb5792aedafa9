//! Modules that run processes inside the instance: ExecuteBash,
//! ExecuteBinary, ExecutePowerShell and UpdateOS.

use std::io::Read;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Instant;

use serde_json::Value;

use super::{ActionError, Ctx, Outputs, fail, output, required, strings};
use kiln_sandbox::{Kind, ProcessSpec, Root};

/// The exit code with which a Linux script asks AWSTOE for a reboot.
pub const REBOOT_EXIT_CODE: i32 = 194;
/// The Windows equivalent, for ExecutePowerShell.
pub const WINDOWS_REBOOT_EXIT_CODE: i32 = 3010;

/// A single argument longer than this is refused by execve (MAX_ARG_STRLEN).
const MAX_SCRIPT_BYTES: usize = 128 * 1024 - 1;
/// Captured output beyond this is dropped from the step's record (the
/// console log keeps all of it).
const MAX_CAPTURE_BYTES: usize = 4 * 1024 * 1024;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds an executable inside the root, as `type NAME` would there.
pub fn find_binary(root: &Root, name: &str) -> Option<String> {
    let executable = |p: &str| matches!(root.stat(p), Ok(Some(m)) if m.kind == Kind::File && m.mode & 0o111 != 0);
    if name.contains('/') {
        return executable(name).then(|| name.to_string());
    }
    PATH.split(':')
        .map(|dir| format!("{dir}/{name}"))
        .find(|p| executable(p))
}

pub struct ProcessOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

enum Event {
    Line { err: bool, line: String },
    Closed,
    Exited(Option<i32>),
}

/// Runs `argv` inside the instance's sandbox, streaming its output into
/// the console log, and kills it at the step's deadline.
pub fn run_process(
    ctx: &mut Ctx,
    argv: Vec<String>,
    extra_env: &[(&str, &str)],
) -> Result<ProcessOutput, ActionError> {
    let instance = ctx.run.instance;
    let mut env = vec![
        ("PATH".to_string(), PATH.to_string()),
        ("HOME".to_string(), "/root".to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("USER".to_string(), "root".to_string()),
    ];
    env.extend(instance.env.iter().cloned());
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let spec = ProcessSpec {
        argv,
        env,
        cwd: instance.workdir.clone(),
        hostname: instance.hostname.clone(),
    };
    let mut command = instance
        .isolation
        .command(instance.root.host_path(), &spec)
        .map_err(|e| fail(e.to_string()))?;
    if let Some(netns) = &instance.netns {
        // In the child itself rather than through nsenter, which would
        // rebuild the command and lose the seccomp filter it hands bwrap.
        kiln_sandbox::netns::enter_in_child(&mut command, netns).map_err(|e| {
            fail(format!(
                "cannot open the network namespace {}: {e}",
                netns.display()
            ))
        })?;
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| {
        fail(format!(
            "cannot start the sandbox ({}): {e}",
            instance.isolation.name()
        ))
    })?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let readers = [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            false,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            true,
        ),
    ];
    for (stream, err) in readers {
        let Some(stream) = stream else { continue };
        let tx = tx.clone();
        std::thread::spawn(move || {
            kiln_sandbox::tool::each_line(stream, |line| {
                tx.send(Event::Line { err, line }).is_ok()
            });
            // The receiver is gone only when the step has ended already.
            let _ = tx.send(Event::Closed);
        });
    }
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let code = child.wait().ok().and_then(|s| s.code());
            // The receiver is gone only when the step has ended already.
            let _ = tx.send(Event::Exited(code));
        });
    }
    drop(tx);
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let (mut open_streams, mut code, mut exited) = (2, None, false);
    let mut timed_out = false;
    while open_streams > 0 || !exited {
        let event = match ctx.deadline {
            Some(deadline) if !timed_out => {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(ev) => ev,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        timed_out = true;
                        kill(pid);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            _ => match rx.recv() {
                Ok(ev) => ev,
                Err(_) => break,
            },
        };
        match event {
            Event::Line { err, line } => {
                let (label, buf) = if err {
                    ("Stderr", &mut stderr)
                } else {
                    ("Stdout", &mut stdout)
                };
                ctx.run
                    .log
                    .console(&format!("CmdExecution: {label}: {line}"));
                ctx.run.observer.output(&line);
                if buf.len() + line.len() < MAX_CAPTURE_BYTES {
                    buf.push_str(&line);
                    buf.push('\n');
                }
            }
            Event::Closed => open_streams -= 1,
            Event::Exited(c) => {
                exited = true;
                code = c;
            }
        }
    }
    if timed_out {
        ctx.run
            .log
            .console("CmdExecution: killed at the step's timeout");
        return Err(ActionError::Timeout(
            ctx.step.timeout_seconds.unwrap_or_default(),
        ));
    }
    ctx.run.log.console(&format!(
        "CmdExecution: ExitCode {}",
        code.map_or("signal".to_string(), |c| c.to_string())
    ));
    ctx.stdout.push_str(&stdout);
    ctx.stderr.push_str(&stderr);
    Ok(ProcessOutput {
        code,
        stdout,
        stderr,
    })
}

fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        // The sandbox dies with its bubblewrap parent (--die-with-parent),
        // taking every process of the step with it.
        // ESRCH: it has exited already, which is what is wanted.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Turns a finished process into the step's outputs, or its failure.
fn finish(out: ProcessOutput, reboot_code: i32) -> Result<Outputs, ActionError> {
    match out.code {
        Some(0) => Ok(vec![output("stdout", trim_newline(&out.stdout))]),
        Some(c) if c == reboot_code => Err(ActionError::Reboot),
        code => {
            let status = code.map_or("was killed by a signal".to_string(), |c| {
                format!("exited with status {c}")
            });
            let tail: Vec<&str> = out.stderr.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(fail(if tail.is_empty() {
                format!("the command {status}")
            } else {
                format!("the command {status}: {}", tail.join(" | "))
            }))
        }
    }
}

fn trim_newline(s: &str) -> String {
    s.strip_suffix('\n').unwrap_or(s).to_string()
}

/// The shell ExecuteBash runs with: bash, as AWSTOE does. An image without
/// bash cannot honour the module unless the user opted in to /bin/sh.
fn shell(ctx: &Ctx) -> Result<&'static str, ActionError> {
    let root = ctx.root();
    if find_binary(root, "/bin/bash").is_some() {
        return Ok("/bin/bash");
    }
    if ctx.run.instance.allow_sh && find_binary(root, "/bin/sh").is_some() {
        return Ok("/bin/sh");
    }
    Err(fail(format!(
        "ExecuteBash needs /bin/bash and the root filesystem {} has none; use a root with bash, or opt in to /bin/sh explicitly (kiln toe run --shell sh)",
        root.host_path().display()
    )))
}

pub fn execute_bash(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    let item = super::items(inputs)
        .into_iter()
        .next()
        .ok_or_else(|| fail("ExecuteBash needs inputs"))?;
    // All items form one script, so that a construct split across items
    // (an `if` in one, its `fi` in another) works as on AWSTOE.
    let script = strings(item, "commands").join("\n");
    if script.len() > MAX_SCRIPT_BYTES {
        return Err(fail(format!(
            "the commands are {} bytes; a script is limited to {MAX_SCRIPT_BYTES}",
            script.len()
        )));
    }
    let sh = shell(ctx)?;
    let out = run_process(
        ctx,
        vec![sh.to_string(), "-c".into(), script, "input.sh".into()],
        &[],
    )?;
    finish(out, REBOOT_EXIT_CODE)
}

pub fn execute_binary(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    let item = super::items(inputs)
        .into_iter()
        .next()
        .ok_or_else(|| fail("ExecuteBinary needs inputs"))?;
    let path = required(item, "path")?;
    let resolved = ctx.path(&path);
    if find_binary(ctx.root(), &resolved).is_none() {
        return Err(fail(format!(
            "{path} is not an executable file in the root filesystem"
        )));
    }
    let mut argv = vec![resolved];
    argv.extend(strings(item, "arguments"));
    let out = run_process(ctx, argv, &[])?;
    finish(out, REBOOT_EXIT_CODE)
}

const PWSH: &[&str] = &[
    "/usr/bin/pwsh",
    "/usr/local/bin/pwsh",
    "/opt/microsoft/powershell/7/pwsh",
];

pub fn execute_powershell(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    let item = super::items(inputs)
        .into_iter()
        .next()
        .ok_or_else(|| fail("ExecutePowerShell needs inputs"))?;
    let Some(pwsh) = PWSH.iter().find(|p| find_binary(ctx.root(), p).is_some()) else {
        return Err(fail(format!(
            "ExecutePowerShell needs PowerShell (pwsh), and the root filesystem {} has none (looked for {}); Windows components run on the AWS target",
            ctx.root().host_path().display(),
            PWSH.join(", ")
        )));
    };
    let mut argv = vec![
        pwsh.to_string(),
        "-NoProfile".into(),
        "-NonInteractive".into(),
    ];
    match super::text(item, "file") {
        Some(file) => argv.extend(["-File".to_string(), ctx.path(&file)]),
        None => argv.extend(["-Command".to_string(), strings(item, "commands").join("\n")]),
    }
    let out = run_process(ctx, argv, &[])?;
    finish(out, WINDOWS_REBOOT_EXIT_CODE)
}

/// UpdateOS with the root's own package manager.
pub fn update_os(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    let item = super::items(inputs)
        .into_iter()
        .next()
        .cloned()
        .unwrap_or_default();
    let (include, exclude) = (strings(&item, "include"), strings(&item, "exclude"));
    for name in include.iter().chain(&exclude) {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-._:*".contains(c))
        {
            return Err(fail(format!("{name:?} is not a package name")));
        }
    }
    let root = ctx.root();
    let script = if find_binary(root, "apt-get").is_some() {
        let upgrade = if include.is_empty() {
            "apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade".to_string()
        } else {
            format!(
                "apt-get -y -o Dpkg::Options::=--force-confold install --only-upgrade {}",
                include.join(" ")
            )
        };
        // Held packages are what apt-get leaves alone; the hold is lifted
        // afterwards so the image keeps no trace of the exclusion.
        let (hold, unhold) = if exclude.is_empty() {
            (String::new(), String::new())
        } else {
            let list = exclude.join(" ");
            (
                format!("apt-mark hold {list} >/dev/null\n"),
                format!("\nstatus=$?\napt-mark unhold {list} >/dev/null\nexit $status"),
            )
        };
        format!("set -e\napt-get update\n{hold}set +e\n{upgrade}{unhold}")
    } else if let Some(tool) = ["dnf", "yum"]
        .into_iter()
        .find(|t| find_binary(root, t).is_some())
    {
        let excludes: String = exclude.iter().map(|e| format!(" --exclude={e}")).collect();
        format!("{tool} -y upgrade{excludes} {}", include.join(" "))
    } else {
        return Err(fail(format!(
            "UpdateOS found no package manager (apt-get, dnf or yum) in the root filesystem {}",
            root.host_path().display()
        )));
    };
    let out = run_process(
        ctx,
        vec!["/bin/sh".into(), "-c".into(), script],
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )?;
    finish(out, REBOOT_EXIT_CODE).map(|_| Vec::new())
}
