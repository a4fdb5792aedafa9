//! The bwrap command line of an instance. It is the bake sandbox's own
//! (exec.rs), so that both drop the same capabilities and validate specs
//! the same way, changed in two places: the instance gets a network
//! namespace of its own, and it is no longer tied to the life of the
//! process that started it.

use std::ffi::{OsStr, OsString};
use std::process::Command;

/// Added: a private network namespace, where bwrap brings up lo.
const ADDED: &str = "--unshare-net";
/// Removed: an instance outlives the daemon.
const REMOVED: &str = "--die-with-parent";

/// How many values follow each bwrap option that exec.rs passes. An option
/// missing here fails loudly, since guessing its arity would misread
/// every argument after it.
fn arity(option: &str) -> Option<usize> {
    Some(match option {
        "--bind" | "--setenv" => 2,
        "--proc" | "--dev" | "--hostname" | "--chdir" | "--cap-drop" | "--uid" | "--gid" => 1,
        "--unshare-pid" | "--unshare-ipc" | "--unshare-uts" | "--unshare-net"
        | "--unshare-user" | "--die-with-parent" | "--new-session" | "--clearenv" => 0,
        _ => return None,
    })
}

/// Options with their values up to `--`, and where the command starts.
fn options(args: &[OsString]) -> Result<(Vec<&[OsString]>, usize), String> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let Some(arg) = args.get(i) else {
            return Err("(no -- before the command)".to_owned());
        };
        let option = arg.to_string_lossy();
        if option == "--" {
            return Ok((out, i + 1));
        }
        let n = arity(&option).ok_or_else(|| option.clone().into_owned())?;
        let end = i + 1 + n;
        if end > args.len() {
            return Err(format!("{option} (missing its values)"));
        }
        out.push(&args[i..end]);
        i = end;
    }
}

/// The instance's command from the bake sandbox's; the error is the
/// option this module does not know.
pub(crate) fn for_instance(sandbox: &Command) -> Result<Command, String> {
    let args: Vec<OsString> = sandbox.get_args().map(OsStr::to_owned).collect();
    let (opts, command_at) = options(&args)?;
    let mut cmd = Command::new(sandbox.get_program());
    cmd.env_clear();
    for opt in opts.iter().filter(|o| o[0] != REMOVED) {
        cmd.args(*opt);
        if opt[0] == "--unshare-uts" {
            cmd.arg(ADDED);
        }
    }
    if !cmd.get_args().any(|a| a == ADDED) {
        cmd.arg(ADDED);
    }
    cmd.arg("--").args(&args[command_at..]);
    Ok(cmd)
}

/// The host directory a bwrap command line binds as the sandbox's `/`.
pub(crate) fn sandbox_root(cmdline: &[OsString]) -> Option<&OsStr> {
    let (argv0, args) = cmdline.split_first()?;
    if std::path::Path::new(argv0).file_name()? != "bwrap" {
        return None;
    }
    let (opts, _) = options(args).ok()?;
    opts.iter()
        .find(|o| o[0] == "--bind" && o[2] == "/")
        .map(|o| o[1].as_os_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Bubblewrap, Isolation, ProcessSpec};

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn sandbox(env: Vec<(String, String)>) -> Command {
        let root = tempfile::tempdir().unwrap();
        Bubblewrap::with_path("/usr/bin/bwrap".into())
            .command(
                root.path(),
                &ProcessSpec {
                    argv: vec!["httpd".into(), "--die-with-parent".into()],
                    env,
                    cwd: "/srv".into(),
                    hostname: "web".into(),
                },
            )
            .unwrap()
    }

    #[test]
    fn adds_the_network_and_drops_the_parent_tie_only() {
        // Values that look like options must stay where they are.
        let base = sandbox(vec![("X".into(), "--die-with-parent".into())]);
        let cmd = for_instance(&base).unwrap();
        let (before, after) = {
            let a = args(&cmd);
            let at = a.iter().position(|a| a == "--").unwrap();
            (a[..at].to_vec(), a[at + 1..].to_vec())
        };
        assert_eq!(after, ["httpd", "--die-with-parent"]);
        assert_eq!(before.iter().filter(|a| *a == "--unshare-net").count(), 1);
        let removed = args(&base).len() - (args(&cmd).len() - 1);
        assert_eq!(
            removed, 1,
            "exactly one argument less besides the added one"
        );
        assert!(
            before
                .windows(3)
                .any(|w| w == ["--setenv", "X", "--die-with-parent"])
        );
        if crate::exec::host_is_root() {
            assert!(
                before
                    .windows(2)
                    .any(|w| w == ["--cap-drop", "CAP_SYS_ADMIN"])
            );
            assert!(
                before
                    .windows(2)
                    .any(|w| w == ["--cap-drop", "CAP_NET_ADMIN"])
            );
        }
        assert_eq!(cmd.get_program(), "/usr/bin/bwrap");
    }

    #[test]
    fn finds_the_root_of_a_command_line() {
        let base = sandbox(Vec::new());
        let cmd = for_instance(&base).unwrap();
        let line: Vec<OsString> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(OsStr::to_owned)
            .collect();
        let root = sandbox_root(&line).unwrap();
        assert_eq!(Some(root), base.get_args().nth(1));
        let mut other = line.clone();
        other[0] = "/usr/bin/unshare".into();
        assert_eq!(sandbox_root(&other), None);
    }

    #[test]
    fn an_unknown_option_is_named() {
        let mut cmd = Command::new("bwrap");
        cmd.args(["--bind", "/r", "/", "--seccomp", "9", "--", "true"]);
        assert_eq!(for_instance(&cmd).unwrap_err(), "--seccomp");
    }
}
