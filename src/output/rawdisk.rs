//! The raw disk being converted: its size, its data extents (holes are skipped with
//! SEEK_DATA/SEEK_HOLE), and a check that it is a disk at all.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::progress::Stage;

pub struct RawDisk {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
    /// Data extents (offset, length), holes left out.
    pub extents: Vec<(u64, u64)>,
}

impl RawDisk {
    /// Opens a raw disk image, refusing a file that is not one: its size must be whole
    /// sectors and its first sector must end in the MBR signature (a GPT disk has a
    /// protective MBR).
    pub fn open(path: &Path) -> Result<RawDisk> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        RawDisk::from_file(file, path)
    }

    /// Like [`RawDisk::open`], for a file already open (perhaps one with no name yet); `path`
    /// is what messages call it.
    pub fn from_file(file: File, path: &Path) -> Result<RawDisk> {
        let md = file.metadata()?;
        if !md.is_file() {
            bail!("{} is not a regular file: give a raw disk image", path.display());
        }
        let size = md.len();
        let mut mbr = [0u8; 512];
        if size < 512 || size % 512 != 0 || file.read_exact_at(&mut mbr, 0).is_err() || mbr[510..] != [0x55, 0xaa] {
            bail!(
                "{} is not a raw disk image (no partition table: its first sector lacks the 55 AA signature, or its size is not whole 512-byte sectors); convert takes a disk made by `kiln bake --type raw`",
                path.display()
            );
        }
        let extents = data_extents(&file, size)?;
        Ok(RawDisk { path: path.to_path_buf(), file, size, extents })
    }

    /// Bytes in data extents (what a writer reads).
    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().map(|(_, l)| l).sum()
    }

    /// True when `[offset, offset+len)` overlaps a data extent.
    pub fn has_data(&self, offset: u64, len: u64) -> bool {
        let i = self.extents.partition_point(|(o, l)| o + l <= offset);
        self.extents.get(i).is_some_and(|(o, _)| *o < offset + len)
    }

    /// Reads `buf.len()` bytes at `offset` (zeros past the end).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = buf.len().min(self.size.saturating_sub(offset) as usize);
        self.file.read_exact_at(&mut buf[..n], offset).with_context(|| format!("reading {} at {offset}", self.path.display()))?;
        buf[n..].fill(0);
        Ok(())
    }

    /// A sparse copy: data extents copied, holes left as holes.
    pub fn copy_sparse(&self, mut out: File, stage: &Stage) -> Result<()> {
        out.set_len(self.size)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut src = &self.file;
        for &(off, len) in &self.extents {
            src.seek(SeekFrom::Start(off))?;
            out.seek(SeekFrom::Start(off))?;
            let mut left = len;
            while left > 0 {
                let n = (left as usize).min(buf.len());
                src.read_exact(&mut buf[..n])?;
                out.write_all(&buf[..n])?;
                left -= n as u64;
                stage.inc(n as u64);
            }
        }
        Ok(())
    }
}

/// The file's data extents; the whole file when the filesystem cannot tell.
fn data_extents(file: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Ok(vec![(0, size)]);
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { size as i64 } else { hole };
        out.push((data as u64, (end - data) as u64));
        pos = end;
    }
    Ok(out)
}
