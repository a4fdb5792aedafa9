//! OCI layouts and archives, and what `docker save` writes. An archive is
//! first extracted into the store's temporary directory as a tree of plain
//! members (absolute symlinks refused), then read through that directory
//! only; every layer is staged and checked before anything is published.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use super::member::{Members, check_digests, parse, parse_config};
use super::stage::{Expected, Stage, Temp};
use super::{ImageRecord, Result, file_digest, find_by_source, invalid, io};
use crate::store::{Store, digest_hex, sha256_hex};
use crate::tarball::{self, ExtractLimits, ExtractOptions, shorten};

/// An image of an OCI layout directory (`oci:DIR[:TAG]`).
pub fn import_oci_dir(
    store: &Store,
    layout: &Path,
    tag: Option<&str>,
    name: &str,
    limits: &ExtractLimits,
) -> Result<ImageRecord> {
    let members = Members::open(layout, &format!("oci:{}", layout.display()))?;
    import_layout(store, &members, tag, name, limits)
}

/// An OCI archive (`oci-archive:PATH[:TAG]`): a tarred layout.
pub fn import_oci_archive(
    store: &Store,
    archive: &Path,
    tag: Option<&str>,
    name: &str,
    limits: &ExtractLimits,
) -> Result<ImageRecord> {
    let source_name = format!("oci-archive:{}", archive.display());
    let dir = Temp::dir(store, "oci-archive")?;
    extract_archive(archive, dir.path(), &source_name, limits)?;
    let members = Members::open(dir.path(), &source_name)?;
    import_layout(store, &members, tag, name, limits)
}

/// Extracts an archive of files: its symlinks may only point to other
/// members, and its size is bounded like a layer's.
fn extract_archive(
    archive: &Path,
    dir: &Path,
    source_name: &str,
    limits: &ExtractLimits,
) -> Result<()> {
    let file = File::open(archive).map_err(io(archive))?;
    let opts = ExtractOptions {
        members_only: true,
        limits: *limits,
        ..ExtractOptions::default()
    };
    tarball::extract(BufReader::new(file), dir, source_name, &opts)?;
    Ok(())
}

fn import_layout(
    store: &Store,
    members: &Members,
    tag: Option<&str>,
    name: &str,
    limits: &ExtractLimits,
) -> Result<ImageRecord> {
    let src = members.source_name();
    let index_json = members.read_json("index.json")?;
    check_digests(src, "index.json", &index_json, &["manifests[].digest"])?;
    let index: ImageIndex = parse(src, "index.json", &index_json)?;
    let manifests = index.manifests();
    let chosen = match tag {
        Some(t) => manifests.iter().find(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .map(String::as_str)
                == Some(t)
        }),
        None if manifests.len() == 1 => manifests.first(),
        None => {
            return Err(invalid(
                src,
                "the layout holds several images: name one with oci:DIR:TAG",
            ));
        }
    };
    let Some(manifest_desc) = chosen else {
        return Err(invalid(
            src,
            format!("no image tagged {:?}", shorten(tag.unwrap_or_default())),
        ));
    };
    let source = format!("oci:{}", manifest_desc.digest());
    if let Some(found) = find_by_source(store, &source)? {
        return Ok(found);
    }
    // Small JSON blobs, read whole and checked against their digest.
    let json_blob = |digest: &str| -> Result<Vec<u8>> {
        let data = members.read_json(&format!("blobs/sha256/{}", digest_hex(digest)?))?;
        let actual = format!("sha256:{}", sha256_hex(&data));
        if actual != digest {
            return Err(invalid(
                src,
                format!("blob {digest} does not match its digest (its content is {actual})"),
            ));
        }
        Ok(data)
    };
    let manifest_json = json_blob(manifest_desc.digest().as_ref())?;
    let file = format!("manifest {}", manifest_desc.digest());
    check_digests(
        src,
        &file,
        &manifest_json,
        &["config.digest", "layers[].digest"],
    )?;
    let manifest: ImageManifest = parse(src, &file, &manifest_json)?;
    let config_json = json_blob(manifest.config().digest().as_ref())?;
    let file = format!("config {}", manifest.config().digest());
    let config = parse_config(src, &file, &config_json, manifest.layers().len())?;
    let diff_ids = config.rootfs().diff_ids();
    let mut stage = Stage::new(store, src, limits);
    for (i, (layer, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let digest = layer.digest().to_string();
        let file = members.open_file(&format!("blobs/sha256/{}", digest_hex(&digest)?))?;
        stage.manifest_layer(i, &digest, diff_id, file)?;
    }
    stage.publish(&config, name, &source)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

/// The digest a member's name spells, as `docker save` and skopeo name
/// them (`blobs/sha256/HEX`, `HEX.json`), if it spells one.
fn named_digest(path: &str) -> Option<String> {
    let last = path.rsplit('/').next()?;
    let hex = last.strip_suffix(".json").unwrap_or(last);
    let digest = format!("sha256:{hex}");
    let layout_blob = path.strip_suffix(hex) == Some("blobs/sha256/");
    (digest_hex(&digest).is_ok() && (layout_blob || last.ends_with(".json"))).then_some(digest)
}

/// What `docker save` writes (`docker-archive:PATH`): its layers are tars,
/// its config the image configuration.
pub fn import_docker_archive(
    store: &Store,
    archive: &Path,
    name: &str,
    limits: &ExtractLimits,
) -> Result<ImageRecord> {
    let src = format!("docker-archive:{}", archive.display());
    let src = src.as_str();
    let digest = file_digest(archive)?;
    let source = format!("docker-archive:sha256:{digest}");
    if let Some(found) = find_by_source(store, &source)? {
        return Ok(found);
    }
    let dir = Temp::dir(store, "docker-archive")?;
    extract_archive(archive, dir.path(), src, limits)?;
    let members = Members::open(dir.path(), src)?;
    let text = members.read_json("manifest.json")?;
    let manifests: Vec<DockerManifest> = parse(src, "manifest.json", &text)?;
    let [manifest] = manifests.as_slice() else {
        return Err(invalid(
            src,
            "the archive holds several images (or none); save one at a time",
        ));
    };
    let config_json = members.read_json(&manifest.config)?;
    let file = format!("config {}", shorten(&manifest.config));
    if let Some(named) = named_digest(&manifest.config) {
        let actual = format!("sha256:{}", sha256_hex(&config_json));
        if actual != named {
            return Err(invalid(
                src,
                format!(
                    "{file} does not match the digest its name gives (its content is {actual})"
                ),
            ));
        }
    }
    check_digests(src, &file, &config_json, &["rootfs.diff_ids[]"])?;
    let config: ImageConfiguration = parse(src, &file, &config_json)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers.len() {
        return Err(invalid(
            src,
            format!(
                "manifest.json lists {} layers, the config {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut stage = Stage::new(store, src, limits);
    for (i, (path, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let file = members.open_file(path)?;
        let named = named_digest(path);
        stage.layer(
            &format!("layer {i} ({})", shorten(path)),
            file,
            named.as_deref().map(|digest| Expected {
                digest,
                field: format!("the name manifest.json gives it, Layers[{i}],"),
            }),
            Expected {
                digest: diff_id,
                field: format!("the config's rootfs.diff_ids[{i}]"),
            },
        )?;
    }
    stage.publish(&config, name, &source)
}

#[cfg(test)]
mod tests {
    use super::named_digest;

    #[test]
    fn member_names_spell_digests_only_in_the_usual_places() {
        let hex = "a".repeat(64);
        let d = format!("sha256:{hex}");
        assert_eq!(
            named_digest(&format!("blobs/sha256/{hex}")),
            Some(d.clone())
        );
        assert_eq!(named_digest(&format!("{hex}.json")), Some(d));
        assert_eq!(named_digest(&format!("{hex}/layer.tar")), None);
        assert_eq!(named_digest(&format!("x/{hex}")), None);
        assert_eq!(named_digest("blobs/sha256/zz.json"), None);
    }
}
