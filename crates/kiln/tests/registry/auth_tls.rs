use std::path::Path;
use std::process::{Command, Output};

use crate::common::{kiln, ok};
use crate::support::{Registry, RegistryConfig, bake, base64, pull, tool};

const USER: &str = "kiln-ci";
const PASSWORD: &str = "pw-9f3c7e1d-never-printed";

fn kiln_env(state: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("--state-dir").arg(state).args(args);
    // Only the auth files a test names: never the machine's own.
    cmd.env("HOME", state)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("REGISTRY_AUTH_FILE")
        .env("RUST_LOG", "debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A store with one small image in it, and its digest.
fn store_with_image(dir: &Path) -> (std::path::PathBuf, String) {
    let state = dir.join("state");
    let digest = bake(dir, &state, "small", "1.0.0", "busybox", "", "true");
    (state, digest)
}

#[test]
fn basic_auth_comes_from_the_auth_file_and_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (state, digest) = store_with_image(dir.path());
    let registry = Registry::start(RegistryConfig {
        basic_auth: Some((USER.into(), PASSWORD.into())),
        tls: None,
    });
    let host = registry.host();
    let remote = format!("docker://{host}/team/small:1");
    let push = ["images", "push", "small", &remote, "--tls-verify=false"];

    let anonymous = kiln_env(&state, &push, &[]);
    assert!(!anonymous.status.success());
    let e = text(&anonymous);
    assert!(
        e.contains(&format!("registry {host}: team/small"))
            && e.contains("access denied (401)")
            && e.contains(&format!("no credentials for {host}"))
            && e.contains("podman login"),
        "{e}"
    );

    let wrong = dir.path().join("wrong.json");
    let wrong_secret = "wrong-7c1d-secret";
    std::fs::write(
        &wrong,
        format!(
            r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
            base64(&format!("{USER}:{wrong_secret}"))
        ),
    )
    .unwrap();
    let refused = kiln_env(&state, &push, &[("REGISTRY_AUTH_FILE", &wrong)]);
    assert!(!refused.status.success());
    let e = text(&refused);
    assert!(
        e.contains(&format!(
            "refused the credentials for user \"{USER}\" from {}",
            wrong.display()
        )),
        "{e}"
    );
    assert!(!e.contains(wrong_secret) && !e.contains(&base64(&format!("{USER}:{wrong_secret}"))));

    // The right credentials, in podman's own place for them.
    let config = state.join(".config/containers");
    std::fs::create_dir_all(&config).unwrap();
    let auth = config.join("auth.json");
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths": {{"{host}/team": {{"auth": "{}"}}}}}}"#,
            base64(&format!("{USER}:{PASSWORD}"))
        ),
    )
    .unwrap();
    let pushed = kiln_env(&state, &push, &[]);
    let out = text(&pushed);
    assert!(pushed.status.success(), "{out}");
    assert!(out.contains(&digest), "{out}");
    let other = dir.path().join("other");
    let pulled = kiln_env(
        &other,
        &[
            "images",
            "pull",
            &remote,
            "--tls-verify=false",
            "--authfile",
            auth.to_str().unwrap(),
        ],
        &[],
    );
    let out_pull = text(&pulled);
    assert!(pulled.status.success(), "{out_pull}");
    assert!(out_pull.contains(&digest), "{out_pull}");
    for out in [out, out_pull] {
        assert!(!out.contains(PASSWORD), "{out}");
        assert!(
            !out.contains(&base64(&format!("{USER}:{PASSWORD}"))),
            "{out}"
        );
    }
    // skopeo reads it with the same file.
    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--authfile",
            auth.to_str().unwrap(),
            &remote,
        ],
    ))
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
}

/// A CA and a certificate for 127.0.0.1 signed by it, in `dir`.
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kiln test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    tool(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ],
    );
    tool(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("ext.cnf"),
            "-out",
            &p("server.pem"),
        ],
    );
    let certs = dir.join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(dir.join("ca.pem"), certs.join("ca.crt")).unwrap();
    (dir.join("server.pem"), dir.join("server.key"), certs)
}

#[test]
fn tls_is_verified_unless_turned_off_and_a_ca_can_be_named() {
    let dir = tempfile::tempdir().unwrap();
    let (state, digest) = store_with_image(dir.path());
    let (cert, key, certs) = certificates(dir.path());
    let registry = Registry::start(RegistryConfig {
        basic_auth: None,
        tls: Some((cert, key)),
    });
    let host = registry.host();
    let remote = format!("docker://{host}/tls/small:1");

    let refused = kiln(&state, &["images", "push", "small", &remote]);
    assert!(!refused.status.success());
    let e = text(&refused);
    assert!(
        e.contains(&format!("registry {host}: TLS")) && e.contains("--tls-verify=false"),
        "{e}"
    );
    assert_eq!(registry.requests("PUT /v2/tls/"), 0);

    let pushed = ok(kiln(
        &state,
        &["images", "push", "small", &remote, "--tls-verify=false"],
    ));
    assert!(pushed.contains(&digest), "{pushed}");
    // Verified against the CA named with --cert-dir: no flag needed.
    let other = dir.path().join("other");
    let pulled = pull(&other, &remote, &["--cert-dir", certs.to_str().unwrap()]);
    assert_eq!(pulled["digest"], digest.as_str());
}
