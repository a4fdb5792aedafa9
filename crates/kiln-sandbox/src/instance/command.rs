//! Recognising an instance's bwrap process from its command line, which
//! exec.rs builds (`Bubblewrap::instance_command`) with the sandbox's root
//! bound first: `bwrap --bind ROOT / ...`.

use std::ffi::{OsStr, OsString};

/// The host directory a bwrap command line binds as the sandbox's `/`.
pub(crate) fn sandbox_root(cmdline: &[OsString]) -> Option<&OsStr> {
    let (argv0, args) = cmdline.split_first()?;
    if std::path::Path::new(argv0).file_name()? != "bwrap" {
        return None;
    }
    match args {
        [bind, root, slash, ..] if bind == "--bind" && slash == "/" => Some(root.as_os_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Bubblewrap, ProcessSpec};
    use std::process::Command;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn instance(root: &std::path::Path, env: Vec<(String, String)>) -> Command {
        Bubblewrap::with_path("/usr/bin/bwrap".into())
            .instance_command(
                root,
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
    fn an_instance_has_its_network_and_no_parent_tie() {
        let root = tempfile::tempdir().unwrap();
        let cmd = instance(root.path(), vec![("X".into(), "--die-with-parent".into())]);
        let a = args(&cmd);
        let at = a.iter().position(|a| a == "--").unwrap();
        let (before, after) = (&a[..at], &a[at + 1..]);
        assert_eq!(after, ["httpd", "--die-with-parent"]);
        assert_eq!(before.iter().filter(|a| *a == "--unshare-net").count(), 1);
        assert!(!before.iter().any(|a| a == "--die-with-parent"));
        // The environment is bwrap's own, never its command line.
        let env: Vec<_> = cmd.get_envs().collect();
        assert!(
            env.contains(&(
                std::ffi::OsStr::new("X"),
                Some(std::ffi::OsStr::new("--die-with-parent"))
            )),
            "{env:?}"
        );
        assert!(!before.iter().any(|a| a == "--setenv" || a == "X"));
        assert!(
            before
                .windows(3)
                .any(|w| w == ["--ro-bind", "/proc/sys", "/proc/sys"])
        );
        assert!(before.iter().any(|a| a == "--seccomp"));
        assert!(
            before
                .windows(2)
                .any(|w| w == ["--cap-drop", "CAP_SYS_ADMIN"])
        );
        assert_eq!(cmd.get_program(), "/usr/bin/bwrap");
    }

    #[test]
    fn finds_the_root_of_a_command_line() {
        let root = tempfile::tempdir().unwrap();
        let cmd = instance(root.path(), Vec::new());
        let line: Vec<OsString> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(OsStr::to_owned)
            .collect();
        assert_eq!(sandbox_root(&line), Some(root.path().as_os_str()));
        let mut other = line.clone();
        other[0] = "/usr/bin/unshare".into();
        assert_eq!(sandbox_root(&other), None);
        let mut moved = line.clone();
        moved.swap(1, 4);
        assert_eq!(sandbox_root(&moved), None);
    }
}
