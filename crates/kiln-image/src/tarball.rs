//! Tar layers: safe extraction of untrusted archives and deterministic
//! creation of OCI layers from a directory or an overlayfs upper directory.
//!
//! Archives come from images that anyone may have built, so extraction is
//! written as if every entry were hostile. Every file operation is an `*at`
//! call on a directory descriptor that the kernel resolved below the target
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: an entry can never
//! be written through a symlink, whoever created that symlink, and never
//! outside the target. What an archive may cost is bounded too: header
//! records the tar crate holds in memory, the bytes written, and how far a
//! compressed stream expands ([`ExtractLimits`]).

mod beneath;
mod create;
mod extract;
mod framing;
mod limits;
mod path;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use create::create_layer;
pub use extract::extract;
pub use limits::{
    ENV_MAX_HEADER_RECORD, ENV_MAX_RATIO, ENV_MAX_SIZE, ENV_RATIO_FLOOR, ExtractLimits,
    LimitExceeded,
};

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From the first bytes of a stream (gzip `1f 8b`, zstd `28 b5 2f fd`,
    /// anything else is taken for a plain tar).
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI media type of a layer compressed this way.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Apply OCI whiteouts: `.wh.NAME` deletes NAME and `.wh..wh..opq`
    /// empties its directory of what lower layers put there. For layers
    /// applied over other layers; when false such entries are plain files.
    pub whiteouts: bool,
    /// Create character and block devices. When false they are refused with
    /// an error; fifos are always created.
    pub allow_devices: bool,
    /// Give entries the uid and gid the archive lists (needs root).
    pub preserve_owners: bool,
    /// For archives of files (an OCI or docker archive), not of a root
    /// filesystem: symlinks with an absolute target are refused, since only
    /// a root filesystem gives them a meaning inside the target.
    pub members_only: bool,
    pub limits: ExtractLimits,
}

/// What [`extract`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// `sha256:<hex>` of the whole uncompressed stream (a layer's diff_id).
    pub diff_id: String,
    /// Its size in bytes.
    pub size: u64,
    pub compression: Compression,
}

/// What a layer written by [`create_layer`] is, for its descriptor and the
/// image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the compressed blob as written.
    pub digest: String,
    /// Size in bytes of the compressed blob as written.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar (the OCI diff_id).
    pub diff_id: String,
    pub compression: Compression,
}

/// Why an archive could not be extracted or a layer not created.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{archive}: open target {}: {error}", target.display())]
    Target {
        archive: String,
        target: PathBuf,
        error: io::Error,
    },
    /// Decompression or the tar framing failed outside any one entry.
    #[error("{archive}: read: {error}")]
    Read { archive: String, error: io::Error },
    #[error("{archive}: refused: {limit}")]
    Limit {
        archive: String,
        limit: LimitExceeded,
    },
    #[error("{archive}: entry {entry}: {problem}")]
    Entry {
        archive: String,
        entry: String,
        problem: EntryProblem,
    },
    #[error("layer from {}: entry {entry}: {op}: {error}", dir.display())]
    Source {
        dir: PathBuf,
        entry: String,
        op: &'static str,
        error: io::Error,
    },
    #[error("layer from {}: write: {error}", dir.display())]
    Write { dir: PathBuf, error: io::Error },
}

/// Why one entry of an archive was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    #[error("absolute path")]
    AbsolutePath,
    #[error("path leaves the target")]
    LeavesTarget,
    #[error("symlink to {target} leaves the target")]
    SymlinkLeavesTarget { target: String },
    #[error("symlink to the absolute path {target}: members of this archive link only inside it")]
    SymlinkAbsolute { target: String },
    #[error("hardlink to the absolute path {target}")]
    HardlinkAbsolute { target: String },
    #[error("hardlink to {target} leaves the target")]
    HardlinkLeavesTarget { target: String },
    #[error("hardlink to {target}, which is not in the target")]
    HardlinkMissing { target: String },
    #[error("hardlink to {target}, which is a directory")]
    HardlinkToDirectory { target: String },
    #[error("a parent directory is a symlink, and writing through symlinks is refused")]
    ThroughSymlink,
    #[error("a parent path is not a directory")]
    ParentNotDirectory,
    #[error("names the target directory itself, which only a directory entry may")]
    TargetItself,
    #[error("{kind} device nodes are not allowed in this archive")]
    Device { kind: &'static str },
    #[error("unsupported entry type {kind:?}")]
    Unsupported { kind: char },
    #[error("{op}: {error}")]
    Io { op: &'static str, error: io::Error },
}

impl TarError {
    /// The refusal or failure of one entry, when the error is about one.
    pub fn entry_problem(&self) -> Option<&EntryProblem> {
        match self {
            TarError::Entry { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// At most 200 characters of a name from an archive or an image, for
/// error messages: names can be as long as an archive makes them.
pub fn shorten(name: &str) -> String {
    match name.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_owned(),
    }
}

const SHOWN: usize = 200;

pub(crate) fn sha256_digest(hash: &[u8]) -> String {
    format!("sha256:{}", hex::encode(hash))
}
