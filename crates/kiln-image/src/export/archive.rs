//! Writing an export's tar file: fixed owners, modes and timestamps, so
//! that one image always exports to the same bytes.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::ExportError;
use super::blob::Blob;
use super::staging::write_error;

pub(super) struct TarWriter {
    builder: tar::Builder<BufWriter<File>>,
    mtime: u64,
    /// The export's destination, which errors name.
    dest: PathBuf,
}

impl TarWriter {
    /// A tar writer on `file`, whose entries carry `mtime`.
    pub(super) fn new(file: File, mtime: u64, dest: &Path) -> TarWriter {
        TarWriter {
            builder: tar::Builder::new(BufWriter::with_capacity(1 << 20, file)),
            mtime,
            dest: dest.to_owned(),
        }
    }

    fn header(&self, kind: EntryType, mode: u32, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.mtime);
        header.set_size(size);
        header
    }

    fn error(&self, source: io::Error) -> ExportError {
        write_error(&self.dest, source)
    }

    pub(super) fn dir(&mut self, path: &str) -> Result<(), ExportError> {
        let mut header = self.header(EntryType::Directory, 0o755, 0);
        self.builder
            .append_data(&mut header, path, io::empty())
            .map_err(|e| self.error(e))
    }

    pub(super) fn bytes(&mut self, path: &str, data: &[u8]) -> Result<(), ExportError> {
        let mut header = self.header(EntryType::Regular, 0o644, data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .map_err(|e| self.error(e))
    }

    /// A blob of the source layout, copied as it is and verified.
    pub(super) fn blob(&mut self, path: &str, mut blob: Blob<'_>) -> Result<(), ExportError> {
        let mut header = self.header(EntryType::Regular, 0o644, blob.size());
        self.builder
            .append_data(&mut header, path, &mut blob)
            .map_err(|e| self.error(e))?;
        // A blob that changed size while being read would have made the
        // entry disagree with its header; finish() catches that too.
        blob.finish()
    }

    /// An entry whose size is known only once `fill` has written it.
    pub(super) fn stream(
        &mut self,
        path: &str,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), ExportError>,
    ) -> Result<(), ExportError> {
        let mut header = self.header(EntryType::Regular, 0o644, 0);
        let dest = self.dest.clone();
        let mut entry = self
            .builder
            .append_writer(&mut header, path)
            .map_err(|e| write_error(&dest, e))?;
        fill(&mut entry)?;
        entry.finish().map_err(|e| write_error(&dest, e))
    }

    /// Ends the archive and flushes it to disk.
    pub(super) fn finish(self) -> Result<(), ExportError> {
        let dest = self.dest;
        let file = self
            .builder
            .into_inner()
            .map_err(|e| write_error(&dest, e))?
            .into_inner()
            .map_err(|e| write_error(&dest, e.into_error()))?;
        file.sync_all().map_err(|e| write_error(&dest, e))
    }
}
