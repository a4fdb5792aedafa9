//! The build's workspace on the host: the source copied in, and what the
//! phases leave in their state directory.

use std::fs;
use std::path::Path;

use crate::buildspec::Buildspec;
use crate::run::BuildError;

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
