//! The fleet: versioned launch templates, groups of isolated instances
//! started from kiln images, health checks, rolling updates with automatic
//! rollback, and the state of all of it in one SQLite database.

mod connect;
mod control;
pub mod db;
pub mod fleet;
pub mod health;
pub mod model;
pub mod policy;
pub mod runtime;
pub mod vm;

pub use db::{Db, DbError};
pub use fleet::{Fleet, FleetError, GroupUpdate, GroupView};
pub use model::*;
