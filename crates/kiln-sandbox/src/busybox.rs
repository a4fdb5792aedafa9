//! A minimal root filesystem assembled offline from the host's static
//! busybox: the `busybox` parent image, ready in milliseconds and without
//! a network.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::rootfs::{Root, RootError};
use crate::tool::{self, ToolError};

const CANDIDATES: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// Directories of the root and their modes; the temporary ones are
/// world-writable with the sticky bit, as every program expects.
const DIRS: &[(&str, u32)] = &[
    ("/bin", 0o755),
    ("/sbin", 0o755),
    ("/usr/bin", 0o755),
    ("/usr/sbin", 0o755),
    ("/etc", 0o755),
    ("/root", 0o700),
    ("/tmp", 0o1777),
    ("/var/tmp", 0o1777),
    ("/proc", 0o555),
    ("/dev", 0o755),
    ("/sys", 0o555),
    ("/run", 0o755),
    ("/home", 0o755),
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nusers:x:100:\nnogroup:x:65534:\n";

#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error(
        "busybox not found at /bin/busybox or /usr/bin/busybox: \
         install the Debian package busybox-static"
    )]
    NotFound,
    #[error(
        "host busybox {path} {reason}, so it cannot run inside an empty root: \
         install the Debian package busybox-static"
    )]
    NotStatic { path: PathBuf, reason: &'static str },
    #[error("read host busybox {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("create root directory {path}: {error}")]
    CreateDest {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} --list-full printed no applets")]
    NoApplets { path: PathBuf },
    #[error("{0}")]
    Root(#[from] RootError),
    #[error("{0}")]
    Tool(#[from] ToolError),
}

/// The host's busybox binary.
pub fn find() -> Result<PathBuf, BusyboxError> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(BusyboxError::NotFound)
}

/// Whether an ELF image asks for a program interpreter (the dynamic
/// loader); a static binary, including static-pie, has no PT_INTERP.
fn elf_interpreter(bytes: &[u8]) -> Result<bool, &'static str> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("is not an ELF executable");
    }
    let little = bytes[5] == 1;
    let uint = |off: usize, len: usize| -> Option<u64> {
        let b = bytes.get(off..off + len)?;
        let mut v: u64 = 0;
        for i in 0..len {
            let byte = if little { b[len - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    let (phoff, phentsize, phnum) = if bytes[4] == 2 {
        (uint(0x20, 8), uint(0x36, 2), uint(0x38, 2))
    } else {
        (uint(0x1c, 4), uint(0x2a, 2), uint(0x2c, 2))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err("has a truncated ELF header");
    };
    for i in 0..phnum {
        let off = usize::try_from(phoff + i * phentsize).map_err(|_| "has a bad ELF header")?;
        match uint(off, 4) {
            Some(t) if t == u64::from(PT_INTERP) => return Ok(true),
            Some(_) => {}
            None => return Err("has a truncated ELF header"),
        }
    }
    Ok(false)
}

/// `BusyBox v1.35.0 (Debian ...) multi-call binary.` -> `1.35.0`
fn parse_version(help: &str) -> Option<String> {
    let first = help.lines().next()?;
    let word = first.split_whitespace().find(|w| w.starts_with('v'))?;
    let version = word.trim_start_matches('v');
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_owned())
}

/// Builds a root filesystem at `dest` (created if missing) from the host's
/// static busybox. Running it again over the same directory is harmless.
pub fn assemble(dest: &Path) -> Result<(), BusyboxError> {
    let host = find()?;
    let binary = std::fs::read(&host).map_err(|error| BusyboxError::Read {
        path: host.clone(),
        error,
    })?;
    match elf_interpreter(&binary) {
        Ok(false) => {}
        Ok(true) => {
            return Err(BusyboxError::NotStatic {
                path: host,
                reason: "is dynamically linked",
            });
        }
        Err(reason) => return Err(BusyboxError::NotStatic { path: host, reason }),
    }
    std::fs::create_dir_all(dest).map_err(|error| BusyboxError::CreateDest {
        path: dest.to_owned(),
        error,
    })?;
    let root = Root::open(dest)?;
    for (dir, mode) in DIRS {
        root.create_dir_all(dir, 0o755)?;
        root.chmod(dir, *mode)?;
    }
    // A copy, never a hard link: a process in the sandbox may write to its
    // /bin/busybox and must not change the host's.
    root.write("/bin/busybox", &binary, 0o755, false)?;
    root.chmod("/bin/busybox", 0o755)?;

    let list = tool::run(Command::new(&host).arg("--list-full"))?;
    let list = String::from_utf8_lossy(&list.stdout);
    let mut applets = 0;
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let link = format!("/{}", line.trim_start_matches('/'));
        if link == "/bin/busybox" || root.lstat(&link)?.is_some() {
            continue;
        }
        if let Some((parent, _)) = link.rsplit_once('/')
            && !parent.is_empty()
        {
            root.create_dir_all(parent, 0o755)?;
        }
        root.symlink("/bin/busybox", &link)?;
        applets += 1;
    }
    if applets == 0 && root.lstat("/bin/sh")?.is_none() {
        return Err(BusyboxError::NoApplets { path: host });
    }

    let help = tool::run(Command::new(&host).arg("--help"))?;
    let version = parse_version(&String::from_utf8_lossy(&help.stdout))
        .unwrap_or_else(|| "unknown".to_owned());
    let os_release = format!(
        "NAME=BusyBox\nID=busybox\nVERSION_ID={version}\nPRETTY_NAME=\"BusyBox {version}\"\n"
    );
    root.write("/etc/passwd", PASSWD.as_bytes(), 0o644, false)?;
    root.write("/etc/group", GROUP.as_bytes(), 0o644, false)?;
    root.write("/etc/hostname", b"busybox\n", 0o644, false)?;
    root.write("/etc/os-release", os_release.as_bytes(), 0o644, false)?;
    tracing::debug!(dest = %dest.display(), applets, version, "assembled busybox root");
    Ok(())
}

/// Copies a dynamically linked host program into `root` with every
/// library `ldd` says it loads, each at its own path (a symlinked name and
/// its target both), so that a busybox root can run a host tool such as
/// bash. Files already in the root stay as they are.
pub fn add_host_program(root: &Path, program: &Path) -> std::io::Result<()> {
    let out = Command::new("ldd").arg(program).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut files = vec![program.to_path_buf()];
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)".
        let path = line
            .split("=>")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    for file in files {
        let real = std::fs::canonicalize(&file)?;
        for name in [&file, &real] {
            let relative = name.strip_prefix("/").unwrap_or(name);
            let dest = root.join(relative);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if std::fs::symlink_metadata(&dest).is_err() {
                std::fs::copy(&real, &dest)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::Kind;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn assembles_a_shell_without_bash() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("rootfs");
        assemble(&dest).unwrap();
        let root = Root::open(&dest).unwrap();
        assert_eq!(root.lstat("/bin/sh").unwrap().unwrap().kind, Kind::Symlink);
        assert_eq!(root.read_link("/bin/sh").unwrap(), "/bin/busybox");
        assert!(root.lstat("/bin/bash").unwrap().is_none());
        assert_eq!(root.stat("/tmp").unwrap().unwrap().mode, 0o1777);
        assert_eq!(root.stat("/var/tmp").unwrap().unwrap().mode, 0o1777);
        let passwd = String::from_utf8(root.read("/etc/passwd").unwrap()).unwrap();
        assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/sh\n"));
        let os = String::from_utf8(root.read("/etc/os-release").unwrap()).unwrap();
        assert!(os.contains("ID=busybox\n"), "{os}");
        assert!(!os.contains("VERSION_ID=unknown"), "{os}");

        let copy = std::fs::metadata(dest.join("bin/busybox")).unwrap();
        let host = std::fs::metadata(find().unwrap()).unwrap();
        assert_ne!((copy.dev(), copy.ino()), (host.dev(), host.ino()));
        assert_eq!(copy.len(), host.len());

        // Idempotent over an existing root.
        assemble(&dest).unwrap();
    }

    #[test]
    fn elf_check_tells_static_from_dynamic() {
        let static_bb = std::fs::read(find().unwrap()).unwrap();
        assert_eq!(elf_interpreter(&static_bb), Ok(false));
        // Rust test binaries link the C library dynamically.
        let dynamic = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_interpreter(&dynamic), Ok(true));
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn version_is_parsed_from_the_banner() {
        assert_eq!(
            parse_version("BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\n"),
            Some("1.35.0".to_owned())
        );
        assert_eq!(parse_version("no banner"), None);
    }
}
