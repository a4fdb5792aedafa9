//! Bakes: a recipe's parent image, its components run in a sandbox over an
//! overlay (each becoming one cached layer), and the test gate that decides
//! whether the new image may be deployed.

pub mod bake;
pub mod parent;
pub mod recipe;
mod sandbox;
mod test_gate;
pub mod types;

pub use bake::bake;
pub use recipe::Recipe;
pub use types::{BakeError, BakeObserver, BakeOptions, BakeReport, TestReport};
