//! Why a stage failed. Each kind keeps the error it came from, so that a
//! caller (or a log with the error's chain) sees which file, group or
//! parameter it concerns and what the layer below said about it.

use std::path::PathBuf;

use kiln_fleet::FleetError;
use kiln_params::ParamError;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// kiln.yaml, a buildspec: every problem with its position.
    #[error(transparent)]
    Document(#[from] kiln_doc::Diagnostics),
    #[error(
        "{file}: name: this file names pipeline {found:?}, but it was read for pipeline {expected:?}"
    )]
    NameMismatch {
        file: String,
        found: String,
        expected: String,
    },
    #[error("{namespace}.{name} is not set: an earlier stage did not run")]
    MissingVariable { namespace: String, name: String },
    #[error(transparent)]
    Source(#[from] crate::git::GitError),
    #[error(transparent)]
    Store(#[from] kiln_image::StoreError),
    #[error("build.image {image}: {source}")]
    BuildImage {
        image: String,
        source: kiln_image::StoreError,
    },
    #[error(transparent)]
    Import(#[from] kiln_image::import::ImportError),
    #[error(transparent)]
    Build(#[from] kiln_build::BuildError),
    /// The build ran and a phase failed: CodeBuild's own words.
    #[error("{0}")]
    BuildFailed(String),
    #[error("storing the artifacts in {}: {source}", path.display())]
    Artifacts {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image.components {}: {message}", path.display())]
    Parameter { path: PathBuf, message: String },
    #[error("image.components {}: {source}", path.display())]
    Component {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Params(#[from] ParamError),
    #[error("version {version}: {source}")]
    Version {
        version: String,
        source: kiln_image::version::VersionError,
    },
    #[error(transparent)]
    Sandbox(#[from] kiln_sandbox::ExecError),
    #[error(transparent)]
    Bake(#[from] kiln_bake::BakeError),
    #[error("{image} failed its tests and cannot be deployed: {message} (test log: {log})")]
    TestsFailed {
        image: String,
        message: String,
        log: String,
    },
    #[error("deploy.secrets.{var}: {source}")]
    Secret { var: String, source: ParamError },
    #[error("launch template {group}: {source}")]
    Template { group: String, source: FleetError },
    #[error("group {group}: {source}")]
    Group { group: String, source: FleetError },
    #[error(
        "group {group} runs launch template {template}, not {group}; kiln will not take it over"
    )]
    NotOurGroup { group: String, template: String },
    #[error(
        "the rollout to template version {version} failed and the group rolled back to version {from}: {reason}"
    )]
    RolledBack {
        version: u32,
        from: u32,
        reason: String,
    },
    #[error("the group did not converge within deploy.timeout: {state}")]
    NotConverged { state: String },
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
}
