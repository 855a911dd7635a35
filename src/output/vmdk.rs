//! VMDK streamOptimized in VMware's own layout, as open-vmdk writes it: header (version 3,
//! compressed grains with embedded LBAs), the descriptor at sector 1, the grain directory and
//! every grain table right after it (their room is known from the capacity), then the grains
//! (a 12-byte LBA and size header, zlib data, padded to a sector), then an end-of-stream
//! marker. The tables and header are written last into the room kept for them. qemu-img's
//! variant (tables at the end, behind markers, a footer) is what vSphere's upload checks trip
//! on.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};

use anyhow::{Context, Result};

use super::parallel::map_ordered;
use super::rawdisk::RawDisk;
use crate::progress::Stage;

const SECTOR: u64 = 512;
/// 64 KiB grains, 512 entries per grain table (4 sectors), as VMware writes them.
const GRAIN_SECTORS: u64 = 128;
const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
const GTES_PER_GT: u64 = 512;
const GT_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;
const DESCRIPTOR_SECTORS: u64 = 20;
const FLAGS: u32 = 1 | 1 << 16 | 1 << 17; // newline detector, compressed, embedded LBA
pub const VIRTUAL_HW_VERSION: u32 = 4;
/// "Unknown" open-vm-tools version, open-vmdk's default.
pub const TOOLS_VERSION: &str = "2147483647";

/// Writes the vmdk into `file`; `name` is the file name its descriptor gives the extent.
pub fn write(raw: &RawDisk, file: File, name: &str, stage: &Stage) -> Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write_to(raw, &mut out, name, stage)?;
    out.flush()?;
    Ok(())
}

/// Writes the vmdk into `out` (positioned at its start; it must be seekable).
pub fn write_to<W: Write + Seek>(raw: &RawDisk, out: &mut W, name: &str, stage: &Stage) -> Result<()> {
    let base = out.stream_position()?;
    let capacity = raw.size.div_ceil(SECTOR);
    let grains = capacity.div_ceil(GRAIN_SECTORS);
    let gts = grains.div_ceil(GTES_PER_GT);
    let gd_sectors = (gts * 4).div_ceil(SECTOR);
    let gd_offset = 1 + DESCRIPTOR_SECTORS;
    let overhead = gd_offset + gd_sectors + gts * GT_SECTORS;
    let mut gt = vec![0u32; (gts * GTES_PER_GT) as usize];
    let mut sp = overhead;
    out.seek(SeekFrom::Start(base + overhead * SECTOR))?;

    let items = (0..grains).filter(|&g| raw.has_data(g * GRAIN, GRAIN)).map(|g| -> Result<(u64, Vec<u8>)> {
        let len = GRAIN.min(raw.size - g * GRAIN) as usize;
        let mut buf = vec![0u8; len];
        raw.read_at(&mut buf, g * GRAIN)?;
        Ok((g, buf))
    });
    map_ordered(
        items,
        64,
        |(g, data)| {
            if data.iter().all(|&b| b == 0) {
                return Ok((g, None));
            }
            let mut z = flate2::write::ZlibEncoder::new(Vec::with_capacity(data.len() / 2), flate2::Compression::default());
            z.write_all(&data)?;
            Ok((g, Some(z.finish()?)))
        },
        |(g, compressed)| {
            crate::interrupt::check()?;
            stage.inc(GRAIN);
            let Some(z) = compressed else { return Ok(()) };
            gt[g as usize] = u32::try_from(sp).context("the vmdk outgrew 2 TiB of sectors")?;
            let mut hdr = [0u8; 12];
            hdr[..8].copy_from_slice(&(g * GRAIN_SECTORS).to_le_bytes());
            hdr[8..].copy_from_slice(&(z.len() as u32).to_le_bytes());
            out.write_all(&hdr)?;
            out.write_all(&z)?;
            let len = 12 + z.len() as u64;
            let padded = len.div_ceil(SECTOR) * SECTOR;
            out.write_all(&vec![0u8; (padded - len) as usize])?;
            sp += padded / SECTOR;
            Ok(())
        },
    )?;
    // End of stream: a zeroed marker sector.
    out.write_all(&[0u8; SECTOR as usize])?;
    let end = out.stream_position()?;

    // The grain directory and tables, in the room after the descriptor.
    out.seek(SeekFrom::Start(base + gd_offset * SECTOR))?;
    let mut gd = vec![0u8; (gd_sectors * SECTOR) as usize];
    for i in 0..gts {
        let at = (gd_offset + gd_sectors + i * GT_SECTORS) as u32;
        gd[(i * 4) as usize..(i * 4 + 4) as usize].copy_from_slice(&at.to_le_bytes());
    }
    out.write_all(&gd)?;
    for e in &gt {
        out.write_all(&e.to_le_bytes())?;
    }

    out.seek(SeekFrom::Start(base + SECTOR))?;
    let desc = descriptor(capacity, name, raw);
    let mut d = desc.into_bytes();
    anyhow::ensure!(d.len() as u64 <= DESCRIPTOR_SECTORS * SECTOR, "the vmdk descriptor is too long");
    d.resize((DESCRIPTOR_SECTORS * SECTOR) as usize, 0);
    out.write_all(&d)?;

    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(&0x564d_444bu32.to_le_bytes()); // "KDMV"
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&FLAGS.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&overhead.to_le_bytes());
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&1u16.to_le_bytes()); // deflate
    out.seek(SeekFrom::Start(base))?;
    out.write_all(&h)?;
    out.seek(SeekFrom::Start(end))?;
    Ok(())
}

/// The embedded descriptor; the content id is derived from the disk so the same raw gives
/// the same vmdk.
fn descriptor(capacity: u64, name: &str, raw: &RawDisk) -> String {
    use sha2::Digest;
    let mut first = vec![0u8; 4096];
    let _ = raw.read_at(&mut first, 0);
    let h = sha2::Sha256::new().chain_update(&first).chain_update(capacity.to_le_bytes()).finalize();
    let cid = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) & 0xfffffffd;
    let cylinders = if capacity > 65535 * 255 * 63 { 65535 } else { capacity.div_ceil(255 * 63) };
    format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n\
         # Extent description\nRW {capacity} SPARSE \"{name}\"\n\n# The Disk Data Base\n#DDB\n\n\
         ddb.longContentID = \"{}\"\nddb.virtualHWVersion = \"{VIRTUAL_HW_VERSION}\"\nddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"lsilogic\"\n\
         ddb.toolsInstallType = \"4\"\nddb.toolsVersion = \"{TOOLS_VERSION}\"\n",
        hex::encode(&h[4..20])
    )
}
