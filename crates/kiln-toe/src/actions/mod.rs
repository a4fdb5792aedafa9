//! The action modules. Each takes its resolved inputs and returns its
//! outputs, one map per input item.

pub mod exec;
pub mod files;
pub mod net;
pub mod system;

use std::time::Instant;

use serde_json::{Map, Value};

use crate::document::{Document, Step};
use crate::report::Execution;
use crate::runner::{Run, Scope};

pub type Outputs = Vec<Map<String, Value>>;

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Failed(String),
    #[error("timed out after {0} seconds")]
    Timeout(u64),
    /// Exit code 194: restart the instance, then run this step again.
    #[error("reboot requested")]
    Reboot,
}

pub fn fail(message: impl Into<String>) -> ActionError {
    ActionError::Failed(message.into())
}

/// Everything an action can reach while it runs.
pub struct Ctx<'r, 'a> {
    pub(crate) run: &'r mut Run<'a>,
    pub(crate) document: &'r Document,
    pub(crate) step: &'r Step,
    pub(crate) scope: &'r Scope<'r>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) stdout: &'r mut String,
    pub(crate) stderr: &'r mut String,
    pub(crate) detailed: &'r mut Option<Vec<Execution>>,
}

impl Ctx<'_, '_> {
    /// An in-root path, relative ones taken from the instance's working
    /// directory.
    pub fn path(&self, p: &str) -> String {
        kiln_sandbox::rootfs::join(&self.run.instance.workdir, p)
    }

    pub fn console(&self, line: &str) {
        self.run.log.console(line);
    }

    pub fn root(&self) -> &kiln_sandbox::Root {
        &self.run.instance.root
    }
}

pub fn run(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    match ctx.step.action.as_str() {
        "ExecuteBash" => exec::execute_bash(ctx, inputs),
        "ExecuteBinary" => exec::execute_binary(ctx, inputs),
        "ExecutePowerShell" => exec::execute_powershell(ctx, inputs),
        "UpdateOS" => exec::update_os(ctx, inputs),
        "ExecuteDocument" => system::execute_document(ctx, inputs),
        "Assert" => system::assert(ctx),
        "Reboot" => system::reboot(ctx, inputs),
        "InstallMSI" | "UninstallMSI" | "SetRegistry" => Err(fail(format!(
            "{} is a Windows-only action module and cannot run on a Linux root; it runs on the AWS target",
            ctx.step.action
        ))),
        "WebDownload" => net::web_download(ctx, inputs),
        "S3Download" => net::s3_download(ctx, inputs),
        "S3Upload" => net::s3_upload(ctx, inputs),
        _ => files::run(ctx, inputs),
    }
}

/// The items of a list-shaped input (a single map counts as one item).
pub fn items(inputs: &Value) -> Vec<&Map<String, Value>> {
    match inputs {
        Value::Array(list) => list.iter().filter_map(Value::as_object).collect(),
        Value::Object(map) => vec![map],
        _ => Vec::new(),
    }
}

pub fn text(item: &Map<String, Value>, key: &str) -> Option<String> {
    match item.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub fn required(item: &Map<String, Value>, key: &str) -> Result<String, ActionError> {
    text(item, key)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| fail(format!("input {key:?} is required")))
}

pub fn flag(item: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ActionError> {
    match item.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(fail(format!(
            "input {key:?} must be true or false, not {other}"
        ))),
    }
}

pub fn strings(item: &Map<String, Value>, key: &str) -> Vec<String> {
    match item.get(key) {
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

pub fn output(key: &str, value: impl Into<Value>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_string(), value.into());
    m
}
