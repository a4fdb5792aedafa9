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

/// `word` as one shell word, quoted only when a shell would need it, so
/// that logged command lines can be pasted into a terminal and generated
/// scripts read plainly.
pub fn quote(word: &str) -> String {
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

/// The command line as a shell would read it, with the credentials of any
/// URL in it (`https://user:token@host/...`) masked: it goes to logs and
/// errors.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| quote(&mask_userinfo(&w.to_string_lossy())))
        .collect::<Vec<_>>()
        .join(" ")
}

fn mask_userinfo(word: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = word.find("://") else {
        return word.into();
    };
    let rest = &word[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{}***{}", &word[..scheme_end + 3], &rest[at..]).into(),
        None => word.into(),
    }
}

/// Runs `cmd` to completion with stdout and stderr captured; a non-zero
/// exit is an error that names the command and shows the end of stderr.
pub fn run(cmd: &mut Command) -> Result<Output, ToolError> {
    run_with_input(cmd, None)
}

/// [`run`], with `input` written to the tool's standard input (closed
/// after it); without input the tool reads nothing.
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>) -> Result<Output, ToolError> {
    let output = output(cmd, input)?;
    check(cmd, output)
}

/// Runs `cmd` to completion and returns its output whatever its exit
/// status, for tools whose status means something other than failure
/// (a version probe, a comparison).
pub fn output(cmd: &mut Command, input: Option<&[u8]>) -> Result<Output, ToolError> {
    use std::io::Write;
    use std::process::Stdio;
    let line = command_line(cmd);
    let program = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(command = %line, "running host tool");
    let spawn_error = |error: io::Error| {
        if error.kind() == io::ErrorKind::NotFound {
            ToolError::NotFound { program }
        } else {
            ToolError::Spawn {
                command: line.clone(),
                error,
            }
        }
    };
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A tool that exits without reading all of it fails on its own
        // terms; its status and stderr say more than a broken pipe.
        if let Err(error) = stdin.write_all(input)
            && error.kind() != io::ErrorKind::BrokenPipe
        {
            return Err(ToolError::Spawn {
                command: line.clone(),
                error,
            });
        }
    }
    child.wait_with_output().map_err(|error| ToolError::Spawn {
        command: line.clone(),
        error,
    })
}

fn check(cmd: &Command, output: Output) -> Result<Output, ToolError> {
    let line = command_line(cmd);
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

/// Reads `stream` line by line, as lossy UTF-8 without the line ending,
/// handing each line to `each` until the stream ends or `each` says stop.
/// How the output of builds and component steps reaches their logs while
/// they run: a line can be any length, and invalid UTF-8 loses nothing
/// around it.
pub fn each_line(stream: impl io::Read, mut each: impl FnMut(String) -> bool) {
    use std::io::BufRead;
    let mut reader = io::BufReader::new(stream);
    let mut buf = Vec::new();
    while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
        let line = String::from_utf8_lossy(&buf)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        buf.clear();
        if !each(line) {
            return;
        }
    }
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
    fn quoted_words_come_back_whole_from_a_shell() {
        assert_eq!(quote("/usr/bin/kiln"), "/usr/bin/kiln");
        for word in ["", "it's", "a b", "$(id)", "`id`", "x\ny", "*", "~", "'\''"] {
            let out = run(Command::new("/bin/busybox").args([
                "sh",
                "-c",
                &format!("printf %s {}", quote(word)),
            ]))
            .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), word, "{word:?}");
        }
    }

    #[test]
    fn input_reaches_the_tool_and_output_keeps_a_failing_status() {
        let out = run_with_input(
            Command::new("/bin/busybox").args(["tr", "a-z", "A-Z"]),
            Some(b"deb http://deb.debian.org/debian bookworm main\n"),
        )
        .unwrap();
        assert_eq!(
            out.stdout,
            b"DEB HTTP://DEB.DEBIAN.ORG/DEBIAN BOOKWORM MAIN\n"
        );
        let out = output(
            Command::new("/bin/busybox").args(["sh", "-c", "echo v1; exit 1"]),
            None,
        )
        .unwrap();
        assert_eq!(
            (out.status.code(), out.stdout.as_slice()),
            (Some(1), &b"v1\n"[..])
        );
    }

    #[test]
    fn credentials_in_urls_never_reach_the_logged_command_line() {
        let mut cmd = Command::new("git");
        cmd.args([
            "clone",
            "https://kiln:s3cr3t@git.example.com/app.git",
            "ssh://git@host/x",
            "/srv/a@b",
        ]);
        let line = command_line(&cmd);
        assert!(
            !line.contains("s3cr3t") && !line.contains("kiln:"),
            "{line}"
        );
        assert_eq!(
            line,
            "git clone 'https://***@git.example.com/app.git' 'ssh://***@host/x' /srv/a@b"
        );
    }

    #[test]
    fn each_line_splits_on_newlines_and_keeps_a_last_line_without_one() {
        let mut lines = Vec::new();
        each_line(&b"one\r\ntwo \xff\n\nlast"[..], |l| {
            lines.push(l);
            true
        });
        assert_eq!(lines, ["one", "two \u{fffd}", "", "last"]);
        let mut first = Vec::new();
        each_line(&b"a\nb\n"[..], |l| {
            first.push(l);
            false
        });
        assert_eq!(first, ["a"]);
    }

    #[test]
    fn missing_program_is_not_found() {
        let err = run(&mut Command::new("kiln-no-such-tool")).unwrap_err();
        assert!(matches!(err, ToolError::NotFound { .. }));
        assert!(err.to_string().contains("kiln-no-such-tool"), "{err}");
    }
}
