//! The disk's GPT (UEFI 2.10 §5.3): protective MBR, primary header and entries at the front,
//! backup entries and header at the end, 128 entries of 128 bytes.
//!
//! Written so that a disk whose writer died at any point has no table a firmware, a kernel or
//! `sfdisk` acts on (as coreos-installer writes the first MiB last): [`prepare`] first zeroes
//! the protective MBR and the primary header (everything that reads GPT looks for the
//! protective MBR first, and UEFI falls back to the backup header only when it finds one), then
//! writes both entry arrays and the backup header; [`PreparedTable::commit`] writes the primary
//! header and then the protective MBR, each synced before the next. Between the two the disk's
//! partitions can be filled (filesystems, bootloader): an install that dies leaves no table.
//!
//! Sizes and addresses are in the disk's logical sectors: 512 bytes for images, the device's
//! own (512 or 4096) for block devices. On a 4096-byte disk the header is at byte 4096 and the
//! entries take 4 sectors; the protective MBR is always the first 512 bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use anyhow::{ensure, Context, Result};

use super::layout::Plan;

/// An image file's sector size, and the protective MBR's size on any disk.
pub const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const HEADER_SIZE: usize = 92;
/// Where the MBR's partition entries start; bytes before it (boot code) are the bootloader's.
const MBR_PARTITIONS: usize = 446;

/// The disk a table is written for: its size in bytes and its logical sector size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub size: u64,
    pub sector: u64,
}

impl Geometry {
    fn sectors(&self) -> u64 {
        self.size / self.sector
    }
    /// Sectors the entry array takes (32 of 512 bytes, 4 of 4096).
    fn entry_sectors(&self) -> u64 {
        (ENTRIES * ENTRY_SIZE).div_ceil(self.sector)
    }
}

/// What the table is written on: an image file or a block device. Each call is a step a crash
/// can stop after.
pub trait Device {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn sync(&self) -> io::Result<()>;
}

impl Device for File {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

/// A table whose entries and backup are on the disk, but not yet its primary header and
/// protective MBR: until [`PreparedTable::commit`], the disk has no partition table.
#[must_use = "the disk has no partition table until the prepared one is committed"]
pub struct PreparedTable<'a, D: Device + ?Sized> {
    device: &'a D,
    geometry: Geometry,
    primary: Vec<u8>,
    /// The protective MBR's partition entry and signature (bytes 446..512).
    mbr_tail: [u8; SECTOR as usize - MBR_PARTITIONS],
}

/// Writes everything of `plan`'s GPT but the primary header and protective MBR, after zeroing
/// those (so an older table on the device stops counting first).
pub fn prepare<'a, D: Device + ?Sized>(device: &'a D, plan: &Plan, geometry: Geometry) -> Result<PreparedTable<'a, D>> {
    prepare_entries(device, geometry, &plan.disk_guid, &entry_array(plan, geometry.sector)?, true)
}

/// `clear`: zero the protective MBR and primary header first (false when a preparation did
/// already, and a bootloader may have written its boot code before the MBR's entries since).
fn prepare_entries<'a, D: Device + ?Sized>(device: &'a D, geometry: Geometry, disk_guid: &str, entries: &[u8], clear: bool) -> Result<PreparedTable<'a, D>> {
    let Geometry { sector, .. } = geometry;
    ensure!(sector == 512 || sector == 4096, "a logical sector size of {sector} bytes is not supported (512 or 4096)");
    let sectors = geometry.sectors();
    let entry_sectors = geometry.entry_sectors();
    ensure!(sectors > 2 * (entry_sectors + 1) + 1, "a disk of {} bytes is too small for a GPT", geometry.size);
    let last = sectors - 1;
    let entries_crc = crc32(entries);
    let guid = guid_bytes(disk_guid)?;
    let header = |my_lba: u64, alternate: u64, entries_lba: u64| {
        let mut h = vec![0u8; sector as usize];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        for (at, v) in [(24, my_lba), (32, alternate), (40, 2 + entry_sectors), (48, last - entry_sectors - 1), (72, entries_lba)] {
            h[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        h[56..72].copy_from_slice(&guid);
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        seal_header(&mut h);
        h
    };
    let primary = header(1, last, 2);
    let backup = header(last, 1, last - entry_sectors);
    let mut padded = entries.to_vec();
    padded.resize((entry_sectors * sector) as usize, 0);

    let step = |what: &str, r: io::Result<()>| r.with_context(|| format!("writing the partition table: {what}"));
    if clear {
        step("clearing the protective MBR and primary header", device.write_at(&vec![0u8; 2 * sector as usize], 0))?;
        step("syncing", device.sync())?;
    }
    step("primary entries", device.write_at(&padded, 2 * sector))?;
    step("backup entries", device.write_at(&padded, (last - entry_sectors) * sector))?;
    step("backup header", device.write_at(&backup, last * sector))?;
    step("syncing", device.sync())?;

    let mut mbr_tail = [0u8; SECTOR as usize - MBR_PARTITIONS];
    // One partition of type EE from LBA 1 over the whole disk (capped at 2^32-1 sectors).
    mbr_tail[..16].copy_from_slice(&[0x00, 0x00, 0x02, 0x00, 0xee, 0xff, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0, 0, 0, 0]);
    mbr_tail[12..16].copy_from_slice(&((sectors - 1).min(u32::MAX as u64) as u32).to_le_bytes());
    mbr_tail[64..66].copy_from_slice(&[0x55, 0xaa]);
    Ok(PreparedTable { device, geometry, primary, mbr_tail })
}

impl<'a, D: Device + ?Sized> PreparedTable<'a, D> {
    /// The same disk, grown to `plan.size` (its last partition grew): the table prepared again
    /// for that size, still uncommitted. The device must be that large already.
    pub fn regrown(self, plan: &Plan) -> Result<PreparedTable<'a, D>> {
        let geometry = Geometry { size: plan.size, sector: self.geometry.sector };
        prepare_entries(self.device, geometry, &plan.disk_guid, &entry_array(plan, geometry.sector)?, false)
    }

    /// Writes the primary header, then the protective MBR (keeping the boot code a BIOS
    /// bootloader put before it): from here on the disk has its table.
    pub fn commit(self) -> Result<()> {
        let step = |what: &str, r: io::Result<()>| r.with_context(|| format!("writing the partition table: {what}"));
        step("primary header", self.device.write_at(&self.primary, self.geometry.sector))?;
        step("syncing", self.device.sync())?;
        step("protective MBR", self.device.write_at(&self.mbr_tail, MBR_PARTITIONS as u64))?;
        step("syncing", self.device.sync())
    }
}

/// Writes `plan`'s whole GPT in the safe order.
pub fn write<D: Device + ?Sized>(device: &D, plan: &Plan, geometry: Geometry) -> Result<()> {
    prepare(device, plan, geometry)?.commit()
}

/// Leaves `device` with an empty GPT (a new disk GUID, no partitions) and no boot code, as
/// coreos-installer leaves a disk before writing and after a failed install: nothing a
/// firmware or a BIOS can boot, and every partition tool sees an empty disk.
pub fn write_empty<D: Device + ?Sized>(device: &D, geometry: Geometry) -> Result<()> {
    device.write_at(&[0u8; MBR_PARTITIONS], 0).context("clearing the MBR boot code")?;
    let entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    let guid = super::Ids::from_seed(None).uuid("empty disk");
    prepare_entries(device, geometry, &guid, &entries, true)?.commit()
}

/// Leaves `device` (of `size` bytes) with no partition table: the protective MBR's partition
/// entries and both GPT headers zeroed (the boot code is kept).
pub fn clear<D: Device + ?Sized>(device: &D, geometry: Geometry) -> Result<()> {
    let zero = vec![0u8; geometry.sector as usize];
    device.write_at(&zero[MBR_PARTITIONS..SECTOR as usize], MBR_PARTITIONS as u64).context("clearing the protective MBR")?;
    device.write_at(&zero, geometry.sector).context("clearing the primary GPT header")?;
    if geometry.sectors() >= 2 {
        device.write_at(&zero, (geometry.sectors() - 1) * geometry.sector).context("clearing the backup GPT header")?;
    }
    device.sync().context("syncing the cleared partition table")
}

/// One used entry of a GPT read from a disk.
#[derive(Debug, Clone)]
pub struct ReadEntry {
    pub number: u32,
    /// Upper-case, as layouts spell it.
    pub type_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

/// The used entries of the primary GPT of a disk of `sector`-byte sectors (its header and
/// entries checked by their CRCs); an empty list when the disk has no GPT.
pub fn read_entries(file: &File, sector: u64) -> Result<Vec<ReadEntry>> {
    let mut h = vec![0u8; sector as usize];
    file.read_exact_at(&mut h, sector).context("reading the GPT header")?;
    if &h[..8] != b"EFI PART" {
        return Ok(Vec::new());
    }
    let u32at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let size = (u32at(&h, 12) as usize).clamp(HEADER_SIZE, sector as usize);
    let crc = u32at(&h, 16);
    let mut sealed = h[..size].to_vec();
    seal_header(&mut sealed);
    ensure!(u32at(&sealed, 16) == crc, "the GPT header's CRC does not match: the table is damaged");
    let (lba, count, esize) = (u64at(&h, 72), u32at(&h, 80) as usize, u32at(&h, 84) as usize);
    ensure!(esize >= 128 && count <= 1024, "the GPT header has {count} entries of {esize} bytes");
    let mut entries = vec![0u8; count * esize];
    file.read_exact_at(&mut entries, lba * sector).context("reading the GPT entries")?;
    ensure!(crc32(&entries) == u32at(&h, 88), "the GPT entries' CRC does not match: the table is damaged");
    Ok(entries
        .chunks(esize)
        .enumerate()
        .filter(|(_, e)| e[..16].iter().any(|b| *b != 0))
        .map(|(i, e)| ReadEntry {
            number: i as u32 + 1,
            type_guid: uuid::Uuid::from_bytes_le(e[..16].try_into().unwrap()).hyphenated().to_string().to_uppercase(),
            first_lba: u64at(e, 32),
            last_lba: u64at(e, 40),
        })
        .collect())
}

/// Sets a GPT header's CRC-32 (IEEE, the one gzip uses; flate2 has it) over its first
/// `header size` bytes, the CRC field counted as zero.
pub fn seal_header(h: &mut [u8]) {
    let size = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
    h[16..20].fill(0);
    let crc = crc32(&h[..size]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

/// A GUID as GPT and UEFI store it: the first three fields little-endian.
pub fn guid_bytes(s: &str) -> Result<[u8; 16]> {
    Ok(uuid::Uuid::parse_str(s).with_context(|| format!("{s:?} is not a GUID"))?.to_bytes_le())
}

/// One partition of a table, in bytes (offset and size whole sectors).
pub struct TableEntry<'a> {
    pub number: u32,
    pub name: &'a str,
    pub type_guid: &'a str,
    pub guid: &'a str,
    pub offset: u64,
    pub size: u64,
}

/// Writes a whole GPT of `entries` (for tables that are not a layout's, as the ISO's hybrid
/// one): the same writer and order as [`write`].
pub fn write_entries<D: Device + ?Sized>(device: &D, geometry: Geometry, disk_guid: &str, entries: &[TableEntry]) -> Result<()> {
    prepare_entries(device, geometry, disk_guid, &entry_bytes(entries, geometry.sector)?, true)?.commit()
}

fn entry_array(plan: &Plan, sector: u64) -> Result<Vec<u8>> {
    let entries: Vec<TableEntry> = plan
        .partitions
        .iter()
        .map(|p| TableEntry { number: p.number, name: &p.name, type_guid: &p.type_guid, guid: &p.guid, offset: p.offset, size: p.size })
        .collect();
    entry_bytes(&entries, sector)
}

fn entry_bytes(entries: &[TableEntry], sector: u64) -> Result<Vec<u8>> {
    ensure!(entries.len() as u64 <= ENTRIES, "a GPT holds at most {ENTRIES} partitions");
    let mut out = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for p in entries {
        ensure!(p.number >= 1 && p.number as u64 <= ENTRIES, "partition {} has number {}", p.name, p.number);
        let e = &mut out[(p.number as usize - 1) * ENTRY_SIZE as usize..][..ENTRY_SIZE as usize];
        e[..16].copy_from_slice(&guid_bytes(p.type_guid)?);
        e[16..32].copy_from_slice(&guid_bytes(p.guid)?);
        ensure!(p.offset % sector == 0 && p.size % sector == 0, "partition {} is not aligned to {sector}-byte sectors", p.name);
        e[32..40].copy_from_slice(&(p.offset / sector).to_le_bytes());
        e[40..48].copy_from_slice(&((p.offset + p.size) / sector - 1).to_le_bytes());
        let name: Vec<u16> = p.name.encode_utf16().collect();
        ensure!(name.len() <= 36, "partition name {:?} is longer than GPT's 36 characters", p.name);
        for (i, c) in name.iter().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
    }
    Ok(out)
}

/// Creates the raw disk in `file` (empty, unnamed or new): sized sparse to the plan, its table
/// prepared; the caller commits it once the partitions are written.
pub fn create_image<'a>(file: &'a File, plan: &Plan) -> Result<PreparedTable<'a, File>> {
    file.set_len(plan.size).with_context(|| format!("cannot size the disk image to {} bytes", plan.size))?;
    prepare(file, plan, Geometry { size: plan.size, sector: SECTOR })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{layout, Ids, Layout};
    use std::cell::Cell;
    use std::process::Command;

    /// A device whose writer dies (stops writing for good) after `left` more writes.
    struct Dying<'a> {
        file: &'a File,
        left: Cell<usize>,
    }

    impl Dying<'_> {
        fn step(&self) -> io::Result<()> {
            match self.left.get() {
                0 => Err(io::Error::other("killed")),
                n => {
                    self.left.set(n - 1);
                    Ok(())
                }
            }
        }
    }

    impl Device for Dying<'_> {
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.step()?;
            self.file.write_all_at(buf, offset)
        }
        fn sync(&self) -> io::Result<()> {
            self.file.sync_data()
        }
    }

    fn plan(seed: &str, layout: &str) -> Plan {
        let layout = Layout::load(layout).unwrap();
        layout::plan(&layout, "ext4", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", 1 << 30, 2 << 30, Some(4 << 30), &Ids::from_seed(Some(seed))).unwrap()
    }

    /// `sfdisk --dump` of the disk: None when it finds no partition table.
    fn sfdisk(path: &std::path::Path) -> Option<String> {
        let out = Command::new("sfdisk").arg("--dump").arg(path).output().expect("sfdisk (fdisk package)");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The writer killed after every possible step: before the clearing write the old table
    /// stands, after it no table until the new one is complete; sfdisk (an independent
    /// reader) checks each state, and `sgdisk -v` the finished one.
    #[test]
    fn a_writer_killed_at_any_step_leaves_no_table() {
        let dir = std::env::temp_dir().join(format!("kiln-table-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.raw");
        let (old, new) = (plan("old", "bootc"), plan("new", "default"));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(old.size).unwrap();
        let geometry = Geometry { size: old.size, sector: SECTOR };
        write(&file, &old, geometry).unwrap();
        let old_dump = sfdisk(&path).expect("sfdisk reads the old table");
        assert!(old_dump.contains(&old.disk_guid.to_uppercase()), "{old_dump}");

        let mut steps = 0;
        loop {
            write(&file, &old, geometry).unwrap();
            let dying = Dying { file: &file, left: Cell::new(steps) };
            let finished = write(&dying, &new, geometry).is_ok();
            let dump = sfdisk(&path);
            if finished {
                let dump = dump.expect("sfdisk reads the finished table");
                assert!(dump.contains(&new.disk_guid.to_uppercase()) && dump.contains("name=\"root\""), "{dump}");
                let v = Command::new("sgdisk").arg("-v").arg(&path).output().unwrap();
                assert!(String::from_utf8_lossy(&v.stdout).contains("No problems found"), "{}", String::from_utf8_lossy(&v.stdout));
                break;
            }
            if steps == 0 {
                assert_eq!(dump.as_deref(), Some(old_dump.as_str()), "killed before writing, the old table must stand");
            } else {
                assert_eq!(dump, None, "killed after {steps} steps, sfdisk still finds a table");
            }
            steps += 1;
        }
        assert_eq!(steps, 6, "the writer's writes: clear, two entry arrays, two headers, protective MBR");

        // A failed install clears what it prepared or committed.
        clear(&file, geometry).unwrap();
        assert_eq!(sfdisk(&path), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
