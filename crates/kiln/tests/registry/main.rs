//! Images to and from registries as a user moves them: `kiln images push`
//! to a real registry (Debian's docker-registry, started by the tests on
//! loopback), skopeo and umoci reading what kiln pushed, `kiln images pull`
//! into another store, bakes on a `docker://` parent pulled once, basic
//! auth from an auth file, TLS refused unless verified or turned off, and
//! a hostile registry whose blobs, manifests and digests lie.

#[path = "../common/mod.rs"]
mod common;
mod support;

mod auth_tls;
mod hostile;
mod push_pull;
