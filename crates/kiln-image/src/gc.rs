//! Retention and garbage collection: keep the newest images of each name
//! and every image something still uses, then remove every blob, unpacked
//! layer and cache entry nothing references (the AMI and snapshot clean-up
//! of the AWS sample).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::store::{ImageRecord, Store, StoreError};

#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Images removed (or that would be, in a dry run), by reference.
    pub images: Vec<String>,
    pub blobs: usize,
    pub layers: usize,
    pub cache_entries: usize,
    pub bytes: u64,
}

/// Removes all but the `keep` newest images of each name (of the name
/// `only`, if given), except those in `in_use` (digests); then everything
/// no remaining image references. The caller holds the store lock. With
/// `dry_run`, only reports.
pub fn collect(
    store: &Store,
    keep: usize,
    only: Option<&str>,
    in_use: &HashSet<String>,
    dry_run: bool,
) -> Result<GcReport, StoreError> {
    let mut report = GcReport::default();
    let images = store.images()?;
    let mut by_name: BTreeMap<&str, Vec<&ImageRecord>> = BTreeMap::new();
    for image in &images {
        by_name.entry(&image.name).or_default().push(image);
    }
    // The newest of each name and whatever is in use, then their parents
    // (an image's lineage stays with it), until nothing changes.
    let mut protect: HashSet<String> = in_use.clone();
    for (name, list) in by_name.iter_mut() {
        list.sort_by_key(|i| std::cmp::Reverse((i.version, i.build)));
        let keep = if only.is_some_and(|o| o != *name) {
            list.len()
        } else {
            keep
        };
        protect.extend(list.iter().take(keep).map(|i| i.digest()));
    }
    loop {
        let mut parents = Vec::new();
        for image in images.iter().filter(|i| protect.contains(&i.digest())) {
            let config = store.config(&store.manifest(image)?)?;
            let labels = config
                .config()
                .clone()
                .unwrap_or_default()
                .labels()
                .clone()
                .unwrap_or_default();
            if let Some(p) = labels
                .get("dev.kiln.parent.digest")
                .filter(|p| !protect.contains(*p))
            {
                parents.push(p.clone());
            }
        }
        if parents.is_empty() {
            break;
        }
        protect.extend(parents);
    }
    let mut kept: Vec<&ImageRecord> = Vec::new();
    for image in &images {
        if protect.contains(&image.digest()) {
            kept.push(image);
        } else {
            report.images.push(image.reference());
            if !dry_run {
                store.remove_image(image)?;
            }
        }
    }
    let mut live_blobs: HashSet<String> = HashSet::new();
    let mut live_layers: HashSet<String> = HashSet::new();
    for image in &kept {
        live_blobs.insert(hex(&image.digest()));
        let manifest = store.manifest(image)?;
        live_blobs.insert(hex(manifest.config().digest().as_ref()));
        for l in manifest.layers() {
            live_blobs.insert(hex(l.digest().as_ref()));
        }
        for d in store.config(&manifest)?.rootfs().diff_ids() {
            live_layers.insert(hex(d));
        }
        for (_, v) in image.descriptor.annotations().clone().unwrap_or_default() {
            if let Some(h) = v.strip_prefix("sha256:") {
                live_blobs.insert(h.to_string());
            }
        }
    }
    let blobs = store.layout().join("blobs/sha256");
    for (name, path) in entries(&blobs) {
        if !live_blobs.contains(&name) {
            report.blobs += 1;
            report.bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if !dry_run {
                std::fs::remove_file(&path).map_err(|e| io(store, &path, e))?;
            }
        }
    }
    for (name, path) in entries(&store.dir().join("layers")) {
        if !live_layers.contains(&name) {
            report.layers += 1;
            if !dry_run {
                std::fs::remove_dir_all(&path).map_err(|e| io(store, &path, e))?;
            }
        }
    }
    for (_, path) in entries(&store.dir().join("cache")) {
        let layer: Option<crate::store::CachedLayer> = std::fs::read(&path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        if layer.is_none_or(|l| !live_blobs.contains(&hex(&l.digest))) {
            report.cache_entries += 1;
            if !dry_run {
                std::fs::remove_file(&path).map_err(|e| io(store, &path, e))?;
            }
        }
    }
    Ok(report)
}

fn hex(digest: &str) -> String {
    digest.strip_prefix("sha256:").unwrap_or(digest).to_string()
}

fn entries(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let Ok(list) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    list.flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect()
}

fn io(store: &Store, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io {
        dir: store.dir().to_path_buf(),
        action: format!("remove {}", path.display()),
        error,
    }
}
