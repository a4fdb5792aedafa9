//! The fleet: versioned launch templates, groups of isolated instances
//! started from kiln images, health checks, rolling updates with automatic
//! rollback, and the state of all of it in one SQLite database.

pub mod db;
pub mod model;

pub use db::{Db, DbError};
pub use model::*;
