//! How far an untrusted archive may make extraction go: the size of the
//! header records the tar crate reads into memory, the bytes it may expand
//! to, and how much it may expand per byte read.

use std::cell::Cell;
use std::io;

/// Bounds on one extraction. The defaults are generous for real images
/// (a Debian or Ubuntu base expands about 3:1) and stop bombs early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Most bytes a GNU long name, GNU long link or pax extended header
    /// record may hold; the tar crate reads each into memory whole.
    pub max_header_record: u64,
    /// Most bytes the uncompressed stream, or the files written from it,
    /// may reach.
    pub max_size: u64,
    /// Most bytes written per byte read, once more than `ratio_floor`
    /// bytes are written.
    pub max_ratio: u64,
    pub ratio_floor: u64,
}

/// The environment variables that override the defaults, for imports.
pub const ENV_MAX_HEADER_RECORD: &str = "KILN_IMPORT_MAX_HEADER_RECORD";
pub const ENV_MAX_SIZE: &str = "KILN_IMPORT_MAX_SIZE";
pub const ENV_MAX_RATIO: &str = "KILN_IMPORT_MAX_RATIO";
pub const ENV_RATIO_FLOOR: &str = "KILN_IMPORT_RATIO_FLOOR";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

impl Default for ExtractLimits {
    /// 64 KiB header records (PATH_MAX is 4 KiB), 32 GiB per extraction,
    /// and 100:1 expansion past the first 128 MiB.
    fn default() -> ExtractLimits {
        ExtractLimits {
            max_header_record: 64 * KIB,
            max_size: 32 * GIB,
            max_ratio: 100,
            ratio_floor: 128 * MIB,
        }
    }
}

impl ExtractLimits {
    /// No size or ratio bound, for the store's own layers, which passed the
    /// limits once already or were made by a bake; header records stay
    /// bounded, as memory always must.
    pub fn trusted() -> ExtractLimits {
        ExtractLimits {
            max_size: u64::MAX,
            max_ratio: u64::MAX,
            ..ExtractLimits::default()
        }
    }

    /// The defaults, each overridden by its environment variable when set:
    /// `KILN_IMPORT_MAX_HEADER_RECORD`, `KILN_IMPORT_MAX_SIZE` and
    /// `KILN_IMPORT_RATIO_FLOOR` take bytes with an optional K, M, G or T
    /// suffix (powers of 1024), `KILN_IMPORT_MAX_RATIO` a whole number.
    pub fn from_env() -> Result<ExtractLimits, String> {
        let mut limits = ExtractLimits::default();
        for (name, field, suffixes) in [
            (ENV_MAX_HEADER_RECORD, &mut limits.max_header_record, true),
            (ENV_MAX_SIZE, &mut limits.max_size, true),
            (ENV_MAX_RATIO, &mut limits.max_ratio, false),
            (ENV_RATIO_FLOOR, &mut limits.ratio_floor, true),
        ] {
            if let Some(value) = std::env::var_os(name) {
                let text = value.to_string_lossy();
                *field = parse_size(&text, suffixes).ok_or_else(|| {
                    format!(
                        "{name}={text:?} is not {}",
                        if suffixes {
                            "a size in bytes (such as 65536, 64K or 8G)"
                        } else {
                            "a whole number"
                        }
                    )
                })?;
            }
        }
        Ok(limits)
    }
}

fn parse_size(text: &str, suffixes: bool) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last()? {
        (i, c) if suffixes && c.is_ascii_alphabetic() => (
            &text[..i],
            match c.to_ascii_uppercase() {
                'K' => KIB,
                'M' => MIB,
                'G' => GIB,
                'T' => 1024 * GIB,
                _ => return None,
            },
        ),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// Which bound an archive ran into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error(
        "the {kind} record of the header at byte {offset} holds {size} bytes, over the limit of {limit} (set {ENV_MAX_HEADER_RECORD} to allow more)"
    )]
    HeaderRecord {
        kind: &'static str,
        offset: u64,
        size: u64,
        limit: u64,
    },
    #[error("it expands past the limit of {limit} bytes (set {ENV_MAX_SIZE} to allow more)")]
    Size { limit: u64 },
    #[error(
        "it expands more than {ratio}:1 ({written} bytes from {read}; set {ENV_MAX_RATIO} to allow more)"
    )]
    Ratio { ratio: u64, written: u64, read: u64 },
}

/// What one extraction read and wrote so far, shared by the readers of the
/// stream and the extractor, and the first bound it ran into.
pub(super) struct Meter {
    limits: ExtractLimits,
    /// Bytes read from the archive as given (compressed or not).
    pub read: Cell<u64>,
    /// Bytes of the uncompressed tar stream.
    pub stream: Cell<u64>,
    /// Bytes written into files (more than the stream for sparse files).
    pub written: Cell<u64>,
    hit: Cell<Option<LimitExceeded>>,
}

impl Meter {
    pub fn new(limits: ExtractLimits) -> Meter {
        Meter {
            limits,
            read: Cell::new(0),
            stream: Cell::new(0),
            written: Cell::new(0),
            hit: Cell::new(None),
        }
    }

    pub fn limits(&self) -> &ExtractLimits {
        &self.limits
    }

    pub fn add(cell: &Cell<u64>, n: usize) {
        cell.set(cell.get().saturating_add(n as u64));
    }

    /// Fails once the output passes a bound; the reason is kept for
    /// [`Meter::take_hit`], since the tar crate may rewrap the error.
    pub fn check(&self) -> io::Result<()> {
        let out = self.stream.get().max(self.written.get());
        let l = &self.limits;
        if out > l.max_size {
            return self.refuse(LimitExceeded::Size { limit: l.max_size });
        }
        let read = self.read.get().max(1);
        if out > l.ratio_floor && out > read.saturating_mul(l.max_ratio) {
            return self.refuse(LimitExceeded::Ratio {
                ratio: l.max_ratio,
                written: out,
                read: self.read.get(),
            });
        }
        Ok(())
    }

    pub fn refuse(&self, why: LimitExceeded) -> io::Result<()> {
        let error = io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        let first = self.hit.take().unwrap_or(why);
        self.hit.set(Some(first));
        Err(error)
    }

    pub fn take_hit(&self) -> Option<LimitExceeded> {
        self.hit.take()
    }
}

/// Counts the bytes read from the archive as given.
pub(super) struct Counted<'m, R> {
    pub inner: R,
    pub meter: &'m Meter,
}

impl<R: io::Read> io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        Meter::add(&self.meter.read, n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("65536", true), Some(65536));
        assert_eq!(parse_size("64K", true), Some(64 * 1024));
        assert_eq!(parse_size("8g", true), Some(8 << 30));
        assert_eq!(parse_size("8G", false), None);
        assert_eq!(parse_size("x", true), None);
        assert_eq!(parse_size("", true), None);
        assert_eq!(parse_size("99999999999T", true), None);
    }

    #[test]
    fn the_ratio_counts_only_past_its_floor() {
        let limits = ExtractLimits {
            max_header_record: 10,
            max_size: 1000,
            max_ratio: 10,
            ratio_floor: 100,
        };
        let m = Meter::new(limits);
        m.read.set(1);
        m.stream.set(100);
        m.check().unwrap();
        m.stream.set(101);
        m.check().unwrap_err();
        assert!(matches!(m.take_hit(), Some(LimitExceeded::Ratio { .. })));
        m.read.set(100);
        m.written.set(1001);
        m.check().unwrap_err();
        assert_eq!(m.take_hit(), Some(LimitExceeded::Size { limit: 1000 }));
    }
}
