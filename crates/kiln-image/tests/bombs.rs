//! Archives made to exhaust memory or disk: header records the tar crate
//! would read whole, streams that expand without end. Each is refused
//! early, having read little of its input, with a short error that names
//! the archive and the bound and says how to raise it.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::rc::Rc;

use kiln_image::tarball::{
    Compression, EntryProblem, ExtractLimits, ExtractOptions, LimitExceeded, TarError, extract,
};
use tar::{EntryType, Header};

fn header(name: &[u8], kind: EntryType, size: u64) -> [u8; 512] {
    let mut h = Header::new_gnu();
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    *h.as_bytes()
}

/// Counts what the extractor reads, to show it stopped early.
struct Counting<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// A header announcing a `size`-byte record, then that many bytes of `a`,
/// streamed: the archive is never held in memory by the test either.
fn record_bomb(kind: EntryType, size: u64) -> impl Read {
    let h = header(b"././@LongLink", kind, size);
    io::Cursor::new(h).chain(io::repeat(b'a').take(size))
}

fn refused(reader: impl Read, limits: ExtractLimits) -> (LimitExceeded, String, u64) {
    let target = tempfile::tempdir().unwrap();
    let read = Rc::new(Cell::new(0));
    let counting = Counting {
        inner: reader,
        read: read.clone(),
    };
    let opts = ExtractOptions {
        limits,
        ..ExtractOptions::default()
    };
    let err = extract(counting, target.path(), "bomb.tar", &opts).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("bomb.tar: refused: "), "{msg}");
    assert!(msg.len() < 400, "a long error: {} bytes", msg.len());
    match err {
        TarError::Limit { limit, .. } => (limit, msg, read.get()),
        other => panic!("not a limit: {other}"),
    }
}

#[test]
fn huge_header_records_are_refused_before_they_are_read() {
    let kinds = [
        (EntryType::GNULongName, "GNU long name"),
        (EntryType::GNULongLink, "GNU long link"),
        (EntryType::XHeader, "pax extended header"),
    ];
    for (kind, shown) in kinds {
        // 4 GiB announced: reading it whole would take 4 GiB of memory.
        let started = std::time::Instant::now();
        let (limit, msg, read) = refused(record_bomb(kind, 4 << 30), ExtractLimits::default());
        assert_eq!(
            limit,
            LimitExceeded::HeaderRecord {
                kind: shown,
                offset: 0,
                size: 4 << 30,
                limit: 64 << 10,
            }
        );
        assert!(msg.contains("KILN_IMPORT_MAX_HEADER_RECORD"), "{msg}");
        assert!(
            read <= 1 << 20,
            "{shown}: read {read} bytes before refusing"
        );
        assert!(started.elapsed().as_secs() < 5);
    }
    // Behind a compressor too, and after ordinary entries.
    let mut tar = Vec::new();
    tar.extend_from_slice(&header(b"ok", EntryType::Regular, 3));
    tar.extend_from_slice(b"ok\n");
    tar.resize(1024, 0);
    tar.extend_from_slice(&header(b"././@LongLink", EntryType::GNULongName, 1 << 30));
    let mut enc = zstd::Encoder::new(Vec::new(), 1).unwrap();
    enc.write_all(&tar).unwrap();
    io::copy(&mut io::repeat(b'a').take(1 << 30), &mut enc).unwrap();
    let zst = enc.finish().unwrap();
    assert!(zst.len() < 100_000);
    let (limit, _, _) = refused(&zst[..], ExtractLimits::default());
    assert!(
        matches!(limit, LimitExceeded::HeaderRecord { offset: 1024, .. }),
        "{limit}"
    );
}

#[test]
fn long_names_under_the_record_limit_reach_the_path_checks_and_errors_shorten_them() {
    let target = tempfile::tempdir().unwrap();
    // A name of 8 KiB climbing out of the target: refused, and shown short.
    let name = format!("{}{}", "a/".repeat(4000), "../".repeat(4001));
    let mut record = name.clone().into_bytes();
    record.push(0);
    let mut tar = header(
        b"././@LongLink",
        EntryType::GNULongName,
        record.len() as u64,
    )
    .to_vec();
    tar.extend_from_slice(&record);
    tar.resize(tar.len().next_multiple_of(512), 0);
    tar.extend_from_slice(&header(b"placeholder", EntryType::Regular, 0));
    tar.resize(tar.len() + 1024, 0);
    let err = extract(
        &tar[..],
        target.path(),
        "long.tar",
        &ExtractOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(
        err.entry_problem(),
        Some(EntryProblem::LeavesTarget)
    ));
    let msg = err.to_string();
    assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
    assert!(msg.contains("a/a/a/") && msg.contains('…'), "{msg}");
}

/// A tar of one file of `size` zeros.
fn zeros(size: u64) -> impl Read {
    io::Cursor::new(header(b"zeros", EntryType::Regular, size))
        .chain(io::repeat(0).take(size + 1024))
}

#[test]
fn decompression_bombs_are_stopped_by_ratio_and_size() {
    let small = ExtractLimits {
        max_size: 64 << 20,
        max_ratio: 100,
        ratio_floor: 1 << 20,
        ..ExtractLimits::default()
    };
    // 1 GiB of zeros, compressed to a few KiB by zstd and by gzip.
    let mut zst = zstd::Encoder::new(Vec::new(), 1).unwrap();
    io::copy(&mut zeros(1 << 30), &mut zst).unwrap();
    let zst = zst.finish().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    io::copy(&mut zeros(256 << 20), &mut gz).unwrap();
    let gz = gz.finish().unwrap();
    for bomb in [&zst, &gz] {
        assert_ne!(Compression::detect(bomb), Compression::None);
        let (limit, msg, _) = refused(&bomb[..], small);
        assert!(
            matches!(limit, LimitExceeded::Ratio { ratio: 100, written, .. } if written < 64 << 20),
            "{msg}"
        );
        assert!(msg.contains("KILN_IMPORT_MAX_RATIO"), "{msg}");
    }
    // An uncompressed stream expands 1:1; only its size stops it.
    let (limit, msg, read) = refused(zeros(1 << 30), small);
    assert_eq!(limit, LimitExceeded::Size { limit: 64 << 20 }, "{msg}");
    assert!(msg.contains("KILN_IMPORT_MAX_SIZE"), "{msg}");
    assert!(read < 66 << 20, "{read}");
}

#[test]
fn extraction_returns_the_digest_of_the_whole_stream() {
    let target = tempfile::tempdir().unwrap();
    let mut tar = header(b"hello", EntryType::Regular, 3).to_vec();
    tar.extend_from_slice(b"hi\n");
    tar.resize(1024, 0);
    // The end-of-archive blocks and the record padding after them count.
    tar.resize(10240, 0);
    let got = extract(&tar[..], target.path(), "t.tar", &ExtractOptions::default()).unwrap();
    assert_eq!(
        got.diff_id,
        format!("sha256:{}", kiln_image::store::sha256_hex(&tar))
    );
    assert_eq!(got.size, 10240);
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let again = tempfile::tempdir().unwrap();
    let got_zst = extract(
        &zst[..],
        again.path(),
        "t.tar.zst",
        &ExtractOptions::default(),
    )
    .unwrap();
    assert_eq!(got_zst.diff_id, got.diff_id);
    assert_eq!(got_zst.compression, Compression::Zstd);
}

#[test]
fn archives_of_members_refuse_absolute_symlinks() {
    let mut tar = Vec::new();
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..9].copy_from_slice(b"layer.tar");
    h.as_old_mut().linkname[..11].copy_from_slice(b"/etc/shadow");
    h.set_entry_type(EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.resize(tar.len() + 1024, 0);
    let target = tempfile::tempdir().unwrap();
    let members = ExtractOptions {
        members_only: true,
        ..ExtractOptions::default()
    };
    let err = extract(&tar[..], target.path(), "a.tar", &members).unwrap_err();
    assert!(
        matches!(err.entry_problem(), Some(EntryProblem::SymlinkAbsolute { target }) if target == "/etc/shadow"),
        "{err}"
    );
    assert!(std::fs::read_dir(target.path()).unwrap().next().is_none());
    // In a root filesystem, the same link means the image's own file.
    extract(&tar[..], target.path(), "a.tar", &ExtractOptions::default()).unwrap();
    assert_eq!(
        std::fs::read_link(target.path().join("layer.tar")).unwrap(),
        std::path::Path::new("/etc/shadow")
    );
}

#[test]
fn a_pax_size_record_moves_the_framing_and_the_guard_follows_it() {
    // A pax `size` record overrides the next header's size field (here 0):
    // were the framing not followed, the bomb's header after the file would
    // be taken for data, and the tar crate would read its record whole.
    let record = "12 size=512\n";
    let mut tar = header(b"PaxHeader", EntryType::XHeader, record.len() as u64).to_vec();
    tar.extend_from_slice(record.as_bytes());
    tar.resize(1024, 0);
    tar.extend_from_slice(&header(b"file", EntryType::Regular, 0));
    tar.extend_from_slice(&[b'x'; 512]);
    let fine = {
        let mut t = tar.clone();
        t.resize(t.len() + 1024, 0);
        t
    };
    let target = tempfile::tempdir().unwrap();
    extract(
        &fine[..],
        target.path(),
        "pax.tar",
        &ExtractOptions::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(target.path().join("file")).unwrap(),
        [b'x'; 512]
    );

    let offset = tar.len() as u64;
    let bomb = io::Cursor::new(tar).chain(record_bomb(EntryType::GNULongName, 1 << 30));
    let (limit, _, read) = refused(bomb, ExtractLimits::default());
    assert!(
        matches!(limit, LimitExceeded::HeaderRecord { offset: o, .. } if o == offset),
        "{limit}"
    );
    assert!(read <= 1 << 20, "{read}");
}

/// A GNU sparse entry: 512 bytes of `x` at offset 0, then a hole up to
/// `real_size`, the hole's end given in an extension block.
fn sparse(real_size: u64) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    h.set_entry_type(EntryType::GNUSparse);
    h.set_size(512);
    h.set_mode(0o644);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.sparse[0].set_offset(0);
    gnu.sparse[0].set_length(512);
    gnu.set_real_size(real_size);
    gnu.set_is_extended(true);
    h.set_cksum();
    let mut ext = tar::GnuExtSparseHeader::new();
    ext.sparse_mut()[0].set_offset(real_size);
    ext.sparse_mut()[0].set_length(0);
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(ext.as_bytes());
    tar.extend_from_slice(&[b'x'; 512]);
    tar
}

#[test]
fn sparse_files_count_what_they_write_and_their_extension_blocks_are_framed() {
    // 1 TiB of holes from a 1.5 KiB tar: the bytes written give it away.
    let limits = ExtractLimits {
        ratio_floor: 1 << 20,
        ..ExtractLimits::default()
    };
    let (limit, msg, _) = refused(&sparse(1 << 40)[..], limits);
    assert!(
        matches!(limit, LimitExceeded::Ratio { written, .. } if written < 4 << 20),
        "{msg}"
    );
    // A small one extracts; a bomb after its extension block is seen.
    let mut tar = sparse(4096);
    let target = tempfile::tempdir().unwrap();
    let mut fine = tar.clone();
    fine.resize(fine.len() + 1024, 0);
    extract(
        &fine[..],
        target.path(),
        "sparse.tar",
        &ExtractOptions::default(),
    )
    .unwrap();
    let data = std::fs::read(target.path().join("sparse")).unwrap();
    assert_eq!(
        (data.len(), &data[..512], data[4095]),
        (4096, &[b'x'; 512][..], 0)
    );
    let offset = tar.len() as u64;
    tar.extend_from_slice(&header(b"././@LongLink", EntryType::GNULongName, 1 << 30));
    let bomb = io::Cursor::new(tar).chain(io::repeat(b'a').take(1 << 30));
    let (limit, _, read) = refused(bomb, ExtractLimits::default());
    assert!(
        matches!(limit, LimitExceeded::HeaderRecord { offset: o, .. } if o == offset),
        "{limit}"
    );
    assert!(read <= 1 << 20, "{read}");
}
