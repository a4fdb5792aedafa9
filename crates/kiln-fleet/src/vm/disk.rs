//! Disks of virtual machines: the image exported once as a bootable qcow2
//! (the base, cached per image digest under the state directory), and a
//! copy-on-write overlay per instance over it, so that an instance starts
//! without copying the image and its writes stay its own.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_image::Store;

use super::host::QEMU_IMG;

/// File name of the base disk of the image with `digest`.
fn base_name(digest: &str) -> String {
    format!("{}.qcow2", digest.replace(':', "-"))
}

/// The bootable base disk of the image with `digest`, exported on first
/// use. A lock file makes concurrent launches of the same image wait for
/// one export; the disk appears under its name only once complete.
pub fn base_disk(cache: &Path, store: &Store, digest: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let name = base_name(digest);
    let disk = cache.join(&name);
    if disk.exists() {
        return Ok(disk);
    }
    let lock_path = cache.join(format!("{name}.lock"));
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if disk.exists() {
        return Ok(disk);
    }
    let partial = cache.join(format!("{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let started = std::time::Instant::now();
    if let Err(e) = export_bootable(store, digest, &partial) {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("exporting image {digest} as a bootable disk: {e}"));
    }
    std::fs::rename(&partial, &disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    tracing::info!(image = %digest, disk = %disk.display(), elapsed = ?started.elapsed(), "exported the image as a bootable disk for virtual machines");
    Ok(disk)
}

/// Writes the image as a bootable qcow2 disk to `out` (UEFI: an EFI system
/// partition with systemd-boot, and the image's tree as the ext4 root).
fn export_bootable(store: &Store, digest: &str, out: &Path) -> Result<(), String> {
    // Held for the whole export, as the export asks: garbage collection
    // must not remove the image's layers meanwhile.
    let _lock = store.lock().map_err(|e| e.to_string())?;
    let image = store.resolve(digest).map_err(|e| e.to_string())?;
    kiln_image::flatten::export_bootable_image(
        store,
        &image,
        out,
        kiln_image::export::DiskFormat::Qcow2,
        &kiln_image::export::BootOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// A qcow2 overlay at `overlay` whose reads fall through to `base`.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<(), String> {
    let out = Command::new(QEMU_IMG)
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .map_err(|e| format!("{QEMU_IMG}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{QEMU_IMG} create (overlay on {}): {}",
            base.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes the base disks of images none of `keep` (digests) names, and
/// what interrupted exports left. A running VM keeps its base open, so a
/// removal never pulls a disk from under one; its image is one a template
/// names anyway.
pub fn prune(cache: &Path, keep: &HashSet<String>) {
    let keep: HashSet<String> = keep.iter().map(|d| base_name(d)).collect();
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = if let Some(base) = name.strip_suffix(".lock") {
            !keep.contains(base)
        } else if name.ends_with(".partial") {
            // Only when no export holds its lock, i.e. none is running.
            let base = name.trim_end_matches(".partial");
            !locked(&cache.join(format!("{base}.lock")))
        } else {
            !keep.contains(&name)
        };
        if stale {
            tracing::info!(disk = %entry.path().display(), "removing a bootable disk no launch template uses");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn locked(lock: &Path) -> bool {
    match File::open(lock) {
        Ok(f) => match f.try_lock() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(_) => false,
        },
        Err(_) => false,
    }
}
