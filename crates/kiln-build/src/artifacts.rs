//! Collecting a build's artifacts: the files its buildspec names, copied
//! out of the workspace and identified by digest.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::buildspec::Artifacts;
use crate::glob;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// The file's name in the artifact set (relative, `/`-separated).
    pub path: String,
    /// Hex sha256 of the content.
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactSet {
    pub name: Option<String>,
    /// Sorted by path.
    pub files: Vec<Artifact>,
    /// `sha256:` + the sha256 of `"<sha256>  <path>\n"` lines in path
    /// order (the output of `sha256sum`), naming the whole set.
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifacts.base-directory {base:?} does not exist in {src}")]
    NoBase { base: String, src: PathBuf },
    #[error(
        "artifact path {path:?} is outside the source directory {}: kiln collects artifacts only from there (CodeBuild, on the AWS target, reads the whole build container)",
        crate::run::SRC_DIR
    )]
    Outside { path: String },
    #[error("artifact {path:?} leads outside the workspace {src}")]
    Escapes { path: String, src: PathBuf },
    #[error("no files in {dir} match artifacts.files {patterns:?}")]
    NoMatch { dir: PathBuf, patterns: Vec<String> },
    #[error("artifacts {a:?} and {b:?} both become {name:?} with discard-paths: yes")]
    Collision { a: String, b: String, name: String },
    #[error("artifact {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Copies the files `spec` names from `src` (the build's source directory)
/// into `out`, refusing anything that leads outside `src`.
pub fn collect(src: &Path, spec: &Artifacts, out: &Path) -> Result<ArtifactSet, ArtifactError> {
    let src_real = fs::canonicalize(src).map_err(io(src))?;
    let base_given = spec.base_directory.as_deref().unwrap_or("");
    let base_rel = source_relative(base_given).ok_or_else(|| ArtifactError::Outside {
        path: base_given.to_string(),
    })?;
    let base_rel = base_rel.as_str();
    let patterns = spec
        .files
        .iter()
        .map(|p| file_pattern(p, base_rel))
        .collect::<Result<Vec<_>, _>>()?;
    let base = src_real.join(base_rel);
    let base_real = match fs::canonicalize(&base) {
        Ok(b) if b.is_dir() => b,
        _ => {
            return Err(ArtifactError::NoBase {
                base: base_rel.to_string(),
                src: src.to_owned(),
            });
        }
    };
    if !base_real.starts_with(&src_real) {
        return Err(ArtifactError::Escapes {
            path: base_rel.to_string(),
            src: src.to_owned(),
        });
    }
    let mut found = Vec::new();
    walk(&base_real, "", &mut found)?;
    // name in the set -> (relative path, host file)
    let mut chosen: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    for (rel, host, is_link) in found {
        if !patterns.iter().any(|p| glob::matches(p, &rel))
            || spec.exclude_paths.iter().any(|p| glob::matches(p, &rel))
        {
            continue;
        }
        let host = if is_link {
            // A link is followed only while it stays inside the workspace.
            match fs::canonicalize(&host) {
                Ok(t) if t.starts_with(&src_real) && t.is_file() => t,
                Ok(t) if t.starts_with(&src_real) => continue,
                _ => {
                    return Err(ArtifactError::Escapes {
                        path: rel,
                        src: src.to_owned(),
                    });
                }
            }
        } else {
            host
        };
        let name = if spec.discard_paths {
            rel.rsplit('/').next().unwrap_or(&rel).to_string()
        } else {
            rel.clone()
        };
        if let Some((other, _)) = chosen.get(&name) {
            return Err(ArtifactError::Collision {
                a: other.clone(),
                b: rel,
                name,
            });
        }
        chosen.insert(name, (rel, host));
    }
    if chosen.is_empty() {
        return Err(ArtifactError::NoMatch {
            dir: base,
            patterns: spec.files.clone(),
        });
    }
    let mut files = Vec::new();
    let mut listing = String::new();
    for (name, (_, host)) in chosen {
        let dest = out.join(&name);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let (sha256, size) = copy_hashed(&host, &dest)?;
        listing.push_str(&format!("{sha256}  {name}\n"));
        files.push(Artifact {
            path: name,
            sha256,
            size,
        });
    }
    Ok(ArtifactSet {
        name: spec.name.clone(),
        files,
        digest: format!("sha256:{}", hex::encode(Sha256::digest(listing.as_bytes()))),
    })
}

/// `path` relative to the source directory, if it stays inside it: as
/// written, or absolute under `$CODEBUILD_SRC_DIR` (spelled out or as the
/// variable), as CodeBuild resolves it. `None` for a path outside.
pub fn source_relative(path: &str) -> Option<String> {
    let mut rest = path;
    for prefix in [
        "${CODEBUILD_SRC_DIR}",
        "$CODEBUILD_SRC_DIR",
        crate::run::SRC_DIR,
    ] {
        if let Some(r) = rest.strip_prefix(prefix)
            && (r.is_empty() || r.starts_with('/'))
        {
            rest = r.trim_start_matches('/');
            break;
        }
    }
    while let Some(r) = rest.strip_prefix("./") {
        rest = r;
    }
    if rest.starts_with('/') || rest.split('/').any(|s| s == "..") {
        return None;
    }
    Some(rest.trim_end_matches('/').to_string())
}

/// A `files` pattern relative to the base directory `base`: an absolute
/// pattern must lie under the source directory and the base.
fn file_pattern(pattern: &str, base: &str) -> Result<String, ArtifactError> {
    let outside = || ArtifactError::Outside {
        path: pattern.to_string(),
    };
    let rel = source_relative(pattern).ok_or_else(outside)?;
    if rel == pattern || pattern.starts_with("./") {
        return Ok(pattern.to_string());
    }
    if base.is_empty() {
        return Ok(rel);
    }
    rel.strip_prefix(base)
        .and_then(|r| r.strip_prefix('/'))
        .map(str::to_string)
        .ok_or_else(outside)
}

/// Every file and symlink below `dir`, without following links.
fn walk(
    dir: &Path,
    rel: &str,
    out: &mut Vec<(String, PathBuf, bool)>,
) -> Result<(), ArtifactError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let path = entry.path();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            walk(&path, &child, out)?;
        } else if kind.is_file() {
            out.push((child, path, false));
        } else if kind.is_symlink() {
            out.push((child, path, true));
        }
    }
    Ok(())
}

fn copy_hashed(from: &Path, to: &Path) -> Result<(String, u64), ArtifactError> {
    let mut input = fs::File::open(from).map_err(io(from))?;
    let mut output = fs::File::create(to).map_err(io(to))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io(from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(io(to))?;
        size += n as u64;
    }
    if let Ok(meta) = fs::metadata(from) {
        let _ = fs::set_permissions(to, meta.permissions());
    }
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(files: &[&str]) -> Artifacts {
        Artifacts {
            files: files.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn collects_with_base_and_discard() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("dist/js")).unwrap();
        fs::write(src.join("dist/index.html"), "<html>").unwrap();
        fs::write(src.join("dist/js/app.js"), "x").unwrap();
        fs::write(src.join("README"), "r").unwrap();
        let mut s = spec(&["**/*"]);
        s.base_directory = Some("dist".into());
        let set = collect(&src, &s, &dir.path().join("out1")).unwrap();
        let names: Vec<_> = set.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["index.html", "js/app.js"]);
        s.discard_paths = true;
        let set2 = collect(&src, &s, &dir.path().join("out2")).unwrap();
        let names: Vec<_> = set2.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["app.js", "index.html"]);
        assert!(dir.path().join("out2/app.js").is_file());
        assert_ne!(set.digest, set2.digest);
        // The same input gives the same digest.
        s.discard_paths = false;
        let again = collect(&src, &s, &dir.path().join("out3")).unwrap();
        assert_eq!(again.digest, set.digest);
    }

    #[test]
    fn symlinks_out_of_the_workspace_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), src.join("leak")).unwrap();
        let err = collect(&src, &spec(&["*"]), &dir.path().join("out")).unwrap_err();
        assert!(matches!(err, ArtifactError::Escapes { .. }), "{err}");
        std::os::unix::fs::symlink(dir.path(), src.join("up")).unwrap();
        let mut s = spec(&["**/*"]);
        s.base_directory = Some("up".into());
        let err = collect(&src, &s, &dir.path().join("out")).unwrap_err();
        assert!(matches!(err, ArtifactError::Escapes { .. }), "{err}");
    }

    #[test]
    fn no_match_and_collisions() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("a")).unwrap();
        fs::create_dir_all(src.join("b")).unwrap();
        fs::write(src.join("a/x"), "1").unwrap();
        fs::write(src.join("b/x"), "2").unwrap();
        let err = collect(&src, &spec(&["*.jar"]), &dir.path().join("o")).unwrap_err();
        assert!(matches!(err, ArtifactError::NoMatch { .. }));
        let mut s = spec(&["**/x"]);
        s.discard_paths = true;
        let err = collect(&src, &s, &dir.path().join("o")).unwrap_err();
        assert!(matches!(err, ArtifactError::Collision { .. }));
        s.exclude_paths = vec!["b/**".into()];
        assert_eq!(
            collect(&src, &s, &dir.path().join("o"))
                .unwrap()
                .files
                .len(),
            1
        );
    }
}
