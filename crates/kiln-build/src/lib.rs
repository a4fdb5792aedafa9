//! The Build stage of kiln's pipeline: a CodeBuild-compatible
//! `buildspec.yml` (version 0.2) run in a sandbox that can write only its
//! workspace, and the artifacts it leaves, stored by digest.

pub mod artifacts;
pub mod batch;
pub mod buildspec;
pub mod cache;
mod files;
pub mod glob;
pub mod reports;
pub mod run;
mod run_as;
mod script;
pub mod secrets;
mod workspace;

pub use artifacts::{Artifact, ArtifactError, ArtifactSet};
pub use buildspec::{Artifacts, Buildspec, Env, OnFailure, Phase, PhaseName, Shell, parse};
pub use cache::CacheReport;
pub use reports::{FailedTest, FileFormat, Report};
pub use run::{
    BuildError, BuildObserver, BuildOptions, BuildReport, NoObserver, ParameterValue, PhaseReport,
    PhaseStatus, run,
};
