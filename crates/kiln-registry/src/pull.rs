//! Pulling an image into the store: its manifest (through an image index
//! to this machine's platform), checked against the digest the reference
//! names and bounded in size, then config and layers through the image
//! store's staged import. An image pulled once is found again without a
//! request: by the reference as given (tag or digest), and by digest.

use std::collections::HashMap;
use std::io::Read;

use kiln_image::import::manifest::{
    DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, is_index, manifest_media_type,
};
use kiln_image::import::{self, BlobSource, ImportError, RemoteImage};
use kiln_image::tarball::ExtractLimits;
use kiln_image::{ImageRecord, Store};
use oci_spec::image::{Descriptor, ImageIndex};
use ureq::http::{self, Method};

use crate::client::{Client, Options, Payload};
use crate::{Reference, RegistryError};

/// The most bytes a manifest or index may hold, as containerd bounds them.
pub const MANIFEST_MAX: u64 = 4 << 20;

/// The annotation naming the reference an image was pulled by.
pub const ANNOTATION_PULLED: &str = "dev.kiln.image.pulled-from";

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Pull only when the store has no image for the reference (bakes).
    Missing,
    /// Ask the registry what the reference names now (`kiln images pull`);
    /// layers already in the store are not fetched again.
    Always,
}

#[derive(Debug)]
pub struct Pulled {
    pub image: ImageRecord,
    /// The registry's manifest digest (of the platform's image).
    pub digest: String,
    /// Found in the store without fetching anything.
    pub cached: bool,
}

/// The image this machine runs: an index entry must match it.
fn platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    ("linux", arch)
}

/// An image pulled earlier for `reference` (or at its digest).
pub fn find_pulled(
    store: &Store,
    reference: &Reference,
) -> Result<Option<ImageRecord>, RegistryError> {
    let text = reference.to_string();
    let at_digest = reference.digest.as_deref().map(|d| reference.at_digest(d));
    Ok(store.images()?.into_iter().rev().find(|i| {
        i.status == kiln_image::Status::Available
            && (i.annotation(ANNOTATION_PULLED) == Some(text.as_str())
                || (at_digest.is_some()
                    && i.annotation(import::ANNOTATION_SOURCE) == at_digest.as_deref()))
    }))
}

/// Pulls `reference` into the store. The caller holds the store lock.
pub fn pull(
    store: &Store,
    reference: &Reference,
    opts: &Options,
    policy: Policy,
    limits: &ExtractLimits,
    progress: &mut dyn FnMut(&str),
) -> Result<Pulled, RegistryError> {
    if policy == Policy::Missing
        && let Some(image) = find_pulled(store, reference)?
    {
        let digest = image
            .annotation(import::ANNOTATION_SOURCE)
            .and_then(|s| s.rsplit_once('@'))
            .map(|(_, d)| d.to_string())
            .unwrap_or_else(|| image.digest());
        return Ok(Pulled {
            image,
            digest,
            cached: true,
        });
    }
    let shown = reference.to_string();
    progress(&format!("pulling {shown}"));
    let mut client = Client::connect(reference, opts, "pull")?;
    let (mut manifest, mut digest) = fetch_manifest(&mut client, reference, reference.object())?;
    if let Some(expected) = &reference.digest
        && &digest != expected
    {
        return Err(RegistryError::DigestMismatch {
            reference: shown,
            expected: expected.clone(),
            actual: digest,
        });
    }
    let media_type = manifest_media_type(&manifest).unwrap_or_default();
    if is_index(&media_type) {
        let chosen = choose(&shown, &manifest)?;
        let (m, d) = fetch_manifest(&mut client, reference, chosen.digest().as_ref())?;
        if d != chosen.digest().as_ref() {
            return Err(RegistryError::DigestMismatch {
                reference: format!("{shown} ({} {})", platform().0, platform().1),
                expected: chosen.digest().to_string(),
                actual: d,
            });
        }
        (manifest, digest) = (m, d);
    }
    let source = reference.at_digest(&digest);
    let annotations = HashMap::from([(ANNOTATION_PULLED.to_string(), shown.clone())]);
    let mut blobs = Blobs {
        client: &mut client,
        progress,
    };
    let image = import::import_manifest(
        store,
        RemoteImage {
            source_name: &shown,
            manifest: &manifest,
            digest: &digest,
            source: &source,
            annotations,
        },
        &mut blobs,
        &reference.store_name(),
        limits,
    )?;
    Ok(Pulled {
        image,
        digest,
        cached: false,
    })
}

/// GETs a manifest by tag or digest: bounded, its digest computed over
/// the bytes received.
fn fetch_manifest(
    client: &mut Client,
    reference: &Reference,
    object: &str,
) -> Result<(Vec<u8>, String), RegistryError> {
    let action = format!("GET manifest {object}");
    let url = client.url(&format!("manifests/{object}"));
    let response = client.send(
        Method::GET,
        &url,
        &[("Accept", ACCEPT.to_string())],
        Payload::Empty,
        &action,
    )?;
    if !response.status().is_success() {
        return Err(client.status_error(&action, response));
    }
    let too_large = || RegistryError::ManifestTooLarge {
        reference: reference.to_string(),
        max: MANIFEST_MAX,
    };
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MANIFEST_MAX) {
        return Err(too_large());
    }
    let header_digest = response
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(MANIFEST_MAX + 1)
        .read_to_end(&mut body)
        .map_err(|e| client.protocol(&action, e.to_string()))?;
    if body.len() as u64 > MANIFEST_MAX {
        return Err(too_large());
    }
    let digest = format!("sha256:{}", kiln_image::store::sha256_hex(&body));
    if let Some(h) = header_digest
        && h.starts_with("sha256:")
        && h != digest
    {
        return Err(RegistryError::DigestMismatch {
            reference: format!("{reference} (Docker-Content-Digest)"),
            expected: h,
            actual: digest,
        });
    }
    let media_type = manifest_media_type(&body).unwrap_or_default();
    if ![OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&media_type.as_str()) {
        return Err(RegistryError::Unsupported {
            reference: reference.to_string(),
            why: format!(
                "manifest media type {:?} is neither an OCI nor a Docker schema 2 image or index{}",
                kiln_image::tarball::shorten(&media_type),
                if media_type.contains("v1+") || media_type.contains("prettyjws") {
                    " (Docker schema 1 is deprecated: push the image again with a current tool)"
                } else {
                    ""
                }
            ),
        });
    }
    Ok((body, digest))
}

/// The index entry for this machine's platform.
fn choose(shown: &str, data: &[u8]) -> Result<Descriptor, RegistryError> {
    let index: ImageIndex =
        serde_json::from_slice(data).map_err(|e| RegistryError::Unsupported {
            reference: shown.to_string(),
            why: format!(
                "the image index does not parse: {}",
                kiln_image::tarball::shorten(&e.to_string())
            ),
        })?;
    let (os, arch) = platform();
    let mut available = Vec::new();
    for d in index.manifests() {
        let Some(p) = d.platform() else { continue };
        let (o, a) = (p.os().to_string(), p.architecture().to_string());
        if o == os && a == arch {
            kiln_image::store::digest_hex(d.digest().as_ref()).map_err(|e| {
                RegistryError::Unsupported {
                    reference: shown.to_string(),
                    why: e.to_string(),
                }
            })?;
            return Ok(d.clone());
        }
        available.push(format!("{o}/{a}"));
    }
    Err(RegistryError::NoPlatform {
        reference: shown.to_string(),
        platform: format!("{os}/{arch}"),
        available: if available.is_empty() {
            "no platforms".into()
        } else {
            available.join(", ")
        },
    })
}

/// Blobs straight from the registry; redirects (to a storage service) are
/// followed without the registry's credentials.
struct Blobs<'c, 'p> {
    client: &'c mut Client,
    progress: &'p mut dyn FnMut(&str),
}

impl BlobSource for Blobs<'_, '_> {
    fn open(&mut self, descriptor: &Descriptor) -> Result<Box<dyn Read + '_>, ImportError> {
        let digest = descriptor.digest().to_string();
        (self.progress)(&format!("fetching {digest} ({} bytes)", descriptor.size()));
        let action = format!("GET blob {digest}");
        let url = self.client.url(&format!("blobs/{digest}"));
        let registry = format!("registry {}", self.client.registry);
        let fail = |e: RegistryError| ImportError::Invalid {
            source_name: registry.clone(),
            why: e.to_string(),
        };
        let response = self
            .client
            .send(Method::GET, &url, &[], Payload::Empty, &action)
            .map_err(fail)?;
        if !response.status().is_success() {
            return Err(fail(self.client.status_error(&action, response)));
        }
        Ok(Box::new(response.into_body().into_reader()))
    }
}
