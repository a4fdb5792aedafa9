//! One directory holding an image's whole root filesystem, for exports
//! to disk images; and a store image exported as a bootable disk.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::export::{self, BootOptions, BootableDisk, DiskFormat, ExportError};
use crate::import::ImportError;
use crate::store::{ImageRecord, Store};
use crate::tarball::{self, ExtractOptions};

/// Applies every layer of `image`, bottom first, with whiteouts, into a new
/// directory under the store's temporary directory. The caller removes it.
pub fn flatten(store: &Store, image: &ImageRecord) -> Result<PathBuf, ImportError> {
    let manifest = store.manifest(image)?;
    let dir = store.temp_path("rootfs");
    std::fs::create_dir_all(&dir).map_err(|error| ImportError::Io {
        path: dir.clone(),
        error,
    })?;
    // The store's own layers are trusted as far as devices and size go:
    // they came from its bakes or passed the safe extractor once already.
    let opts = ExtractOptions {
        whiteouts: true,
        allow_devices: true,
        preserve_owners: rustix::process::geteuid().is_root(),
        members_only: false,
        limits: tarball::ExtractLimits::trusted(),
    };
    for layer in manifest.layers() {
        let digest = layer.digest().to_string();
        let path = store.blob_path(&digest)?;
        let file = File::open(&path).map_err(|error| ImportError::Io {
            path: path.clone(),
            error,
        })?;
        tarball::extract(
            BufReader::with_capacity(1 << 20, file),
            &dir,
            &digest,
            &opts,
        )?;
    }
    Ok(dir)
}

/// Why a store image could not be written as a bootable disk.
#[derive(Debug, thiserror::Error)]
pub enum BootableImageError {
    #[error("unpack image {image} for its disk: {source}")]
    Unpack { image: String, source: ImportError },
    #[error(
        "image {image} is built for {architecture}; kiln makes bootable disks for amd64 \
         (x86-64 UEFI) only"
    )]
    Architecture { image: String, architecture: String },
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// Writes the store image `image` to `dest` as a bootable UEFI disk (see
/// [`export::export_bootable`]): its layers are unpacked into the store's
/// temporary directory, made into the disk, and removed. `options.name`
/// defaults to the image's reference. The caller holds the store's lock
/// ([`Store::lock`]) from before this call until it returns, as for
/// [`flatten`]: clean_temp and garbage collection must not run meanwhile.
pub fn export_bootable_image(
    store: &Store,
    image: &ImageRecord,
    dest: &Path,
    format: DiskFormat,
    options: &BootOptions,
) -> Result<BootableDisk, BootableImageError> {
    let unpack = |source| BootableImageError::Unpack {
        image: image.reference(),
        source,
    };
    let manifest = store.manifest(image).map_err(|e| unpack(e.into()))?;
    let config = store.config(&manifest).map_err(|e| unpack(e.into()))?;
    if *config.architecture() != oci_spec::image::Arch::Amd64 {
        return Err(BootableImageError::Architecture {
            image: image.reference(),
            architecture: config.architecture().to_string(),
        });
    }
    let rootfs = flatten(store, image).map_err(unpack)?;
    let mut options = options.clone();
    options.name.get_or_insert_with(|| image.reference());
    let result = export::export_bootable(&rootfs, dest, format, &options);
    // The export's own result is what to report; a rootfs left behind is
    // in the store's temporary area, which clean_temp empties.
    if let Err(e) = std::fs::remove_dir_all(&rootfs) {
        tracing::warn!(rootfs = %rootfs.display(), error = %e, "cannot remove an unpacked image");
    }
    Ok(result?)
}
