//! Images to and from OCI registries (the distribution API that the CNCF
//! registry, Docker Hub, quay.io, ECR and others serve): `kiln images push`,
//! `kiln images pull` and `parent: docker://...` in recipes.
//!
//! Pulls go through the image store's staged import: the manifest is
//! checked against the digest the reference names and bounded in size, the
//! config and every layer against their descriptors, and nothing is
//! published until every layer matched. Credentials come from the files
//! podman, skopeo and docker write ([`auth`]); TLS is verified unless the
//! caller turns it off for a registry it trusts otherwise.

pub mod auth;
mod client;
mod error;
pub mod pull;
pub mod push;
pub mod reference;

pub use client::Options;
pub use error::RegistryError;
pub use pull::{Policy, Pulled, pull};
pub use push::{LayerFormat, Pushed, push};
pub use reference::Reference;
