//! Bringing images into the store: a root filesystem tree (busybox,
//! mmdebstrap), a rootfs tarball, an OCI layout or archive, and what
//! `docker save` writes. Every archive is extracted with the safe
//! extractor within its limits, every layer is checked against its digests
//! while it is extracted, and kept unpacked in overlayfs form.

mod archive;
pub mod manifest;
mod member;
mod stage;

pub use archive::{import_docker_archive, import_oci_archive, import_oci_dir};
pub use manifest::{BlobSource, RemoteImage, import_manifest};

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    ConfigBuilder, Descriptor, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder,
    ImageManifest, ImageManifestBuilder, MediaType, RootFsBuilder,
};

use crate::store::{ImageRecord, Status, Store, StoreError, parse_digest};
use crate::tarball::{self, Compression, ExtractLimits, ExtractOptions, LayerInfo};
use crate::version::Version;
use stage::Temp;

pub const ANNOTATION_SOURCE: &str = "dev.kiln.image.source";

/// Imported images start at 1.0.0; their build numbers count re-imports.
const IMPORTED_VERSION: Version = Version {
    major: 1,
    minor: 0,
    patch: 0,
};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tar(#[from] tarball::TarError),
    #[error("{source_name}: {why}")]
    Invalid { source_name: String, why: String },
    #[error(transparent)]
    Mismatch(Box<LayerMismatch>),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// A layer whose content is not what the image says it is.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {layer}: {field} is {expected}, but the layer's content is {actual}")]
pub struct LayerMismatch {
    pub source_name: String,
    pub layer: String,
    /// Where the image gives the digest (a manifest or config field).
    pub field: String,
    pub expected: String,
    pub actual: String,
}

type Result<T> = std::result::Result<T, ImportError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |error| ImportError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn invalid(source_name: &str, why: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        source_name: source_name.to_string(),
        why: why.into(),
    }
}

/// An image of the store whose source annotation is `source`.
pub fn find_by_source(store: &Store, source: &str) -> Result<Option<ImageRecord>> {
    Ok(store
        .images()?
        .into_iter()
        .rev()
        .find(|i| i.status == Status::Available && i.annotation(ANNOTATION_SOURCE) == Some(source)))
}

/// Turns a root filesystem directory (under the store's temporary
/// directory) into a one-layer image; the directory becomes the layer's
/// unpacked form. The caller holds the store lock.
pub fn image_from_tree(
    store: &Store,
    tree: &Path,
    name: &str,
    version: Version,
    source: &str,
) -> Result<ImageRecord> {
    let (layer, info) = write_layer(store, tree, false)?;
    store.put_unpacked_layer(tree, &info.diff_id)?;
    let config = base_config(vec![info.diff_id.clone()], source)?;
    finish_image(store, &config, vec![layer], name, version, source)
}

/// Writes `dir` as a zstd layer blob; returns its descriptor.
pub fn write_layer(
    store: &Store,
    dir: &Path,
    overlay_upper: bool,
) -> Result<(Descriptor, LayerInfo)> {
    let tmp = Temp::file(store, "layer");
    let file = File::create(tmp.path()).map_err(io(tmp.path()))?;
    let info = tarball::create_layer(
        dir,
        BufWriter::with_capacity(1 << 20, file),
        Compression::Zstd,
        overlay_upper,
    )?;
    store.put_blob_file(tmp.path(), &info.digest)?;
    tmp.keep();
    let descriptor = Descriptor::new(
        MediaType::ImageLayerZstd,
        info.size,
        parse_digest(&info.digest)?,
    );
    Ok((descriptor, info))
}

fn base_config(diff_ids: Vec<String>, source: &str) -> Result<ImageConfiguration> {
    let created = jiff::Timestamp::now().to_string();
    let history = diff_ids
        .iter()
        .map(|_| {
            HistoryBuilder::default()
                .created(created.clone())
                .created_by(format!("kiln import {source}"))
                .build()
                .map_err(|e| invalid("config", e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(diff_ids)
        .build()
        .map_err(|e| invalid("config", e.to_string()))?;
    ImageConfigurationBuilder::default()
        .architecture(oci_spec::image::Arch::Amd64)
        .os(oci_spec::image::Os::Linux)
        .created(created)
        .history(history)
        .config(
            ConfigBuilder::default()
                .build()
                .map_err(|e| invalid("config", e.to_string()))?,
        )
        .rootfs(rootfs)
        .build()
        .map_err(|e| invalid("config", e.to_string()))
}

/// Writes config and manifest blobs and adds the image to the index.
pub fn finish_image(
    store: &Store,
    config: &ImageConfiguration,
    layers: Vec<Descriptor>,
    name: &str,
    version: Version,
    source: &str,
) -> Result<ImageRecord> {
    let manifest = write_manifest(store, config, layers)?;
    let build = store.next_build(name, version)?;
    let extra = HashMap::from([(ANNOTATION_SOURCE.to_string(), source.to_string())]);
    Ok(store.add_image(manifest, name, version, build, Status::Available, extra)?)
}

/// Stores a config and a manifest; returns the manifest's descriptor.
pub fn write_manifest(
    store: &Store,
    config: &ImageConfiguration,
    layers: Vec<Descriptor>,
) -> Result<Descriptor> {
    let config = with_layer_history("config", config, layers.len())?;
    let config_json = serde_json::to_vec(&config).map_err(|e| invalid("config", e.to_string()))?;
    let config_desc = store.put_blob(MediaType::ImageConfig, &config_json)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(layers)
        .build()
        .map_err(|e| invalid("manifest", e.to_string()))?;
    let manifest_json =
        serde_json::to_vec(&manifest).map_err(|e| invalid("manifest", e.to_string()))?;
    Ok(store.put_blob(MediaType::ImageManifest, &manifest_json)?)
}

/// `config` with exactly one non-empty history entry per layer, as the
/// OCI image spec asks and podman/buildah check before they build on an
/// image. Layers without an entry (images imported without history) get
/// one in front, since a tool that wrote none recorded nothing about its
/// lowest layers; entries beyond the layers are an error, because the
/// image would be refused by every tool that reads it.
pub fn with_layer_history(
    source_name: &str,
    config: &ImageConfiguration,
    layers: usize,
) -> Result<ImageConfiguration> {
    let mut history = config.history().clone().unwrap_or_default();
    let non_empty = history
        .iter()
        .filter(|h| h.empty_layer() != Some(true))
        .count();
    if non_empty > layers {
        return Err(invalid(
            source_name,
            format!(
                "config: history lists {non_empty} non-empty layers, but the image has {layers}"
            ),
        ));
    }
    let missing = (0..layers - non_empty)
        .map(|_| {
            HistoryBuilder::default()
                .created_by("kiln: layer imported without history")
                .build()
                .map_err(|e| invalid("config", e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    history.splice(0..0, missing);
    let mut config = config.clone();
    config.set_history(Some(history));
    Ok(config)
}

/// Makes sure every layer of `manifest` is unpacked (in overlayfs form);
/// returns their directories, bottom layer first. The caller holds the
/// store lock.
pub fn unpack_layers(store: &Store, manifest: &ImageManifest) -> Result<Vec<PathBuf>> {
    let config = store.config(manifest)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(
            "manifest",
            "the config's diff_ids do not match the layers",
        ));
    }
    manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(layer, diff_id)| unpack_layer(store, layer.digest().as_ref(), diff_id))
        .collect()
}

/// The unpacked form of one layer blob, extracted the first time it is
/// needed and checked against `diff_id`. The caller holds the store lock.
pub fn unpack_layer(store: &Store, digest: &str, diff_id: &str) -> Result<PathBuf> {
    if let Some(dir) = store.unpacked_layer(diff_id) {
        return Ok(dir);
    }
    store.layer_dir(diff_id)?;
    let blob = store.blob_path(digest)?;
    let tmp = Temp::dir(store, "unpack")?;
    let file = File::open(&blob).map_err(io(&blob))?;
    let opts = ExtractOptions {
        whiteouts: false,
        allow_devices: false,
        preserve_owners: rustix::process::geteuid().is_root(),
        members_only: false,
        // The store's blobs passed the limits when they were imported, or
        // a bake made them.
        limits: ExtractLimits::trusted(),
    };
    let extracted = tarball::extract(
        BufReader::with_capacity(1 << 20, file),
        tmp.path(),
        digest,
        &opts,
    )?;
    if extracted.diff_id != diff_id {
        return Err(ImportError::Mismatch(Box::new(LayerMismatch {
            source_name: format!("image store {}", store.dir().display()),
            layer: format!("layer {digest}"),
            field: "its diff_id".into(),
            expected: diff_id.into(),
            actual: extracted.diff_id,
        })));
    }
    to_overlay_form(tmp.path())?;
    let dir = store.put_unpacked_layer(tmp.path(), diff_id)?;
    tmp.keep();
    Ok(dir)
}

/// Converts OCI whiteout files into overlayfs's own form, so that the
/// directory can be a lower layer: `.wh.NAME` becomes a 0/0 character
/// device NAME, and `.wh..wh..opq` marks its directory opaque.
pub fn to_overlay_form(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(io(&path))?;
        if name == ".wh..wh..opq" {
            fs::remove_file(&path).map_err(io(&path))?;
            rustix::fs::setxattr(
                dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| ImportError::Io {
                path: dir.to_path_buf(),
                error: e.into(),
            })?;
        } else if let Some(target) = name.strip_prefix(".wh.") {
            fs::remove_file(&path).map_err(io(&path))?;
            let whiteout = dir.join(target);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &whiteout,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| ImportError::Io {
                path: whiteout.clone(),
                error: e.into(),
            })?;
        } else if kind.is_dir() {
            to_overlay_form(&path)?;
        }
    }
    Ok(())
}

/// A rootfs tarball (`rootfs:PATH.tar`), extracted safely within `limits`
/// and stored as one layer. Imports of the same tarball are found again by
/// its digest.
pub fn import_rootfs_tar(
    store: &Store,
    tar: &Path,
    name: &str,
    limits: &ExtractLimits,
) -> Result<ImageRecord> {
    let digest = file_digest(tar)?;
    let source = format!("rootfs:sha256:{digest}");
    if let Some(found) = find_by_source(store, &source)? {
        return Ok(found);
    }
    let tree = Temp::dir(store, "rootfs")?;
    let file = File::open(tar).map_err(io(tar))?;
    let opts = ExtractOptions {
        whiteouts: true,
        allow_devices: false,
        preserve_owners: rustix::process::geteuid().is_root(),
        members_only: false,
        limits: *limits,
    };
    tarball::extract(
        BufReader::with_capacity(1 << 20, file),
        tree.path(),
        &format!("rootfs:{}", tar.display()),
        &opts,
    )?;
    let image = image_from_tree(store, tree.path(), name, IMPORTED_VERSION, &source)?;
    tree.keep();
    Ok(image)
}

fn file_digest(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut file = File::open(path).map_err(io(path))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
