//! Fixed VHD for Azure: the disk's bytes, padded to a whole number of MiB (Azure refuses other
//! sizes), then the 512-byte footer. Holes stay holes in the output.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use anyhow::Result;

use super::rawdisk::RawDisk;
use crate::progress::Stage;

const MIB: u64 = 1 << 20;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01).
const VHD_EPOCH: u64 = 946_684_800;

pub fn write(raw: &RawDisk, mut out: File, stage: &Stage) -> Result<()> {
    let size = raw.size.div_ceil(MIB) * MIB;
    out.set_len(size)?;
    let mut buf = vec![0u8; 1 << 20];
    for &(off, len) in &raw.extents {
        let mut done = 0;
        while done < len {
            crate::interrupt::check()?;
            let n = (len - done).min(buf.len() as u64) as usize;
            raw.read_at(&mut buf[..n], off + done)?;
            out.write_all_at(&buf[..n], off + done)?;
            done += n as u64;
            stage.inc(n as u64);
        }
    }
    out.seek(SeekFrom::Start(size))?;
    out.write_all(&footer(size, raw)?)?;
    Ok(())
}

/// The VHD footer (big-endian fields; the checksum is the one's complement of the byte sum).
pub fn footer(size: u64, raw: &RawDisk) -> Result<[u8; 512]> {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    let mtime = raw.file.metadata()?.modified()?.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    f[24..28].copy_from_slice(&(mtime.saturating_sub(VHD_EPOCH) as u32).to_be_bytes());
    // "qem2" tells readers (qemu among them) that the size is the footer's, not the CHS
    // geometry's; Hyper-V and Azure always use the footer's.
    f[28..32].copy_from_slice(b"qem2");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = geometry(size / 512);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // fixed
    let mut first = [0u8; 512];
    raw.read_at(&mut first, 0)?;
    use sha2::Digest;
    let id = sha2::Sha256::new().chain_update(first).chain_update(size.to_le_bytes()).finalize();
    f[68..84].copy_from_slice(&id[..16]);
    let sum: u32 = f.iter().map(|&b| b as u32).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    Ok(f)
}

/// CHS geometry as the VHD specification computes it.
fn geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(65535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}
