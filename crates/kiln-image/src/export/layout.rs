//! Building an OCI image layout that holds one image, in a directory.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{ANNOTATION_REF_NAME, Descriptor};

use super::ExportError;
use super::blob::{Hasher, Image, blob_path, sha256_digest};
use super::layer::{self, Compression};
use super::staging::{sync_dir, write_error};

/// The `oci-layout` file of image-spec 1.x layouts.
pub(super) const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// What [`write_layout`] wrote.
pub(super) struct Written {
    /// The contents of `index.json`.
    pub(super) index: Vec<u8>,
    /// Every blob, each once: the manifest, the config, the layers.
    pub(super) blobs: Vec<Descriptor>,
    /// Whether zstd layers were recompressed (so the manifest is new).
    pub(super) recompressed: bool,
}

/// Writes a layout holding `image`, tagged `ref_name`, into the empty
/// directory `root`, and makes it durable.
///
/// Blobs are hard-linked from the source layout when both are on one
/// filesystem (their size is checked) and copied otherwise (their digest is
/// checked while copying). zstd layers are recompressed as gzip, because
/// the tools these exports are for do not all read zstd (umoci 0.4, docker
/// before 23, containerd before 1.5); the manifest then changes and gets a
/// new digest, while the config (and so the diff_ids) stays the same.
pub(super) fn write_layout(
    image: &Image,
    ref_name: &str,
    root: &Path,
    dest: &Path,
) -> Result<Written, ExportError> {
    let error = |source| write_error(dest, source);
    write_synced(&root.join("oci-layout"), OCI_LAYOUT).map_err(error)?;
    let mut dirs = BTreeSet::new();
    let mut blob_dir = |desc: &Descriptor| -> Result<PathBuf, ExportError> {
        let path = blob_path(root, &image.id(), desc.digest())?;
        let dir = path.parent().expect("a blob path has a parent").to_owned();
        if dirs.insert(dir.clone()) {
            fs::create_dir_all(&dir).map_err(error)?;
        }
        Ok(path)
    };

    let config = image.manifest().config();
    link_or_copy(image, config, &blob_dir(config)?, dest)?;
    let mut blobs = vec![config.clone()];

    let layers = image.manifest().layers();
    let zstd = layers
        .iter()
        .any(|l| layer::Compression::of(l.media_type()) == Some(Compression::Zstd));
    let diff_hexes = if zstd {
        layer::diff_hexes(image)?
    } else {
        Vec::new()
    };
    let mut new_layers: Vec<Descriptor> = Vec::with_capacity(layers.len());
    for (i, desc) in layers.iter().enumerate() {
        // A layer the image holds twice is recompressed once.
        let earlier = layers[..i].iter().position(|l| l.digest() == desc.digest());
        let written = if let Some(earlier) = earlier {
            new_layers[earlier].clone()
        } else if layer::compression(image, desc)? == Compression::Zstd {
            let tmp = blob_dir(desc)?.with_file_name(format!(".tmp-{}", uuid::Uuid::new_v4()));
            let gzipped = layer::zstd_to_gzip(image, desc, &diff_hexes[i], &tmp, dest);
            let gzipped = match gzipped {
                Ok(gzipped) => gzipped,
                Err(e) => {
                    // Best effort: the export already failed with its own error, which
                    // matters more; a temporary file left is named .tmp-* and is harmless.
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            let path = blob_dir(&gzipped)?;
            fs::rename(&tmp, &path).map_err(error)?;
            gzipped
        } else {
            if !blobs.iter().any(|b| b.digest() == desc.digest()) {
                link_or_copy(image, desc, &blob_dir(desc)?, dest)?;
            }
            desc.clone()
        };
        if !blobs.iter().any(|b| b.digest() == written.digest()) {
            blobs.push(written.clone());
        }
        new_layers.push(written);
    }

    let mut manifest_desc = image.descriptor().clone();
    if zstd {
        let mut manifest = image.manifest().clone();
        manifest.set_layers(new_layers);
        let bytes = serde_json::to_vec(&manifest).expect("a manifest always serializes");
        let mut hasher = Hasher::sha256();
        hasher.update(&bytes);
        manifest_desc.set_digest(sha256_digest(&hasher.finish()));
        manifest_desc.set_size(bytes.len() as u64);
        write_synced(&blob_dir(&manifest_desc)?, &bytes).map_err(error)?;
    } else {
        link_or_copy(image, &manifest_desc, &blob_dir(&manifest_desc)?, dest)?;
    }
    blobs.insert(0, manifest_desc.clone());

    let index = index_json(manifest_desc, ref_name);
    write_synced(&root.join("index.json"), &index).map_err(error)?;
    for dir in dirs.iter().map(|d| d.as_path()) {
        sync_dir(dir).map_err(error)?;
    }
    sync_dir(&root.join("blobs")).map_err(error)?;
    sync_dir(root).map_err(error)?;
    Ok(Written {
        index,
        blobs,
        recompressed: zstd,
    })
}

/// `index.json` with the one manifest, annotated with `ref_name`.
fn index_json(mut descriptor: Descriptor, ref_name: &str) -> Vec<u8> {
    let mut annotations = descriptor.annotations().clone().unwrap_or_default();
    annotations.insert(ANNOTATION_REF_NAME.to_owned(), ref_name.to_owned());
    descriptor.set_annotations(Some(annotations));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor],
    });
    let mut bytes = serde_json::to_vec_pretty(&index).expect("a JSON value always serializes");
    bytes.push(b'\n');
    bytes
}

/// Hard-links the blob to `to`, or copies it when the layouts are on
/// different filesystems (or the link is refused).
fn link_or_copy(
    image: &Image,
    desc: &Descriptor,
    to: &Path,
    dest: &Path,
) -> Result<(), ExportError> {
    let from = image.blob_path(desc.digest())?;
    match fs::hard_link(&from, to) {
        Ok(()) => {
            let actual = fs::metadata(to).map_err(|e| write_error(dest, e))?.len();
            if actual != desc.size() {
                return Err(ExportError::BlobSize {
                    image: image.id(),
                    digest: desc.digest().to_string(),
                    expected: desc.size(),
                    actual,
                });
            }
            Ok(())
        }
        Err(e) if link_refused(&e) => {
            tracing::debug!(blob = %from.display(), error = %e, "cannot hard-link, copying");
            copy_verified(image, desc, to, dest)
        }
        Err(source) if source.kind() == io::ErrorKind::NotFound => Err(ExportError::ReadBlob {
            image: image.id(),
            digest: desc.digest().to_string(),
            path: from,
            source,
        }),
        Err(source) => Err(write_error(dest, source)),
    }
}

/// Errors of link(2) that a copy avoids: another filesystem, too many
/// links, a filesystem without hard links, a link policy.
fn link_refused(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let refused = [
        Errno::XDEV,
        Errno::MLINK,
        Errno::PERM,
        Errno::NOTSUP,
        Errno::ACCESS,
    ];
    e.raw_os_error()
        .is_some_and(|code| refused.iter().any(|r| r.raw_os_error() == code))
}

fn copy_verified(
    image: &Image,
    desc: &Descriptor,
    to: &Path,
    dest: &Path,
) -> Result<(), ExportError> {
    let mut blob = image.open_blob(desc)?;
    let mut file = File::create_new(to).map_err(|e| write_error(dest, e))?;
    io::copy(&mut blob, &mut file).map_err(|e| write_error(dest, e))?;
    blob.finish()?;
    file.sync_all().map_err(|e| write_error(dest, e))
}

fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = File::create_new(path)?;
    file.write_all(data)?;
    file.sync_all()
}
