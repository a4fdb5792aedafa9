//! `run-as`: a phase's commands run as a Linux user of the build image,
//! as CodeBuild runs them. The user is looked up in the image's own
//! `/etc/passwd`; inside the sandbox, the image's `setpriv` (util-linux,
//! in every Debian, Ubuntu and Amazon Linux image) drops to that user and
//! its groups before the shell starts, so what the commands write is the
//! user's, on the host too. As CodeBuild does, the user is granted read
//! and run permissions on the source; `/tmp` is writable by every user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::buildspec::{Buildspec, PhaseName, RunAs};
use crate::run::BuildError;

/// Where an image keeps `setpriv`.
const SETPRIV: &[&str] = &["usr/bin/setpriv", "bin/setpriv"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// `setpriv` inside the sandbox.
    setpriv: String,
}

fn refused(run_as: &RunAs, why: String) -> BuildError {
    BuildError::RunAs {
        at: run_as.at.clone(),
        user: run_as.user.clone(),
        why,
    }
}

/// The user `run_as` names, from the build image `root`.
pub(crate) fn resolve(root: &Path, run_as: &RunAs) -> Result<User, BuildError> {
    let passwd = root.join("etc/passwd");
    let text = fs::read_to_string(&passwd)
        .map_err(|e| refused(run_as, format!("cannot read {}: {e}", passwd.display())))?;
    let entry = text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == run_as.user).then(|| (f[2].parse::<u32>(), f[3].parse::<u32>()))
    });
    let (uid, gid) = match entry {
        Some((Ok(uid), Ok(gid))) => (uid, gid),
        Some(_) => {
            return Err(refused(
                run_as,
                format!(
                    "its entry in {} has no numeric uid and gid",
                    passwd.display()
                ),
            ));
        }
        None => {
            return Err(refused(
                run_as,
                format!(
                    "no such user in the build image ({} has no entry for it)",
                    passwd.display()
                ),
            ));
        }
    };
    // busybox's setpriv cannot change users: only one that knows
    // --reuid will do.
    let setpriv = SETPRIV
        .iter()
        .find(|p| {
            fs::read(root.join(p))
                .is_ok_and(|bin| bin.windows(7).any(|w| w == b"--reuid"))
        })
        .ok_or_else(|| {
            refused(
                run_as,
                format!(
                    "the build image {} has no setpriv that changes users (util-linux's /usr/bin/setpriv): install util-linux in it",
                    root.display()
                ),
            )
        })?;
    Ok(User {
        name: run_as.user.clone(),
        uid,
        gid,
        setpriv: format!("/{setpriv}"),
    })
}

/// The user of each phase that runs as one (its own `run-as`, or the
/// buildspec's), checked before any phase runs.
pub(crate) fn users(spec: &Buildspec, root: &Path) -> Result<Vec<(PhaseName, User)>, BuildError> {
    let mut users = Vec::new();
    for phase in &spec.phases {
        if let Some(run_as) = phase.run_as.as_ref().or(spec.run_as.as_ref()) {
            users.push((phase.name, resolve(root, run_as)?));
        }
    }
    Ok(users)
}

/// Runs the rest of `cmd`'s arguments as `user`, with the groups the
/// image gives it.
pub(crate) fn drop_to(cmd: &mut Command, user: &User) {
    cmd.arg(&user.setpriv)
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .arg("--inh-caps=-all")
        .arg("--ambient-caps=-all")
        .arg("--");
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    visit(dir)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, visit)?;
        } else if !entry.file_type()?.is_symlink() {
            visit(&path)?;
        }
    }
    Ok(())
}

/// Before a phase runs as `user`: the source readable (and its
/// directories and programs runnable) by every user, and kiln's own state
/// directory, where the phase's shell leaves its results, the user's.
pub(crate) fn grant(user: &User, src: &Path, state: &Path) -> Result<(), BuildError> {
    let io = |path: PathBuf| {
        move |source| BuildError::Io {
            what: "cannot grant the run-as user access to",
            path,
            source,
        }
    };
    walk(src, &mut |p| {
        let meta = fs::symlink_metadata(p)?;
        let mode = meta.permissions().mode();
        let runnable = meta.is_dir() || mode & 0o111 != 0;
        let add = if runnable { 0o555 } else { 0o444 };
        if mode & add != add {
            fs::set_permissions(p, fs::Permissions::from_mode(mode | add))?;
        }
        Ok(())
    })
    .map_err(io(src.to_path_buf()))?;
    walk(state, &mut |p| {
        // Never through a link: an earlier phase may have left one.
        std::os::unix::fs::lchown(p, Some(user.uid), Some(user.gid))
    })
    .map_err(io(state.to_path_buf()))?;
    Ok(())
}
