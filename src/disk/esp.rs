//! The EFI system partition, FAT32, written in userspace with the `fatfs` crate straight into
//! the disk image at the partition's offset (no loop device, no vfat driver needed).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};

use super::layout::Partition;

/// A byte range of a file, as a seekable stream.
pub struct Region {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Region {
    pub fn new(path: &Path, start: u64, len: u64) -> Result<Region> {
        let file = OpenOptions::new().read(true).write(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Region { file, start, len, pos: 0 })
    }
}

impl Read for Region {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Region {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write past the end of the partition"));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Region {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => p as i64,
            SeekFrom::Current(d) => self.pos as i64 + d,
            SeekFrom::End(d) => self.len as i64 + d,
        };
        if new < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the partition"));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

/// A formatted ESP, open for writing files.
pub struct Esp {
    fs: fatfs::FileSystem<Region>,
}

impl Esp {
    /// Formats the partition FAT32 with its label and volume id, and opens it.
    pub fn format(image: &Path, part: &Partition) -> Result<Esp> {
        let mut region = Region::new(image, part.offset, part.size)?;
        let mut label = [b' '; 11];
        let l = part.label.as_deref().unwrap_or("EFI-SYSTEM").as_bytes();
        label[..l.len().min(11)].copy_from_slice(&l[..l.len().min(11)]);
        let id = u32::from_str_radix(&part.fs_uuid.replace('-', ""), 16).context("the ESP's volume id")?;
        fatfs::format_volume(
            &mut region,
            fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat32).volume_label(label).volume_id(id),
        )
        .context("formatting the ESP (FAT32)")?;
        region.seek(SeekFrom::Start(0))?;
        let fs = fatfs::FileSystem::new(region, fatfs::FsOptions::new()).context("opening the new ESP")?;
        Ok(Esp { fs })
    }

    /// Flushes the FAT and closes the filesystem.
    pub fn close(self) -> Result<()> {
        self.fs.unmount().context("closing the ESP")
    }
}

impl crate::bootloader::EspWriter for Esp {
    fn create_dir_all(&mut self, path: &str) -> Result<()> {
        let mut dir = self.fs.root_dir();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir = match dir.open_dir(part) {
                Ok(d) => d,
                Err(_) => dir.create_dir(part).with_context(|| format!("creating {path} on the ESP"))?,
            };
        }
        Ok(())
    }

    fn write_file(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let mut f = self.fs.root_dir().create_file(path).with_context(|| format!("creating {path} on the ESP"))?;
        f.truncate()?;
        f.write_all(data).with_context(|| format!("writing {path} on the ESP (is it full?)"))?;
        Ok(())
    }
}
