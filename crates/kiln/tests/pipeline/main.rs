//! Pipelines as a user runs them: a git repository with kiln.yaml, the
//! daemon, commits, executions stage by stage, and `kiln destroy`.

#[path = "../common/mod.rs"]
mod common;
mod support;

mod build_features;
mod demo;
mod executions;
mod recovery;
