//! The image store: an OCI image layout under kiln's state directory,
//! which skopeo, umoci and other container tools read as it is.
//!
//! ```text
//! images/oci/            the layout: oci-layout, index.json, blobs/sha256/
//! images/layers/<diff>/  unpacked layers, in overlayfs form, shared by
//!                        every bake and instance that needs them
//! images/cache/<key>     which layer a component's inputs produced
//! images/tmp/            work in progress, never visible as a blob
//! images/lock            taken while index.json or the caches change
//! ```
//!
//! Every write is atomic (temporary file, fsync, rename), so a crash never
//! leaves a half blob or a half index visible.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType,
};
use sha2::{Digest as _, Sha256};

use crate::version::{Version, VersionPattern};

pub const ANNOTATION_REF: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_NAME: &str = "dev.kiln.image.name";
pub const ANNOTATION_VERSION: &str = "dev.kiln.image.version";
pub const ANNOTATION_BUILD: &str = "dev.kiln.image.build";
pub const ANNOTATION_STATUS: &str = "dev.kiln.image.status";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
pub const ANNOTATION_TEST_LOG: &str = "dev.kiln.image.test-log";
pub const ANNOTATION_RECIPE_KEY: &str = "dev.kiln.recipe.key";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {dir}: {action}: {error}")]
    Io {
        dir: PathBuf,
        action: String,
        error: io::Error,
    },
    #[error("image store {dir}: {what} is corrupt: {why}")]
    Corrupt {
        dir: PathBuf,
        what: String,
        why: String,
    },
    #[error("no image matches {reference:?}")]
    NotFound { reference: String },
    #[error("{reference:?} matches several images ({matches}); give more of the digest")]
    Ambiguous { reference: String, matches: String },
    #[error("{reference:?} is not an image reference: {why}")]
    BadReference { reference: String, why: String },
    #[error("{digest:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)")]
    BadDigest { digest: String },
    #[error("image {image} is {status}: its tests did not pass, so it cannot be deployed")]
    NotDeployable { image: String, status: Status },
}

type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Available,
    Failed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Available => "available",
            Status::Failed => "failed",
        })
    }
}

/// One image of the store, as its index entry describes it.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub name: String,
    pub version: Version,
    pub build: u32,
    pub status: Status,
    pub created: String,
    pub descriptor: Descriptor,
}

impl ImageRecord {
    /// `name/x.y.z/build`, as Image Builder names image versions.
    pub fn reference(&self) -> String {
        format!("{}/{}/{}", self.name, self.version, self.build)
    }

    pub fn digest(&self) -> String {
        self.descriptor.digest().to_string()
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.descriptor
            .annotations()
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    fn from_descriptor(d: &Descriptor) -> Option<ImageRecord> {
        let a = d.annotations().as_ref()?;
        Some(ImageRecord {
            name: a.get(ANNOTATION_NAME)?.clone(),
            version: a.get(ANNOTATION_VERSION)?.parse().ok()?,
            build: a.get(ANNOTATION_BUILD)?.parse().ok()?,
            status: match a.get(ANNOTATION_STATUS)?.as_str() {
                "failed" => Status::Failed,
                _ => Status::Available,
            },
            created: a.get(ANNOTATION_CREATED).cloned().unwrap_or_default(),
            descriptor: d.clone(),
        })
    }
}

pub struct Store {
    dir: PathBuf,
}

/// Held while the index or the caches change; released on drop.
pub struct StoreLock {
    _file: File,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Store {
    /// Opens the store in `dir`, creating an empty layout the first time.
    pub fn open(dir: &Path) -> Result<Store> {
        let store = Store {
            dir: dir.to_path_buf(),
        };
        for sub in ["oci/blobs/sha256", "layers", "cache", "tmp"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| store.io(format!("create {sub}"), e))?;
        }
        let layout = store.layout().join("oci-layout");
        if !layout.exists() {
            store.write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !store.layout().join("index.json").exists() {
            let index = ImageIndexBuilder::default()
                .schema_version(2u32)
                .manifests(Vec::new())
                .build()
                .map_err(|e| store.corrupt("index.json", e))?;
            store.write_index(&index)?;
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OCI image layout directory (`skopeo inspect oci:DIR:REF`).
    pub fn layout(&self) -> PathBuf {
        self.dir.join("oci")
    }

    fn io(&self, action: impl Into<String>, error: io::Error) -> StoreError {
        StoreError::Io {
            dir: self.dir.clone(),
            action: action.into(),
            error,
        }
    }

    fn corrupt(&self, what: &str, why: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            dir: self.dir.clone(),
            what: what.to_string(),
            why: why.to_string(),
        }
    }

    pub fn lock(&self) -> Result<StoreLock> {
        let file = File::create(self.dir.join("lock")).map_err(|e| self.io("open the lock", e))?;
        file.lock().map_err(|e| self.io("take the lock", e))?;
        Ok(StoreLock { _file: file })
    }

    /// A fresh path under the store's temporary directory, on the same
    /// filesystem as the blobs, so that a rename publishes it.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.dir
            .join("tmp")
            .join(format!("{what}-{}", uuid::Uuid::new_v4()))
    }

    /// Removes what crashed work left in the temporary directory. Call it
    /// while holding the lock, before new work starts.
    pub fn clean_temp(&self) -> Result<()> {
        let tmp = self.dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| self.io("list tmp", e))? {
            let path = entry.map_err(|e| self.io("list tmp", e))?.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| self.io(format!("remove {}", path.display()), e))?;
        }
        Ok(())
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        let tmp = self.temp_path("write");
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            if let Some(parent) = path.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            // Best effort: the write already failed with its own error; the file
            // is in the store's temporary area, which clean_temp empties.
            let _ = fs::remove_file(&tmp);
            self.io(format!("write {}", path.display()), e)
        })
    }

    /// Where the blob `digest` lives; refused unless `digest` is a sha256
    /// digest, so that no name from an image can reach another path.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.layout().join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Stores `data` as a blob; returns its descriptor.
    pub fn put_blob(&self, media_type: MediaType, data: &[u8]) -> Result<Descriptor> {
        let digest = format!("sha256:{}", sha256_hex(data));
        if !self.has_blob(&digest) {
            self.write_atomic(&self.blob_path(&digest)?, data)?;
        }
        Ok(Descriptor::new(
            media_type,
            data.len() as u64,
            parse_digest(&digest)?,
        ))
    }

    /// Publishes a finished file from [`Store::temp_path`] as the blob
    /// `digest`, which the caller computed while writing it.
    pub fn put_blob_file(&self, tmp: &Path, digest: &str) -> Result<()> {
        let path = self.blob_path(digest)?;
        let publish = || -> io::Result<()> {
            File::open(tmp)?.sync_all()?;
            fs::rename(tmp, &path)?;
            File::open(self.layout().join("blobs/sha256"))?.sync_all()
        };
        publish().map_err(|e| self.io(format!("publish blob {digest}"), e))
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        File::open(self.blob_path(digest)?)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| self.io(format!("read blob {digest}"), e))?;
        if sha256_hex(&data) != digest.strip_prefix("sha256:").unwrap_or(digest) {
            return Err(self.corrupt(
                &format!("blob {digest}"),
                "its content does not match its digest",
            ));
        }
        Ok(data)
    }

    pub fn manifest(&self, image: &ImageRecord) -> Result<ImageManifest> {
        let data = self.read_blob(&image.digest())?;
        serde_json::from_slice::<ImageManifest>(&data)
            .map_err(|e| self.corrupt(&format!("manifest {}", image.digest()), shorten_err(e)))
    }

    pub fn config(&self, manifest: &ImageManifest) -> Result<ImageConfiguration> {
        let digest = manifest.config().digest().to_string();
        let data = self.read_blob(&digest)?;
        serde_json::from_slice::<ImageConfiguration>(&data)
            .map_err(|e| self.corrupt(&format!("config {digest}"), shorten_err(e)))
    }

    fn read_index(&self) -> Result<ImageIndex> {
        let path = self.layout().join("index.json");
        let data = fs::read(&path).map_err(|e| self.io("read index.json", e))?;
        serde_json::from_slice::<ImageIndex>(&data)
            .map_err(|e| self.corrupt("index.json", shorten_err(e)))
    }

    fn write_index(&self, index: &ImageIndex) -> Result<()> {
        let text = serde_json::to_vec_pretty(index).map_err(|e| self.corrupt("index.json", e))?;
        self.write_atomic(&self.layout().join("index.json"), &text)
    }

    /// Every image, oldest first.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        Ok(self
            .read_index()?
            .manifests()
            .iter()
            .filter_map(ImageRecord::from_descriptor)
            .collect())
    }

    /// The next build number of `name` at `version`.
    pub fn next_build(&self, name: &str, version: Version) -> Result<u32> {
        let max = self
            .images()?
            .iter()
            .filter(|i| i.name == name && i.version == version)
            .map(|i| i.build)
            .max();
        Ok(max.unwrap_or(0) + 1)
    }

    /// Adds an image to the index. The caller holds the lock.
    pub fn add_image(
        &self,
        manifest: Descriptor,
        name: &str,
        version: Version,
        build: u32,
        status: Status,
        extra: HashMap<String, String>,
    ) -> Result<ImageRecord> {
        let mut annotations = extra;
        annotations.insert(ANNOTATION_REF.into(), format!("{name}/{version}/{build}"));
        annotations.insert(ANNOTATION_NAME.into(), name.into());
        annotations.insert(ANNOTATION_VERSION.into(), version.to_string());
        annotations.insert(ANNOTATION_BUILD.into(), build.to_string());
        annotations.insert(ANNOTATION_STATUS.into(), status.to_string());
        annotations
            .entry(ANNOTATION_CREATED.into())
            .or_insert_with(|| jiff::Timestamp::now().to_string());
        let mut descriptor = manifest;
        descriptor.set_annotations(Some(annotations));
        let mut index = self.read_index()?;
        let mut manifests = index.manifests().clone();
        manifests.push(descriptor.clone());
        index.set_manifests(manifests);
        self.write_index(&index)?;
        ImageRecord::from_descriptor(&descriptor)
            .ok_or_else(|| self.corrupt("index.json", "a new entry did not read back"))
    }

    /// Removes an image from the index (its blobs stay until garbage
    /// collection). The caller holds the lock.
    pub fn remove_image(&self, image: &ImageRecord) -> Result<()> {
        let mut index = self.read_index()?;
        let want = image.reference();
        let mut manifests = index.manifests().clone();
        manifests.retain(|d| ImageRecord::from_descriptor(d).is_none_or(|r| r.reference() != want));
        index.set_manifests(manifests);
        self.write_index(&index)
    }

    /// Finds an image by digest (`sha256:...`, or a prefix of at least 12
    /// hex digits) or by `name`, `name/1.2.3`, `name/1.x.x`, `name/1.2.3/4`.
    /// Without a build, the newest build of the newest matching version wins.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord> {
        let images = self.images()?;
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 12 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let found: Vec<&ImageRecord> = images
                .iter()
                .filter(|i| i.digest()[7..].starts_with(hex))
                .collect();
            return match found.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(StoreError::NotFound {
                    reference: reference.into(),
                }),
                many => Err(StoreError::Ambiguous {
                    reference: reference.into(),
                    matches: many
                        .iter()
                        .map(|i| i.reference())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            };
        }
        let bad = |why: &str| StoreError::BadReference {
            reference: reference.into(),
            why: why.into(),
        };
        let parts: Vec<&str> = reference.split('/').collect();
        let (name, pattern, build) = match parts.as_slice() {
            [name] => (*name, None, None),
            [name, v] => (
                *name,
                Some(
                    v.parse::<VersionPattern>()
                        .map_err(|e| bad(&e.to_string()))?,
                ),
                None,
            ),
            [name, v, b] => {
                let version: Version = v
                    .parse()
                    .map_err(|e: crate::version::VersionError| bad(&e.to_string()))?;
                let build: u32 = b.parse().map_err(|_| bad("the build is a whole number"))?;
                (
                    *name,
                    Some(
                        format!("{version}")
                            .parse()
                            .map_err(|e: crate::version::VersionError| bad(&e.to_string()))?,
                    ),
                    Some(build),
                )
            }
            _ => return Err(bad("expected NAME, NAME/VERSION or NAME/VERSION/BUILD")),
        };
        images
            .into_iter()
            .filter(|i| {
                i.name == name
                    && pattern.is_none_or(|p| p.matches(&i.version))
                    && build.is_none_or(|b| b == i.build)
            })
            .max_by_key(|i| (i.version, i.build))
            .ok_or_else(|| StoreError::NotFound {
                reference: reference.into(),
            })
    }

    /// Resolves an image that may be deployed: only `available` ones may.
    pub fn resolve_deployable(&self, reference: &str) -> Result<ImageRecord> {
        let image = self.resolve(reference)?;
        if image.status != Status::Available {
            return Err(StoreError::NotDeployable {
                image: image.reference(),
                status: image.status,
            });
        }
        Ok(image)
    }

    /// The unpacked form of a layer, in overlayfs form, extracted once and
    /// shared; `None` if it is not unpacked yet (or `diff_id` is no digest).
    pub fn unpacked_layer(&self, diff_id: &str) -> Option<PathBuf> {
        let dir = self.layer_dir(diff_id).ok()?;
        dir.is_dir().then_some(dir)
    }

    /// Where the unpacked form of `diff_id` lives; refused unless it is a
    /// sha256 digest.
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.dir.join("layers").join(digest_hex(diff_id)?))
    }

    /// Publishes a directory prepared under the temporary directory as the
    /// unpacked form of `diff_id`. The caller holds the lock.
    pub fn put_unpacked_layer(&self, prepared: &Path, diff_id: &str) -> Result<PathBuf> {
        let dir = self.layer_dir(diff_id)?;
        if dir.is_dir() {
            // The layer is published already; `prepared` is in the store's
            // temporary area, which clean_temp empties.
            let _ = fs::remove_dir_all(prepared);
            return Ok(dir);
        }
        fs::rename(prepared, &dir).map_err(|e| self.io(format!("publish layer {diff_id}"), e))?;
        Ok(dir)
    }

    /// The layer a cache key produced earlier, if its blob is still here.
    pub fn cached_layer(&self, key: &str) -> Option<CachedLayer> {
        let data = fs::read(self.dir.join("cache").join(key)).ok()?;
        let layer: CachedLayer = serde_json::from_slice(&data).ok()?;
        self.has_blob(&layer.digest).then_some(layer)
    }

    pub fn put_cached_layer(&self, key: &str, layer: &CachedLayer) -> Result<()> {
        let data = serde_json::to_vec(layer).map_err(|e| self.corrupt("cache entry", e))?;
        self.write_atomic(&self.dir.join("cache").join(key), &data)
    }
}

/// A layer as the cache remembers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

/// The 64 hex digits of a `sha256:` digest. Every digest and diff_id an
/// image names passes here before it becomes part of a path: anything else
/// (`/etc`, `sha256:../../x`, upper case, other algorithms) is refused.
pub fn digest_hex(d: &str) -> Result<&str> {
    match d.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(StoreError::BadDigest {
            digest: crate::tarball::shorten(d),
        }),
    }
}

/// A parser's message says where (line and column) and what; it may quote
/// the document, so it is kept short.
fn shorten_err(e: serde_json::Error) -> String {
    crate::tarball::shorten(&e.to_string())
}

pub fn parse_digest(d: &str) -> Result<Digest> {
    digest_hex(d)?;
    d.parse::<Digest>().map_err(|e| StoreError::BadReference {
        reference: d.into(),
        why: e.to_string(),
    })
}
