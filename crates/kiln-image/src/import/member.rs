//! Reading the files of an OCI layout or an extracted archive through the
//! directory itself: every path is resolved by the kernel below that
//! directory (`openat2(RESOLVE_BENEATH)`), so neither a member's name nor a
//! symlink among the members can make kiln read a host file.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde_json::Value;

use super::{ImportError, Result, invalid};
use crate::store::digest_hex;
use crate::tarball::shorten;

/// The most a JSON file of an image (index, manifest, config) may hold;
/// real configs are a few KiB, those with long histories some hundred.
const JSON_MAX: u64 = 16 << 20;

/// Below the directory, and no magic links (`/proc/self/fd/N`) either;
/// symlinks among the members may point to other members.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// A directory whose files are the members of an image source.
pub(super) struct Members {
    fd: OwnedFd,
    /// The import source, for errors.
    source_name: String,
}

impl Members {
    pub fn open(dir: &Path, source_name: &str) -> Result<Members> {
        let fd = rfs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ImportError::Io {
            path: dir.to_path_buf(),
            error: e.into(),
        })?;
        Ok(Members {
            fd,
            source_name: source_name.to_owned(),
        })
    }

    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Opens the regular file `name` (relative, plain components only)
    /// below the directory.
    pub fn open_file(&self, name: &str) -> Result<File> {
        let shown = shorten(name);
        let plain = !name.is_empty()
            && Path::new(name)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(invalid(
                &self.source_name,
                format!("{shown:?} is not a plain relative path inside the archive"),
            ));
        }
        let fd = loop {
            match rfs::openat2(
                &self.fd,
                name,
                // NONBLOCK: a fifo among the members must not hang the
                // import before it is refused below.
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            ) {
                Err(Errno::AGAIN | Errno::INTR) => continue,
                Err(Errno::XDEV | Errno::LOOP) => {
                    return Err(invalid(
                        &self.source_name,
                        format!("{shown}: its path or a symlink on it leads outside the archive"),
                    ));
                }
                Err(Errno::NOENT) => {
                    return Err(invalid(
                        &self.source_name,
                        format!("{shown}: no such file in the archive"),
                    ));
                }
                Err(Errno::NOSYS) => {
                    return Err(invalid(
                        &self.source_name,
                        "the kernel has no openat2 (Linux 5.6 or newer is needed)",
                    ));
                }
                Err(e) => {
                    return Err(invalid(&self.source_name, format!("{shown}: open: {e}")));
                }
                Ok(fd) => break fd,
            }
        };
        let stat = rfs::fstat(&fd)
            .map_err(|e| invalid(&self.source_name, format!("{shown}: stat: {e}")))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(invalid(
                &self.source_name,
                format!("{shown} is not a regular file"),
            ));
        }
        Ok(File::from(fd))
    }

    /// A JSON member, read whole (at most [`JSON_MAX`] bytes).
    pub fn read_json(&self, name: &str) -> Result<Vec<u8>> {
        let file = self.open_file(name)?;
        let mut data = Vec::new();
        file.take(JSON_MAX + 1)
            .read_to_end(&mut data)
            .map_err(|e| invalid(&self.source_name, format!("{}: read: {e}", shorten(name))))?;
        if data.len() as u64 > JSON_MAX {
            return Err(invalid(
                &self.source_name,
                format!("{} is larger than {JSON_MAX} bytes", shorten(name)),
            ));
        }
        Ok(data)
    }
}

/// Checks that every digest at `fields` of the JSON document `file` is a
/// sha256 digest, naming the field of the first that is not. A field is a
/// dotted path; `[]` goes through every element of an array
/// (`manifests[].digest`, `rootfs.diff_ids[]`). Missing fields are left to
/// the parser.
pub(super) fn check_digests(
    source_name: &str,
    file: &str,
    data: &[u8],
    fields: &[&str],
) -> Result<()> {
    let json: Value = serde_json::from_slice(data)
        .map_err(|e| invalid(source_name, format!("{file}: {}", shorten(&e.to_string()))))?;
    for field in fields {
        walk(&json, field, String::new(), &mut |at, value| {
            let bad = |why: String| invalid(source_name, format!("{file}: {at}: {why}"));
            match value.as_str() {
                Some(d) => digest_hex(d).map(|_| ()).map_err(|e| bad(e.to_string())),
                None => Err(bad("is not a string".into())),
            }
        })?;
    }
    Ok(())
}

fn walk(
    value: &Value,
    path: &str,
    at: String,
    check: &mut dyn FnMut(&str, &Value) -> Result<()>,
) -> Result<()> {
    if path.is_empty() {
        return check(&at, value);
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let sep = if at.is_empty() { "" } else { "." };
    match head.strip_suffix("[]") {
        Some(key) => {
            let Some(items) = value.get(key).and_then(Value::as_array) else {
                return Ok(());
            };
            for (i, item) in items.iter().enumerate() {
                walk(item, rest, format!("{at}{sep}{key}[{i}]"), check)?;
            }
            Ok(())
        }
        None => match value.get(head) {
            Some(v) => walk(v, rest, format!("{at}{sep}{head}"), check),
            None => Ok(()),
        },
    }
}

/// Parses a JSON member into an oci-spec type; the parser's message is
/// kept short, since it may quote the file.
pub(super) fn parse<T: serde::de::DeserializeOwned>(
    source_name: &str,
    file: &str,
    data: &[u8],
) -> Result<T> {
    serde_json::from_slice(data)
        .map_err(|e| invalid(source_name, format!("{file}: {}", shorten(&e.to_string()))))
}

/// An image config (`file` names it in errors), its diff_ids checked to be
/// sha256 digests, one for each of the manifest's `layers`.
pub(super) fn parse_config(
    source_name: &str,
    file: &str,
    data: &[u8],
    layers: usize,
) -> Result<oci_spec::image::ImageConfiguration> {
    check_digests(source_name, file, data, &["rootfs.diff_ids[]"])?;
    let config: oci_spec::image::ImageConfiguration = parse(source_name, file, data)?;
    let diff_ids = config.rootfs().diff_ids().len();
    if diff_ids != layers {
        return Err(invalid(
            source_name,
            format!("the manifest lists {layers} layers, its config {diff_ids} diff_ids"),
        ));
    }
    Ok(config)
}
