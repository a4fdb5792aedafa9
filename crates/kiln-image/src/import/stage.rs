//! An import in progress: every layer is copied, hashed and extracted under
//! the store's temporary directory and checked against the digests the
//! image gives it; only when every layer passed are the blobs, unpacked
//! layers and the image record published. A failed import leaves nothing:
//! its temporary files go when the stage is dropped, and what a failed
//! publication already moved into the store is taken out again.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifestBuilder, MediaType};
use sha2::{Digest as _, Sha256};

use super::{ANNOTATION_SOURCE, IMPORTED_VERSION, ImportError, LayerMismatch, Result, invalid, io};
use crate::store::{ImageRecord, Status, Store, digest_hex, parse_digest};
use crate::tarball::{self, Compression, ExtractLimits, ExtractOptions};

/// A temporary path under the store, removed on drop unless published.
pub(super) struct Temp(Option<PathBuf>);

impl Temp {
    /// A path for a file the caller creates.
    pub fn file(store: &Store, what: &str) -> Temp {
        Temp(Some(store.temp_path(what)))
    }

    pub fn dir(store: &Store, what: &str) -> Result<Temp> {
        let path = store.temp_path(what);
        fs::create_dir_all(&path).map_err(io(&path))?;
        Ok(Temp(Some(path)))
    }

    pub fn path(&self) -> &Path {
        self.0
            .as_deref()
            .expect("a temporary path is used before it is kept")
    }

    /// Leaves the path to its new owner (it was renamed away).
    pub fn keep(mut self) -> PathBuf {
        self.0.take().expect("kept once")
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // A drop cannot report; what is left is in the store's temporary
            // area, which clean_temp empties.
            let _ = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(_) => Ok(()),
            };
        }
    }
}

struct Staged {
    /// None for a layer the store already holds, blob and unpacked form.
    blob: Option<Temp>,
    dir: Option<Temp>,
    digest: String,
    size: u64,
    media_type: MediaType,
    diff_id: String,
}

pub(super) struct Stage<'s> {
    store: &'s Store,
    source_name: String,
    /// What the remaining layers may still expand to.
    limits: ExtractLimits,
    layers: Vec<Staged>,
}

/// Which digest a layer must have, and where the image says so.
pub(super) struct Expected<'a> {
    pub digest: &'a str,
    pub field: String,
}

impl<'s> Stage<'s> {
    pub fn new(store: &'s Store, source_name: &str, limits: &ExtractLimits) -> Stage<'s> {
        Stage {
            store,
            source_name: source_name.to_owned(),
            limits: *limits,
            layers: Vec::new(),
        }
    }

    fn mismatch(&self, layer: &str, expected: &Expected<'_>, actual: &str) -> ImportError {
        ImportError::Mismatch(Box::new(LayerMismatch {
            source_name: self.source_name.clone(),
            layer: layer.to_owned(),
            field: expected.field.clone(),
            expected: expected.digest.to_owned(),
            actual: actual.to_owned(),
        }))
    }

    /// Copies the layer `file` (named `layer` in errors) to a temporary
    /// blob while extracting it, and checks the blob against `blob` (when
    /// the image names the blob's digest) and the uncompressed stream
    /// against `diff_id`.
    pub fn layer(
        &mut self,
        layer: &str,
        file: impl Read,
        blob: Option<Expected<'_>>,
        diff_id: Expected<'_>,
    ) -> Result<()> {
        let bad =
            |field: &str, e: crate::StoreError| invalid(&self.source_name, format!("{field}: {e}"));
        digest_hex(diff_id.digest).map_err(|e| bad(&diff_id.field, e))?;
        if let Some(b) = &blob {
            digest_hex(b.digest).map_err(|e| bad(&b.field, e))?;
        }
        let blob_tmp = Temp::file(self.store, "blob");
        let out = File::create(blob_tmp.path()).map_err(io(blob_tmp.path()))?;
        let mut tee = Tee {
            inner: file,
            hasher: Sha256::new(),
            out: BufWriter::with_capacity(1 << 20, out),
            size: 0,
        };
        let dir = Temp::dir(self.store, "unpack")?;
        let opts = ExtractOptions {
            whiteouts: false,
            allow_devices: false,
            preserve_owners: rustix::process::geteuid().is_root(),
            members_only: false,
            limits: self.limits,
        };
        let shown = format!("{}: {layer}", self.source_name);
        let extracted = tarball::extract(&mut tee, dir.path(), &shown, &opts)?;
        // The decompressor may stop before the end of the blob; the blob's
        // digest covers all of it.
        io::copy(&mut tee, &mut io::sink()).map_err(io(blob_tmp.path()))?;
        tee.out.flush().map_err(io(blob_tmp.path()))?;
        let digest = tarball::sha256_digest(&tee.hasher.finalize());
        if let Some(b) = &blob
            && b.digest != digest
        {
            return Err(self.mismatch(layer, b, &digest));
        }
        if extracted.diff_id != diff_id.digest {
            return Err(self.mismatch(layer, &diff_id, &extracted.diff_id));
        }
        self.limits.max_size = self.limits.max_size.saturating_sub(extracted.size);
        super::to_overlay_form(dir.path())?;
        self.layers.push(Staged {
            blob: Some(blob_tmp),
            dir: Some(dir),
            digest,
            size: tee.size,
            media_type: match extracted.compression {
                Compression::Gzip => MediaType::ImageLayerGzip,
                Compression::Zstd => MediaType::ImageLayerZstd,
                Compression::None => MediaType::ImageLayer,
            },
            diff_id: diff_id.digest.to_owned(),
        });
        Ok(())
    }

    /// Stages layer `i` of a manifest: its blob must have the digest the
    /// manifest gives it, its content the config's diff_id.
    pub fn manifest_layer(
        &mut self,
        i: usize,
        digest: &str,
        diff_id: &str,
        file: impl Read,
    ) -> Result<()> {
        self.layer(
            &format!("layer {i} ({digest})"),
            file,
            Some(Expected {
                digest,
                field: format!("the manifest's layers[{i}].digest"),
            }),
            Expected {
                digest: diff_id,
                field: format!("the config's rootfs.diff_ids[{i}]"),
            },
        )
    }

    /// Takes a layer that the store already holds, as blob and unpacked
    /// form, without reading it again.
    pub fn reuse(&mut self, digest: &str, diff_id: &str, media_type: MediaType) -> Result<()> {
        let path = self.store.blob_path(digest)?;
        let size = fs::metadata(&path).map_err(io(&path))?.len();
        self.layers.push(Staged {
            blob: None,
            dir: None,
            digest: digest.to_owned(),
            size,
            media_type,
            diff_id: diff_id.to_owned(),
        });
        Ok(())
    }

    /// Publishes the staged layers, `config` and a manifest, then the image
    /// record; on failure takes out again what it put in.
    pub fn publish(
        self,
        config: &ImageConfiguration,
        name: &str,
        source: &str,
    ) -> Result<ImageRecord> {
        self.publish_as(Manifest::New(config), name, source, HashMap::new())
    }

    /// Like [`Stage::publish`], with the manifest to publish: a new one, or
    /// the image's own bytes (whose layers the stage holds), and more
    /// annotations for the image record.
    pub fn publish_as(
        self,
        manifest: Manifest<'_>,
        name: &str,
        source: &str,
        extra: HashMap<String, String>,
    ) -> Result<ImageRecord> {
        let mut published = Published {
            store: self.store,
            blobs: Vec::new(),
            layers: Vec::new(),
        };
        let record = published.publish(self.layers, manifest, name, source, extra)?;
        published.blobs.clear();
        published.layers.clear();
        Ok(record)
    }
}

/// The manifest an import publishes.
pub(super) enum Manifest<'a> {
    /// A new OCI manifest over the staged layers and this config, which
    /// gets a history entry per layer if it lacks them.
    New(&'a ImageConfiguration),
    /// The image's own OCI manifest and config, kept byte for byte so that
    /// the image keeps its digest; both were checked against their digests.
    Original {
        manifest: &'a [u8],
        config: &'a [u8],
    },
}

/// What a publication moved into the store, taken out again on drop
/// unless it finished.
struct Published<'s> {
    store: &'s Store,
    blobs: Vec<PathBuf>,
    layers: Vec<PathBuf>,
}

impl Published<'_> {
    fn publish(
        &mut self,
        staged: Vec<Staged>,
        manifest: Manifest<'_>,
        name: &str,
        source: &str,
        mut extra: HashMap<String, String>,
    ) -> Result<ImageRecord> {
        let store = self.store;
        let mut descriptors = Vec::new();
        for layer in staged {
            if !store.has_blob(&layer.digest) {
                let Some(blob) = layer.blob else {
                    return Err(invalid(
                        source,
                        format!("layer {} left the store", layer.digest),
                    ));
                };
                store.put_blob_file(blob.path(), &layer.digest)?;
                blob.keep();
                self.blobs.push(store.blob_path(&layer.digest)?);
            }
            if store.unpacked_layer(&layer.diff_id).is_none() {
                let Some(prepared) = layer.dir else {
                    return Err(invalid(
                        source,
                        format!("layer {} left the store", layer.diff_id),
                    ));
                };
                let dir = store.put_unpacked_layer(prepared.path(), &layer.diff_id)?;
                prepared.keep();
                self.layers.push(dir);
            }
            descriptors.push(Descriptor::new(
                layer.media_type,
                layer.size,
                parse_digest(&layer.digest)?,
            ));
        }
        let manifest_desc = match manifest {
            Manifest::New(config) => {
                let config = super::with_layer_history(source, config, descriptors.len())?;
                let config_json =
                    serde_json::to_vec(&config).map_err(|e| invalid("config", e.to_string()))?;
                let config_desc = self.put_blob(MediaType::ImageConfig, &config_json)?;
                let manifest = ImageManifestBuilder::default()
                    .schema_version(2u32)
                    .media_type(MediaType::ImageManifest)
                    .config(config_desc)
                    .layers(descriptors)
                    .build()
                    .map_err(|e| invalid("manifest", e.to_string()))?;
                let manifest_json = serde_json::to_vec(&manifest)
                    .map_err(|e| invalid("manifest", e.to_string()))?;
                self.put_blob(MediaType::ImageManifest, &manifest_json)?
            }
            Manifest::Original { manifest, config } => {
                self.put_blob(MediaType::ImageConfig, config)?;
                self.put_blob(MediaType::ImageManifest, manifest)?
            }
        };
        let build = store.next_build(name, IMPORTED_VERSION)?;
        extra.insert(ANNOTATION_SOURCE.to_string(), source.to_string());
        Ok(store.add_image(
            manifest_desc,
            name,
            IMPORTED_VERSION,
            build,
            Status::Available,
            extra,
        )?)
    }

    fn put_blob(&mut self, media_type: MediaType, data: &[u8]) -> Result<Descriptor> {
        let digest = format!("sha256:{}", crate::store::sha256_hex(data));
        let new = !self.store.has_blob(&digest);
        let descriptor = self.store.put_blob(media_type, data)?;
        if new {
            self.blobs.push(self.store.blob_path(&digest)?);
        }
        Ok(descriptor)
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        // A drop cannot report; a blob or layer left is referenced by no
        // image, and garbage collection removes it.
        for blob in &self.blobs {
            let _ = fs::remove_file(blob);
        }
        for layer in &self.layers {
            let _ = fs::remove_dir_all(layer);
        }
    }
}

/// Hashes and copies what is read through it.
struct Tee<R> {
    inner: R,
    hasher: Sha256,
    out: BufWriter<File>,
    size: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.out.write_all(&buf[..n])?;
        self.size += n as u64;
        Ok(n)
    }
}
