//! El Torito (the 1995 Phoenix/IBM specification): the boot record volume descriptor naming
//! the boot catalog, the catalog (validation entry, default entry, one section per further
//! platform), and the patches a BIOS no-emulation image gets: the boot-info table (mkisofs's
//! `-boot-info-table`: where the volume and the image are, for `cdboot.img`) and GRUB2's boot
//! info (xorriso's `--grub2-boot-info`: the image's 512-byte sector + 5 at byte 2548, where
//! `diskboot.img` reads the rest of the core when the ISO is a disk).

use super::records::BLOCK;

/// El Torito platform ids.
pub const PLATFORM_BIOS: u8 = 0x00;
pub const PLATFORM_EFI: u8 = 0xef;

/// One bootable entry: what the firmware loads, in 2048-byte blocks from `lba`, and how many
/// 512-byte sectors of it (`load_sectors`).
pub struct Entry {
    pub platform: u8,
    pub lba: u32,
    pub load_sectors: u16,
}

/// The boot record volume descriptor (§2.0) for a catalog at `catalog_lba`.
pub fn boot_record(catalog_lba: u32) -> Vec<u8> {
    let mut d = vec![0u8; BLOCK as usize];
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d[7..7 + 23].copy_from_slice(b"EL TORITO SPECIFICATION");
    d[71..75].copy_from_slice(&catalog_lba.to_le_bytes());
    d
}

/// The catalog (one block): the first entry is the default one, each further entry gets its
/// own section header (the last one marked final, 0x91).
pub fn catalog(entries: &[Entry]) -> Vec<u8> {
    let mut c = vec![0u8; BLOCK as usize];
    let first = &entries[0];
    // Validation entry: header 1, platform, id string (blank), checksum, 55 AA.
    c[0] = 1;
    c[1] = first.platform;
    c[30] = 0x55;
    c[31] = 0xaa;
    let sum = c[..32].chunks(2).fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
    c[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    let mut at = 32;
    let put_entry = |c: &mut [u8], at: usize, e: &Entry| {
        c[at] = 0x88; // bootable, no emulation, load segment 0 (07C0), system type 0
        c[at + 6..at + 8].copy_from_slice(&e.load_sectors.to_le_bytes());
        c[at + 8..at + 12].copy_from_slice(&e.lba.to_le_bytes());
    };
    put_entry(&mut c, at, first);
    at += 32;
    for (i, e) in entries.iter().enumerate().skip(1) {
        c[at] = if i + 1 == entries.len() { 0x91 } else { 0x90 };
        c[at + 1] = e.platform;
        c[at + 2..at + 4].copy_from_slice(&1u16.to_le_bytes());
        at += 32;
        put_entry(&mut c, at, e);
        at += 32;
    }
    c
}

/// Patches a BIOS boot image placed at `image_lba` on a volume whose primary descriptor is at
/// `pvd_lba`: GRUB2's boot info at 2548 (when the image is that long), then the boot-info
/// table at 8..64 with its checksum (the 32-bit sum of the image's words from byte 64 on).
pub fn patch_bios_image(image: &mut [u8], pvd_lba: u32, image_lba: u32) {
    if image.len() >= 2556 {
        image[2548..2556].copy_from_slice(&(image_lba as u64 * 4 + 5).to_le_bytes());
    }
    let sum = image[64..].chunks(4).fold(0u32, |s, w| {
        let mut b = [0u8; 4];
        b[..w.len()].copy_from_slice(w);
        s.wrapping_add(u32::from_le_bytes(b))
    });
    image[8..12].copy_from_slice(&pvd_lba.to_le_bytes());
    image[12..16].copy_from_slice(&image_lba.to_le_bytes());
    let len = image.len() as u32;
    image[16..20].copy_from_slice(&len.to_le_bytes());
    image[20..24].copy_from_slice(&sum.to_le_bytes());
    image[24..64].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_entry_sums_to_zero() {
        let c = catalog(&[Entry { platform: PLATFORM_BIOS, lba: 30, load_sectors: 4 }, Entry { platform: PLATFORM_EFI, lba: 99, load_sectors: 100 }]);
        let sum = c[..32].chunks(2).fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
        assert_eq!(sum, 0);
        assert_eq!((c[64], c[65], c[96]), (0x91, PLATFORM_EFI, 0x88));
    }
}
