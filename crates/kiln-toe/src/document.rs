//! The component document model (AWSTOE schema 1.0).

use std::path::PathBuf;

use crate::condition::Condition;
use crate::error::DocError;
use crate::yaml::{Node, Pos};

#[derive(Debug, Clone)]
pub struct Document {
    /// Where the document was read from, for messages and ExecuteDocument.
    pub path: PathBuf,
    pub source: String,
    pub name: String,
    pub description: String,
    pub schema_version: String,
    pub parameters: Vec<Parameter>,
    pub constants: Vec<Constant>,
    pub phases: Vec<Phase>,
    /// What AWS accepts but kiln finds suspect, or ignores locally, with
    /// where it is. Empty for a clean document.
    pub warnings: Vec<DocError>,
}

#[derive(Debug, Clone)]
pub struct Parameter {
    pub name: String,
    pub ty: ParamType,
    /// The default as text; a StringList's items are joined with commas.
    pub default: Option<String>,
    /// `allowedValues`: when given, the only values the parameter takes.
    pub allowed_values: Vec<String>,
    pub description: String,
    pub pos: Pos,
}

/// The parameter types Image Builder's API lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Integer,
    Boolean,
    StringList,
}

impl ParamType {
    /// Matches `type:` case-insensitively (`string` and `String` are both in use).
    pub fn parse(s: &str) -> Option<ParamType> {
        [
            ParamType::String,
            ParamType::Integer,
            ParamType::Boolean,
            ParamType::StringList,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Boolean => "boolean",
            ParamType::StringList => "stringList",
        }
    }

    /// Whether `value` (as text) is a value of this type.
    pub fn accepts(self, value: &str) -> bool {
        match self {
            ParamType::String | ParamType::StringList => true,
            ParamType::Integer => value.trim().parse::<i64>().is_ok(),
            ParamType::Boolean => {
                value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Constant {
    pub name: String,
    pub value: String,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub pos: Pos,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub pos: Pos,
    pub action: String,
    /// Kept as written: variables are substituted when the step runs, since
    /// chained outputs exist only then.
    pub inputs: Option<Node>,
    pub on_failure: OnFailure,
    pub max_attempts: u32,
    /// `None` is AWSTOE's `-1`: no timeout.
    pub timeout_seconds: Option<u64>,
    pub condition: Option<Condition>,
    pub repeat: Option<Loop>,
}

pub const DEFAULT_TIMEOUT_SECONDS: u64 = 7200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum OnFailure {
    Abort,
    Continue,
    Ignore,
}

#[derive(Debug, Clone)]
pub struct Loop {
    pub name: Option<String>,
    pub kind: LoopKind,
}

#[derive(Debug, Clone)]
pub enum LoopKind {
    For {
        start: i64,
        end: i64,
        update_by: i64,
    },
    /// Items, each substituted when the loop starts.
    ForEachList(Vec<Node>),
    /// One string split on a one-character delimiter.
    ForEachString { list: Node, delimiter: char },
}

impl Loop {
    /// The values the loop takes, with variables already substituted.
    pub fn values(
        &self,
        substitute: &mut dyn FnMut(&Node) -> Result<String, String>,
    ) -> Result<Vec<String>, String> {
        match &self.kind {
            LoopKind::For {
                start,
                end,
                update_by,
            } => {
                let mut out = Vec::new();
                let mut i = *start;
                while (*update_by > 0 && i <= *end) || (*update_by < 0 && i >= *end) {
                    out.push(i.to_string());
                    i += update_by;
                }
                Ok(out)
            }
            LoopKind::ForEachList(items) => items.iter().map(substitute).collect(),
            LoopKind::ForEachString { list, delimiter } => {
                let text = substitute(list)?;
                Ok(text.split(*delimiter).map(str::to_string).collect())
            }
        }
    }
}

impl Document {
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
}
