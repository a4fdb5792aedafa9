//! What a run records: the detailed output document AWSTOE writes
//! (`detailedoutput.json`), its summary, and the log directory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    Success,
    Failed,
    Skipped,
    IgnoredFailure,
    SuccessWithIgnoredFailure,
}

impl Status {
    pub fn is_success(self) -> bool {
        !matches!(self, Status::Failed)
    }

    /// Folds a step's status into its phase's or document's.
    pub fn absorb(self, step: Status) -> Status {
        match (self, step) {
            (Status::Failed, _) | (_, Status::Failed) => Status::Failed,
            (_, Status::IgnoredFailure | Status::SuccessWithIgnoredFailure)
            | (Status::SuccessWithIgnoredFailure, _) => Status::SuccessWithIgnoredFailure,
            _ => Status::Success,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    pub execution_id: String,
    pub status: Status,
    pub start_time: String,
    pub end_time: String,
    pub failure_message: String,
    pub executed_step_count: u32,
    pub failed_step_count: u32,
    pub ignored_failed_step_count: u32,
    pub log_url: String,
    pub documents: Vec<DocumentRecord>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentRecord {
    pub name: String,
    pub file_path: String,
    pub status: Status,
    pub description: String,
    pub start_time: String,
    pub end_time: String,
    pub failure_message: String,
    pub phases: Vec<PhaseRecord>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseRecord {
    pub name: String,
    pub status: Status,
    pub start_time: String,
    pub end_time: String,
    pub failure_message: String,
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub name: String,
    pub status: Status,
    pub failure_message: String,
    pub timeout_seconds: i64,
    pub on_failure: crate::document::OnFailure,
    pub max_attempts: u32,
    pub action: String,
    pub start_time: String,
    pub end_time: String,
    /// JSON text, as AWSTOE stores it: a list with one entry per input item.
    pub inputs: String,
    pub outputs: String,
    #[serde(rename = "loop")]
    pub loop_record: Option<LoopRecord>,
    pub detailed_output: Option<Vec<Execution>>,
    // What kiln adds: how long it took, how often it ran, what it printed.
    pub duration_ms: u64,
    pub attempts: u32,
    pub reboots: u32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoopRecord {
    pub name: String,
    pub iterations: u32,
    pub failed_iterations: Vec<u32>,
}

/// The short summary AWSTOE prints on stdout after a run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub execution_id: String,
    pub status: Status,
    pub failed_step_count: u32,
    pub executed_step_count: u32,
    pub ignored_failed_step_count: u32,
    pub failure_message: String,
    pub log_url: String,
}

impl Execution {
    pub fn summary(&self) -> Summary {
        Summary {
            execution_id: self.execution_id.clone(),
            status: self.status,
            failed_step_count: self.failed_step_count,
            executed_step_count: self.executed_step_count,
            ignored_failed_step_count: self.ignored_failed_step_count,
            failure_message: self.failure_message.clone(),
            log_url: self.log_url.clone(),
        }
    }

    /// Every step, with its document and phase, in run order.
    pub fn steps(&self) -> impl Iterator<Item = (&DocumentRecord, &PhaseRecord, &StepRecord)> {
        self.documents.iter().flat_map(|d| {
            d.phases
                .iter()
                .flat_map(move |p| p.steps.iter().map(move |s| (d, p, s)))
        })
    }

    /// The step that failed the run, if any.
    pub fn failed_step(&self) -> Option<(&DocumentRecord, &PhaseRecord, &StepRecord)> {
        self.steps().find(|(_, _, s)| s.status == Status::Failed)
    }
}

pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// The per-run log directory: `TOE_<date>_UTC-0_<executionId>` as AWSTOE
/// names it, holding console.log, application.log, detailedoutput.json,
/// chaining.json and the documents.
#[derive(Debug)]
pub struct LogDir {
    pub path: PathBuf,
    console: Mutex<File>,
    application: Mutex<File>,
}

impl LogDir {
    pub fn create(parent: &Path, execution_id: &str) -> std::io::Result<LogDir> {
        let stamp = jiff::Timestamp::now().strftime("%Y-%m-%d_%H-%M-%S");
        let path = parent.join(format!("TOE_{stamp}_UTC-0_{execution_id}"));
        std::fs::create_dir_all(&path)?;
        let console = Mutex::new(File::create(path.join("console.log"))?);
        let application = Mutex::new(File::create(path.join("application.log"))?);
        Ok(LogDir {
            path,
            console,
            application,
        })
    }

    pub fn console(&self, line: &str) {
        if let Ok(mut f) = self.console.lock() {
            // A log line that cannot be written must not fail the step it
            // describes; the step's outcome is recorded in the report as well.
            let _ = writeln!(f, "{line}");
        }
    }

    pub fn application(&self, line: &str) {
        if let Ok(mut f) = self.application.lock() {
            // As above: the step's outcome does not depend on its log.
            let _ = writeln!(f, "{} {line}", now());
        }
    }

    pub fn write_json(&self, name: &str, value: &impl Serialize) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        std::fs::write(self.path.join(name), text)
    }

    pub fn write(&self, name: &str, contents: &str) -> std::io::Result<()> {
        std::fs::write(self.path.join(name), contents)
    }
}
