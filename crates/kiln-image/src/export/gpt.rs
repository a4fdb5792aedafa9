//! A GUID partition table written straight into a disk image file: the
//! protective MBR, the primary header and entry array at the start, their
//! backups at the end (UEFI 2.10, section 5). Written by kiln rather than by
//! sfdisk so that a bootable export needs no partitioning tool and the
//! partition GUIDs that the kernel command line names are chosen here.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use uuid::Uuid;

/// Logical block size of the images kiln writes.
pub(super) const SECTOR: u64 = 512;
/// Entries in the array: the minimum the specification allows, and what
/// every partitioning tool writes.
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors the entry array takes (16 KiB).
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
const HEADER_SIZE: usize = 92;

/// The EFI system partition.
pub(super) const ESP_TYPE: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
/// Root partition for x86-64 from the Discoverable Partitions
/// Specification: systemd's gpt-auto generator and image tools recognise
/// it, and everything else treats it as a Linux filesystem.
pub(super) const ROOT_X86_64_TYPE: Uuid = Uuid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709);

/// One partition: sectors `first..=last`.
#[derive(Debug, Clone)]
pub(super) struct Partition {
    pub type_guid: Uuid,
    pub guid: Uuid,
    pub first: u64,
    pub last: u64,
    pub name: &'static str,
}

/// The first sector a partition may use: after the MBR, the header and the
/// entry array.
pub(super) const fn first_usable() -> u64 {
    2 + ENTRY_SECTORS
}

/// The last sector a partition may use on a disk of `sectors` sectors:
/// before the backup entry array and header.
pub(super) const fn last_usable(sectors: u64) -> u64 {
    sectors - 2 - ENTRY_SECTORS
}

/// Writes the protective MBR, both headers and both entry arrays of a disk
/// of `sectors` sectors into `file`. Partitions must lie within
/// [`first_usable`]..=[`last_usable`] and not overlap (checked).
pub(super) fn write(
    file: &File,
    sectors: u64,
    disk_guid: Uuid,
    partitions: &[Partition],
) -> io::Result<()> {
    check(sectors, partitions)?;
    let entries = entry_array(partitions);
    let entries_crc = crc32fast::hash(&entries);
    let last = sectors - 1;
    let primary = header(1, last, 2, sectors, disk_guid, entries_crc);
    let backup_entries = last - ENTRY_SECTORS;
    let backup = header(last, 1, backup_entries, sectors, disk_guid, entries_crc);
    file.write_all_at(&protective_mbr(sectors), 0)?;
    file.write_all_at(&primary, SECTOR)?;
    file.write_all_at(&entries, 2 * SECTOR)?;
    file.write_all_at(&entries, backup_entries * SECTOR)?;
    file.write_all_at(&backup, last * SECTOR)?;
    Ok(())
}

fn check(sectors: u64, partitions: &[Partition]) -> io::Result<()> {
    let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
    if sectors < first_usable() + ENTRY_SECTORS + 2 {
        return invalid(format!("a disk of {sectors} sectors cannot hold a GPT"));
    }
    let mut sorted: Vec<&Partition> = partitions.iter().collect();
    sorted.sort_by_key(|p| p.first);
    let mut next_free = first_usable();
    for p in sorted {
        if p.first < next_free || p.last < p.first || p.last > last_usable(sectors) {
            return invalid(format!(
                "partition {} (sectors {}..={}) does not fit on a disk of {sectors} sectors \
                 or overlaps another",
                p.name, p.first, p.last
            ));
        }
        next_free = p.last + 1;
    }
    if partitions.len() as u64 > ENTRIES {
        return invalid(format!(
            "{} partitions is more than a GPT holds",
            partitions.len()
        ));
    }
    Ok(())
}

/// One MBR partition of type 0xEE covering the disk (or as much as 32-bit
/// sector numbers reach), so that MBR-only tools see the disk as in use.
fn protective_mbr(sectors: u64) -> [u8; SECTOR as usize] {
    let mut mbr = [0u8; SECTOR as usize];
    let entry = &mut mbr[446..462];
    // Boot indicator 0; CHS of the start sector 1 is 0/0/2.
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    entry[4] = 0xEE;
    // The end CHS is beyond what CHS can say.
    entry[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    entry[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

fn header(
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    sectors: u64,
    disk_guid: Uuid,
    entries_crc: u32,
) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    // 16..20: the header's CRC, computed over the header with it zeroed;
    // 20..24 reserved.
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&first_usable().to_le_bytes());
    h[48..56].copy_from_slice(&last_usable(sectors).to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.to_bytes_le());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_SIZE]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn entry_array(partitions: &[Partition]) -> Vec<u8> {
    let mut array = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (p, e) in partitions
        .iter()
        .zip(array.chunks_exact_mut(ENTRY_SIZE as usize))
    {
        // GUIDs are stored with their first three fields little-endian.
        e[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
        e[16..32].copy_from_slice(&p.guid.to_bytes_le());
        e[32..40].copy_from_slice(&p.first.to_le_bytes());
        e[40..48].copy_from_slice(&p.last.to_le_bytes());
        // 48..56: attributes, none. The name is UTF-16LE, 36 code units.
        for (i, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }
    array
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_partitions(sectors: u64) -> Vec<Partition> {
        vec![
            Partition {
                type_guid: ESP_TYPE,
                guid: Uuid::new_v4(),
                first: 2048,
                last: 4095,
                name: "ESP",
            },
            Partition {
                type_guid: ROOT_X86_64_TYPE,
                guid: Uuid::new_v4(),
                first: 4096,
                last: last_usable(sectors),
                name: "root",
            },
        ]
    }

    #[test]
    fn headers_carry_valid_crcs_and_point_at_each_other() {
        let sectors = 8192;
        let file = tempfile::tempfile().unwrap();
        file.set_len(sectors * SECTOR).unwrap();
        let disk = Uuid::new_v4();
        write(&file, sectors, disk, &two_partitions(sectors)).unwrap();
        let read = |lba: u64| {
            let mut b = vec![0u8; SECTOR as usize];
            file.read_exact_at(&mut b, lba * SECTOR).unwrap();
            b
        };
        let mbr = read(0);
        assert_eq!(mbr[450], 0xEE);
        assert_eq!(&mbr[510..], &[0x55, 0xAA]);
        for (lba, alternate, entries_lba) in [(1, sectors - 1, 2), (sectors - 1, 1, sectors - 33)] {
            let mut h = read(lba);
            assert_eq!(&h[0..8], b"EFI PART");
            assert_eq!(u64::from_le_bytes(h[24..32].try_into().unwrap()), lba);
            assert_eq!(u64::from_le_bytes(h[32..40].try_into().unwrap()), alternate);
            assert_eq!(
                u64::from_le_bytes(h[72..80].try_into().unwrap()),
                entries_lba
            );
            assert_eq!(&h[56..72], &disk.to_bytes_le());
            let stored = u32::from_le_bytes(h[16..20].try_into().unwrap());
            h[16..20].fill(0);
            assert_eq!(crc32fast::hash(&h[..HEADER_SIZE]), stored);
            let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
            file.read_exact_at(&mut entries, entries_lba * SECTOR)
                .unwrap();
            assert_eq!(
                crc32fast::hash(&entries),
                u32::from_le_bytes(h[88..92].try_into().unwrap())
            );
            assert_eq!(&entries[0..16], &ESP_TYPE.to_bytes_le());
            // "ESP" in UTF-16LE
            assert_eq!(&entries[56..62], &[b'E', 0, b'S', 0, b'P', 0]);
        }
    }

    #[test]
    fn overlapping_or_outlying_partitions_are_refused() {
        let sectors = 8192;
        let file = tempfile::tempfile().unwrap();
        let mut parts = two_partitions(sectors);
        parts[1].first = 4000;
        assert!(write(&file, sectors, Uuid::new_v4(), &parts).is_err());
        let mut parts = two_partitions(sectors);
        parts[1].last = sectors - 1;
        assert!(write(&file, sectors, Uuid::new_v4(), &parts).is_err());
        let mut parts = two_partitions(sectors);
        parts[0].first = 1;
        assert!(write(&file, sectors, Uuid::new_v4(), &parts).is_err());
    }
}
