//! Registry credentials where podman, skopeo and docker keep them
//! (containers-auth.json(5)), and the challenges a registry answers with.
//!
//! Files, first match wins: `--authfile` alone when given; otherwise
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/...`),
//! `~/.docker/config.json` and `~/.dockercfg`. In each, the `auths` entry
//! for the most specific of `HOST/REPO`, its parent namespaces and `HOST`
//! wins (docker's `https://HOST/v1/` keys count as `HOST`); an entry holds
//! `auth`, base64 of `USER:PASSWORD`. `credHelpers` and `credsStore` run
//! `docker-credential-NAME get`, as docker does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::RegistryError;

/// A user name and password (or token) for one registry. Never printed:
/// its Debug form hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Where they came from, for errors (a file, or a helper).
    pub from: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("from", &self.from)
            .finish()
    }
}

impl Credentials {
    /// The value of a basic `Authorization` header.
    pub fn basic(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// The auth files to read, in order.
pub fn auth_files(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME");
    let mut files = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        files.push(f);
    }
    if let Some(run) = env("XDG_RUNTIME_DIR") {
        files.push(run.join("containers/auth.json"));
    }
    if let Some(config) =
        env("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")))
    {
        files.push(config.join("containers/auth.json"));
    }
    if let Some(h) = &home {
        files.push(h.join(".docker/config.json"));
        files.push(h.join(".dockercfg"));
    }
    files
}

/// The keys an `auths` entry for `host`/`repo` may have, most specific
/// first.
fn keys(host: &str, repo: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut path = format!("{host}/{repo}");
    loop {
        keys.push(path.clone());
        match path.rsplit_once('/') {
            Some((parent, _)) => path = parent.to_string(),
            None => break,
        }
    }
    keys
}

/// A docker-style key (`https://index.docker.io/v1/`, `http://h:5000`)
/// reduced to its host, as containers/image does for legacy keys.
fn legacy_host(key: &str) -> Option<&str> {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))?;
    let host = rest.split('/').next()?;
    Some(if host == "index.docker.io" {
        "docker.io"
    } else {
        host
    })
}

/// Credentials for `host`/`repo`, or `None` when no file has any.
pub fn lookup(
    host: &str,
    repo: &str,
    explicit: Option<&Path>,
) -> Result<Option<Credentials>, RegistryError> {
    for file in auth_files(explicit) {
        let data = match std::fs::read(&file) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => continue,
            Err(e) => {
                return Err(RegistryError::AuthFile {
                    path: file,
                    why: e.to_string(),
                });
            }
        };
        if let Some(c) = from_file(&file, &data, host, repo)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn from_file(
    file: &Path,
    data: &[u8],
    host: &str,
    repo: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let err = |why: String| RegistryError::AuthFile {
        path: file.to_path_buf(),
        why,
    };
    // The parser's own message may quote a value, which may be a secret:
    // only its position is kept.
    let json: Value = serde_json::from_slice(data).map_err(|e| {
        err(format!(
            "not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    // ~/.dockercfg has the entries at the top level.
    let auths = json
        .get("auths")
        .or_else(|| file.ends_with(".dockercfg").then_some(&json));
    if let Some(auths) = auths.and_then(Value::as_object) {
        for key in keys(host, repo) {
            let entry = auths.get(&key).or_else(|| {
                (key == host)
                    .then(|| {
                        auths
                            .iter()
                            .find(|(k, _)| legacy_host(k) == Some(host))
                            .map(|(_, v)| v)
                    })
                    .flatten()
            });
            if let Some(entry) = entry {
                let field = format!("auths.{key:?}");
                if let Some(c) = from_entry(entry, &file.display().to_string())
                    .map_err(|why| err(format!("{field}: {why}")))?
                {
                    return Ok(Some(c));
                }
            }
        }
    }
    let helper = json
        .get("credHelpers")
        .and_then(|h| h.get(host))
        .or_else(|| json.get("credsStore"))
        .and_then(Value::as_str);
    match helper {
        Some(name) => helper_get(name, host).map(Some),
        None => Ok(None),
    }
}

fn from_entry(entry: &Value, from: &str) -> Result<Option<Credentials>, String> {
    if let Some(auth) = entry.get("auth").and_then(Value::as_str)
        && !auth.is_empty()
    {
        let decoded = STANDARD
            .decode(auth.trim())
            .map_err(|_| "auth is not base64".to_string())?;
        let text = String::from_utf8(decoded).map_err(|_| "auth is not UTF-8".to_string())?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| "auth is not base64 of USER:PASSWORD".to_string())?;
        return Ok(Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
            from: from.to_string(),
        }));
    }
    let user = entry.get("username").and_then(Value::as_str);
    let pass = entry.get("password").and_then(Value::as_str);
    Ok(match (user, pass) {
        (Some(u), Some(p)) => Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
            from: from.to_string(),
        }),
        _ => None,
    })
}

/// Runs a docker credential helper, as docker does: the server on
/// standard input, `{"Username", "Secret"}` on standard output.
fn helper_get(name: &str, host: &str) -> Result<Credentials, RegistryError> {
    let program = format!("docker-credential-{name}");
    let err = |why: String| RegistryError::CredentialHelper {
        helper: program.clone(),
        host: host.to_string(),
        why,
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(err("is not a helper name".into()));
    }
    // Its stderr is captured and never shown: a helper may print what it
    // was given there.
    let out = kiln_sandbox::tool::output(Command::new(&program).arg("get"), Some(host.as_bytes()))
        .map_err(|e| err(format!("cannot run it: {e}")))?;
    if !out.status.success() {
        return Err(err(format!("it failed ({})", out.status)));
    }
    let json: Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| err("its output is not the JSON docker expects".into()))?;
    match (
        json.get("Username").and_then(Value::as_str),
        json.get("Secret").and_then(Value::as_str),
    ) {
        (Some(u), Some(s)) => Ok(Credentials {
            username: u.to_string(),
            password: s.to_string(),
            from: program.clone(),
        }),
        _ => Err(err("its output has no Username and Secret".into())),
    }
}

/// What a registry's `WWW-Authenticate` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Basic realm="x"` or `Bearer realm="...",service="...",scope="..."`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        match key.as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            "scope" => scope = Some(value.to_string()),
            _ => {}
        }
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: realm?,
            service,
            scope,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_auths_entry_wins() {
        let b64 = |s: &str| STANDARD.encode(s);
        let file = serde_json::json!({"auths": {
            "reg.io": {"auth": b64("host:1")},
            "reg.io/team": {"auth": b64("team:2")},
            "https://old.io/v1/": {"auth": b64("legacy:3")},
        }})
        .to_string();
        let get = |host: &str, repo: &str| {
            from_file(Path::new("a.json"), file.as_bytes(), host, repo)
                .unwrap()
                .map(|c| c.username)
        };
        assert_eq!(get("reg.io", "team/web").as_deref(), Some("team"));
        assert_eq!(get("reg.io", "other/web").as_deref(), Some("host"));
        assert_eq!(get("old.io", "x").as_deref(), Some("legacy"));
        assert_eq!(get("none.io", "x"), None);
    }

    #[test]
    fn a_broken_auth_file_is_named_without_its_content() {
        let e = from_file(
            Path::new("/x/auth.json"),
            br#"{"auths": {"r.io": {"auth": "s3cr3t-not-base64!"}}}"#,
            "r.io",
            "a",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/x/auth.json: auths.\"r.io\": auth is not base64"),
            "{e}"
        );
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = from_file(
            Path::new("/x/auth.json"),
            br#"{"auths": {"r.io": "s3cr3t"#,
            "r",
            "a",
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("s3cr3t") && e.contains("line 1"), "{e}");
        let c = Credentials {
            username: "u".into(),
            password: "s3cr3t".into(),
            from: "f".into(),
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn challenges_give_realm_service_and_scope() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.io/token",service="reg.io",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.io/token".into(),
                service: Some("reg.io".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }
}
