//! kiln's pipelines: kiln.yaml, the git source, and executions that take
//! a commit through Source, Build, Version, Bake and Deploy, as
//! CodePipeline takes it through CodeBuild, a Lambda, Image Builder and
//! CloudFormation in the AWS sample kiln re-implements.

pub mod config;
pub mod db;
pub mod engine;
pub mod git;
mod manager;
pub mod model;
pub mod stage_error;
pub mod stages;
pub mod vars;

pub use config::{Config, ExecutionMode};
pub use manager::{DestroyReport, PipelineError, Pipelines, read_log};
pub use model::*;
