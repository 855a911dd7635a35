//! Facts about a whole-disk block device and the kernel's view of its partitions, read from
//! sysfs and ioctls (as coreos-installer's `blockdev.rs` and systemd-repart do): size, logical
//! sector size, partitions and their nodes, holders; and the two ways kiln changes the
//! kernel's view: BLKPG (add or delete one partition) and the `flock` udev respects.
//!
//! Partitions are made known with BLKPG from kiln's own plan, not by asking the kernel to read
//! the table (BLKRRPART): the table is committed last (`table`), so while the filesystems are
//! written there is none to read, and BLKPG works on kernels without a GPT parser. Nodes are
//! found through `/sys/class/block/<disk>/*/partition`, never built from names (`sda1`,
//! `nvme0n1p1`, `loop0p1`), and work with udev or with devtmpfs alone.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_ADD_PARTITION: libc::c_int = 1;
const BLKPG_DEL_PARTITION: libc::c_int = 2;

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

#[repr(C)]
struct BlkpgPartition {
    /// Bytes.
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// How long the kernel (and udev, when there is one) may take to show a new partition node.
const NODE_TIMEOUT: Duration = Duration::from_secs(20);

/// A block device's identity: its device number and sysfs name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dev {
    pub major: u32,
    pub minor: u32,
}

impl Dev {
    pub fn from_rdev(rdev: u64) -> Dev {
        Dev { major: libc::major(rdev), minor: libc::minor(rdev) }
    }

    /// `MAJ:MIN` as mountinfo and sysfs write it.
    pub fn parse(s: &str) -> Option<Dev> {
        let (a, b) = s.trim().split_once(':')?;
        Some(Dev { major: a.parse().ok()?, minor: b.parse().ok()? })
    }

    /// `/sys/dev/block/MAJ:MIN` (a link into /sys/devices).
    pub fn sysfs(&self) -> PathBuf {
        PathBuf::from(format!("/sys/dev/block/{}:{}", self.major, self.minor))
    }

    /// The kernel's name of the device (`sda`, `nvme0n1p2`, `dm-0`).
    pub fn name(&self) -> Option<String> {
        std::fs::canonicalize(self.sysfs()).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// The whole disk a partition is on (the device itself for a disk).
    pub fn whole_disk(&self) -> Dev {
        let sys = self.sysfs();
        if sys.join("partition").exists() {
            if let Some(d) = std::fs::canonicalize(&sys).ok().and_then(|p| p.parent().map(|p| p.join("dev"))).and_then(|p| read_trim(&p)).and_then(|s| Dev::parse(&s)) {
                return d;
            }
        }
        self.clone()
    }

    /// The disks under a stacked device (device-mapper, md), followed through `slaves/` down
    /// to whole disks; a plain disk or partition gives its whole disk.
    pub fn underlying_disks(&self) -> Vec<Dev> {
        let slaves: Vec<Dev> = std::fs::read_dir(self.sysfs().join("slaves"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| read_trim(&e.path().join("dev")).and_then(|s| Dev::parse(&s)))
            .collect();
        if slaves.is_empty() {
            return vec![self.whole_disk()];
        }
        slaves.iter().flat_map(Dev::underlying_disks).collect()
    }
}

/// The device number of a block device node, or of the filesystem a path is on.
pub fn dev_of_node(path: &Path) -> Option<Dev> {
    let md = std::fs::metadata(path).ok()?;
    md.file_type().is_block_device().then(|| Dev::from_rdev(md.rdev()))
}

/// A partition of a disk, as the kernel sees it.
#[derive(Debug, Clone)]
pub struct KernelPartition {
    pub number: u32,
    /// The kernel's name (`loop0p1`, `sda1`).
    pub name: String,
    pub dev: Dev,
}

impl KernelPartition {
    pub fn node(&self) -> PathBuf {
        PathBuf::from("/dev").join(&self.name)
    }
}

/// A whole-disk block device, opened for writing.
pub struct BlockDevice {
    /// The path the user gave, resolved (`/dev/disk/by-id/…` → `/dev/sda`).
    pub path: PathBuf,
    /// The kernel's name (`sda`).
    pub name: String,
    pub dev: Dev,
    pub size: u64,
    pub sector_size: u64,
    pub file: File,
}

impl BlockDevice {
    /// A loop device: its disk is a file, not one of this machine's.
    pub fn is_loop(&self) -> bool {
        Path::new("/sys/class/block").join(&self.name).join("loop").exists()
    }

    /// Opens `path` (a whole disk, already checked) read-write, with its size and logical
    /// sector size.
    pub fn open(path: &Path, dev: Dev, name: String) -> Result<BlockDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        let mut sector: libc::c_int = 0;
        if unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut sector) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot read the sector size of {}", path.display()));
        }
        let mut size: u64 = 0;
        if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot read the size of {}", path.display()));
        }
        Ok(BlockDevice { path: path.to_path_buf(), name, dev, size, sector_size: sector as u64, file })
    }

    /// Takes the `flock` udev and partitioning tools respect, for as long as the device is open.
    pub fn lock(&self) -> Result<()> {
        if unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!("another program (a partitioning tool, udev, another kiln) holds the lock on {}: wait for it to finish", self.path.display());
            }
            return Err(e).with_context(|| format!("cannot lock {}", self.path.display()));
        }
        Ok(())
    }

    /// The partitions the kernel knows on this disk.
    pub fn partitions(&self) -> Vec<KernelPartition> {
        partitions_of(&self.name)
    }

    /// Tells the kernel about partition `number` (`offset`, `size` in bytes) and waits for its
    /// node; returns the node's path.
    pub fn add_partition(&self, number: u32, offset: u64, size: u64) -> Result<PathBuf> {
        self.blkpg(BLKPG_ADD_PARTITION, number, offset, size)
            .with_context(|| format!("cannot make partition {number} of {} known to the kernel (BLKPG)", self.path.display()))?;
        self.wait_for_node(number)
    }

    /// Makes the kernel forget partition `number`, waiting while something still holds it
    /// (a filesystem being unmounted lazily, udev probing it).
    pub fn delete_partition(&self, number: u32) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.blkpg(BLKPG_DEL_PARTITION, number, 0, 0) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(e).with_context(|| format!("cannot remove partition {number} of {} from the kernel (BLKPG)", self.path.display())),
            }
        }
    }

    fn blkpg(&self, op: libc::c_int, number: u32, offset: u64, size: u64) -> std::io::Result<()> {
        let mut part = BlkpgPartition { start: offset as i64, length: size as i64, pno: number as i32, devname: [0; 64], volname: [0; 64] };
        let mut arg = BlkpgIoctlArg {
            op,
            flags: 0,
            datalen: std::mem::size_of::<BlkpgPartition>() as i32,
            data: &mut part as *mut BlkpgPartition as *mut libc::c_void,
        };
        if unsafe { libc::ioctl(self.file.as_raw_fd(), BLKPG, &mut arg) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until partition `number` shows in sysfs and its node in /dev is that device.
    fn wait_for_node(&self, number: u32) -> Result<PathBuf> {
        let deadline = Instant::now() + NODE_TIMEOUT;
        loop {
            if let Some(p) = self.partitions().into_iter().find(|p| p.number == number) {
                if dev_of_node(&p.node()) == Some(p.dev.clone()) {
                    return Ok(p.node());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "partition {number} of {} did not appear within {} s (waited for /sys/class/block/{}/*/partition = {number} and its node in /dev): is devtmpfs mounted on /dev?",
                    self.path.display(),
                    NODE_TIMEOUT.as_secs(),
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The partitions the kernel knows on disk `name`, by number.
pub fn partitions_of(name: &str) -> Vec<KernelPartition> {
    let mut out: Vec<KernelPartition> = std::fs::read_dir(Path::new("/sys/class/block").join(name))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let number = read_trim(&e.path().join("partition"))?.parse().ok()?;
            let dev = Dev::parse(&read_trim(&e.path().join("dev"))?)?;
            Some(KernelPartition { number, name: e.file_name().to_string_lossy().into_owned(), dev })
        })
        .collect();
    out.sort_by_key(|p| p.number);
    out
}

pub fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}
