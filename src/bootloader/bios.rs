//! Writes GRUB's BIOS stages onto a disk without grub-install: `boot.img` into the MBR's code
//! area and `core.img` into the BIOS boot partition, patched as grub-install's setup patches
//! them (and as osbuild's grub2.inst stage does by hand).

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{ensure, Context, Result};

use super::core_image::{CoreImage, SECTOR};

/// Fields of boot.img (include/grub/i386/pc/boot.h).
const BPB_START: usize = 0x03;
const BPB_END: usize = 0x5a;
/// Where core.img's first sector is, as an LBA (u64).
const KERNEL_SECTOR_AT: usize = 0x5c;
/// 0xff: use the drive the BIOS booted from.
const BOOT_DRIVE_AT: usize = 0x64;
/// A 2-byte jump that grub-install replaces with NOPs on hard disks, so that BIOSes passing a
/// wrong drive number in %dl still boot from the first hard disk.
const DRIVE_CHECK_AT: usize = 0x66;
/// From here on the MBR holds the disk signature and the partition table: kept as they are.
const PARTITION_AREA_START: usize = 0x1b8;
const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xaa];

/// The BIOS boot partition, in 512-byte sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BiosBootPartition {
    pub first_lba: u64,
    pub sectors: u64,
}

/// Writes `core` into `partition` on `disk` (an image file or a block device) and `boot_img`
/// into the disk's MBR, keeping the MBR's partition table area as it is: the protective MBR,
/// or zeros when the disk's table is committed afterwards (`disk::table` writes it last and
/// keeps the boot code).
pub fn write(disk: &File, partition: BiosBootPartition, boot_img: &[u8], mut core: CoreImage) -> Result<()> {
    ensure!(
        boot_img.len() == SECTOR && boot_img[SECTOR - 2..] == BOOT_SIGNATURE,
        "GRUB's boot.img must be one {SECTOR}-byte sector ending in 55 AA, found {} bytes",
        boot_img.len()
    );
    ensure!(partition.first_lba > 0, "the BIOS boot partition cannot start at sector 0");
    ensure!(
        core.sectors() <= partition.sectors,
        "core.img needs {} sectors, the BIOS boot partition has {} (make it at least {} KiB)",
        core.sectors(),
        partition.sectors,
        core.sectors().div_ceil(2)
    );

    let mut mbr = [0u8; SECTOR];
    disk.read_exact_at(&mut mbr, 0).context("reading the disk's MBR")?;

    core.locate_at(partition.first_lba);
    core.bytes.resize(core.sectors() as usize * SECTOR, 0);
    disk.write_all_at(&core.bytes, partition.first_lba * SECTOR as u64)
        .with_context(|| format!("writing core.img to the disk at sector {}", partition.first_lba))?;

    // boot.img's code, around the disk's own BPB bytes and partition table.
    mbr[..BPB_START].copy_from_slice(&boot_img[..BPB_START]);
    mbr[BPB_END..PARTITION_AREA_START].copy_from_slice(&boot_img[BPB_END..PARTITION_AREA_START]);
    mbr[KERNEL_SECTOR_AT..KERNEL_SECTOR_AT + 8].copy_from_slice(&partition.first_lba.to_le_bytes());
    mbr[BOOT_DRIVE_AT] = 0xff;
    mbr[DRIVE_CHECK_AT..DRIVE_CHECK_AT + 2].copy_from_slice(&[0x90, 0x90]);
    disk.write_all_at(&mbr, 0).context("writing the disk's MBR")?;
    disk.sync_all().context("syncing the disk")
}
