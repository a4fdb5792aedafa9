//! A reader between the decompressor and the tar crate that follows the
//! tar framing itself, so that a header announcing a huge GNU long name,
//! long link or pax record is refused before the tar crate reads that
//! record into memory. It also hashes the uncompressed stream (the layer's
//! diff_id) and counts it against the limits.
//!
//! The framing mirrors the tar crate's (0.4): which headers it recognizes
//! as extensions, the pax `size` record that overrides the next entry's
//! size, and the extension blocks of GNU sparse entries. Were they ever to
//! disagree, the tar crate would read a header where this reader sees data,
//! so the record caps hold only while they agree; the limits on size and
//! ratio hold regardless.

use std::io::{self, Read};

use sha2::{Digest, Sha256};
use tar::{GnuExtSparseHeader, Header, PaxExtensions};

use super::limits::{LimitExceeded, Meter};

const BLOCK: usize = 512;

enum State {
    /// Filling a header block.
    Header,
    /// Filling an extension block of a GNU sparse entry.
    SparseExt { size: u64 },
    /// Inside an entry's data, then its padding to the next block.
    Data { left: u64, pad: u64, collect: bool },
    /// After the end-of-archive block, where the tar crate stops.
    Done,
}

pub(super) struct Framed<'m, R> {
    inner: R,
    meter: &'m Meter,
    hasher: Sha256,
    state: State,
    /// Stream offset of the next byte to parse.
    offset: u64,
    block: [u8; BLOCK],
    filled: usize,
    /// The pax record being read, then waiting for the entry it describes.
    pax: Option<Vec<u8>>,
    pending_pax: Option<Vec<u8>>,
}

impl<'m, R: Read> Framed<'m, R> {
    pub fn new(inner: R, meter: &'m Meter) -> Self {
        Framed {
            inner,
            meter,
            hasher: Sha256::new(),
            state: State::Header,
            offset: 0,
            block: [0; BLOCK],
            filled: 0,
            pax: None,
            pending_pax: None,
        }
    }

    /// The sha256 of everything read, as `sha256:<hex>`.
    pub fn digest(self) -> String {
        super::sha256_digest(&self.hasher.finalize())
    }

    fn parse(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Header | State::SparseExt { .. } => {
                    let n = (BLOCK - self.filled).min(bytes.len());
                    self.block[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                    self.filled += n;
                    bytes = &bytes[n..];
                    self.offset += n as u64;
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.block_done()?;
                    }
                }
                State::Data { left, pad, collect } => {
                    let take = if *left > 0 {
                        let n = (*left).min(bytes.len() as u64) as usize;
                        if *collect && let Some(pax) = &mut self.pax {
                            pax.extend_from_slice(&bytes[..n]);
                        }
                        *left -= n as u64;
                        n
                    } else {
                        let n = (*pad).min(bytes.len() as u64) as usize;
                        *pad -= n as u64;
                        n
                    };
                    bytes = &bytes[take..];
                    self.offset += take as u64;
                    if let State::Data {
                        left: 0,
                        pad: 0,
                        collect,
                    } = self.state
                    {
                        if collect {
                            self.pending_pax = self.pax.take();
                        }
                        self.state = State::Header;
                    }
                }
            }
        }
        Ok(())
    }

    fn block_done(&mut self) -> io::Result<()> {
        if let State::SparseExt { size } = self.state {
            let mut ext = GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&self.block);
            if !ext.is_extended() {
                self.state = data(size, false);
            }
            return Ok(());
        }
        let start = self.offset - BLOCK as u64;
        if self.block.iter().all(|&b| b == 0) {
            self.state = State::Done;
            return Ok(());
        }
        let header = Header::from_byte_slice(&self.block);
        let kind = header.entry_type();
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        let Ok(mut size) = header.entry_size() else {
            // The tar crate fails on this header too.
            self.state = State::Done;
            return Ok(());
        };
        let record = recognized
            .then(|| {
                if kind.is_gnu_longname() {
                    Some("GNU long name")
                } else if kind.is_gnu_longlink() {
                    Some("GNU long link")
                } else if kind.is_pax_local_extensions() {
                    Some("pax extended header")
                } else {
                    None
                }
            })
            .flatten();
        if let Some(kind) = record {
            let limit = self.meter.limits().max_header_record;
            if size > limit {
                return self.meter.refuse(LimitExceeded::HeaderRecord {
                    kind,
                    offset: start,
                    size,
                    limit,
                });
            }
        }
        let pending = if record.is_none() {
            // The entry the tar crate returns: pending pax records apply
            // to it (their size only when it is no extension) and end.
            self.pending_pax.take()
        } else {
            None
        };
        if !extension && let Some(s) = pending.as_deref().and_then(pax_size) {
            size = s;
        }
        let collect = kind.is_pax_local_extensions() && record.is_some();
        if collect {
            self.pax = Some(Vec::with_capacity(size as usize));
        }
        let sparse_ext = record.is_none()
            && kind.is_gnu_sparse()
            && header.as_gnu().is_some_and(|g| g.is_extended());
        if size.checked_add(BLOCK as u64 - 1).is_none() {
            self.state = State::Done;
            return Ok(());
        }
        self.state = if sparse_ext {
            State::SparseExt { size }
        } else {
            data(size, collect)
        };
        Ok(())
    }
}

fn data(size: u64, collect: bool) -> State {
    let pad = size.next_multiple_of(BLOCK as u64) - size;
    if size == 0 && !collect {
        return State::Header;
    }
    State::Data {
        left: size,
        pad,
        collect,
    }
}

/// The pax `size` record, read as the tar crate reads it: the first `size`
/// key wins, and a malformed record list or value means none.
fn pax_size(records: &[u8]) -> Option<u64> {
    for ext in PaxExtensions::new(records) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for Framed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Meter::add(&self.meter.stream, n);
        self.parse(&buf[..n])?;
        self.meter.check()?;
        Ok(n)
    }
}
