use std::path::Path;
use std::process::Command;

use crate::common::{json, kiln, ok};
use crate::support::{Registry, RegistryConfig, bake, image_references, pull, push, tool};

/// The config's diff_ids of the image `digest` in an OCI layout.
fn diff_ids(layout: &Path, digest: &str) -> Vec<String> {
    let read = |d: &str| -> serde_json::Value {
        let hex = d.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let manifest = read(digest);
    let config = read(manifest["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// The blob of the top layer of the image `digest` in an OCI layout.
fn diff_layer(layout: &Path, digest: &str) -> std::path::PathBuf {
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(digest)).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    blob(layers.last().unwrap()["digest"].as_str().unwrap())
}

#[test]
fn push_skopeo_reads_it_pull_back_and_bake_on_a_pulled_parent_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let digest = bake(
        dir.path(),
        &state,
        "marked",
        "1.0.0",
        "busybox",
        "",
        "echo baked-by-kiln > /etc/kiln-mark",
    );

    let mut registry = Registry::start(RegistryConfig::default());
    let host = registry.host();
    let remote = format!("docker://{host}/kiln/marked:1.0.0");

    // Verified TLS is the default: a plain-HTTP registry is refused, and
    // the error says what to do.
    let refused = kiln(&state, &["images", "push", "marked", &remote]);
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(
        e.contains(&format!("registry {host}: TLS")) && e.contains("--tls-verify=false"),
        "{e}"
    );

    let pushed = push(&state, "marked", &remote);
    assert_eq!(pushed["digest"], digest.as_str());
    assert_eq!(pushed["uploaded"], 3, "config and two layers: {pushed}");
    // Pushed again: the registry has every blob, so only the manifest goes.
    let again = push(&state, "marked", &remote);
    assert_eq!(
        (again["uploaded"].clone(), again["existing"].clone()),
        (0.into(), 3.into())
    );

    // skopeo reads what kiln pushed, with the same digest and layers.
    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/kiln/marked:1.0.0"),
        ],
    ))
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
    let copied = dir.path().join("copied");
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{host}/kiln/marked:1.0.0"),
            &format!("oci:{}:pulled", copied.display()),
        ],
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copied.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    // The top layer, as skopeo copied it, holds what the bake wrote.
    // (Debian's umoci reads no zstd layers, so tar reads it.)
    let top = diff_layer(&copied, &digest);
    assert_eq!(
        tool(
            "tar",
            &[
                "--zstd",
                "-xOf",
                top.to_str().unwrap(),
                "--wildcards",
                "*etc/kiln-mark"
            ]
        ),
        "baked-by-kiln\n"
    );

    // Chunked uploads (PATCH by PATCH) give the same image.
    let chunked = format!("docker://{host}/kiln/chunked:1");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--state-dir")
        .arg(&state)
        .args(["images", "push", "marked", &chunked, "--tls-verify=false"])
        .env("KILN_REGISTRY_CHUNK_SIZE", "65536")
        .output()
        .unwrap();
    ok(out);
    assert!(
        registry.requests("PATCH /v2/kiln/chunked/blobs/uploads/") > 2,
        "{}",
        registry.log()
    );
    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/kiln/chunked:1"),
        ],
    ))
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());

    // Recompressed as gzip for tools that read no zstd: umoci unpacks it
    // and skopeo converts it to Docker schema 2; its layers unpack to the
    // same diff_ids, under another manifest digest.
    let gzip = format!("docker://{host}/kiln/gzip:1");
    let out = json(kiln(
        &state,
        &[
            "images",
            "push",
            "marked",
            &gzip,
            "--compression-format",
            "gzip",
            "--tls-verify=false",
            "--output",
            "json",
        ],
    ));
    let gzip_digest = out["digest"].as_str().unwrap().to_string();
    assert_ne!(gzip_digest, digest);
    let gz_copy = dir.path().join("gz-copy");
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &gzip,
            &format!("oci:{}:g", gz_copy.display()),
        ],
    );
    let unpacked = dir.path().join("unpacked");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:g", gz_copy.display()),
            unpacked.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(unpacked.join("rootfs/etc/kiln-mark")).unwrap(),
        "baked-by-kiln\n"
    );
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
            &gzip,
            &format!("docker://{host}/kiln/gzip-v2s2:1"),
        ],
    );
    assert_eq!(
        diff_ids(&gz_copy, &gzip_digest),
        diff_ids(&state.join("images/oci"), &digest)
    );

    // Pulled into another store, by tag and by digest: the same image.
    let other = dir.path().join("other");
    let pulled = pull(&other, &remote, &["--tls-verify=false"]);
    assert_eq!(pulled["digest"], digest.as_str());
    assert_eq!(pulled["registry_digest"], digest.as_str());
    let by_digest = format!("docker://{host}/kiln/marked@{digest}");
    let pulled = pull(&other, &by_digest, &["--tls-verify=false"]);
    assert_eq!(pulled["digest"], digest.as_str());
    assert_eq!(
        json(kiln(&other, &["images", "ls", "--output", "json"]))
            .as_array()
            .unwrap()
            .len(),
        1,
        "the same digest is one image"
    );

    // A Docker schema 2 image (gzip layers), as skopeo pushes what
    // `docker save` writes, pulls as the same file system: its layers
    // unpack to the same diff_ids.
    let v2s2 = format!("docker://{host}/kiln/v2s2:1");
    let archive = dir.path().join("marked-docker.tar");
    ok(kiln(
        &state,
        &[
            "images",
            "export",
            "marked",
            "--format",
            "docker-archive",
            archive.to_str().unwrap(),
        ],
    ));
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("docker-archive:{}", archive.display()),
            &v2s2,
        ],
    );
    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &v2s2],
    ))
    .unwrap();
    assert_eq!(
        inspect["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let pulled = pull(&other, &v2s2, &["--tls-verify=false"]);
    let layout = other.join("images/oci");
    assert_eq!(
        diff_ids(&layout, pulled["digest"].as_str().unwrap()),
        diff_ids(&state.join("images/oci"), &digest)
    );

    // An image index: the linux/amd64 entry is the one pulled.
    let index_layout = dir.path().join("multi");
    make_index(&copied, &state.join("images/oci"), &digest, &index_layout);
    let multi = format!("docker://{host}/kiln/multi:1");
    tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", index_layout.display()),
            &multi,
        ],
    );
    let pulled = pull(&other, &multi, &["--tls-verify=false"]);
    assert_eq!(pulled["registry_digest"], digest.as_str());

    // A bake on the pulled parent, in a third store: pulled once.
    let third = dir.path().join("third");
    let parent = format!("docker://{host}/kiln/marked:1.0.0");
    let tls = "parent_tls_verify: false\n";
    let check = "grep baked-by-kiln /etc/kiln-mark && echo derived > /etc/derived";
    let manifests_before = registry.requests("GET /v2/kiln/marked/manifests/");
    bake(dir.path(), &third, "derived", "1.0.0", &parent, tls, check);
    assert_eq!(
        registry.requests("GET /v2/kiln/marked/manifests/"),
        manifests_before + 1,
        "{}",
        registry.log()
    );
    // Pushed to another repository of the registry, the image's parent
    // layers are mounted from the repository they were pulled from.
    let derived = format!("docker://{host}/kiln/derived:1");
    let pushed = push(&third, "derived", &derived);
    assert_eq!(
        (&pushed["mounted"], &pushed["uploaded"], &pushed["existing"]),
        (&2.into(), &2.into(), &0.into()),
        "the parent's two layers mounted; config and top layer uploaded: {pushed}"
    );
    assert_eq!(
        registry.requests("POST /v2/kiln/derived/blobs/uploads/?mount="),
        2,
        "{}",
        registry.log()
    );
    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", "--tls-verify=false", &derived],
    ))
    .unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 3);

    // A parent pinned by digest, with TLS turned off on the command line
    // instead of in the recipe, in a fourth store.
    let fourth = dir.path().join("fourth");
    let pinned = dir.path().join("pinned-recipe.yaml");
    std::fs::write(
        &pinned,
        format!(
            "name: pinned\nversion: 1.0.0\nparent: docker://{host}/kiln/marked@{digest}\nshell: sh\ncomponents:\n  - path: derived.yaml\ntests: {{ enabled: false }}\n"
        ),
    )
    .unwrap();
    let refused = kiln(&fourth, &["bake", pinned.to_str().unwrap()]);
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(
        e.contains(&format!(
            "parent docker://{host}/kiln/marked@{digest}: registry {host}: TLS"
        )),
        "{e}"
    );
    ok(kiln(
        &fourth,
        &["bake", pinned.to_str().unwrap(), "--tls-verify=false"],
    ));
    assert_eq!(
        image_references(&fourth),
        ["docker-kiln-marked/1.0.0/1", "pinned/1.0.0/1"]
    );

    // With the registry gone, a second bake (a new version) still finds
    // its parent: it is in the store.
    registry.stop();
    bake(dir.path(), &third, "derived", "1.0.1", &parent, tls, check);
    assert_eq!(
        image_references(&third),
        [
            "docker-kiln-marked/1.0.0/1",
            "derived/1.0.0/1",
            "derived/1.0.1/1"
        ]
    );
}

/// An OCI layout holding an index of two images: the busybox parent as
/// linux/arm64 and the marked image as linux/amd64.
fn make_index(copied: &Path, store: &Path, amd64: &str, dest: &Path) {
    tool(
        "cp",
        &["-a", copied.to_str().unwrap(), dest.to_str().unwrap()],
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    let busybox = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["dev.kiln.image.name"] == "busybox")
        .unwrap();
    let busybox_digest = busybox["digest"].as_str().unwrap();
    let busybox_ref = busybox["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap();
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:{busybox_ref}", store.display()),
            &format!("oci:{}:busybox", dest.display()),
        ],
    );
    let size = |d: &str| {
        std::fs::metadata(
            dest.join("blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap()),
        )
        .unwrap()
        .len()
    };
    let entry = |d: &str, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d, "size": size(d),
            "platform": {"architecture": arch, "os": "linux"}
        })
    };
    let image_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(busybox_digest, "arm64"), entry(amd64, "amd64")]
    });
    let bytes = serde_json::to_vec(&image_index).unwrap();
    let d = crate::support::sha256(&bytes);
    std::fs::write(
        dest.join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap()),
        &bytes,
    )
    .unwrap();
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("index.json")).unwrap()).unwrap();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d, "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"}
        }));
    std::fs::write(dest.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}
