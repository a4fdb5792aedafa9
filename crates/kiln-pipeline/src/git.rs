//! The source: a git repository (a local path or any URL git can fetch)
//! and a branch, mirrored into the state directory. git itself does the
//! fetching, so every transport and credential helper a user has works.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use kiln_sandbox::tool::ToolError;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git is not installed (apt-get install git)")]
    Missing,
    #[error("git {args}: {message}")]
    Failed { args: String, message: String },
    #[error("branch {branch:?} does not exist in {repository}")]
    NoBranch { repository: String, branch: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, GitError>;

fn git(dir: Option<&Path>, args: &[&str]) -> Result<Vec<u8>> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    // Nothing may prompt: the daemon has no terminal.
    cmd.args(args).env("GIT_TERMINAL_PROMPT", "0");
    match kiln_sandbox::tool::run(&mut cmd) {
        Ok(out) => Ok(out.stdout),
        Err(ToolError::NotFound { .. }) => Err(GitError::Missing),
        Err(ToolError::Failed { stderr_tail, .. }) => Err(GitError::Failed {
            args: args.join(" "),
            message: stderr_tail,
        }),
        Err(e) => Err(GitError::Failed {
            args: args.join(" "),
            message: e.to_string(),
        }),
    }
}

fn text(dir: Option<&Path>, args: &[&str]) -> Result<String> {
    Ok(String::from_utf8_lossy(&git(dir, args)?).trim().to_string())
}

/// A repository as the user names it: a URL stays as it is, a local path
/// becomes absolute so that the daemon finds it from anywhere.
pub fn normalize(repository: &str) -> String {
    if repository.contains("://") {
        return repository.to_string();
    }
    // user@host:path is git's scp-like syntax unless such a path exists here.
    std::fs::canonicalize(repository)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| repository.to_string())
}

/// The repository's name, as CodePipeline's RepositoryName.
pub fn repository_name(repository: &str) -> String {
    let trimmed = repository.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    let last = last.strip_suffix(".git").unwrap_or(last);
    if last.is_empty() {
        "repository".into()
    } else {
        last.to_string()
    }
}

/// A bare mirror of one branch of the repository.
pub struct Mirror {
    pub dir: PathBuf,
    pub repository: String,
    pub branch: String,
}

impl Mirror {
    pub fn new(dir: PathBuf, repository: &str, branch: &str) -> Mirror {
        Mirror {
            dir,
            repository: repository.into(),
            branch: branch.into(),
        }
    }

    /// Fetches the branch and returns its head commit.
    pub fn fetch(&self) -> Result<String> {
        // The poller and an execution's Source stage may fetch at once.
        let lock = {
            static LOCKS: Mutex<BTreeMap<PathBuf, Arc<Mutex<()>>>> = Mutex::new(BTreeMap::new());
            let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(self.dir.clone()).or_default().clone()
        };
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.dir.join("HEAD").exists() {
            std::fs::create_dir_all(&self.dir).map_err(|source| GitError::Io {
                path: self.dir.clone(),
                source,
            })?;
            git(Some(&self.dir), &["init", "--bare", "--quiet"])?;
        }
        let refspec = format!("+refs/heads/{0}:refs/heads/{0}", self.branch);
        match git(
            Some(&self.dir),
            &["fetch", "--quiet", "--no-tags", &self.repository, &refspec],
        ) {
            Ok(_) => {}
            Err(GitError::Failed { message, .. })
                if message.contains("couldn't find remote ref") =>
            {
                return Err(GitError::NoBranch {
                    repository: self.repository.clone(),
                    branch: self.branch.clone(),
                });
            }
            Err(e) => return Err(e),
        }
        self.head()
    }

    /// The branch head as last fetched.
    pub fn head(&self) -> Result<String> {
        text(
            Some(&self.dir),
            &[
                "rev-parse",
                "--verify",
                &format!("refs/heads/{}^{{commit}}", self.branch),
            ],
        )
    }

    /// Writes the commit's tree into `dest` (which must not exist), through
    /// kiln's checked tar extraction.
    pub fn checkout(&self, commit: &str, dest: &Path) -> Result<()> {
        let data = git(Some(&self.dir), &["archive", "--format=tar", commit])?;
        let io = |source| GitError::Io {
            path: dest.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dest).map_err(io)?;
        let mut archive = tar::Archive::new(&data[..]);
        archive.set_preserve_permissions(true);
        for entry in archive.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            // unpack_in refuses entries that would land outside dest.
            if !entry.unpack_in(dest).map_err(io)? {
                return Err(GitError::Failed {
                    args: format!("archive {commit}"),
                    message: format!(
                        "{} leads outside the checkout",
                        entry
                            .path()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ),
                });
            }
        }
        Ok(())
    }

    /// One file of a commit, e.g. kiln.yaml.
    pub fn show(&self, commit: &str, path: &str) -> Result<String> {
        let out = git(Some(&self.dir), &["show", &format!("{commit}:{path}")])?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// CodePipeline's source variables for a commit.
    pub fn variables(&self, commit: &str) -> Result<BTreeMap<String, String>> {
        let out = text(
            Some(&self.dir),
            &["show", "-s", "--format=%H%x00%aI%x00%cI%x00%B", commit],
        )?;
        let mut parts = out.splitn(4, '\0');
        let mut next = || parts.next().unwrap_or_default().trim().to_string();
        let mut vars = BTreeMap::new();
        vars.insert("CommitId".into(), next());
        vars.insert("AuthorDate".into(), next());
        vars.insert("CommitterDate".into(), next());
        vars.insert("CommitMessage".into(), next());
        vars.insert("BranchName".into(), self.branch.clone());
        vars.insert("RepositoryName".into(), repository_name(&self.repository));
        Ok(vars)
    }
}

/// The mark that identifies hook lines kiln wrote, so that uninstalling
/// leaves a user's own hook commands alone.
pub const HOOK_MARK: &str = "# kiln trigger hook";

/// The hooks directory of a repository (work tree or bare).
pub fn hooks_dir(repository: &Path) -> Result<PathBuf> {
    let dir = text(Some(repository), &["rev-parse", "--git-path", "hooks"])?;
    let path = PathBuf::from(dir);
    Ok(if path.is_absolute() {
        path
    } else {
        repository.join(path)
    })
}

/// Adds `command` to the repository's post-commit and post-receive hooks
/// (post-commit fires in a work tree, post-receive on a push to a bare
/// repository). Returns the files written.
pub fn install_hooks(repository: &Path, command: &str) -> Result<Vec<PathBuf>> {
    let dir = hooks_dir(repository)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GitError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut written = Vec::new();
    for name in ["post-commit", "post-receive"] {
        let path = dir.join(name);
        let mut body = std::fs::read_to_string(&path).unwrap_or_default();
        body = remove_marked(&body);
        if body.trim().is_empty() {
            body = "#!/bin/sh\n".into();
        }
        if !body.ends_with('\n') {
            body.push('\n');
        }
        body.push_str(&format!("{command} {HOOK_MARK}\n"));
        std::fs::write(&path, body).map_err(io(&path))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// Takes kiln's lines out of a hook file; a file left with only its
/// shebang is removed.
pub fn uninstall_hook(path: &Path) -> std::io::Result<bool> {
    let Ok(body) = std::fs::read_to_string(path) else {
        return Ok(false);
    };
    if !body.contains(HOOK_MARK) {
        return Ok(false);
    }
    let rest = remove_marked(&body);
    if rest
        .lines()
        .all(|l| l.trim().is_empty() || l.starts_with("#!"))
    {
        std::fs::remove_file(path)?;
    } else {
        std::fs::write(path, rest)?;
    }
    Ok(true)
}

fn remove_marked(body: &str) -> String {
    body.lines()
        .filter(|l| !l.contains(HOOK_MARK))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_codecommit() {
        assert_eq!(repository_name("/srv/git/app.git"), "app");
        assert_eq!(
            repository_name("https://example.com/org/web-app"),
            "web-app"
        );
        assert_eq!(repository_name("git@example.com:org/api.git"), "api");
        assert_eq!(repository_name("/work/demo/"), "demo");
    }
}
