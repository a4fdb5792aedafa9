//! One directory holding an image's whole root filesystem, for exports
//! to disk images.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

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
