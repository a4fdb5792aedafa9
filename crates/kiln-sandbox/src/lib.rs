//! The operating-system boundary of kiln: root filesystems, process
//! isolation, overlay mounts and external host tools.
//!
//! Everything that talks to the kernel about namespaces, mounts or paths
//! inside an image lives here, so that the crates above it can be tested
//! without root while this one is tested for real.

pub mod build;
pub mod busybox;
pub mod exec;
pub mod hardening;
pub mod instance;
pub mod mounts;
pub mod netns;
pub mod overlay;
pub mod private;
pub mod probe;
pub mod recording;
pub mod rootfs;
pub mod seccomp;
pub mod tool;

pub use exec::{Bubblewrap, ExecError, Isolation, ProcessSpec};
pub use hardening::HardeningError;
pub use instance::{
    InstanceError, InstanceIdentity, InstanceSpec, RunningInstance, processes_with_root_below,
};
pub use netns::{Connector, NetNs, NetNsError};
pub use overlay::{OverlayError, OverlayMount};
pub use rootfs::{Kind, Meta, Root, RootError};
