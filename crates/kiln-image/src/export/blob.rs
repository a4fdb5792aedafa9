//! One image read out of an OCI image layout: its manifest and config in
//! memory, its blobs by digest, every byte checked against its descriptor.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{Descriptor, Digest, DigestAlgorithm, ImageManifest, MediaType};
use serde::Deserialize;
use sha2::Digest as _;

use super::ExportError;

/// The docker media type of a manifest with the same shape as an OCI one.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A running digest of one of the algorithms the OCI spec registers.
pub(super) enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(super) fn sha256() -> Hasher {
        Hasher::Sha256(sha2::Sha256::new())
    }

    fn for_algorithm(algorithm: &DigestAlgorithm) -> Option<Hasher> {
        match algorithm {
            DigestAlgorithm::Sha256 => Some(Hasher::sha256()),
            DigestAlgorithm::Sha384 => Some(Hasher::Sha384(sha2::Sha384::new())),
            DigestAlgorithm::Sha512 => Some(Hasher::Sha512(sha2::Sha512::new())),
            _ => None,
        }
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest in lowercase hex, without the algorithm.
    pub(super) fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha384(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// The parts of an image config the exports need. Read leniently: any
/// config docker or OCI tools accept must export.
#[derive(Deserialize)]
pub(super) struct ConfigView {
    #[serde(default)]
    pub(super) created: Option<String>,
    #[serde(default)]
    pub(super) rootfs: RootFsView,
}

#[derive(Deserialize, Default)]
pub(super) struct RootFsView {
    #[serde(default)]
    pub(super) diff_ids: Vec<String>,
}

/// One image of a layout, with its manifest and config read and verified.
pub(super) struct Image {
    layout: PathBuf,
    descriptor: Descriptor,
    manifest: ImageManifest,
    config_bytes: Vec<u8>,
}

impl Image {
    /// Reads the manifest `descriptor` names out of `layout`, and its config.
    pub(super) fn open(layout: &Path, descriptor: &Descriptor) -> Result<Image, ExportError> {
        let image = descriptor.digest().to_string();
        let media_type = descriptor.media_type();
        let is_manifest = *media_type == MediaType::ImageManifest
            || *media_type == MediaType::Other(DOCKER_MANIFEST.to_owned());
        if !is_manifest {
            return Err(ExportError::NotAManifest {
                image,
                media_type: media_type.to_string(),
            });
        }
        let manifest_bytes = read_verified(layout, &image, descriptor)?;
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|source| ExportError::Parse {
                image: image.clone(),
                what: "manifest",
                digest: image.clone(),
                source,
            })?;
        if let Some(inner) = manifest.media_type()
            && inner != media_type
        {
            return Err(ExportError::NotAManifest {
                image,
                media_type: inner.to_string(),
            });
        }
        let config_bytes = read_verified(layout, &image, manifest.config())?;
        Ok(Image {
            layout: layout.to_owned(),
            descriptor: descriptor.clone(),
            manifest,
            config_bytes,
        })
    }

    /// The manifest digest, which is how errors name the image.
    pub(super) fn id(&self) -> String {
        self.descriptor.digest().to_string()
    }

    pub(super) fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    pub(super) fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }

    pub(super) fn config_bytes(&self) -> &[u8] {
        &self.config_bytes
    }

    pub(super) fn config_view(&self) -> Result<ConfigView, ExportError> {
        serde_json::from_slice(&self.config_bytes).map_err(|source| ExportError::Parse {
            image: self.id(),
            what: "config",
            digest: self.manifest.config().digest().to_string(),
            source,
        })
    }

    /// Seconds since the epoch the image was created, for the timestamps
    /// of archive entries (so that one image always exports to the same
    /// bytes); 0 when the config does not say.
    pub(super) fn created_unix(&self) -> u64 {
        self.config_view()
            .ok()
            .and_then(|c| c.created)
            .and_then(|c| c.parse::<jiff::Timestamp>().ok())
            .and_then(|t| u64::try_from(t.as_second()).ok())
            .unwrap_or(0)
    }

    /// Where the blob lives in the source layout.
    pub(super) fn blob_path(&self, digest: &Digest) -> Result<PathBuf, ExportError> {
        blob_path(&self.layout, &self.id(), digest)
    }

    /// Opens a blob of the source layout for streaming; [`Blob::finish`]
    /// verifies what was read.
    pub(super) fn open_blob<'a>(&self, desc: &'a Descriptor) -> Result<Blob<'a>, ExportError> {
        Blob::open(&self.id(), self.blob_path(desc.digest())?, desc)
    }
}

/// `layout/blobs/<algorithm>/<encoded>`. The digest's grammar (checked
/// when it was parsed) admits no `/`, and only registered algorithms pass.
pub(super) fn blob_path(
    layout: &Path,
    image: &str,
    digest: &Digest,
) -> Result<PathBuf, ExportError> {
    if digest.algorithm().digest_hexlen().is_none() {
        return Err(ExportError::UnsupportedDigest {
            image: image.to_owned(),
            digest: digest.to_string(),
        });
    }
    Ok(layout
        .join("blobs")
        .join(digest.algorithm().as_ref())
        .join(digest.digest()))
}

fn hasher_for(image: &str, digest: &Digest) -> Result<Hasher, ExportError> {
    Hasher::for_algorithm(digest.algorithm()).ok_or_else(|| ExportError::UnsupportedDigest {
        image: image.to_owned(),
        digest: digest.to_string(),
    })
}

/// A whole small blob (manifest, config), verified.
fn read_verified(layout: &Path, image: &str, desc: &Descriptor) -> Result<Vec<u8>, ExportError> {
    let path = blob_path(layout, image, desc.digest())?;
    let mut hasher = hasher_for(image, desc.digest())?;
    let read_error = |source| ExportError::ReadBlob {
        image: image.to_owned(),
        digest: desc.digest().to_string(),
        path: path.clone(),
        source,
    };
    // The size is checked before reading, so that a wrong (perhaps huge)
    // file is never read whole.
    let size_error = |actual| ExportError::BlobSize {
        image: image.to_owned(),
        digest: desc.digest().to_string(),
        expected: desc.size(),
        actual,
    };
    let file = File::open(&path).map_err(read_error)?;
    let actual = file.metadata().map_err(read_error)?.len();
    if actual != desc.size() {
        return Err(size_error(actual));
    }
    let mut bytes = Vec::new();
    file.take(desc.size())
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 != desc.size() {
        return Err(size_error(bytes.len() as u64));
    }
    hasher.update(&bytes);
    let actual = hasher.finish();
    if actual != desc.digest().digest() {
        return Err(ExportError::BlobDigest {
            image: image.to_owned(),
            digest: desc.digest().to_string(),
            actual: format!("{}:{actual}", desc.digest().algorithm()),
        });
    }
    Ok(bytes)
}

/// A blob being read; it hashes and counts what passes through.
pub(super) struct Blob<'a> {
    image: String,
    desc: &'a Descriptor,
    path: PathBuf,
    file: File,
    hasher: Hasher,
    read: u64,
}

impl<'a> Blob<'a> {
    /// Opens the blob at `path`, which `desc` describes, for `image`.
    pub(super) fn open(
        image: &str,
        path: PathBuf,
        desc: &'a Descriptor,
    ) -> Result<Blob<'a>, ExportError> {
        let hasher = hasher_for(image, desc.digest())?;
        let read_error = |source| ExportError::ReadBlob {
            image: image.to_owned(),
            digest: desc.digest().to_string(),
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(read_error)?;
        let actual = file.metadata().map_err(read_error)?.len();
        if actual != desc.size() {
            return Err(ExportError::BlobSize {
                image: image.to_owned(),
                digest: desc.digest().to_string(),
                expected: desc.size(),
                actual,
            });
        }
        Ok(Blob {
            image: image.to_owned(),
            desc,
            path,
            file,
            hasher,
            read: 0,
        })
    }

    pub(super) fn size(&self) -> u64 {
        self.desc.size()
    }

    /// Reads whatever is left and checks size and digest against the
    /// descriptor.
    pub(super) fn finish(mut self) -> Result<(), ExportError> {
        io::copy(&mut self, &mut io::sink()).map_err(|source| ExportError::ReadBlob {
            image: self.image.clone(),
            digest: self.desc.digest().to_string(),
            path: self.path.clone(),
            source,
        })?;
        let digest = self.desc.digest();
        if self.read != self.desc.size() {
            return Err(ExportError::BlobSize {
                image: self.image,
                digest: digest.to_string(),
                expected: self.desc.size(),
                actual: self.read,
            });
        }
        let actual = self.hasher.finish();
        if actual != digest.digest() {
            return Err(ExportError::BlobDigest {
                image: self.image,
                digest: digest.to_string(),
                actual: format!("{}:{actual}", digest.algorithm()),
            });
        }
        Ok(())
    }
}

impl Read for Blob<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf).map_err(|e| {
            io::Error::new(e.kind(), format!("read blob {}: {e}", self.path.display()))
        })?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// `sha256:<hex>` of a digest this module computed.
pub(super) fn sha256_digest(hex: &str) -> Digest {
    Digest::from_str(&format!("sha256:{hex}")).expect("a computed sha256 is a valid digest")
}
