//! What a build starts from and leaves: its environment, the source
//! copied into its workspace, and what the phases leave in their state
//! directory.

use std::fs;
use std::path::Path;

use crate::buildspec::Buildspec;
use crate::run::{BuildError, BuildOptions, PATH, SRC_DIR};

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn read_exported(spec: &Buildspec, state: &Path) -> Vec<(String, String)> {
    spec.env
        .exported_variables
        .iter()
        .filter_map(|var| {
            fs::read(state.join("exported").join(var))
                .ok()
                .map(|v| (var.clone(), String::from_utf8_lossy(&v).into_owned()))
        })
        .collect()
}

/// Copies a source tree, keeping symlinks as symlinks and file modes.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    for entry in fs::read_dir(from).map_err(io("cannot read the source", from))? {
        let entry = entry.map_err(io("cannot read the source", from))?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        let kind = entry.file_type().map_err(io("cannot read", &path))?;
        if kind.is_dir() {
            fs::create_dir_all(&dest).map_err(io("cannot create", &dest))?;
            copy_tree(&path, &dest)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(io("cannot read", &path))?;
            std::os::unix::fs::symlink(target, &dest).map_err(io("cannot create", &dest))?;
        } else if kind.is_file() {
            fs::copy(&path, &dest).map_err(io("cannot copy", &path))?;
        }
    }
    Ok(())
}

/// A build's variables, in order.
pub(crate) type Environment = Vec<(String, String)>;

/// The build's environment, lowest precedence first, and the values of
/// its secrets, which the log masks.
pub(crate) fn environment(
    spec: &Buildspec,
    opts: &BuildOptions,
) -> Result<(Environment, Vec<String>), BuildError> {
    let start_ms = jiff::Timestamp::now().as_millisecond().to_string();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), "/root".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("USER".into(), "root".into()),
        (
            "CODEBUILD_BUILD_ID".into(),
            format!("kiln:{}", uuid::Uuid::new_v4()),
        ),
        ("CODEBUILD_BUILD_NUMBER".into(), "1".into()),
        ("CODEBUILD_START_TIME".into(), start_ms),
        ("CODEBUILD_INITIATOR".into(), "kiln".into()),
    ];
    env.extend(spec.env.variables.iter().cloned());
    // Values masked in the log: secrets, and SecureString parameters.
    let mut secrets = Vec::new();
    for (var, name) in &spec.env.parameter_store {
        let found = opts
            .parameters
            .as_ref()
            .and_then(|lookup| lookup(name))
            .ok_or_else(|| BuildError::Parameter {
                var: var.clone(),
                name: name.clone(),
            })?;
        if found.secure {
            secrets.push(found.value.clone());
        }
        env.push((var.clone(), found.value));
    }
    for (var, reference) in &spec.env.secrets_manager {
        let lookup = |id: &str| opts.secrets.as_ref().map_or(Ok(None), |l| l(id));
        let value =
            crate::secrets::resolve(reference, &lookup).map_err(|why| BuildError::Secret {
                var: var.clone(),
                why,
            })?;
        secrets.push(value.clone());
        env.push((var.clone(), value));
    }
    env.extend(opts.env.iter().cloned());
    env.push(("CODEBUILD_SRC_DIR".into(), SRC_DIR.into()));
    // Later entries win; keep one of each, in first-seen order.
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        match out.iter_mut().find(|(ok, _)| *ok == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    Ok((out, secrets))
}
