//! What `docker save` writes: the image config, each layer as an
//! uncompressed tar, and `manifest.json` tying them to a repository tag.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::image::Descriptor;

use super::ExportError;
use super::archive::TarWriter;
use super::blob::{Hasher, Image};
use super::layer::{compression, diff_hexes, unpack_layer};
use super::staging::{self, Staged};

/// A docker archive (the format of `docker save`, read by `docker load`,
/// `podman load` and skopeo's `docker-archive:`) of the image `manifest`
/// names in `layout`, tagged `repo_tag` (like `kiln/web:1.0.0`).
///
/// The archive holds `manifest.json`, the image config byte for byte as
/// `<sha256 of the config>.json` (so the image ID docker computes is the
/// config's digest), each layer uncompressed as `<diff_id hex>/layer.tar`,
/// and the legacy `repositories` file. Layers are decompressed while they
/// are written; the compressed blob must match the manifest's digest and
/// the uncompressed tar the config's `rootfs.diff_ids`, so the archive is
/// consistent or not written at all. An existing file at `dest` is
/// replaced atomically.
pub fn export_docker_archive(
    layout: &Path,
    manifest: &Descriptor,
    repo_tag: &str,
    dest: &Path,
) -> Result<(), ExportError> {
    let (name, tag) = parse_repo_tag(repo_tag)?;
    staging::check_file_dest(dest)?;
    let image = Image::open(layout, manifest)?;
    tracing::info!(image = %image.id(), dest = %dest.display(), repo_tag, "exporting docker archive");

    // Everything that can be refused is refused before writing anything.
    let layers = image.manifest().layers();
    let diff_hexes = diff_hexes(&image)?;
    for layer in layers {
        compression(&image, layer)?;
    }
    let plan: Vec<(&Descriptor, &str)> = layers
        .iter()
        .zip(diff_hexes.iter().map(String::as_str))
        .collect();
    let mut hasher = Hasher::sha256();
    hasher.update(image.config_bytes());
    let config_name = format!("{}.json", hasher.finish());

    let staged = Staged::file(dest, "")?;
    let mut tar = TarWriter::new(staged.create_file(dest)?, image.created_unix(), dest);
    tar.bytes(&config_name, image.config_bytes())?;
    let mut written = HashSet::new();
    for &(layer, hex) in &plan {
        // Two equal layers (two empty ones, say) are one file.
        if written.insert(hex) {
            tar.dir(&format!("{hex}/"))?;
            tar.stream(&format!("{hex}/layer.tar"), |out| {
                unpack_layer(&image, layer, hex, out, dest)
            })?;
        }
    }
    let layer_paths: Vec<String> = plan
        .iter()
        .map(|(_, hex)| format!("{hex}/layer.tar"))
        .collect();
    let manifest_json = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": layer_paths,
    }]);
    tar.bytes("manifest.json", &to_json(&manifest_json))?;
    // The pre-1.10 format names the top layer's ID; docker still reads it
    // when manifest.json is missing, and some tools read it regardless.
    if let Some((_, top)) = plan.last() {
        let repositories = serde_json::json!({ name: { tag: top } });
        tar.bytes("repositories", &to_json(&repositories))?;
    }
    tar.finish()?;
    staged.commit(dest)
}

fn to_json(value: &serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("a JSON value always serializes");
    bytes.push(b'\n');
    bytes
}

/// Splits `name:tag` after checking both against the grammar docker and
/// containers/image parse `RepoTags` with (distribution's reference
/// package): a lowercase path, optionally behind a registry host, and a tag.
fn parse_repo_tag(repo_tag: &str) -> Result<(&str, &str), ExportError> {
    let invalid = |reason| ExportError::InvalidRepoTag {
        repo_tag: repo_tag.to_owned(),
        reason,
    };
    if repo_tag.contains('@') {
        return Err(invalid("a digest reference cannot be a repository tag"));
    }
    let (name, tag) = match repo_tag.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => {
            return Err(invalid(
                "it has no tag (expected NAME:TAG, like kiln/web:1.0.0)",
            ));
        }
    };
    let tag_ok = tag.len() <= 128
        && tag.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        })
        && !tag.is_empty();
    if !tag_ok {
        return Err(invalid(
            "the tag must be 1 to 128 letters, digits, _ . or -, and not start with . or -",
        ));
    }
    if name.is_empty() || name.len() > 255 {
        return Err(invalid("the name must be 1 to 255 characters"));
    }
    let mut path = name;
    if let Some((first, rest)) = name.split_once('/') {
        let is_host = first.contains(['.', ':'])
            || first == "localhost"
            || first.bytes().any(|b| b.is_ascii_uppercase());
        if is_host {
            if !valid_host(first) {
                return Err(invalid("the registry host is not a valid host[:port]"));
            }
            path = rest;
        }
    }
    if !path.split('/').all(valid_path_component) {
        return Err(invalid(
            "name components must be lowercase letters and digits, joined by ., _, __ or dashes",
        ));
    }
    Ok((name, tag))
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or one or more `-`.
fn valid_path_component(c: &str) -> bool {
    let c = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < c.len() && alnum(c[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == c.len() {
            return true;
        }
        if c[i..].starts_with(b"__") {
            i += 2;
        } else if c[i] == b'.' || c[i] == b'_' {
            i += 1;
        } else if c[i] == b'-' {
            while i < c.len() && c[i] == b'-' {
                i += 1;
            }
        } else {
            return false;
        }
    }
}

/// Host labels of letters, digits and inner dashes, joined by dots, and an
/// optional numeric port.
fn valid_host(host: &str) -> bool {
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    name.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_follow_docker_grammar() {
        for ok in [
            "kiln/web:1.0.0",
            "web:latest",
            "localhost:5000/kiln/web:v1_2",
            "registry.example.com/a-b/c__d.e:X",
        ] {
            assert!(parse_repo_tag(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            parse_repo_tag("localhost:5000/web:1").unwrap(),
            ("localhost:5000/web", "1")
        );
        for bad in [
            "kiln/web",
            "localhost:5000/web",
            "kiln/Web:1",
            "kiln//web:1",
            "kiln/web:",
            "kiln/web:-1",
            "kiln/web@sha256:00",
            ":1",
            "kiln/web_:1",
        ] {
            assert!(parse_repo_tag(bad).is_err(), "{bad}");
        }
    }
}
