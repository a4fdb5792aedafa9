//! Pipelines and executions as the API shows them. Statuses are
//! CodePipeline's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The stages of every kiln pipeline, in order.
pub const STAGES: [&str; 5] = ["Source", "Build", "Version", "Bake", "Deploy"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pipeline {
    pub name: String,
    pub repository: String,
    pub branch: String,
    /// kiln.yaml's path in the repository.
    pub file: String,
    /// kiln.yaml as the last execution read it.
    pub config: String,
    pub last_commit: String,
    pub next_schedule: String,
    /// Hook files `kiln hooks install` wrote.
    pub hooks: Vec<String>,
    pub created: String,
    pub updated: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ExecutionStatus {
    /// Waiting for the execution before it to finish.
    Pending,
    InProgress,
    Succeeded,
    Failed,
    /// A newer execution overtook it (execution mode SUPERSEDED).
    Superseded,
    Stopped,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Pending => "Pending",
            ExecutionStatus::InProgress => "InProgress",
            ExecutionStatus::Succeeded => "Succeeded",
            ExecutionStatus::Failed => "Failed",
            ExecutionStatus::Superseded => "Superseded",
            ExecutionStatus::Stopped => "Stopped",
        }
    }

    pub fn parse(s: &str) -> ExecutionStatus {
        match s {
            "Pending" => ExecutionStatus::Pending,
            "InProgress" => ExecutionStatus::InProgress,
            "Succeeded" => ExecutionStatus::Succeeded,
            "Superseded" => ExecutionStatus::Superseded,
            "Stopped" => ExecutionStatus::Stopped,
            _ => ExecutionStatus::Failed,
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, ExecutionStatus::Pending | ExecutionStatus::InProgress)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum StageStatus {
    Pending,
    InProgress,
    Succeeded,
    Failed,
    /// Not needed: no build section, no deploy section, or nothing the
    /// bake depends on changed (only_if_changed).
    Skipped,
    /// Not reached, because the execution stopped before it.
    Cancelled,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Pending => "Pending",
            StageStatus::InProgress => "InProgress",
            StageStatus::Succeeded => "Succeeded",
            StageStatus::Failed => "Failed",
            StageStatus::Skipped => "Skipped",
            StageStatus::Cancelled => "Cancelled",
        }
    }

    pub fn parse(s: &str) -> StageStatus {
        match s {
            "Pending" => StageStatus::Pending,
            "InProgress" => StageStatus::InProgress,
            "Succeeded" => StageStatus::Succeeded,
            "Skipped" => StageStatus::Skipped,
            "Cancelled" => StageStatus::Cancelled,
            _ => StageStatus::Failed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stage {
    pub name: String,
    pub status: StageStatus,
    pub started: String,
    pub ended: String,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Execution {
    pub id: String,
    /// 1, 2, ... within the pipeline.
    pub seq: i64,
    pub pipeline: String,
    pub status: ExecutionStatus,
    /// What started it: commit, schedule, manual, retry.
    pub trigger: String,
    pub commit_id: String,
    /// Why it failed, stopped or was superseded.
    pub reason: String,
    pub created: String,
    pub started: String,
    pub ended: String,
    /// Output variables by namespace: SourceVariables, BuildVariables,
    /// VersionVariables, BakeVariables, DeployVariables.
    pub variables: BTreeMap<String, BTreeMap<String, String>>,
    pub outputs: Outputs,
    pub stages: Vec<Stage>,
}

impl Execution {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// A variable, e.g. `var("BakeVariables", "Image")`.
    pub fn var(&self, namespace: &str, name: &str) -> Option<&str> {
        variable(&self.variables, namespace, name)
    }
}

/// What started an execution, named as CodePipeline's trigger types.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub enum Trigger {
    /// The pipeline was created.
    #[serde(rename = "CreatePipeline")]
    Create,
    /// `kiln trigger`, `kiln run`.
    #[serde(rename = "StartPipelineExecution")]
    Manual,
    /// Polling found a new commit on the branch.
    #[serde(rename = "PollForSourceChanges")]
    Poll,
    /// A git hook (`kiln hooks install`).
    Webhook,
    /// triggers.schedule.
    #[serde(rename = "CloudWatchEvent")]
    Schedule,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Create => "CreatePipeline",
            Trigger::Manual => "StartPipelineExecution",
            Trigger::Poll => "PollForSourceChanges",
            Trigger::Webhook => "Webhook",
            Trigger::Schedule => "CloudWatchEvent",
        }
    }
}

pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// What an execution keeps beside its variables (which carry what each
/// stage hands to the next: the commit, artifacts, version, image).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Outputs {
    /// The digest of everything the bake depends on (only_if_changed).
    pub inputs_digest: String,
    /// Per stage, the time the user's own commands took (build phases,
    /// component steps), to tell kiln's overhead from theirs.
    pub commands_ms: BTreeMap<String, u64>,
    /// Run every stage, even if only_if_changed finds nothing changed.
    pub force: bool,
    /// The Build stage's test and coverage reports (buildspec `reports`).
    pub build_reports: Vec<kiln_build::Report>,
    /// What the Build stage's `cache.paths` restored and saved.
    pub build_cache: Option<kiln_build::CacheReport>,
    /// How many of the Bake stage's components came from the layer cache.
    pub bake_cache: Option<BakeCache>,
}

/// The Bake stage's layer cache: components whose layer was reused (hits)
/// and those that ran (misses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BakeCache {
    pub hits: u32,
    pub misses: u32,
}

/// A variable of `vars` by namespace and name.
pub fn variable<'a>(
    vars: &'a BTreeMap<String, BTreeMap<String, String>>,
    namespace: &str,
    name: &str,
) -> Option<&'a str> {
    vars.get(namespace)?.get(name).map(String::as_str)
}
