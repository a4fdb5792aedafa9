//! Image references as skopeo and podman write them after `docker://`:
//! `HOST[:PORT]/REPO[:TAG]`, `HOST/REPO@sha256:...`, and the Docker Hub
//! short forms (`busybox`, `library/busybox:1.36`).

use std::fmt;

use crate::RegistryError;

/// Where Docker Hub's names point, and the host its API answers on.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as named (`127.0.0.1:5000`, `docker.io`).
    pub host: String,
    /// The repository (`library/busybox`, `team/web`).
    pub repo: String,
    /// The tag; `latest` when the reference names neither tag nor digest.
    pub tag: Option<String>,
    /// `sha256:...` when the reference names a digest.
    pub digest: Option<String>,
}

fn bad(text: &str, why: impl Into<String>) -> RegistryError {
    RegistryError::BadReference {
        reference: kiln_image::tarball::shorten(text),
        why: why.into(),
    }
}

/// A repository path component: lower-case letters and digits, joined by
/// `.`, `_`, `__` or dashes, as the distribution spec allows.
fn is_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let sep_end = bytes[i..]
            .iter()
            .position(|b| alnum(*b))
            .map_or(bytes.len(), |p| i + p);
        let sep = &c[i..sep_end];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
        i = sep_end;
    }
    true
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn is_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || h.starts_with('[') => (n, Some(p)),
        _ => (h, None),
    };
    let name_ok = if let Some(v6) = name.strip_prefix('[') {
        v6.strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    name_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

impl Reference {
    /// Parses `docker://...` (the transport prefix is required, as in a
    /// recipe's `parent:`, and optional on the command line's push target).
    pub fn parse(text: &str) -> Result<Reference, RegistryError> {
        let rest = text.strip_prefix("docker://").ok_or_else(|| {
            bad(
                text,
                "expected docker://HOST/REPO:TAG or docker://HOST/REPO@sha256:DIGEST",
            )
        })?;
        let (name, digest) = match rest.split_once('@') {
            Some((n, d)) => {
                kiln_image::store::digest_hex(d).map_err(|e| bad(text, e.to_string()))?;
                (n, Some(d.to_string()))
            }
            None => (rest, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                if !is_tag(tag) {
                    return Err(bad(
                        text,
                        format!(
                            "tag {:?} is not valid: up to 128 letters, digits, _ . and -, not starting with . or -",
                            kiln_image::tarball::shorten(tag)
                        ),
                    ));
                }
                (&name[..last_slash + i], Some(tag.to_string()))
            }
            None => (name, None),
        };
        let (host, repo) = match name.split_once('/') {
            Some((h, r)) if h.contains(['.', ':']) || h == "localhost" => {
                (h.to_string(), r.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !is_host(&host) {
            return Err(bad(text, format!("{host:?} is not a registry host[:port]")));
        }
        let repo = if host == DOCKER_HUB && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        if repo.is_empty() || !repo.split('/').all(is_component) {
            return Err(bad(
                text,
                "the repository is lower-case letters and digits, separated by . _ __ - and /",
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            host,
            repo,
            tag,
            digest,
        })
    }

    /// The host the registry API answers on.
    pub fn api_host(&self) -> &str {
        if self.host == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.host
        }
    }

    /// What to ask the registry for: the digest when there is one.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `docker://HOST/REPO@DIGEST`: the same repository at one manifest.
    pub fn at_digest(&self, digest: &str) -> String {
        format!("docker://{}/{}@{digest}", self.host, self.repo)
    }

    /// A name for the store: the repository's path, dashed.
    pub fn store_name(&self) -> String {
        let name: String = self
            .repo
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("docker-{name}")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.host, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_as_skopeo_reads_them() {
        let r = Reference::parse("docker://127.0.0.1:5000/team/web:1.0").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/web", Some("1.0"))
        );
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/team/web:1.0");
        let r = Reference::parse("docker://busybox").unwrap();
        assert_eq!(r.to_string(), "docker://docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("docker://localhost/x@{d}")).unwrap();
        assert_eq!((r.tag, r.digest), (None, Some(d.clone())));
        let r = Reference::parse(&format!("docker://quay.io/a/b:v2@{d}")).unwrap();
        assert_eq!(r.object(), d);
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        for (text, why) in [
            ("127.0.0.1:5000/x:1", "expected docker://"),
            ("docker://h.io/UPPER:1", "lower-case"),
            ("docker://h.io/x:-bad", "tag \"-bad\""),
            ("docker://h.io/x@sha256:zz", "sha256 digest"),
            ("docker://h.io:99999/x", "host[:port]"),
            ("docker://h.io/../x", "lower-case"),
        ] {
            let e = Reference::parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
