//! The roots a bake runs in: the layers below, read-only, under an
//! overlay with a fresh upper directory, as a kiln-toe instance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::recipe::Recipe;
use crate::types::{BakeError, BakeOptions, setup};
use kiln_image::Store;
use kiln_sandbox::{OverlayMount, Root};
use kiln_toe::{Instance, RunOptions};

/// A root over `lowers` (bottom first) with a fresh upper directory.
pub(crate) struct Overlay {
    pub(crate) dir: PathBuf,
    pub(crate) mount: Option<OverlayMount>,
}

impl Overlay {
    pub(crate) fn mount(
        store: &Store,
        lowers: &[PathBuf],
        what: &str,
    ) -> Result<Overlay, BakeError> {
        let dir = store.temp_path(what);
        let top_first: Vec<&Path> = lowers.iter().rev().map(PathBuf::as_path).collect();
        let mount = OverlayMount::mount(
            &top_first,
            &dir.join("upper"),
            &dir.join("work"),
            &dir.join("merged"),
        )
        .map_err(|e| setup(what, "overlay", e))?;
        Ok(Overlay {
            dir,
            mount: Some(mount),
        })
    }

    pub(crate) fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }

    pub(crate) fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    pub(crate) fn unmount(&mut self) -> Result<(), BakeError> {
        if let Some(m) = self.mount.take() {
            m.unmount().map_err(|e| setup("overlay", "unmount", e))?;
        }
        Ok(())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.mount.is_some()
            && let Err(e) = self.unmount()
        {
            // Removing the directory now would remove through the mount;
            // the next bake's clean-up of the temporary area unmounts it.
            tracing::warn!(dir = %self.dir.display(), error = %e, "bake root left mounted");
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "bake root not removed; the next bake's clean-up removes it");
        }
    }
}

pub(crate) fn instance(
    root: &Path,
    recipe: &Recipe,
    opts: &BakeOptions,
) -> Result<Instance, BakeError> {
    let root = Root::open(root).map_err(|e| setup(&recipe.name, "root", e))?;
    root.create_dir_all(&recipe.working_directory, 0o755)
        .map_err(|e| setup(&recipe.name, "working directory", e))?;
    Ok(Instance {
        root,
        isolation: opts.isolation.clone(),
        hostname: recipe.name.clone(),
        workdir: recipe.working_directory.clone(),
        env: recipe
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        allow_sh: recipe.allow_sh,
        netns: None,
    })
}

pub(crate) fn run_options(
    opts: &BakeOptions,
    params: &BTreeMap<String, String>,
    phases: &[&str],
    deadline: Option<Instant>,
) -> RunOptions {
    RunOptions {
        phases: Some(phases.iter().map(|p| p.to_string()).collect()),
        parameters: params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        execution_id: None,
        log_root: opts.log_root.clone(),
        artifacts: opts.artifacts.clone(),
        deadline,
    }
}
