//! Exports: one image of an OCI layout written out in the formats other
//! tools read.
//!
//! - [`export_oci_dir`] and [`export_oci_archive`]: an OCI image layout
//!   holding just this image (skopeo's `oci:` and `oci-archive:`, umoci).
//! - [`export_docker_archive`]: what `docker save` writes (`docker load`,
//!   podman, skopeo's `docker-archive:`).
//! - [`export_raw`] and [`export_qcow2`]: an ext4 disk image of an unpacked
//!   root filesystem (mkfs.ext4, qemu-img).
//! - [`export_bootable`]: a GPT disk, raw or qcow2, that UEFI firmware
//!   boots: an EFI system partition with systemd-boot and the tree's own
//!   kernel and initramfs, and the tree as an ext4 root partition.
//!
//! The image exports work from a layout directory and a manifest descriptor
//! only, not from the image store's API, and verify every blob they read
//! against its descriptor. Nothing half-written is ever visible at the
//! destination: files are written to `DEST.tmp-<uuid>` and directories are
//! built in `DEST.tmp-<uuid>/`, then renamed into place.

mod archive;
mod blob;
mod boot;
mod bootable;
mod disk;
mod docker;
mod gpt;
mod layer;
mod layout;
mod oci;
mod staging;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use kiln_sandbox::tool::ToolError;

pub use bootable::{BootOptions, BootableDisk, DiskFormat, export_bootable};
pub use disk::{export_qcow2, export_raw};
pub use docker::export_docker_archive;
pub use oci::{export_oci_archive, export_oci_dir};

/// An export format, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An OCI image layout directory.
    Oci,
    /// An OCI image layout in a tar file.
    OciArchive,
    /// A `docker save` tar file.
    DockerArchive,
    /// A raw ext4 disk image.
    Raw,
    /// A qcow2 disk image holding ext4.
    Qcow2,
}

impl Format {
    /// Every format, in the order help texts list them.
    pub const ALL: [Format; 5] = [
        Format::Oci,
        Format::OciArchive,
        Format::DockerArchive,
        Format::Raw,
        Format::Qcow2,
    ];

    /// The name `FromStr` accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Oci => "oci",
            Format::OciArchive => "oci-archive",
            Format::DockerArchive => "docker-archive",
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Whether the format is a disk image, made from an unpacked root
    /// filesystem rather than from the image's layout.
    pub fn is_disk(self) -> bool {
        matches!(self, Format::Raw | Format::Qcow2)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownFormat {
                given: s.to_owned(),
            })
    }
}

/// A format name that is none of [`Format::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown export format {given:?}: expected one of oci, oci-archive, docker-archive, raw, qcow2"
)]
pub struct UnknownFormat {
    pub given: String,
}

/// Why an export failed. Every message names the image (its manifest
/// digest) or the destination it failed on.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export destination {} already exists and is not an empty directory", dest.display())]
    DestinationExists { dest: PathBuf },
    #[error("export destination {}: {reason}", dest.display())]
    InvalidDestination { dest: PathBuf, reason: &'static str },
    #[error("write {}: {source}", dest.display())]
    Write { dest: PathBuf, source: io::Error },
    #[error(
        "invalid reference name {ref_name:?}: expected components of letters and digits \
         joined by one of - . _ : @ + or --, separated by / (like \"latest\" or \"1.0.0\")"
    )]
    InvalidRefName { ref_name: String },
    #[error("invalid repository tag {repo_tag:?}: {reason}")]
    InvalidRepoTag {
        repo_tag: String,
        reason: &'static str,
    },
    #[error("image {image}: {media_type} is not an image manifest")]
    NotAManifest { image: String, media_type: String },
    #[error("image {image}: blob {digest} uses an unsupported digest algorithm")]
    UnsupportedDigest { image: String, digest: String },
    #[error("image {image}: read blob {digest} ({}): {source}", path.display())]
    ReadBlob {
        image: String,
        digest: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image {image}: blob {digest} is {actual} bytes, its descriptor says {expected}")]
    BlobSize {
        image: String,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("image {image}: blob {digest} has the digest {actual}: the layout is corrupt")]
    BlobDigest {
        image: String,
        digest: String,
        actual: String,
    },
    #[error("image {image}: parse {what} {digest}: {source}")]
    Parse {
        image: String,
        what: &'static str,
        digest: String,
        source: serde_json::Error,
    },
    #[error(
        "image {image}: layer {digest} has the media type {media_type}, which kiln cannot unpack"
    )]
    UnsupportedLayer {
        image: String,
        digest: String,
        media_type: String,
    },
    #[error("image {image}: the manifest lists {layers} layers but the config {diff_ids} diff_ids")]
    LayerCount {
        image: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("image {image}: diff_id {diff_id} in the config is not a sha256 digest")]
    InvalidDiffId { image: String, diff_id: String },
    #[error("image {image}: read layer {digest}: {source}")]
    Decompress {
        image: String,
        digest: String,
        source: io::Error,
    },
    #[error(
        "image {image}: layer {digest} unpacks to sha256:{actual}, but the config's diff_id is {expected}"
    )]
    DiffId {
        image: String,
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("root filesystem {}: {reason}", rootfs.display())]
    InvalidRootfs {
        rootfs: PathBuf,
        reason: &'static str,
    },
    #[error("read root filesystem entry {}: {source}", path.display())]
    ReadRootfs { path: PathBuf, source: io::Error },
    #[error("{image} cannot boot from a disk: it has {missing}; {remedy}")]
    NotBootable {
        image: String,
        missing: String,
        remedy: &'static str,
    },
    #[error("the host lacks {what}: {remedy}")]
    HostLacks { what: String, remedy: &'static str },
    #[error(
        "make disk image {}: debugfs could not edit the root filesystem:\n{errors}\n(its commands were:\n{script})",
        dest.display()
    )]
    EditRoot {
        dest: PathBuf,
        script: String,
        errors: String,
    },
    #[error("make disk image {}: {source}", dest.display())]
    Tool {
        dest: PathBuf,
        /// Boxed: a tool's failure carries its whole output.
        source: Box<ToolError>,
    },
}
