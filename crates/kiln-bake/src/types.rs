//! What a bake takes and gives back: its options and observer, its
//! report, and its errors. The bake itself (bake.rs), the sandbox it runs
//! components in (sandbox.rs) and its test gate (test_gate.rs) all speak
//! these, so they live apart from each of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::parent::ParentError;
use kiln_doc::Diagnostics;
use kiln_image::Status;
use kiln_image::import::ImportError;
use kiln_image::store::StoreError;
use kiln_sandbox::Isolation;
use kiln_toe::Observer;

pub struct BakeOptions {
    pub isolation: Arc<dyn Isolation>,
    /// Where each component run's `TOE_...` log directory goes.
    pub log_root: PathBuf,
    pub artifacts: Option<kiln_toe::ArtifactStore>,
    pub source_commit: Option<String>,
    /// More of the source's lineage (AuthorDate, BranchName, ...), as
    /// `dev.kiln.source.KEY` labels that become a template's Source/KEY tags.
    pub source_labels: BTreeMap<String, String>,
    /// Keep the build root of a failed component mounted for a look inside.
    pub keep_on_failure: bool,
}

/// Progress of a bake, and the steps of the components it runs.
pub trait BakeObserver: Observer {
    fn event(&mut self, message: &str);
}

#[derive(Debug, serde::Serialize)]
pub struct ComponentReport {
    pub path: PathBuf,
    pub cached: bool,
    pub layer: String,
    pub size: u64,
    pub seconds: f64,
    pub log: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "result")]
pub enum TestReport {
    Disabled,
    /// No component has a test phase.
    None,
    Passed {
        log: String,
    },
    Failed {
        log: String,
        message: String,
    },
}

#[derive(Debug, serde::Serialize)]
pub struct BakeReport {
    pub image: String,
    pub digest: String,
    pub status: Status,
    /// Nothing changed: the image is the one an earlier bake made.
    pub unchanged: bool,
    pub components: Vec<ComponentReport>,
    pub tests: TestReport,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error(transparent)]
    Document(#[from] Diagnostics),
    #[error(transparent)]
    Parent(#[from] ParentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("component {component}: {what}: {error}")]
    Setup {
        component: String,
        what: &'static str,
        error: String,
    },
    #[error(transparent)]
    Component(Box<ComponentFailure>),
}

/// A component step that failed during build or validate.
#[derive(Debug, thiserror::Error)]
#[error("component {component}: phase {phase}, step {step} failed: {message}\n  log: {log}{}", kept.as_ref().map(|k| format!("\n  build root kept at {k} (unmount it with `umount {k}` when done)")).unwrap_or_default())]
pub struct ComponentFailure {
    pub component: String,
    pub phase: String,
    pub step: String,
    pub message: String,
    pub log: String,
    pub kept: Option<String>,
}

pub(crate) fn setup(component: &str, what: &'static str, e: impl std::fmt::Display) -> BakeError {
    BakeError::Setup {
        component: component.to_string(),
        what,
        error: e.to_string(),
    }
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}
