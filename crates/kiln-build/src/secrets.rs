//! kiln's local secrets store, which `env.secrets-manager` reads as
//! CodeBuild reads AWS Secrets Manager. Each secret is a file of
//! `STATE/secrets/`, sealed with ChaCha20-Poly1305 under a key kept in
//! `STATE/secrets.key` (mode 0600) and bound to its name; a build never
//! sees either (kiln's state is hidden from the sandbox).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secrets key {path} is not 32 bytes")]
    BadKey { path: PathBuf },
    #[error("the secrets key {path} can be read by others (mode {mode:o}): it must be 0600")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("secret {name:?} does not decrypt with {key}: the file or the key was changed")]
    Corrupt { name: String, key: PathBuf },
    #[error("secret name {name:?}: use letters, digits and /_+=.@-, at most 512 characters")]
    BadName { name: String },
    #[error("no random numbers from the system")]
    Random,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SecretError + 'a {
    move |source| SecretError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

pub struct Secrets {
    dir: PathBuf,
    key_path: PathBuf,
}

impl Secrets {
    /// The store of the state directory `state`.
    pub fn new(state: &Path) -> Secrets {
        Secrets {
            dir: state.join("secrets"),
            key_path: state.join("secrets.key"),
        }
    }

    fn file(&self, name: &str) -> Result<PathBuf, SecretError> {
        // Names as Secrets Manager allows them; stored hex-encoded, so a
        // name is never a path.
        let ok = !name.is_empty()
            && name.len() <= 512
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c));
        if !ok {
            return Err(SecretError::BadName {
                name: name.to_string(),
            });
        }
        Ok(self.dir.join(hex::encode(name)))
    }

    fn key(&self, create: bool) -> Result<Option<LessSafeKey>, SecretError> {
        let path = &self.key_path;
        let bytes = match fs::read(path) {
            Ok(b) => {
                let mode = fs::metadata(path)
                    .map_err(io("cannot read", path))?
                    .permissions()
                    .mode()
                    & 0o777;
                if mode & 0o077 != 0 {
                    return Err(SecretError::KeyMode {
                        path: path.clone(),
                        mode,
                    });
                }
                b
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| SecretError::Random)?;
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io("cannot create", path))?;
                f.write_all(&key).map_err(io("cannot write", path))?;
                key.to_vec()
            }
            Err(e) => return Err(io("cannot read", path)(e)),
        };
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| SecretError::BadKey { path: path.clone() })?;
        Ok(Some(LessSafeKey::new(unbound)))
    }

    /// Stores `value` as secret `name`, replacing any earlier value.
    pub fn put(&self, name: &str, value: &str) -> Result<(), SecretError> {
        let file = self.file(name)?;
        let key = self.key(true)?.expect("created when missing");
        fs::create_dir_all(&self.dir).map_err(io("cannot create", &self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(io("cannot protect", &self.dir))?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut sealed = value.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| SecretError::Random)?;
        let tmp = file.with_extension("new");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("cannot create", &tmp))?;
        f.write_all(&nonce)
            .and_then(|_| f.write_all(&sealed))
            .map_err(io("cannot write", &tmp))?;
        fs::rename(&tmp, &file).map_err(io("cannot write", &file))
    }

    /// The value of secret `name`, if there is one.
    pub fn get(&self, name: &str) -> Result<Option<String>, SecretError> {
        let file = self.file(name)?;
        let data = match fs::read(&file) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("cannot read", &file)(e)),
        };
        let Some(key) = self.key(false)? else {
            return Ok(None);
        };
        let corrupt = || SecretError::Corrupt {
            name: name.to_string(),
            key: self.key_path.clone(),
        };
        if data.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, rest) = data.split_at(NONCE_LEN);
        let mut rest = rest.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
        let plain = key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut rest)
            .map_err(|_| corrupt())?;
        String::from_utf8(plain.to_vec())
            .map(Some)
            .map_err(|_| corrupt())
    }

    /// The names of the secrets, sorted; never their values.
    pub fn list(&self) -> Result<Vec<String>, SecretError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("cannot read", &self.dir)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| hex::decode(e.file_name().to_str()?).ok())
            .filter_map(|b| String::from_utf8(b).ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes secret `name`; whether it was there.
    pub fn remove(&self, name: &str) -> Result<bool, SecretError> {
        let file = self.file(name)?;
        match fs::remove_file(&file) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("cannot remove", &file)(e)),
        }
    }
}

/// Resolves `secret-id[:json-key[:version-stage[:version-id]]]` with
/// `lookup`: the secret, or the key `json-key` of the JSON object it
/// holds. The store keeps one version, AWSCURRENT.
pub fn resolve(
    reference: &str,
    lookup: &dyn Fn(&str) -> Result<Option<String>, String>,
) -> Result<String, String> {
    // An ARN has colons of its own: arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME
    let (id, rest) = if reference.starts_with("arn:") {
        let parts: Vec<&str> = reference.splitn(8, ':').collect();
        let id = parts.get(6).copied().unwrap_or_default();
        (id.to_string(), parts.get(7).copied().unwrap_or_default())
    } else {
        match reference.split_once(':') {
            Some((id, rest)) => (id.to_string(), rest),
            None => (reference.to_string(), ""),
        }
    };
    let mut fields = rest.split(':');
    let json_key = fields.next().filter(|s| !s.is_empty());
    let stage = fields.next().filter(|s| !s.is_empty());
    let version = fields.next().filter(|s| !s.is_empty());
    if stage.is_some_and(|s| s != "AWSCURRENT") || version.is_some() {
        return Err(format!(
            "secret {id:?}: the local store keeps only the current version (AWSCURRENT)"
        ));
    }
    let value = lookup(&id)?.ok_or_else(|| {
        format!("secret {id:?} is not in kiln's secrets store (kiln secrets put {id})")
    })?;
    match json_key {
        None => Ok(value),
        Some(k) => {
            let json: serde_json::Value = serde_json::from_str(&value).map_err(|_| {
                format!("secret {id:?} is not a JSON object, so it has no key {k:?}")
            })?;
            match &json[k] {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Null => Err(format!("secret {id:?} has no key {k:?}")),
                other => Ok(other.to_string()),
            }
        }
    }
}

/// `line` with every value of `secrets` replaced by `***`, as CodeBuild
/// masks secrets in its logs.
pub fn mask(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_string();
    for s in secrets {
        if !s.is_empty() && out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}
