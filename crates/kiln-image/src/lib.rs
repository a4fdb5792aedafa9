//! Golden images: an OCI image layout under kiln's state directory, layers
//! made from what a bake changed, safe extraction of untrusted archives,
//! imports of parent images and exports that other tools read.

pub mod export;
pub mod flatten;
pub mod gc;
pub mod import;
pub mod store;
pub mod tarball;
pub mod version;

pub use store::{ImageRecord, Status, Store, StoreError};
pub use version::{Version, VersionPattern};
