//! Errors and warnings that point into a document: file, line, column and field.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::yaml::Pos;

/// One problem in a document: where it is, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocError {
    pub file: PathBuf,
    pub pos: Pos,
    /// The field's path in the document, e.g. `phases[build].steps[Install].inputs.commands`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: ",
            self.file.display(),
            self.pos.line,
            self.pos.col
        )?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one or more documents, in document order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<DocError>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects errors while a document is checked, so that a user sees all of
/// them at once rather than one per try.
#[derive(Debug)]
pub struct Collector {
    file: PathBuf,
    pub errors: Vec<DocError>,
    /// What AWS accepts but looks like a mistake, or what the local target
    /// ignores; `--strict` turns these into errors.
    pub warnings: Vec<DocError>,
}

impl Collector {
    pub fn new(file: &Path) -> Self {
        Collector {
            file: file.to_path_buf(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn push(&mut self, pos: Pos, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(DocError {
            file: self.file.clone(),
            pos,
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, pos: Pos, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(DocError {
            file: self.file.clone(),
            pos,
            field: field.into(),
            message: message.into(),
        });
    }
}
