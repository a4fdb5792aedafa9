//! Bootable disks: a GPT disk with an EFI system partition (FAT32:
//! systemd-boot, the image's kernel and initramfs, one boot entry) and an
//! ext4 root partition made from the tree, for UEFI firmware (OVMF, cloud
//! hypervisors, an AMI import). Everything is written into one sparse image
//! file at offsets, by mkfs.ext4 -E offset, debugfs, mkfs.fat --offset and
//! mtools: no loop devices, no mounts, no privileges.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_sandbox::tool;
use uuid::Uuid;

use super::ExportError;
use super::boot::{self, Kernel};
use super::disk::{self, Ext4, MIB, Usage, round_up, sync_file, tool_error};
use super::gpt::{self, Partition, SECTOR};
use super::staging::{self, Staged, write_error};

/// The first partition starts at 1 MiB, as partitioning tools align it.
const FIRST_PARTITION: u64 = MIB / SECTOR;
/// The smallest EFI system partition: room for a few kernels, and enough
/// 512-byte clusters for FAT32, which UEFI firmware must read.
const MIN_ESP: u64 = 256 * MIB;
/// The boot entry's name on the ESP (`/loader/entries/kiln.conf`).
const ENTRY: &str = "kiln.conf";

/// A disk image's container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// The disk byte for byte (sparse).
    Raw,
    /// qcow2, converted from the raw disk by `qemu-img convert`.
    Qcow2,
}

/// How to make a bootable disk.
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// What errors and the boot menu call the tree (an image reference);
    /// the tree's path when None.
    pub name: Option<String>,
    /// Kernel parameters after kiln's own (`root=PARTUUID=… rw console=tty0
    /// console=ttyS0,115200`).
    pub kernel_options: Vec<String>,
}

/// What a bootable export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootableDisk {
    /// The disk's size as the machine sees it, in bytes.
    pub size: u64,
    /// The kernel release booted (`/boot/vmlinuz-VERSION`).
    pub kernel_version: String,
    /// The partition GUIDs (`PARTUUID=`), and the root filesystem's UUID.
    pub esp_partuuid: Uuid,
    pub root_partuuid: Uuid,
    pub root_fs_uuid: Uuid,
    /// The kernel command line of the boot entry.
    pub kernel_command_line: String,
}

/// Writes `rootfs` to `dest` as a bootable GPT disk for UEFI: partition 1
/// the EFI system partition with systemd-boot as the removable-media
/// loader (`\EFI\BOOT\BOOTX64.EFI`) and one entry booting the tree's newest
/// kernel and initramfs with `root=PARTUUID=` of partition 2, the ext4 root.
/// The disk's copy of the tree gets an `/etc/fstab` for both partitions
/// (other mounts in the tree's fstab are kept) and an empty
/// `/etc/machine-id`, so that each machine made from the disk gets its own;
/// the tree itself is not changed. The serial console (ttyS0, 115200) is the
/// system console, so a hypervisor's serial log shows the boot.
///
/// Fails with [`ExportError::NotBootable`], naming what to install, when
/// the tree has no kernel, initramfs or `/sbin/init`. Nothing is left at
/// `dest` when the export fails; an existing file is replaced atomically.
/// x86-64 only.
pub fn export_bootable(
    rootfs: &Path,
    dest: &Path,
    format: DiskFormat,
    options: &BootOptions,
) -> Result<BootableDisk, ExportError> {
    disk::check_rootfs(rootfs)?;
    staging::check_file_dest(dest)?;
    check_tool_safe_name(dest)?;
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| rootfs.display().to_string());
    let kernel = boot::find_kernel(rootfs, &name)?;
    boot::check_init(rootfs, &name)?;
    let loader = boot::find_loader(rootfs)?;
    tracing::info!(
        image = %name,
        kernel = %kernel.version,
        dest = %dest.display(),
        ?format,
        "exporting a bootable disk"
    );

    let usage = Usage::measure(rootfs)?;
    let layout = Layout::new(&usage, &kernel, &loader)?;
    let ids = Ids {
        disk: Uuid::new_v4(),
        esp: Uuid::new_v4(),
        root: Uuid::new_v4(),
        root_fs: Uuid::new_v4(),
    };
    let mut command_line = format!(
        "root=PARTUUID={} rw console=tty0 console=ttyS0,115200",
        ids.root
    );
    for option in &options.kernel_options {
        command_line.push(' ');
        command_line.push_str(option);
    }

    // Small files for the ESP and for debugfs, beside the destination.
    let files = Staged::dir(dest, ".boot")?;
    let raw = Staged::file(
        dest,
        if format == DiskFormat::Raw {
            ""
        } else {
            ".raw"
        },
    )?;
    let file = raw.create_file(dest)?;
    file.set_len(layout.sectors * SECTOR)
        .map_err(|e| write_error(dest, e))?;

    // The root filesystem first: mkfs may discard its whole range, so the
    // partition table and the ESP are written after it.
    Ext4 {
        usage,
        size: layout.root_bytes(),
        offset: layout.root_first * SECTOR,
        uuid: Some(ids.root_fs),
        label: "root",
    }
    .make(rootfs, raw.path(), dest)?;
    edit_root(rootfs, &raw, files.path(), &layout, &ids, dest)?;

    gpt::write(&file, layout.sectors, ids.disk, &layout.partitions(&ids))
        .map_err(|e| write_error(dest, e))?;
    drop(file);
    make_esp(
        &raw,
        files.path(),
        &layout,
        &ids,
        &kernel,
        &loader,
        &name,
        &command_line,
        dest,
    )?;
    sync_file(raw.path()).map_err(|e| write_error(dest, e))?;

    match format {
        DiskFormat::Raw => raw.commit(dest)?,
        DiskFormat::Qcow2 => {
            let qcow2 = Staged::file(dest, "")?;
            let mut convert = Command::new("qemu-img");
            convert
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(raw.path())
                .arg(qcow2.path());
            tool::run(&mut convert).map_err(|source| tool_error(dest, source))?;
            sync_file(qcow2.path()).map_err(|e| write_error(dest, e))?;
            qcow2.commit(dest)?;
        }
    }
    Ok(BootableDisk {
        size: layout.sectors * SECTOR,
        kernel_version: kernel.version,
        esp_partuuid: ids.esp,
        root_partuuid: ids.root,
        root_fs_uuid: ids.root_fs,
        kernel_command_line: command_line,
    })
}

struct Ids {
    disk: Uuid,
    esp: Uuid,
    root: Uuid,
    root_fs: Uuid,
}

/// Where the partitions go, in sectors: the ESP at 1 MiB, the root right
/// after it, 1 MiB at the end for the backup table; every partition starts
/// and ends on a MiB boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    esp_first: u64,
    root_first: u64,
    root_sectors: u64,
    sectors: u64,
}

impl Layout {
    fn new(usage: &Usage, kernel: &Kernel, loader: &Path) -> Result<Layout, ExportError> {
        let mut boot_files = 0;
        for path in [&kernel.kernel, &kernel.initrd, &loader.to_path_buf()] {
            let meta = fs::metadata(path).map_err(|source| ExportError::ReadRootfs {
                path: path.clone(),
                source,
            })?;
            boot_files += meta.len();
        }
        Ok(Layout::sized(
            esp_size(boot_files),
            round_up(usage.image_size(), MIB),
        ))
    }

    fn sized(esp_bytes: u64, root_bytes: u64) -> Layout {
        let esp_first = FIRST_PARTITION;
        let root_first = esp_first + esp_bytes / SECTOR;
        let root_sectors = root_bytes / SECTOR;
        Layout {
            esp_first,
            root_first,
            root_sectors,
            sectors: root_first + root_sectors + MIB / SECTOR,
        }
    }

    fn esp_sectors(&self) -> u64 {
        self.root_first - self.esp_first
    }

    fn root_bytes(&self) -> u64 {
        self.root_sectors * SECTOR
    }

    fn partitions(&self, ids: &Ids) -> [Partition; 2] {
        [
            Partition {
                type_guid: gpt::ESP_TYPE,
                guid: ids.esp,
                first: self.esp_first,
                last: self.root_first - 1,
                name: "ESP",
            },
            Partition {
                type_guid: gpt::ROOT_X86_64_TYPE,
                guid: ids.root,
                first: self.root_first,
                last: self.root_first + self.root_sectors - 1,
                name: "root",
            },
        ]
    }
}

/// Room for the boot files twice over (a second kernel fits beside the
/// first) and 32 MiB, at least [`MIN_ESP`], in whole MiB.
fn esp_size(boot_files: u64) -> u64 {
    round_up((2 * boot_files + 32 * MIB).max(MIN_ESP), MIB)
}

/// debugfs reads `FILE?offset=N` and mtools `FILE@@N`: a staged file
/// whose name holds either would be misread. The tools run in the
/// destination's directory, so only the file name matters.
fn check_tool_safe_name(dest: &Path) -> Result<(), ExportError> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
    match name {
        Some(n) if n.contains('?') || n.contains("@@") => Err(ExportError::InvalidDestination {
            dest: dest.to_owned(),
            reason: "a bootable disk's file name cannot contain ? or @@ (debugfs and mtools \
                     read them as options)",
        }),
        _ => Ok(()),
    }
}

/// The staged file's name and the directory to run tools in.
fn tool_path(staged: &Staged) -> (PathBuf, PathBuf) {
    let path = staged.path();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    (dir, PathBuf::from(path.file_name().unwrap_or_default()))
}

/// Gives the disk's copy of the tree its fstab, an ESP mount point and an
/// empty machine-id, with debugfs on the unmounted filesystem.
fn edit_root(
    rootfs: &Path,
    raw: &Staged,
    files: &Path,
    layout: &Layout,
    ids: &Ids,
    dest: &Path,
) -> Result<(), ExportError> {
    let existing = boot::resolve_in_root(rootfs, Path::new("/etc/fstab"));
    let old = existing
        .as_deref()
        .and_then(|p| fs::read_to_string(p).ok())
        .unwrap_or_default();
    let fstab = files.join("fstab");
    fs::write(&fstab, fstab_text(&old, ids)).map_err(|e| write_error(dest, e))?;
    let empty = files.join("empty");
    fs::write(&empty, b"").map_err(|e| write_error(dest, e))?;

    let mut script = String::new();
    let in_tree = |p: &str| fs::symlink_metadata(rootfs.join(p)).is_ok();
    if in_tree("etc/fstab") {
        script.push_str("rm /etc/fstab\n");
    }
    script.push_str(&write_file("fstab", "/etc/fstab", "0100644"));
    if !in_tree("boot/efi") {
        script.push_str("mkdir /boot/efi\n");
    }
    let machine_id = boot::resolve_in_root(rootfs, Path::new("/etc/machine-id"))
        .and_then(|p| fs::metadata(p).ok());
    if machine_id.is_some_and(|m| m.len() > 0) {
        script.push_str("rm /etc/machine-id\n");
        script.push_str(&write_file("empty", "/etc/machine-id", "0100444"));
    }

    // debugfs runs in the files' directory, which is the disk's sibling:
    // its commands name the files bare and the disk as `../NAME`.
    let (_, name) = tool_path(raw);
    let mut debugfs = Command::new("debugfs");
    debugfs
        .current_dir(files)
        .args(["-w", "-f", "-"])
        .arg(format!(
            "../{}?offset={}",
            name.display(),
            layout.root_first * SECTOR
        ));
    let output = tool::run_with_input(&mut debugfs, Some(script.as_bytes()))
        .map_err(|source| tool_error(dest, source))?;
    // debugfs exits 0 whatever its commands did; they say what failed on
    // stderr, after its version banner.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failures: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !failures.is_empty() {
        return Err(ExportError::EditRoot {
            dest: dest.to_owned(),
            script,
            errors: failures.join("\n"),
        });
    }
    Ok(())
}

/// debugfs commands writing the file `from` (in its working directory) as
/// `to`, owned by root.
fn write_file(from: &str, to: &str, mode: &str) -> String {
    format!("write {from} {to}\nsif {to} uid 0\nsif {to} gid 0\nsif {to} mode {mode}\n")
}

/// The disk's fstab: the root and ESP by partition GUID, then the tree's
/// own entries for other mount points.
fn fstab_text(old: &str, ids: &Ids) -> String {
    let mut text = format!(
        "# Written by kiln when it exported this bootable disk; entries for other\n\
         # mount points come from the image.\n\
         PARTUUID={} / ext4 errors=remount-ro 0 1\n\
         PARTUUID={} /boot/efi vfat umask=0077,nofail 0 2\n",
        ids.root, ids.esp
    );
    for line in old.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next();
        let mount_point = fields.next();
        let kept = match (first, mount_point) {
            (Some(f), Some(m)) => !f.starts_with('#') && m != "/" && m != "/boot/efi",
            _ => false,
        };
        if kept {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Makes the FAT32 ESP in its partition and fills it: the loader as the
/// removable-media default, loader.conf booting one entry at once, the
/// kernel and initramfs.
#[allow(clippy::too_many_arguments)]
fn make_esp(
    raw: &Staged,
    files: &Path,
    layout: &Layout,
    ids: &Ids,
    kernel: &Kernel,
    loader: &Path,
    name: &str,
    command_line: &str,
    dest: &Path,
) -> Result<(), ExportError> {
    let (dir, image) = tool_path(raw);
    // The volume ID is the ESP's partition GUID's first 32 bits, so it
    // differs from disk to disk like the GUID.
    let volume_id = format!("{:08x}", ids.esp.as_u128() >> 96);
    let mut mkfs = Command::new("mkfs.fat");
    mkfs.current_dir(&dir)
        .args([
            "-F", "32", "-s", "1", "-n", "ESP", "--mbr=n", "-i", &volume_id,
        ])
        .arg(format!("--offset={}", layout.esp_first))
        .arg("-h")
        .arg(layout.esp_first.to_string())
        .arg(&image)
        .arg((layout.esp_sectors() * SECTOR / 1024).to_string());
    tool::run(&mut mkfs).map_err(|source| tool_error(dest, source))?;

    let dir_name = format!("/kiln/{}", kernel.version);
    let loader_conf = files.join("loader.conf");
    fs::write(
        &loader_conf,
        format!(
            "# Written by kiln: boot {ENTRY} at once; hold a key for the menu.\n\
             default {ENTRY}\ntimeout 0\neditor no\n"
        ),
    )
    .map_err(|e| write_error(dest, e))?;
    let entry = files.join(ENTRY);
    fs::write(
        &entry,
        format!(
            "title {name}\nversion {version}\nlinux {dir_name}/linux\ninitrd {dir_name}/initrd\n\
             options {command_line}\n",
            version = kernel.version
        ),
    )
    .map_err(|e| write_error(dest, e))?;

    let target = format!("{}@@{}", image.display(), layout.esp_first * SECTOR);
    let mtools = |program: &str| {
        let mut cmd = Command::new(program);
        // mtools would refuse a FAT whose geometry it finds unusual.
        cmd.current_dir(&dir)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&target);
        cmd
    };
    let mut mkdirs = mtools("mmd");
    mkdirs.args([
        "::/EFI",
        "::/EFI/BOOT",
        "::/loader",
        "::/loader/entries",
        "::/kiln",
        &format!("::{dir_name}"),
    ]);
    tool::run(&mut mkdirs).map_err(|source| tool_error(dest, source))?;
    let copies: [(&Path, String); 5] = [
        (loader, "::/EFI/BOOT/BOOTX64.EFI".to_owned()),
        (&kernel.kernel, format!("::{dir_name}/linux")),
        (&kernel.initrd, format!("::{dir_name}/initrd")),
        (&loader_conf, "::/loader/loader.conf".to_owned()),
        (&entry, format!("::/loader/entries/{ENTRY}")),
    ];
    for (from, to) in copies {
        let mut copy = mtools("mcopy");
        copy.arg(from).arg(to);
        tool::run(&mut copy).map_err(|source| tool_error(dest, source))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_mib_aligned_and_leave_room_for_the_backup_table() {
        let layout = Layout::sized(esp_size(60 * MIB), 700 * MIB);
        assert_eq!(layout.esp_first * SECTOR, MIB);
        assert_eq!(layout.esp_sectors() * SECTOR, 256 * MIB);
        assert_eq!((layout.root_first * SECTOR) % MIB, 0);
        assert_eq!(layout.root_bytes(), 700 * MIB);
        assert_eq!((layout.sectors * SECTOR) % MIB, 0);
        let ids = Ids {
            disk: Uuid::new_v4(),
            esp: Uuid::new_v4(),
            root: Uuid::new_v4(),
            root_fs: Uuid::new_v4(),
        };
        let [_, root] = layout.partitions(&ids);
        assert!(root.last <= gpt::last_usable(layout.sectors));
    }

    #[test]
    fn big_kernels_get_a_bigger_esp() {
        assert_eq!(esp_size(10 * MIB), MIN_ESP);
        assert_eq!(esp_size(200 * MIB), 432 * MIB);
    }

    #[test]
    fn fstab_keeps_the_images_other_mounts() {
        let ids = Ids {
            disk: Uuid::nil(),
            esp: Uuid::from_u128(1),
            root: Uuid::from_u128(2),
            root_fs: Uuid::nil(),
        };
        let old = "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n/dev/sda1 / ext4 defaults 0 1\n\
                   tmpfs /tmp tmpfs defaults 0 0\n";
        let text = fstab_text(old, &ids);
        assert!(
            text.contains(&format!("PARTUUID={} / ext4", ids.root)),
            "{text}"
        );
        assert!(
            text.contains(&format!("PARTUUID={} /boot/efi vfat", ids.esp)),
            "{text}"
        );
        assert!(text.contains("tmpfs /tmp tmpfs"), "{text}");
        assert!(
            !text.contains("/dev/sda1") && !text.contains("UNCONFIGURED"),
            "{text}"
        );
    }

    #[test]
    fn names_that_debugfs_or_mtools_would_misread_are_refused() {
        assert!(check_tool_safe_name(Path::new("/x/disk?.raw")).is_err());
        assert!(check_tool_safe_name(Path::new("/x/a@@b.raw")).is_err());
        check_tool_safe_name(Path::new("/x@@/disk.raw")).unwrap();
    }
}
