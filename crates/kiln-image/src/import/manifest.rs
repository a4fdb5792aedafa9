//! An image given as a manifest whose blobs are fetched one by one, as a
//! registry serves them. The manifest was checked against its digest by
//! whoever fetched it; here the config and every layer are checked against
//! their descriptors (size and digest) and every diff_id against the
//! uncompressed layer, through the same staging as archive imports, so
//! that nothing is published until every layer matched.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};

use sha2::{Digest as _, Sha256};

use oci_spec::image::{Descriptor, ImageManifest, MediaType};

use super::member::{check_digests, parse, parse_config};
use super::stage::{Manifest, Stage, Temp};
use super::{ImageRecord, ImportError, Result, find_by_source, invalid, io};
use crate::store::{Store, digest_hex, sha256_hex};
use crate::tarball::{ExtractLimits, shorten};

/// The most bytes an image config may hold; real configs are a few KiB,
/// those with long histories some hundred.
pub const CONFIG_MAX: u64 = 16 << 20;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Layer media types kiln unpacks, OCI's and Docker's, the OCI type each
/// is stored as, and whether the OCI manifest may be kept as it is.
const LAYER_TYPES: &[(&str, MediaType, bool)] = &[
    (
        "application/vnd.oci.image.layer.v1.tar",
        MediaType::ImageLayer,
        true,
    ),
    (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        MediaType::ImageLayerGzip,
        true,
    ),
    (
        "application/vnd.oci.image.layer.v1.tar+zstd",
        MediaType::ImageLayerZstd,
        true,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        MediaType::ImageLayerGzip,
        false,
    ),
];

/// Where the blobs of an image come from.
pub trait BlobSource {
    /// Opens the blob a descriptor names. The import reads at most
    /// `descriptor.size()` bytes from it, and checks size and digest.
    fn open(&mut self, descriptor: &Descriptor) -> Result<Box<dyn Read + '_>>;
}

/// What to import: a manifest, already checked against its digest.
pub struct RemoteImage<'a> {
    /// Names the image in errors (`docker://HOST/REPO:TAG`).
    pub source_name: &'a str,
    pub manifest: &'a [u8],
    /// The manifest's digest, which the image record's source names
    /// (`SOURCE_PREFIX@DIGEST`).
    pub digest: &'a str,
    /// The image's source annotation: found again by [`find_by_source`].
    pub source: &'a str,
    /// More annotations for the image record.
    pub annotations: HashMap<String, String>,
}

fn json_media_type(data: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(data)
        .ok()?
        .get("mediaType")?
        .as_str()
        .map(str::to_owned)
}

/// Imports an image manifest (OCI or Docker schema 2) whose blobs come
/// from `blobs`. Layers the store already holds are not fetched again. An
/// OCI image whose config gives every layer a history entry is stored byte
/// for byte and keeps its digest; any other is stored as an OCI image, as
/// `skopeo copy` to an OCI layout does. The caller holds the store lock.
pub fn import_manifest(
    store: &Store,
    image: RemoteImage<'_>,
    blobs: &mut dyn BlobSource,
    name: &str,
    limits: &ExtractLimits,
) -> Result<ImageRecord> {
    let src = image.source_name;
    if let Some(found) = find_by_source(store, image.source)? {
        return Ok(found);
    }
    let file = format!("manifest {}", image.digest);
    check_digests(
        src,
        &file,
        image.manifest,
        &["config.digest", "layers[].digest"],
    )?;
    let media_type = json_media_type(image.manifest).unwrap_or_else(|| OCI_MANIFEST.into());
    if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
        return Err(invalid(
            src,
            format!(
                "{file}: media type {} is not an image manifest kiln reads ({OCI_MANIFEST} or {DOCKER_MANIFEST})",
                shorten(&media_type)
            ),
        ));
    }
    let manifest: ImageManifest = parse(src, &file, image.manifest)?;
    let config_desc = manifest.config();
    let config_type = config_desc.media_type().to_string();
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        return Err(invalid(
            src,
            format!(
                "{file}: config.mediaType {} is not an image config (an artifact, not an image?)",
                shorten(&config_type)
            ),
        ));
    }
    if config_desc.size() > CONFIG_MAX {
        return Err(invalid(
            src,
            format!(
                "{file}: config.size is {} bytes, more than the {CONFIG_MAX} an image config may hold",
                config_desc.size()
            ),
        ));
    }
    let config_json = read_blob(src, blobs, config_desc, "config")?;
    let cfile = format!("config {}", config_desc.digest());
    let config = parse_config(src, &cfile, &config_json, manifest.layers().len())?;
    let diff_ids = config.rootfs().diff_ids();
    let mut keep = media_type == OCI_MANIFEST && config_type == OCI_CONFIG;
    let mut stage = Stage::new(store, src, limits);
    for (i, (layer, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let layer_type = layer.media_type().to_string();
        let Some((_, stored_type, oci)) = LAYER_TYPES.iter().find(|(t, _, _)| *t == layer_type)
        else {
            return Err(invalid(
                src,
                format!(
                    "{file}: layers[{i}].mediaType {} is not a layer kiln unpacks (tar, tar+gzip or tar+zstd){}",
                    shorten(&layer_type),
                    if layer_type.contains("foreign") {
                        ": foreign layers live outside the registry"
                    } else {
                        ""
                    }
                ),
            ));
        };
        keep &= *oci;
        let digest = layer.digest().to_string();
        digest_hex(&digest).map_err(|e| invalid(src, format!("{file}: layers[{i}]: {e}")))?;
        digest_hex(diff_id)
            .map_err(|e| invalid(src, format!("{cfile}: rootfs.diff_ids[{i}]: {e}")))?;
        if store.has_blob(&digest) && store.unpacked_layer(diff_id).is_some() {
            stage.reuse(&digest, diff_id, stored_type.clone())?;
            continue;
        }
        let file = download(store, src, blobs, layer, i)?;
        stage.manifest_layer(i, &digest, diff_id, file)?;
    }
    // An image kept as it is must already be one every tool takes.
    if keep {
        let with_history = super::with_layer_history(src, &config, manifest.layers().len())?;
        keep = with_history.history() == config.history();
    }
    let kept = Manifest::Original {
        manifest: image.manifest,
        config: &config_json,
    };
    let published = if keep { kept } else { Manifest::New(&config) };
    stage.publish_as(published, name, image.source, image.annotations)
}

/// A small JSON blob, read whole within its descriptor's size and checked
/// against its digest.
fn read_blob(
    src: &str,
    blobs: &mut dyn BlobSource,
    descriptor: &Descriptor,
    what: &str,
) -> Result<Vec<u8>> {
    let digest = descriptor.digest().to_string();
    let mut data = Vec::new();
    blobs
        .open(descriptor)?
        .take(descriptor.size() + 1)
        .read_to_end(&mut data)
        .map_err(|e| invalid(src, format!("{what} {digest}: read: {e}")))?;
    if data.len() as u64 != descriptor.size() {
        return Err(invalid(
            src,
            format!(
                "{what} {digest}: the registry sent {} bytes or more, its descriptor's size is {}",
                data.len(),
                descriptor.size()
            ),
        ));
    }
    let actual = format!("sha256:{}", sha256_hex(&data));
    if actual != digest {
        return Err(ImportError::Mismatch(Box::new(super::LayerMismatch {
            source_name: src.to_owned(),
            layer: what.to_owned(),
            field: "the manifest's config.digest".into(),
            expected: digest,
            actual,
        })));
    }
    Ok(data)
}

/// Fetches a layer blob into the store's temporary directory, reading at
/// most its descriptor's size, and checks size and digest before anything
/// reads the blob as an archive.
fn download(
    store: &Store,
    src: &str,
    blobs: &mut dyn BlobSource,
    layer: &Descriptor,
    i: usize,
) -> Result<File> {
    let digest = layer.digest().to_string();
    let tmp = Temp::file(store, "download");
    let mut out =
        BufWriter::with_capacity(1 << 20, File::create(tmp.path()).map_err(io(tmp.path()))?);
    let mut hasher = Sha256::new();
    let mut reader = blobs.open(layer)?.take(layer.size() + 1);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| invalid(src, format!("layer {i} ({digest}): read: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(tmp.path()))?;
        size += n as u64;
    }
    out.flush().map_err(io(tmp.path()))?;
    if size != layer.size() {
        return Err(invalid(
            src,
            format!(
                "layer {i} ({digest}): the registry sent {size} bytes{}, the manifest's layers[{i}].size is {}",
                if size > layer.size() { " or more" } else { "" },
                layer.size()
            ),
        ));
    }
    let actual = crate::tarball::sha256_digest(&hasher.finalize());
    if actual != digest {
        return Err(ImportError::Mismatch(Box::new(super::LayerMismatch {
            source_name: src.to_owned(),
            layer: format!("layer {i} ({digest})"),
            field: format!("the manifest's layers[{i}].digest"),
            expected: digest,
            actual,
        })));
    }
    // Unlinked now: the open file is all the stage reads, and nothing is
    // left behind whatever happens next.
    let file = File::open(tmp.path()).map_err(io(tmp.path()))?;
    drop(tmp);
    Ok(file)
}

/// Whether `media_type` names an image index (OCI's or Docker's list).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// The media type of a manifest, from its own `mediaType` field (OCI
/// manifests may omit it: then an index has `manifests`, an image
/// `config`).
pub fn manifest_media_type(data: &[u8]) -> Option<String> {
    if let Some(t) = json_media_type(data) {
        return Some(t);
    }
    let json: serde_json::Value = serde_json::from_slice(data).ok()?;
    if json.get("manifests").is_some() {
        Some(OCI_INDEX.into())
    } else if json.get("config").is_some() {
        Some(OCI_MANIFEST.into())
    } else {
        None
    }
}
