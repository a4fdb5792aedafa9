//! An OCI image layout holding one image, as a directory or as a tar file.

use std::path::Path;

use oci_spec::image::Descriptor;

use super::ExportError;
use super::archive::TarWriter;
use super::blob::{Blob, Image, blob_path};
use super::layout::{OCI_LAYOUT, write_layout};
use super::staging::{self, Staged};

/// A new OCI image layout at `dest` holding exactly the image `manifest`
/// names in `layout`: the manifest, its config and its layers, and an
/// `index.json` whose one entry is tagged `ref_name`
/// (`org.opencontainers.image.ref.name`), so that `skopeo inspect
/// oci:DEST:REF` and `umoci unpack --image DEST:REF` find it.
///
/// `dest` must not exist, or be an empty directory. Blobs are hard-linked
/// from `layout` when both are on one filesystem (their size is checked;
/// they share their inode with the source, so they must stay read-only, as
/// blobs always are) and copied otherwise (their digest is checked).
///
/// zstd layers are recompressed as gzip, because umoci 0.4 (and docker
/// before 23) cannot read zstd. The exported manifest then differs from the
/// source's and has another digest; the config, and so the image ID and the
/// layers' diff_ids, stay the same.
pub fn export_oci_dir(
    layout: &Path,
    manifest: &Descriptor,
    ref_name: &str,
    dest: &Path,
) -> Result<(), ExportError> {
    check_ref_name(ref_name)?;
    staging::check_dir_dest(dest)?;
    let image = Image::open(layout, manifest)?;
    tracing::info!(image = %image.id(), dest = %dest.display(), ref_name, "exporting OCI layout");
    let staged = Staged::dir(dest, "")?;
    let written = write_layout(&image, ref_name, staged.path(), dest)?;
    staged.commit(dest)?;
    tracing::debug!(
        dest = %dest.display(),
        manifest = %written.blobs[0].digest(),
        recompressed = written.recompressed,
        "OCI layout exported"
    );
    Ok(())
}

/// The layout [`export_oci_dir`] writes, as a tar file (what skopeo's
/// `oci-archive:` transport reads). Entries are owned by root with fixed
/// modes and carry the image's creation time, so that one image always
/// exports to the same bytes. Every blob is verified as it is archived. An
/// existing file at `dest` is replaced atomically.
pub fn export_oci_archive(
    layout: &Path,
    manifest: &Descriptor,
    ref_name: &str,
    dest: &Path,
) -> Result<(), ExportError> {
    check_ref_name(ref_name)?;
    staging::check_file_dest(dest)?;
    let image = Image::open(layout, manifest)?;
    tracing::info!(image = %image.id(), dest = %dest.display(), ref_name, "exporting OCI archive");

    // The layout is built beside the archive (hard links, mostly), then
    // archived and removed.
    let work = Staged::dir(dest, ".layout")?;
    let written = write_layout(&image, ref_name, work.path(), dest)?;
    let staged = Staged::file(dest, "")?;
    let mut tar = TarWriter::new(staged.create_file(dest)?, image.created_unix(), dest);
    tar.bytes("oci-layout", OCI_LAYOUT)?;
    tar.bytes("index.json", &written.index)?;
    tar.dir("blobs/")?;
    let mut algorithms: Vec<&str> = Vec::new();
    for desc in &written.blobs {
        let algorithm = desc.digest().algorithm().as_ref();
        if !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
            tar.dir(&format!("blobs/{algorithm}/"))?;
        }
        let path = blob_path(work.path(), &image.id(), desc.digest())?;
        let name = format!("blobs/{algorithm}/{}", desc.digest().digest());
        tar.blob(&name, Blob::open(&image.id(), path, desc)?)?;
    }
    tar.finish()?;
    staged.commit(dest)
}

/// The spec's grammar for `org.opencontainers.image.ref.name`, which umoci
/// enforces: components of letters and digits joined by one of `-._:@+`
/// or `--`, separated by `/`.
fn check_ref_name(ref_name: &str) -> Result<(), ExportError> {
    fn component(c: &[u8]) -> bool {
        let mut i = 0;
        loop {
            let start = i;
            while i < c.len() && c[i].is_ascii_alphanumeric() {
                i += 1;
            }
            if i == start {
                return false;
            }
            if i == c.len() {
                return true;
            }
            if c[i..].starts_with(b"--") {
                i += 2;
            } else if b"-._:@+".contains(&c[i]) {
                i += 1;
            } else {
                return false;
            }
        }
    }
    if ref_name.split('/').all(|c| component(c.as_bytes())) {
        Ok(())
    } else {
        Err(ExportError::InvalidRefName {
            ref_name: ref_name.to_owned(),
        })
    }
}
