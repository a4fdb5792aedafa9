//! The one way kiln runs external host tools (mkfs.ext4, qemu-img, skopeo,
//! git, busybox): the command line is logged, output is captured, and a
//! failure carries the tail of stderr, which is where tools explain
//! themselves.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output};

/// How many stderr lines a failure keeps: enough for the explanation,
/// short enough for a terminal.
const STDERR_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{program} not found: it is not installed or not on PATH")]
    NotFound { program: String },
    #[error("start {command}: {error}")]
    Spawn { command: String, error: io::Error },
    #[error("{command} failed with {}{}", describe(.status), tail_suffix(.stderr_tail))]
    Failed {
        command: String,
        status: ExitStatus,
        /// The last lines of stderr.
        stderr_tail: String,
        /// The whole captured output, for callers that parse it.
        output: Output,
    },
}

fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => status.to_string(),
    }
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        " (no stderr)".to_owned()
    } else {
        format!(":\n{tail}")
    }
}

/// The last `n` non-empty lines of `text`.
fn tail(text: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Quotes a word only when a shell would need it, so that logged command
/// lines can be pasted into a terminal.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The command line as a shell would read it.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| quote(&w.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with stdout and stderr captured; a non-zero
/// exit is an error that names the command and shows the end of stderr.
pub fn run(cmd: &mut Command) -> Result<Output, ToolError> {
    let line = command_line(cmd);
    tracing::debug!(command = %line, "running host tool");
    let output = cmd.output().map_err(|error| {
        if error.kind() == io::ErrorKind::NotFound {
            ToolError::NotFound {
                program: cmd.get_program().to_string_lossy().into_owned(),
            }
        } else {
            ToolError::Spawn {
                command: line.clone(),
                error,
            }
        }
    })?;
    if output.status.success() {
        return Ok(output);
    }
    Err(ToolError::Failed {
        command: line,
        status: output.status,
        stderr_tail: tail(&output.stderr, STDERR_TAIL_LINES),
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_returns_output() {
        let out = run(Command::new("/bin/busybox").args(["echo", "hello"])).unwrap();
        assert_eq!(out.stdout, b"hello\n");
    }

    #[test]
    fn failure_names_command_status_and_stderr_tail() {
        let script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 3";
        let err = run(Command::new("/bin/busybox").args(["sh", "-c", script])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/bin/busybox sh -c 'for i in"), "{msg}");
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.contains("line30") && msg.contains("line11"), "{msg}");
        assert!(!msg.contains("line10\n"), "{msg}");
    }

    #[test]
    fn missing_program_is_not_found() {
        let err = run(&mut Command::new("kiln-no-such-tool")).unwrap_err();
        assert!(matches!(err, ToolError::NotFound { .. }));
        assert!(err.to_string().contains("kiln-no-such-tool"), "{err}");
    }
}
