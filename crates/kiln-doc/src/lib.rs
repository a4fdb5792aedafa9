//! What every document kiln reads has in common: component documents,
//! recipes, buildspecs and kiln.yaml are YAML whose every node keeps its
//! line and column ([`yaml`]), problems are collected and reported with
//! the file, position and field they concern ([`diag`]), and durations
//! follow one grammar with one bound ([`duration`]).

pub mod diag;
pub mod duration;
pub mod yaml;

pub use diag::{Collector, Diagnostics, DocError};
