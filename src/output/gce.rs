//! The GCE image: `image.tar.gz` holding exactly `disk.raw` (GNU tar's oldgnu format, as
//! Google's import expects), the disk grown to a whole number of GiB with its backup GPT moved
//! to the new end. Gzip runs on all cores: each block of the tar becomes its own gzip member
//! (a valid gzip file is a series of members).

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::{bail, Result};

use super::parallel::map_ordered;
use super::rawdisk::RawDisk;
use super::tar_header::{file_header, TarFormat};
use crate::disk::table::seal_header;
use crate::progress::Stage;

const GIB: u64 = 1 << 30;
const SECTOR: u64 = 512;
const BLOCK: u64 = 4 << 20;

pub fn write(raw: &RawDisk, file: File, stage: &Stage) -> Result<()> {
    let size = raw.size.div_ceil(GIB) * GIB;
    let gpt = Relocated::read(raw, size)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let header = file_header("disk.raw", size, TarFormat::OldGnu);
    let data_end = 512 + size;
    // Tar: header, data, padding to the record size (20 blocks of 512) with two zero blocks.
    let total = (data_end + 1024).div_ceil(10240) * 10240;
    let blocks = (0..total.div_ceil(BLOCK)).map(|i| -> Result<(u64, Option<Vec<u8>>)> {
        let start = i * BLOCK;
        let len = BLOCK.min(total - start);
        // Disk offsets this block covers.
        let (d0, d1) = (start.saturating_sub(512), (start + len).min(data_end).saturating_sub(512));
        let touches_data = d1 > d0 && (raw.has_data(d0, d1 - d0) || gpt.overlaps(d0, d1));
        if start >= 512 && !touches_data {
            return Ok((len, None));
        }
        let mut buf = vec![0u8; len as usize];
        if start < 512 {
            buf[..512].copy_from_slice(&header);
        }
        if d1 > d0 {
            let at = (d0 + 512 - start) as usize;
            if d0 < raw.size {
                let n = (d1.min(raw.size) - d0) as usize;
                raw.read_at(&mut buf[at..at + n], d0)?;
            }
            gpt.patch(&mut buf[at..at + (d1 - d0) as usize], d0);
        }
        Ok((len, Some(buf)))
    });
    let zero_member = gzip(&vec![0u8; BLOCK as usize])?;
    map_ordered(
        blocks,
        32,
        |(len, data)| match data {
            Some(d) => gzip(&d),
            None if len == BLOCK => Ok(zero_member.clone()),
            None => gzip(&vec![0u8; len as usize]),
        },
        |member| {
            crate::interrupt::check()?;
            stage.inc(BLOCK);
            out.write_all(&member)?;
            Ok(())
        },
    )?;
    out.flush()?;
    Ok(())
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 3), flate2::Compression::default());
    e.write_all(data)?;
    Ok(e.finish()?)
}

/// The disk's GPT rewritten for a larger disk: the protective MBR and primary header updated,
/// the old backup cleared, a new backup (entries and header) at the new end.
struct Relocated {
    /// (disk offset, bytes) replacing what is there.
    patches: Vec<(u64, Vec<u8>)>,
}

impl Relocated {
    fn read(raw: &RawDisk, size: u64) -> Result<Relocated> {
        let mut mbr = vec![0u8; 512];
        raw.read_at(&mut mbr, 0)?;
        let mut primary = vec![0u8; 512];
        raw.read_at(&mut primary, SECTOR)?;
        if &primary[..8] != b"EFI PART" {
            bail!("{} has no GPT; the GCE image needs one to move its backup header", raw.path.display());
        }
        let entries_lba = u64::from_le_bytes(primary[72..80].try_into().unwrap());
        let n = u32::from_le_bytes(primary[80..84].try_into().unwrap()) as u64;
        let esize = u32::from_le_bytes(primary[84..88].try_into().unwrap()) as u64;
        let entry_sectors = (n * esize).div_ceil(SECTOR);
        let mut entries = vec![0u8; (entry_sectors * SECTOR) as usize];
        raw.read_at(&mut entries, entries_lba * SECTOR)?;
        let old_last = raw.size / SECTOR - 1;
        let last = size / SECTOR - 1;

        let put = |h: &mut Vec<u8>, at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut primary, 32, last);
        put(&mut primary, 48, last - entry_sectors - 1);
        seal_header(&mut primary);
        let mut backup = primary.clone();
        put(&mut backup, 24, last);
        put(&mut backup, 32, 1);
        put(&mut backup, 72, last - entry_sectors);
        seal_header(&mut backup);
        // The protective MBR's partition covers the whole (new) disk.
        mbr[446 + 12..446 + 16].copy_from_slice(&((size / SECTOR - 1).min(u32::MAX as u64) as u32).to_le_bytes());

        let mut patches = vec![(0, mbr), (SECTOR, primary)];
        if size > raw.size {
            let old = (old_last - entry_sectors) * SECTOR;
            patches.push((old, vec![0u8; ((entry_sectors + 1) * SECTOR) as usize]));
        }
        patches.push(((last - entry_sectors) * SECTOR, entries));
        patches.push((last * SECTOR, backup));
        Ok(Relocated { patches })
    }

    fn overlaps(&self, from: u64, to: u64) -> bool {
        self.patches.iter().any(|(o, b)| *o < to && o + b.len() as u64 > from)
    }

    /// Applies the patches to `buf`, which holds the disk's bytes from `at`.
    fn patch(&self, buf: &mut [u8], at: u64) {
        for (o, bytes) in &self.patches {
            let (s, e) = ((*o).max(at), (o + bytes.len() as u64).min(at + buf.len() as u64));
            if s < e {
                buf[(s - at) as usize..(e - at) as usize].copy_from_slice(&bytes[(s - o) as usize..(e - o) as usize]);
            }
        }
    }
}
