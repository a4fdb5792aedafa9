//! Pushing an image of the store: each blob the repository lacks (a HEAD
//! tells) is mounted from another repository of the registry that an
//! image of the store was pulled from, or uploaded in one PUT, or in PATCH
//! chunks when it is large; then the manifest is PUT with its own media
//! type, byte for byte, so the registry's digest is the store's.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_image::{ImageRecord, Store};
use oci_spec::image::ImageManifest;
use ureq::http::{self, Method};

use crate::client::{Client, Options, Payload};
use crate::{Reference, RegistryError};

/// Blobs up to this size go up in one PUT; larger ones in chunks of it.
pub const DEFAULT_CHUNK: u64 = 32 << 20;

/// Overrides [`DEFAULT_CHUNK`] (bytes), for registries or proxies that
/// bound a request's size.
pub const ENV_CHUNK: &str = "KILN_REGISTRY_CHUNK_SIZE";

#[derive(Debug, serde::Serialize)]
pub struct Pushed {
    pub reference: String,
    pub digest: String,
    /// Blobs uploaded, blobs the registry had already in the repository,
    /// and blobs mounted from another of its repositories.
    pub uploaded: usize,
    pub existing: usize,
    pub mounted: usize,
}

/// Repositories of `dest`'s registry that images of the store were pulled
/// from, with the layer blobs each holds: a blob the destination lacks is
/// mounted from one of them instead of uploaded again.
fn mount_sources(
    store: &Store,
    dest: &Reference,
) -> Result<Vec<(String, Vec<String>)>, RegistryError> {
    let mut sources: Vec<(String, Vec<String>)> = Vec::new();
    for image in store.images()? {
        let Some(from) = image
            .annotation(crate::pull::ANNOTATION_PULLED)
            .and_then(|r| Reference::parse(r).ok())
        else {
            continue;
        };
        if from.host != dest.host || from.repo == dest.repo {
            continue;
        }
        let Ok(manifest) = store.manifest(&image) else {
            continue;
        };
        let digests = manifest.layers().iter().map(|l| l.digest().to_string());
        match sources.iter_mut().find(|(r, _)| *r == from.repo) {
            Some((_, d)) => d.extend(digests),
            None => sources.push((from.repo, digests.collect())),
        }
    }
    Ok(sources)
}

fn chunk_size() -> u64 {
    std::env::var(ENV_CHUNK)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_CHUNK)
}

/// How the layers go to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerFormat {
    /// As the store holds them (zstd for what kiln bakes): the registry's
    /// digest is the store's.
    #[default]
    AsStored,
    /// zstd layers recompressed as gzip, for tools that read no zstd
    /// (docker before 23, umoci 0.4, Docker schema 2): the manifest, and
    /// so the digest, differ from the store's; the config and the layers'
    /// diff_ids do not.
    Gzip,
}

/// A directory under the store's temporary area, removed on drop.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            // Best effort: what is left is in the store's temporary area,
            // which the next bake empties.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Pushes `image` of the store to `dest` (its tag, or its digest alone).
pub fn push(
    store: &Store,
    image: &ImageRecord,
    dest: &Reference,
    opts: &Options,
    format: LayerFormat,
    progress: &mut dyn FnMut(&str),
) -> Result<Pushed, RegistryError> {
    let mut _work = TempDir(None);
    let (layout, digest) = match format {
        LayerFormat::AsStored => (store.layout(), image.digest()),
        LayerFormat::Gzip => {
            // The OCI export recompresses zstd layers as gzip.
            let dir = store.temp_path("push");
            _work = TempDir(Some(dir.clone()));
            progress("recompressing the layers as gzip");
            kiln_image::export::export_oci_dir(&store.layout(), &image.descriptor, "push", &dir)
                .map_err(|e| RegistryError::Export(Box::new(e)))?;
            let index: oci_spec::image::ImageIndex = serde_json::from_slice(
                &std::fs::read(dir.join("index.json")).map_err(|error| RegistryError::Read {
                    path: dir.join("index.json"),
                    error,
                })?,
            )
            .map_err(|e| RegistryError::Unsupported {
                reference: image.reference(),
                why: format!("exported index.json: {e}"),
            })?;
            let digest = index
                .manifests()
                .first()
                .map(|d| d.digest().to_string())
                .unwrap_or_default();
            (dir, digest)
        }
    };
    let manifest_json = read_json_blob(&layout, &digest)?;
    let manifest: ImageManifest =
        serde_json::from_slice(&manifest_json).map_err(|e| RegistryError::Unsupported {
            reference: image.reference(),
            why: format!("manifest: {}", kiln_image::tarball::shorten(&e.to_string())),
        })?;
    if let Some(d) = &dest.digest
        && *d != digest
    {
        return Err(RegistryError::DigestMismatch {
            reference: dest.to_string(),
            expected: d.clone(),
            actual: digest,
        });
    }
    let media_type = kiln_image::import::manifest::manifest_media_type(&manifest_json)
        .unwrap_or_else(|| kiln_image::import::manifest::OCI_MANIFEST.into());
    let mut client = Client::connect(dest, opts, "pull,push")?;
    let sources = mount_sources(store, dest)?;
    if !sources.is_empty() {
        client.also_pull(sources.iter().map(|(r, _)| r.clone()).collect());
    }
    let mut blobs = vec![manifest.config().clone()];
    blobs.extend(manifest.layers().iter().cloned());
    let (mut uploaded, mut existing, mut mounted) = (0, 0, 0);
    for blob in &blobs {
        let digest = blob.digest().to_string();
        if exists(&mut client, &digest)? {
            existing += 1;
            continue;
        }
        let from = sources
            .iter()
            .find(|(_, d)| d.contains(&digest))
            .map(|(r, _)| r.as_str());
        let started = match from {
            Some(repo) => match mount(&mut client, &digest, repo)? {
                Mount::Mounted => {
                    progress(&format!("mounted {digest} from {repo}"));
                    mounted += 1;
                    continue;
                }
                Mount::Upload(location) => Some(location),
            },
            None => None,
        };
        progress(&format!("uploading {digest} ({} bytes)", blob.size()));
        upload(&mut client, &layout, &digest, blob.size(), started)?;
        uploaded += 1;
    }
    let object = dest.object().to_string();
    let action = format!("PUT manifest {object}");
    let url = client.url(&format!("manifests/{object}"));
    let response = client.send(
        Method::PUT,
        &url,
        &[("Content-Type", media_type)],
        Payload::Bytes(&manifest_json),
        &action,
    )?;
    if !response.status().is_success() {
        return Err(client.status_error(&action, response));
    }
    if let Some(d) = response
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        && d != digest
    {
        return Err(client.protocol(
            &action,
            format!("the registry stored the manifest as {d}, not {digest}"),
        ));
    }
    Ok(Pushed {
        reference: dest.to_string(),
        digest,
        uploaded,
        existing,
        mounted,
    })
}

/// Where the blob `digest` of an OCI layout is; only a sha256 digest
/// makes a path.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, RegistryError> {
    let hex = kiln_image::store::digest_hex(digest)?;
    Ok(layout.join("blobs/sha256").join(hex))
}

/// A manifest of the layout, read whole and checked against its digest.
fn read_json_blob(layout: &Path, digest: &str) -> Result<Vec<u8>, RegistryError> {
    let path = blob_path(layout, digest)?;
    let data = std::fs::read(&path).map_err(|error| RegistryError::Read {
        path: path.clone(),
        error,
    })?;
    let actual = format!("sha256:{}", kiln_image::store::sha256_hex(&data));
    if actual != digest {
        return Err(RegistryError::Unsupported {
            reference: path.display().to_string(),
            why: format!("the blob's content is {actual}, not {digest}"),
        });
    }
    Ok(data)
}

fn exists(client: &mut Client, digest: &str) -> Result<bool, RegistryError> {
    let action = format!("HEAD blob {digest}");
    let url = client.url(&format!("blobs/{digest}"));
    let response = client.send(Method::HEAD, &url, &[], Payload::Empty, &action)?;
    match response.status().as_u16() {
        200 => Ok(true),
        404 => Ok(false),
        _ => Err(client.status_error(&action, response)),
    }
}

fn location(
    client: &Client,
    action: &str,
    response: &http::Response<ureq::Body>,
) -> Result<String, RegistryError> {
    response
        .headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| client.resolve(l))
        .ok_or_else(|| client.protocol(action, "the answer has no Location"))
}

fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

enum Mount {
    Mounted,
    /// The registry did not mount the blob but started an upload here.
    Upload(String),
}

/// Asks the registry to mount `digest` from its repository `from`.
fn mount(client: &mut Client, digest: &str, from: &str) -> Result<Mount, RegistryError> {
    let action = format!("mount blob {digest} from {from}");
    let url = client.url(&format!("blobs/uploads/?mount={digest}&from={from}"));
    let response = client.send(Method::POST, &url, &[], Payload::Empty, &action)?;
    match response.status().as_u16() {
        201 => Ok(Mount::Mounted),
        202 => Ok(Mount::Upload(location(client, &action, &response)?)),
        _ => Err(client.status_error(&action, response)),
    }
}

/// POST (unless an upload was `started` already), then one PUT with the
/// blob, or PATCHes of chunks and an empty PUT with the digest; the
/// registry checks the digest either way.
fn upload(
    client: &mut Client,
    layout: &Path,
    digest: &str,
    size: u64,
    started: Option<String>,
) -> Result<(), RegistryError> {
    let path = blob_path(layout, digest)?;
    let mut file = File::open(&path).map_err(|error| RegistryError::Read {
        path: path.clone(),
        error,
    })?;
    let action = format!("upload blob {digest}");
    let mut url = match started {
        Some(url) => url,
        None => {
            let start = client.url("blobs/uploads/");
            let response = client.send(Method::POST, &start, &[], Payload::Empty, &action)?;
            if response.status().as_u16() != 202 {
                return Err(client.status_error(&action, response));
            }
            location(client, &action, &response)?
        }
    };
    let octets = ("Content-Type", "application/octet-stream".to_string());
    let chunk = chunk_size();
    if size > chunk {
        let mut sent = 0u64;
        while sent < size {
            let n = chunk.min(size - sent);
            let range = ("Content-Range", format!("{sent}-{}", sent + n - 1));
            let mut part = (&mut file).take(n);
            let response = client.send_stream(
                Method::PATCH,
                &url,
                &[octets.clone(), range],
                &mut part,
                n,
                &action,
            )?;
            if response.status().as_u16() != 202 {
                return Err(client.status_error(&action, response));
            }
            url = location(client, &action, &response)?;
            sent += n;
        }
        let response = client.send(
            Method::PUT,
            &with_digest(&url, digest),
            &[],
            Payload::Empty,
            &action,
        )?;
        if response.status().as_u16() != 201 {
            return Err(client.status_error(&action, response));
        }
    } else {
        let response = client.send_stream(
            Method::PUT,
            &with_digest(&url, digest),
            &[octets],
            &mut file,
            size,
            &action,
        )?;
        if response.status().as_u16() != 201 {
            return Err(client.status_error(&action, response));
        }
    }
    Ok(())
}
