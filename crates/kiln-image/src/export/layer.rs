//! Layers: decompressing them to the tar their diff_id names, and
//! recompressing zstd layers as gzip for tools that only read gzip.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use oci_spec::image::{Descriptor, MediaType};

use super::ExportError;
use super::blob::{Hasher, Image, sha256_digest};
use super::staging::write_error;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type names, `None` for what is not a
    /// layer kiln can unpack.
    pub(super) fn of(media_type: &MediaType) -> Option<Compression> {
        match media_type {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => {
                Some(Compression::None)
            }
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Some(Compression::Gzip)
            }
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
                Some(Compression::Zstd)
            }
            MediaType::Other(other) => match other.as_str() {
                "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                    Some(Compression::Gzip)
                }
                "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The hex of each layer's diff_id, in manifest order, after checking that
/// the config names one sha256 diff_id per layer.
pub(super) fn diff_hexes(image: &Image) -> Result<Vec<String>, ExportError> {
    let diff_ids = image.config_view()?.rootfs.diff_ids;
    let layers = image.manifest().layers().len();
    if layers != diff_ids.len() {
        return Err(ExportError::LayerCount {
            image: image.id(),
            layers,
            diff_ids: diff_ids.len(),
        });
    }
    diff_ids
        .into_iter()
        .map(|diff_id| match diff_id.strip_prefix("sha256:") {
            Some(hex)
                if hex.len() == 64
                    && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Ok(hex.to_owned())
            }
            _ => Err(ExportError::InvalidDiffId {
                image: image.id(),
                diff_id,
            }),
        })
        .collect()
}

/// The compression of `layer`, or the error that kiln cannot unpack it.
pub(super) fn compression(image: &Image, layer: &Descriptor) -> Result<Compression, ExportError> {
    Compression::of(layer.media_type()).ok_or_else(|| ExportError::UnsupportedLayer {
        image: image.id(),
        digest: layer.digest().to_string(),
        media_type: layer.media_type().to_string(),
    })
}

/// Writes the layer uncompressed to `out`, checking the blob against its
/// descriptor and the uncompressed tar against `diff_hex`. Errors of `out`
/// are errors writing `dest`.
pub(super) fn unpack_layer(
    image: &Image,
    layer: &Descriptor,
    diff_hex: &str,
    out: &mut dyn Write,
    dest: &Path,
) -> Result<(), ExportError> {
    let compression = compression(image, layer)?;
    let decompress_error = |source| ExportError::Decompress {
        image: image.id(),
        digest: layer.digest().to_string(),
        source,
    };
    let mut blob = image.open_blob(layer)?;
    let mut hasher = Hasher::sha256();
    {
        let mut reader: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut blob),
            Compression::Gzip => Box::new(MultiGzDecoder::new(&mut blob)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut blob).map_err(decompress_error)?)
            }
        };
        let mut buf = vec![0; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(decompress_error(e)),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| write_error(dest, e))?;
        }
    }
    blob.finish()?;
    let actual = hasher.finish();
    if actual != diff_hex {
        return Err(ExportError::DiffId {
            image: image.id(),
            digest: layer.digest().to_string(),
            expected: format!("sha256:{diff_hex}"),
            actual,
        });
    }
    Ok(())
}

/// Recompresses a zstd layer as gzip into the new file `to`, returning the
/// new blob's descriptor (the layer's, with media type, digest and size
/// changed and zstd-specific annotations dropped). The gzip stream has no
/// name or timestamp, so one layer always recompresses to the same blob.
pub(super) fn zstd_to_gzip(
    image: &Image,
    layer: &Descriptor,
    diff_hex: &str,
    to: &Path,
    dest: &Path,
) -> Result<Descriptor, ExportError> {
    let file = File::create_new(to).map_err(|e| write_error(dest, e))?;
    let counted = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Hasher::sha256(),
        written: 0,
    };
    let mut gzip = GzEncoder::new(counted, flate2::Compression::default());
    unpack_layer(image, layer, diff_hex, &mut gzip, dest)?;
    let counted = gzip.finish().map_err(|e| write_error(dest, e))?;
    let file = counted
        .inner
        .into_inner()
        .map_err(|e| write_error(dest, e.into_error()))?;
    file.sync_all().map_err(|e| write_error(dest, e))?;

    let mut gzipped = layer.clone();
    gzipped.set_media_type(gzip_media_type(layer.media_type()));
    gzipped.set_digest(sha256_digest(&counted.hasher.finish()));
    gzipped.set_size(counted.written);
    if let Some(annotations) = layer.annotations() {
        let kept: std::collections::HashMap<String, String> = annotations
            .iter()
            .filter(|(k, _)| !k.contains("zstd"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        gzipped.set_annotations((!kept.is_empty()).then_some(kept));
    }
    Ok(gzipped)
}

/// The gzip counterpart of a zstd layer media type.
fn gzip_media_type(zstd: &MediaType) -> MediaType {
    match zstd {
        MediaType::ImageLayerNonDistributableZstd => MediaType::ImageLayerNonDistributableGzip,
        MediaType::Other(docker) if docker.starts_with("application/vnd.docker.") => {
            MediaType::Other("application/vnd.docker.image.rootfs.diff.tar.gzip".to_owned())
        }
        _ => MediaType::ImageLayerGzip,
    }
}

/// A writer that hashes and counts what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
