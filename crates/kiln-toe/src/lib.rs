//! An AWSTOE-compatible component document runner.
//!
//! EC2 Image Builder components are YAML documents with phases (build,
//! validate, test) of steps, each naming an action module. This crate
//! parses and validates them with positions in every error
//! ([`parse`]), and runs them against an isolated root filesystem
//! ([`runner`]) with AWSTOE's semantics for conditions, loops, chaining,
//! attempts, timeouts, failure policies and reboots.

pub mod actions;
pub mod condition;
pub mod digest;
pub mod document;
mod parameters;
pub mod parse;
mod references;
pub mod report;
pub mod runner;
pub mod schema;
pub mod vars;

// The document basics live in kiln-doc, shared with buildspecs, recipes
// and kiln.yaml; these paths keep naming them here too.
pub use kiln_doc::diag as error;
pub use kiln_doc::{duration, yaml};

pub use document::Document;
pub use error::{Diagnostics, DocError};
pub use parse::{load, parse_str};
pub use report::{Execution, Status, StepRecord, Summary};
pub use runner::{ArtifactStore, Instance, Observer, Quiet, RunError, RunOptions, run};
