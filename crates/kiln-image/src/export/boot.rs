//! What a root filesystem tree needs to boot from a disk, found inside the
//! tree: the newest kernel that has an initramfs, an init, and a UEFI boot
//! loader (the image's own systemd-boot, else the host's).

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::ExportError;

/// Where Debian's systemd-boot-efi puts the x86-64 loader, in an image or
/// on the host.
pub(super) const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The kernel and initramfs to boot, as paths on the host (inside the tree,
/// symbolic links already followed within it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Kernel {
    pub version: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The newest kernel in `/boot` that has an initramfs: Debian's and
/// Ubuntu's `vmlinuz-VERSION` with `initrd.img-VERSION`, or dracut's
/// `initramfs-VERSION.img` (Fedora, RHEL). `name` is what errors call the
/// tree (the image's reference).
pub(super) fn find_kernel(rootfs: &Path, name: &str) -> Result<Kernel, ExportError> {
    let no_kernel = || ExportError::NotBootable {
        image: name.to_owned(),
        missing: "no kernel (/boot/vmlinuz-*)".to_owned(),
        remedy: "install one in a component, e.g. Debian's linux-image-amd64 \
                 or, for virtual machines only, linux-image-cloud-amd64 \
                 (with initramfs-tools and systemd-sysv)",
    };
    let Some(boot) = resolve_in_root(rootfs, Path::new("/boot")).filter(|p| p.is_dir()) else {
        return Err(no_kernel());
    };
    let mut versions = Vec::new();
    for entry in read_dir(&boot)? {
        let file_name = entry.to_string_lossy();
        if let Some(version) = file_name.strip_prefix("vmlinuz-")
            && !version.is_empty()
        {
            versions.push(version.to_owned());
        }
    }
    // Newest first; the first with both files wins.
    versions.sort_by(|a, b| compare_versions(b, a));
    let mut without_initrd = None;
    for version in versions {
        let kernel = resolve_in_root(
            rootfs,
            &Path::new("/boot").join(format!("vmlinuz-{version}")),
        )
        .filter(|p| p.is_file());
        let Some(kernel) = kernel else { continue };
        let initrd = [
            format!("initrd.img-{version}"),
            format!("initramfs-{version}.img"),
        ]
        .iter()
        .find_map(|f| resolve_in_root(rootfs, &Path::new("/boot").join(f)).filter(|p| p.is_file()));
        match initrd {
            Some(initrd) => {
                return Ok(Kernel {
                    version,
                    kernel,
                    initrd,
                });
            }
            None => {
                without_initrd.get_or_insert(version);
            }
        }
    }
    match without_initrd {
        Some(version) => Err(ExportError::NotBootable {
            image: name.to_owned(),
            missing: format!("kernel {version} has no initramfs (/boot/initrd.img-{version})"),
            remedy: "install an initramfs generator in the same component as the kernel, \
                     e.g. Debian's initramfs-tools, so that the kernel package makes one",
        }),
        None => Err(no_kernel()),
    }
}

/// `/sbin/init` must lead to an executable file: the kernel starts it, and
/// with none the machine panics after the initramfs.
pub(super) fn check_init(rootfs: &Path, name: &str) -> Result<(), ExportError> {
    let executable = resolve_in_root(rootfs, Path::new("/sbin/init"))
        .and_then(|p| fs::metadata(p).ok())
        .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if executable {
        Ok(())
    } else {
        Err(ExportError::NotBootable {
            image: name.to_owned(),
            missing: "no init (/sbin/init)".to_owned(),
            remedy: "install one in a component, e.g. Debian's systemd-sysv",
        })
    }
}

/// The UEFI boot loader to install: the image's systemd-boot when it has
/// one (it then matches the image's systemd), else the host's.
pub(super) fn find_loader(rootfs: &Path) -> Result<PathBuf, ExportError> {
    if let Some(own) = resolve_in_root(rootfs, &Path::new("/").join(SYSTEMD_BOOT))
        && own.is_file()
    {
        return Ok(own);
    }
    let host = Path::new("/").join(SYSTEMD_BOOT);
    if host.is_file() {
        return Ok(host);
    }
    Err(ExportError::HostLacks {
        what: format!("systemd-boot's UEFI loader /{SYSTEMD_BOOT}"),
        remedy: "install Debian's systemd-boot-efi on the host (apt-get install systemd-boot-efi), \
                 or in the image",
    })
}

/// `path` (absolute, as the image sees it) as a host path inside
/// `rootfs`, following symbolic links the way the booted machine would:
/// absolute targets start again at the tree's root, and `..` never leaves
/// it. None when a component is missing or the links loop.
pub(super) fn resolve_in_root(rootfs: &Path, path: &Path) -> Option<PathBuf> {
    const MAX_LINKS: usize = 40;
    let mut links = 0;
    // The components still to walk, in reverse order so that a link's
    // target can be pushed in front of the rest.
    let mut pending: Vec<OsString> = components(path).into_iter().rev().collect();
    let mut resolved: Vec<OsString> = Vec::new();
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut host = rootfs.to_path_buf();
        host.extend(&resolved);
        host.push(&part);
        let meta = fs::symlink_metadata(&host).ok()?;
        if !meta.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return None;
        }
        let target = fs::read_link(&host).ok()?;
        if target.is_absolute() {
            resolved.clear();
        }
        pending.extend(components(&target).into_iter().rev());
    }
    let mut host = rootfs.to_path_buf();
    host.extend(&resolved);
    Some(host)
}

/// Normal components and `..`; `/` and `.` say nothing here.
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

fn read_dir(dir: &Path) -> Result<Vec<OsString>, ExportError> {
    let read_error = |source: io::Error| ExportError::ReadRootfs {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        names.push(entry.map_err(read_error)?.file_name());
    }
    Ok(names)
}

/// Kernel versions compared the way people read them: runs of digits as
/// numbers, everything else as text ("6.1.0-10" after "6.1.0-9").
pub(super) fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (runs(a), runs(b));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u128>(), y.parse::<u128>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// The maximal runs of digits and of non-digits in `s`.
fn runs(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let digit = first.is_ascii_digit();
        let end = rest
            .find(|c: char| c.is_ascii_digit() != digit)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn touch(path: &Path, mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(
            compare_versions("6.1.0-10-amd64", "6.1.0-9-amd64"),
            Ordering::Greater
        );
        assert_eq!(compare_versions("5.10.0-28", "6.1.0-1"), Ordering::Less);
        assert_eq!(compare_versions("6.1.0", "6.1.0"), Ordering::Equal);
        assert_eq!(compare_versions("6.1.0-1", "6.1.0"), Ordering::Greater);
    }

    #[test]
    fn the_newest_kernel_with_an_initramfs_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("boot/vmlinuz-6.1.0-9-amd64"), 0o600);
        touch(&root.join("boot/initrd.img-6.1.0-9-amd64"), 0o644);
        touch(&root.join("boot/vmlinuz-6.1.0-10-amd64"), 0o600);
        touch(&root.join("boot/initrd.img-6.1.0-10-amd64"), 0o644);
        // Newest, but without an initramfs.
        touch(&root.join("boot/vmlinuz-6.1.0-11-amd64"), 0o600);
        let k = find_kernel(root, "web/1.0.0/1").unwrap();
        assert_eq!(k.version, "6.1.0-10-amd64");
        assert_eq!(k.kernel, root.join("boot/vmlinuz-6.1.0-10-amd64"));
        assert_eq!(k.initrd, root.join("boot/initrd.img-6.1.0-10-amd64"));
    }

    #[test]
    fn missing_pieces_are_named_with_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("boot")).unwrap();
        let e = find_kernel(root, "web/1.0.0/1").unwrap_err().to_string();
        assert!(
            e.contains("web/1.0.0/1") && e.contains("linux-image-amd64"),
            "{e}"
        );
        touch(&root.join("boot/vmlinuz-6.1.0-9-amd64"), 0o600);
        let e = find_kernel(root, "web/1.0.0/1").unwrap_err().to_string();
        assert!(
            e.contains("6.1.0-9-amd64") && e.contains("initramfs-tools"),
            "{e}"
        );
        let e = check_init(root, "web/1.0.0/1").unwrap_err().to_string();
        assert!(
            e.contains("/sbin/init") && e.contains("systemd-sysv"),
            "{e}"
        );
    }

    #[test]
    fn init_is_found_through_absolute_links_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Debian's merged /usr: /sbin -> usr/sbin, init -> /lib/systemd/systemd.
        touch(&root.join("usr/lib/systemd/systemd"), 0o755);
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        symlink("usr/sbin", root.join("sbin")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/lib/systemd/systemd", root.join("usr/sbin/init")).unwrap();
        check_init(root, "x").unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/sbin/init")).unwrap(),
            root.join("usr/lib/systemd/systemd")
        );
    }

    #[test]
    fn links_never_leave_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("sbin")).unwrap();
        touch(&dir.path().join("outside"), 0o755);
        symlink("../../outside", root.join("sbin/init")).unwrap();
        // The executable beside the tree is not reached: `..` stops at
        // the tree's root, where there is no `outside`.
        assert!(resolve_in_root(&root, Path::new("/sbin/init")).is_none());
        assert!(check_init(&root, "x").is_err());
        touch(&root.join("outside"), 0o755);
        assert_eq!(
            resolve_in_root(&root, Path::new("/sbin/init")).unwrap(),
            root.join("outside")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(&root, Path::new("/loop")).is_none());
    }
}
