use std::path::Path;

use crate::common::{json, kiln};
use crate::support::{Hostile, TokenAuth, files_below, layer, pull, sha256};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image served by a hostile registry: its manifest, config and layer
/// blobs, each routed by digest; returns the manifest and its digest.
/// How the hostile registry lies about the layer blob.
#[derive(Clone, Copy, PartialEq)]
enum Lie {
    None,
    /// Same size, one byte off.
    Corrupt,
    /// The blob, then a megabyte more than its descriptor's size.
    Longer,
}

fn serve_image(server: &Hostile, dir: &Path, repo: &str, lie: Lie) -> (Vec<u8>, String) {
    let (blob, diff_id) = layer(dir, &repo.replace('/', "-"), "the real layer\n");
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "test"}]
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(&blob), "size": blob.len()}]
    }))
    .unwrap();
    let mut served = blob.clone();
    match lie {
        Lie::None => {}
        Lie::Corrupt => {
            let mid = served.len() / 2;
            served[mid] ^= 0xff;
        }
        Lie::Longer => served.extend(std::iter::repeat_n(0u8, 1 << 20)),
    }
    server.route(
        &format!("/v2/{repo}/blobs/{}", sha256(&blob)),
        "application/octet-stream",
        served,
    );
    server.route(
        &format!("/v2/{repo}/blobs/{}", sha256(&config)),
        "application/octet-stream",
        config,
    );
    server.route(
        &format!("/v2/{repo}/manifests/1"),
        MANIFEST,
        manifest.clone(),
    );
    let digest = sha256(&manifest);
    server.route(
        &format!("/v2/{repo}/manifests/{digest}"),
        MANIFEST,
        manifest.clone(),
    );
    (manifest, digest)
}

/// Pulls `reference`, which must fail with every word of `expect` in its
/// message, and leaves the store as empty as it was: no image, no blob,
/// no unpacked layer, nothing in its temporary directory.
fn refused(state: &Path, reference: &str, expect: &[&str]) {
    let out = kiln(state, &["images", "pull", reference, "--tls-verify=false"]);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{e}");
    for word in expect {
        assert!(e.contains(word), "expected {word:?} in: {e}");
    }
    let images = json(kiln(state, &["images", "ls", "--output", "json"]));
    assert_eq!(images, serde_json::json!([]));
    let store = state.join("images");
    for sub in ["oci/blobs/sha256", "layers", "tmp"] {
        assert_eq!(
            files_below(&store.join(sub)),
            Vec::<std::path::PathBuf>::new(),
            "{sub}"
        );
    }
}

#[test]
fn a_hostile_registry_is_refused_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = Hostile::start(None);
    let host = server.host();

    // The layer it serves is not the one the manifest names.
    serve_image(&server, dir.path(), "swapped", Lie::Corrupt);
    refused(
        &dir.path().join("s1"),
        &format!("docker://{host}/swapped:1"),
        &[
            "the manifest's layers[0].digest",
            "but the layer's content is",
        ],
    );

    // A layer longer than its descriptor says: read no further than that.
    serve_image(&server, dir.path(), "longer", Lie::Longer);
    refused(
        &dir.path().join("s5"),
        &format!("docker://{host}/longer:1"),
        &["layer 0", "bytes or more, the manifest's layers[0].size is"],
    );

    // A manifest that never ends.
    let huge = vec![b' '; (4 << 20) + 10];
    server.route("/v2/huge/manifests/1", MANIFEST, huge);
    refused(
        &dir.path().join("s2"),
        &format!("docker://{host}/huge:1"),
        &["the manifest is larger than 4194304 bytes"],
    );

    // The right image, but asked for by another digest: whatever the
    // registry sends for that digest must have it.
    let (manifest, digest) = serve_image(&server, dir.path(), "honest", Lie::None);
    let wanted = format!("sha256:{}", "0".repeat(64));
    server.route(
        &format!("/v2/honest/manifests/{wanted}"),
        MANIFEST,
        manifest,
    );
    refused(
        &dir.path().join("s3"),
        &format!("docker://{host}/honest@{wanted}"),
        &[
            "the registry sent a manifest with the digest",
            &digest,
            &format!("not {wanted}"),
        ],
    );

    // The same image, honestly served, pulls: the refusals above were the
    // registry's lies, not the image.
    let ok_state = dir.path().join("s4");
    let honest = format!("docker://{host}/honest@{digest}");
    let pulled = pull(&ok_state, &honest, &["--tls-verify=false"]);
    assert_eq!(pulled["registry_digest"], digest.as_str());
}

#[test]
fn a_bearer_token_comes_from_the_realm_with_the_auth_file_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "tok-pw-5e2a-never-printed";
    let basic = format!(
        "Basic {}",
        crate::support::base64(&format!("puller:{secret}"))
    );
    let server = Hostile::start(Some(TokenAuth {
        token: "granted-token-31".into(),
        basic,
    }));
    let host = server.host();
    let (_, digest) = serve_image(&server, dir.path(), "team/app", Lie::None);
    let reference = format!("docker://{host}/team/app:1");

    // No credentials: the realm refuses, and the error says where kiln
    // looked for them.
    let state = dir.path().join("anonymous");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--state-dir")
        .arg(&state)
        .args(["images", "pull", &reference, "--tls-verify=false"])
        .env("HOME", &state)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains(&format!("registry {host}: team/app"))
            && e.contains("access denied (401)")
            && e.contains("no credentials"),
        "{e}"
    );

    let auth = dir.path().join("auth.json");
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
            crate::support::base64(&format!("puller:{secret}"))
        ),
    )
    .unwrap();
    let state = dir.path().join("authorized");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--state-dir")
        .arg(&state)
        .args([
            "images",
            "pull",
            &reference,
            "--tls-verify=false",
            "--output",
            "json",
        ])
        .env("REGISTRY_AUTH_FILE", &auth)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&digest) && !text.contains(secret) && !text.contains("granted-token-31"),
        "{text}"
    );
    let token_requests: Vec<String> = server
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("GET /token"))
        .cloned()
        .collect();
    assert!(
        token_requests
            .iter()
            .any(|l| l.contains("scope=repository%3Ateam%2Fapp%3Apull")
                && l.contains("service=hostile")),
        "{token_requests:?}"
    );
}
