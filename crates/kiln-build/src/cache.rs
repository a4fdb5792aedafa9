//! `cache.paths`: files a build keeps for the next build of the same
//! pipeline, as CodeBuild's local and S3 caches do. The cache is restored
//! before the install phase and saved after a build that succeeded.
//!
//! A build can write only its source directory and its home (`/root`), so
//! those are the places a cached path can be in: `node_modules/**/*`
//! (relative to the source), `$CODEBUILD_SRC_DIR/...`, or `/root/.m2/**/*`.
//! Symlinks are neither saved nor followed when restoring: a checkout that
//! has `node_modules -> /etc` gets nothing written through it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_doc::yaml::Node;
use serde::{Deserialize, Serialize};

use crate::buildspec::{Parser, join};
use crate::glob;

/// `cache:` of a buildspec.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct CacheSpec {
    pub paths: Vec<String>,
}

/// The two places a cached path may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The source directory, `workspace/src`.
    Src,
    /// `/root`, `workspace/home`.
    Home,
}

impl Place {
    fn dir(self) -> &'static str {
        match self {
            Place::Src => "src",
            Place::Home => "home",
        }
    }
}

/// Where a cache path lies and its pattern relative to that place.
fn place_of(path: &str) -> Option<(Place, String)> {
    if let Some(rest) = path.strip_prefix("/root/") {
        let rest = rest.trim_start_matches('/');
        return (!rest.split('/').any(|s| s == "..")).then(|| (Place::Home, rest.to_string()));
    }
    let rel = crate::artifacts::source_relative(path)?;
    Some((Place::Src, rel))
}

pub(crate) fn parse(p: &mut Parser, node: &Node) -> CacheSpec {
    const KNOWN: &[&str] = &["paths", "key", "fallback-keys", "action"];
    let mut spec = CacheSpec::default();
    for (key, v) in p.map(node, "cache", KNOWN) {
        let field = join("cache", key);
        match key {
            "paths" => {
                spec.paths = p.strings(v, &field);
                for (i, path) in spec.paths.iter().enumerate() {
                    if place_of(path).is_none() {
                        let pos = v.as_seq().map_or(v.pos, |s| s[i].pos);
                        p.c.warn(
                            pos,
                            format!("{field}[{i}]"),
                            "outside the source directory and /root, the only places a local build writes: CodeBuild caches it, kiln does not",
                        );
                    }
                }
            }
            _ => p.ignored(
                v.pos,
                &field,
                "ignored: the local cache is one per pipeline, kept between its executions",
            ),
        }
    }
    spec
}

/// What the cache did for one build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CacheReport {
    pub restored_files: u64,
    pub restored_bytes: u64,
    pub restore_ms: u64,
    pub saved_files: u64,
    pub saved_bytes: u64,
    /// The phases of this build, in milliseconds.
    pub phases_ms: u64,
    /// The phases of the last build that ran without a cache to restore.
    pub uncached_phases_ms: Option<u64>,
    /// `uncached_phases_ms` less this build's phases and restore.
    pub time_saved_ms: Option<i64>,
    /// Paths skipped, with why.
    pub skipped: Vec<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct Meta {
    uncached_phases_ms: Option<u64>,
}

/// The cache holds at most this much; a build that leaves more saves none.
const MAX_BYTES: u64 = 4 << 30;

/// Copies what the cache at `cache` holds into the workspace, never over
/// a file the source already has.
pub fn restore(cache: &Path, workspace: &Path) -> CacheReport {
    let mut report = CacheReport::default();
    let started = Instant::now();
    for place in [Place::Src, Place::Home] {
        let from = cache.join("data").join(place.dir());
        for rel in crate::files::regular_files(&from) {
            let dest = workspace.join(place.dir()).join(&rel);
            if let Ok(n) = copy_no_follow(&from.join(&rel), workspace.join(place.dir()), &rel) {
                report.restored_files += 1;
                report.restored_bytes += n;
            } else {
                tracing::debug!(dest = %dest.display(), "cache entry not restored");
            }
        }
    }
    report.restore_ms = started.elapsed().as_millis() as u64;
    report
}

/// The build log's line on the restore.
pub fn restored_line(r: &CacheReport) -> String {
    format!(
        "Restored the cache: {} files, {} bytes, in {} ms",
        r.restored_files, r.restored_bytes, r.restore_ms
    )
}

/// After the phases: measures the time saved and, when the build
/// succeeded, saves the cache; returns the build log's lines on it.
pub fn finish(
    dir: &Path,
    opts: &crate::BuildOptions,
    spec: &crate::Buildspec,
    phases_ms: u64,
    succeeded: bool,
    r: &mut CacheReport,
) -> Vec<String> {
    let mut lines = Vec::new();
    measure(dir, phases_ms, r);
    if let Some(saved) = r.time_saved_ms {
        lines.push(format!(
            "Cache: the phases took {} ms, against {} ms without a cache: {saved} ms saved",
            r.phases_ms,
            r.uncached_phases_ms.unwrap_or_default()
        ));
    }
    if succeeded {
        match save(dir, &opts.workspace, &spec.cache, r) {
            Ok(()) => lines.push(format!(
                "Saved the cache: {} files, {} bytes",
                r.saved_files, r.saved_bytes
            )),
            Err(e) => lines.push(format!("Cannot save the cache in {}: {e}", dir.display())),
        }
        for why in &r.skipped {
            lines.push(format!("Cache: skipped {why}"));
        }
    }
    lines
}

/// The time saved, once the phases have run: against the last build that
/// had no cache.
fn measure(cache: &Path, phases_ms: u64, report: &mut CacheReport) {
    report.phases_ms = phases_ms;
    let meta: Meta = fs::read(cache.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    report.uncached_phases_ms = meta.uncached_phases_ms;
    if report.restored_files > 0 {
        report.time_saved_ms = meta
            .uncached_phases_ms
            .map(|u| u as i64 - phases_ms as i64 - report.restore_ms as i64);
    }
}

fn remove_if_present(dir: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Replaces the cache with the files `spec` names in the workspace.
fn save(
    cache: &Path,
    workspace: &Path,
    spec: &CacheSpec,
    report: &mut CacheReport,
) -> std::io::Result<()> {
    let fresh = cache.with_extension("new");
    remove_if_present(&fresh)?;
    fs::create_dir_all(fresh.join("data"))?;
    let mut wanted: Vec<(Place, String)> = Vec::new();
    for path in &spec.paths {
        match place_of(path) {
            Some(pp) => wanted.push(pp),
            None => report
                .skipped
                .push(format!("{path}: outside the source directory and /root")),
        }
    }
    let (mut files_n, mut bytes) = (0u64, 0u64);
    for place in [Place::Src, Place::Home] {
        let patterns: Vec<&str> = wanted
            .iter()
            .filter(|(p, _)| *p == place)
            .map(|(_, pat)| pat.as_str())
            .collect();
        if patterns.is_empty() {
            continue;
        }
        let root = workspace.join(place.dir());
        for rel in crate::files::regular_files(&root) {
            if !patterns.iter().any(|p| glob::matches(p, &rel)) {
                continue;
            }
            let n = copy_no_follow(&root.join(&rel), fresh.join("data").join(place.dir()), &rel)?;
            files_n += 1;
            bytes += n;
            if bytes > MAX_BYTES {
                remove_if_present(&fresh)?;
                report.skipped.push(format!(
                    "the cached paths hold more than {} GiB: nothing saved",
                    MAX_BYTES >> 30
                ));
                return Ok(());
            }
        }
    }
    let mut meta: Meta = fs::read(cache.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if report.restored_files == 0 {
        meta.uncached_phases_ms = Some(report.phases_ms);
    }
    fs::File::create(fresh.join("meta.json"))?
        .write_all(&serde_json::to_vec(&meta).expect("plain data"))?;
    let old = cache.with_extension("old");
    remove_if_present(&old)?;
    if cache.exists() {
        fs::rename(cache, &old)?;
    }
    fs::rename(&fresh, cache)?;
    // The new cache is in place; an old one left behind is removed by the
    // next save, before it matters.
    if let Err(e) = remove_if_present(&old) {
        tracing::warn!(path = %old.display(), error = %e, "cannot remove the previous build cache");
    }
    report.saved_files = files_n;
    report.saved_bytes = bytes;
    Ok(())
}

/// Copies `from` to `root/rel`, creating the directories between and
/// refusing to pass through a symlink or to replace an existing file.
fn copy_no_follow(from: &Path, root: PathBuf, rel: &str) -> std::io::Result<u64> {
    let mut dest = root;
    let parts: Vec<&str> = rel.split('/').collect();
    let (name, dirs) = parts.split_last().expect("a relative path has a name");
    for d in dirs {
        dest.push(d);
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    dest.display()
                )));
            }
            Err(_) => fs::create_dir_all(&dest)?,
        }
    }
    dest.push(name);
    let mut src = fs::File::open(from)?;
    let mode = src.metadata()?.permissions();
    // create_new: neither an existing file nor a symlink is written through.
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&dest)?;
    let n = std::io::copy(&mut src, &mut out)?;
    out.set_permissions(mode)?;
    Ok(n)
}
