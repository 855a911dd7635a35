//! The EFI system partition, FAT32, written in userspace with the `fatfs` crate straight into
//! the disk image at the partition's offset (no loop device, no vfat driver needed).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use anyhow::{bail, Context, Result};

use super::layout::Partition;

/// A byte range of a file, as a seekable stream.
pub struct Region {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Region {
    pub fn new(disk: &File, start: u64, len: u64) -> Result<Region> {
        let file = disk.try_clone().context("cannot reopen the disk")?;
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
    /// Formats the partition FAT32 with its label and volume id, and opens it. The FAT's
    /// sector is the disk's logical sector (firmware does not read a FAT of another size).
    pub fn format(disk: &File, part: &Partition, sector_size: u64) -> Result<Esp> {
        let mut region = Region::new(disk, part.offset, part.size)?;
        let mut label = [b' '; 11];
        let l = part.label.as_deref().unwrap_or("EFI-SYSTEM").as_bytes();
        label[..l.len().min(11)].copy_from_slice(&l[..l.len().min(11)]);
        let id = u32::from_str_radix(&part.fs_uuid.replace('-', ""), 16).context("the ESP's volume id")?;
        fatfs::format_volume(
            &mut region,
            fatfs::FormatVolumeOptions::new()
                .fat_type(fatfs::FatType::Fat32)
                .bytes_per_sector(sector_size as u16)
                .volume_label(label)
                .volume_id(id),
        )
        .context("formatting the ESP (FAT32)")?;
        region.seek(SeekFrom::Start(0))?;
        let fs = fatfs::FileSystem::new(region, fatfs::FsOptions::new()).context("opening the new ESP")?;
        Ok(Esp { fs })
    }

    /// Opens an existing FAT filesystem in `part` of `disk`, to add files.
    pub fn open(disk: &File, part: &Partition) -> Result<Esp> {
        let region = Region::new(disk, part.offset, part.size)?;
        let fs = fatfs::FileSystem::new(region, fatfs::FsOptions::new()).context("the ESP is not a FAT filesystem kiln can read")?;
        Ok(Esp { fs })
    }

    /// Deletes everything on it (bootc empties the ESP for `to-filesystem --replace
    /// alongside`).
    pub fn clear(&self) -> Result<()> {
        fn empty(dir: &fatfs::Dir<'_, Region>) -> Result<()> {
            let entries: Vec<(String, bool)> =
                dir.iter().filter_map(|e| e.ok()).map(|e| (e.file_name(), e.is_dir())).filter(|(n, _)| n != "." && n != "..").collect();
            for (name, is_dir) in entries {
                if is_dir {
                    empty(&dir.open_dir(&name)?)?;
                }
                dir.remove(&name).with_context(|| format!("deleting {name} from the ESP"))?;
            }
            Ok(())
        }
        empty(&self.fs.root_dir())
    }

    /// Flushes the FAT and closes the filesystem.
    pub fn close(self, disk: &File, part: &Partition) -> Result<()> {
        self.fs.unmount().context("closing the ESP")?;
        let mut region = Region::new(disk, part.offset, part.size)?;
        drop_dot_long_names(&mut region).context("tidying the ESP's directories")
    }
}

/// One entry of an ESP's tree: a directory, or a file with its bytes.
pub enum TreeEntry {
    Dir(String),
    File(String, Vec<u8>),
}

/// Every directory and file of the FAT filesystem in `part` of `disk`, a directory before
/// what it holds, names in order; paths are `/`-separated, relative to the ESP's root.
pub fn read_tree(disk: &File, part: &Partition) -> Result<Vec<TreeEntry>> {
    fn walk(dir: fatfs::Dir<'_, Region>, prefix: &str, out: &mut Vec<TreeEntry>) -> Result<()> {
        let mut entries: Vec<_> = dir.iter().collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{prefix}{name}");
            if e.is_dir() {
                out.push(TreeEntry::Dir(path.clone()));
                walk(e.to_dir(), &format!("{path}/"), out)?;
            } else {
                let mut data = Vec::new();
                e.to_file().read_to_end(&mut data).with_context(|| format!("reading {path} on the ESP"))?;
                out.push(TreeEntry::File(path, data));
            }
        }
        Ok(())
    }
    let region = Region::new(disk, part.offset, part.size)?;
    let fs = fatfs::FileSystem::new(region, fatfs::FsOptions::new()).context("not a FAT filesystem")?;
    let mut out = Vec::new();
    walk(fs.root_dir(), "", &mut out)?;
    Ok(out)
}

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIR: u8 = 0x10;

/// fatfs 0.3.6 (the last release) writes long-name entries in front of every new directory's
/// `.` and `..`, which FAT reserves as the first two short entries (fsck.fat flags them; the
/// fix is only in fatfs' unreleased code). This removes them, directory by directory. A
/// directory written correctly is left as it is.
fn drop_dot_long_names(r: &mut Region) -> Result<()> {
    let mut bpb = [0u8; 512];
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut bpb)?;
    let u16at = |o: usize| u16::from_le_bytes([bpb[o], bpb[o + 1]]) as u64;
    let u32at = |o: usize| u32::from_le_bytes(bpb[o..o + 4].try_into().unwrap()) as u64;
    let bytes_per_sector = u16at(11);
    let cluster_size = bytes_per_sector * bpb[13] as u64;
    let data_start = (u16at(14) + bpb[16] as u64 * u32at(36)) * bytes_per_sector;
    let cluster_at = |c: u64| data_start + (c - 2) * cluster_size;
    let root = u32at(44);
    let mut todo = vec![(root, true, false)];
    while let Some((cluster, is_root, parent_is_root)) = todo.pop() {
        let mut buf = vec![0u8; cluster_size as usize];
        r.seek(SeekFrom::Start(cluster_at(cluster)))?;
        r.read_exact(&mut buf)?;
        let entries: Vec<&[u8]> = buf.chunks(ENTRY).collect();
        // Subdirectories to visit (short entries with the directory bit, not . or ..).
        for e in &entries {
            if e[0] == 0 {
                break;
            }
            if e[0] != 0xe5 && e[11] != ATTR_LFN && e[11] & ATTR_DIR != 0 && e[0] != b'.' {
                let c = (u16::from_le_bytes([e[20], e[21]]) as u64) << 16 | u16::from_le_bytes([e[26], e[27]]) as u64;
                todo.push((c, false, is_root));
            }
        }
        if is_root || (entries[0][11] != ATTR_LFN && !parent_is_root) {
            continue;
        }
        // Keep every entry but the long names that belong to `.` and `..`.
        let mut kept: Vec<Vec<u8>> = Vec::new();
        let mut pending: Vec<Vec<u8>> = Vec::new();
        for e in &entries {
            if e[0] == 0 {
                break;
            }
            if e[11] == ATTR_LFN && e[0] != 0xe5 {
                pending.push(e.to_vec());
                continue;
            }
            let is_dot = &e[..11] == b".          " || &e[..11] == b"..         ";
            if !is_dot {
                kept.append(&mut pending);
            }
            pending.clear();
            kept.push(e.to_vec());
        }
        if kept.len() < 2 || &kept[0][..11] != b".          " || &kept[1][..11] != b"..         " {
            bail!("a directory of the ESP does not start with '.' and '..'");
        }
        if parent_is_root {
            // `..` of a directory in the root names cluster 0, not the root's cluster.
            for b in [20, 21, 26, 27] {
                kept[1][b] = 0;
            }
        }
        let mut out = kept.concat();
        out.resize(cluster_size as usize, 0);
        r.seek(SeekFrom::Start(cluster_at(cluster)))?;
        r.write_all(&out)?;
    }
    write_free_count(r, &bpb, data_start, cluster_size)
}

/// Records the free cluster count and the next free cluster in FSInfo (and its backup):
/// fatfs leaves them "unknown", which checkers report.
fn write_free_count(r: &mut Region, bpb: &[u8], data_start: u64, cluster_size: u64) -> Result<()> {
    let u16at = |o: usize| u16::from_le_bytes([bpb[o], bpb[o + 1]]) as u64;
    let u32at = |o: usize| u32::from_le_bytes(bpb[o..o + 4].try_into().unwrap()) as u64;
    let bytes_per_sector = u16at(11);
    let total_sectors = u32at(32);
    let clusters = (total_sectors * bytes_per_sector - data_start) / cluster_size;
    let mut fat = vec![0u8; ((clusters + 2) * 4) as usize];
    r.seek(SeekFrom::Start(u16at(14) * bytes_per_sector))?;
    r.read_exact(&mut fat)?;
    let entries: Vec<u32> = fat.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) & 0x0fff_ffff).collect();
    let free = entries[2..].iter().filter(|&&e| e == 0).count() as u32;
    let next = entries[2..].iter().position(|&e| e == 0).map_or(0xffff_ffff, |i| i as u32 + 2);
    for sector in [u16at(48), u16at(50) + u16at(48)] {
        let at = sector * bytes_per_sector;
        let mut fsinfo = [0u8; 512];
        r.seek(SeekFrom::Start(at))?;
        r.read_exact(&mut fsinfo)?;
        if &fsinfo[..4] != b"RRaA" {
            continue;
        }
        fsinfo[488..492].copy_from_slice(&free.to_le_bytes());
        fsinfo[492..496].copy_from_slice(&next.to_le_bytes());
        r.seek(SeekFrom::Start(at))?;
        r.write_all(&fsinfo)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootloader::EspWriter;

    /// The ESP passes fsck.fat (an independent checker) after kiln writes nested files.
    #[test]
    fn esp_passes_fsck_fat() {
        let dir = std::env::temp_dir().join(format!("kiln-esp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("esp.img");
        let disk = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&img).unwrap();
        disk.set_len(600 << 20).unwrap();
        let part = Partition {
            role: crate::disk::Role::Esp,
            number: 1,
            name: "EFI-SYSTEM".into(),
            type_guid: String::new(),
            guid: String::new(),
            offset: 1 << 20,
            size: 501 << 20,
            filesystem: Some("vfat".into()),
            label: Some("EFI-SYSTEM".into()),
            fs_uuid: "ABCD-1234".into(),
            ..Partition::default()
        };
        let mut esp = Esp::format(&disk, &part, 512).unwrap();
        esp.create_dir_all("EFI/BOOT").unwrap();
        esp.write_file("EFI/BOOT/BOOTX64.EFI", &vec![7u8; 100_000]).unwrap();
        esp.create_dir_all("EFI/debian").unwrap();
        esp.write_file("EFI/debian/grub.cfg", b"x").unwrap();
        esp.close(&disk, &part).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("dd if={0} of={0}.part bs=1M skip=1 count=501 status=none && fsck.fat -n {0}.part", img.display()))
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
}
