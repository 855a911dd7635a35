//! Growing an image's root filesystem while it is written.
//!
//! A bake not told the disk's size sizes the root from the image's content, which zstd layers
//! do not declare: counting it would take a pass decompressing every layer before the disk
//! exists. Instead the root starts at what the layers are known to hold at least (sizes gzip
//! and uncompressed layers declare, the compressed size of the others) and grows online, ahead
//! of the files stored into it; once every layer is read, to the size its content calls for,
//! the size a scan of the layers gives. Only an image's last partition grows (both layouts in
//! `layouts/` end with the root): nothing but the GPT's backup follows it, and the table is
//! written for the final size when the disk is finished.
//!
//! xfs and btrfs grow online with CAP_SYS_ADMIN, which mounting takes anyway. ext4's online
//! resize takes CAP_SYS_RESOURCE too, which container runtimes and sandboxes often drop (this
//! project's CI machines among them, so it could not be tested): an ext4 root is counted first.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use super::layout::{Layout, Plan, Role, GPT_TAIL, MIB};
use super::loopdev::LoopDevice;
use super::{root_size, Disk, Target};

/// Room kept free beyond a quarter more than what was stored (the filesystem's metadata and
/// block rounding: what [`root_size`] gives a root beyond its content, less this margin, so
/// that a grow to `root_size(stored)` lasts a while). A file is announced before its bytes are
/// written, so even a large one finds its room.
const HEADROOM: u64 = 768 * MIB;

pub struct RootGrowth {
    disk: File,
    fs: String,
    root_offset: u64,
    /// Content bytes of the files stored so far.
    stored: AtomicU64,
    /// Past this many bytes stored, the root may need to grow.
    next_check: AtomicU64,
    /// The root partition's size.
    size: Mutex<u64>,
}

impl RootGrowth {
    /// Growth for `plan`'s root on `disk` (see [`possible`]).
    pub fn new(disk: &Disk, plan: &Plan) -> Result<RootGrowth> {
        let root = plan.root();
        let fs = root.filesystem.clone().unwrap_or_default();
        let last = plan.partitions.iter().max_by_key(|p| p.offset).map(|p| p.role);
        anyhow::ensure!(can_grow(disk, last, &fs), "a {fs} root on {} cannot grow while written", disk.name);
        Ok(RootGrowth {
            disk: disk.file.try_clone().context("cannot reopen the disk image")?,
            fs,
            root_offset: root.offset,
            stored: AtomicU64::new(0),
            next_check: AtomicU64::new(Self::lasts_until(root.size)),
            size: Mutex::new(root.size),
        })
    }

    /// The root partition's size now.
    pub fn root_size(&self) -> u64 {
        *self.size.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The content a root of `size` bytes holds with the headroom kept.
    fn lasts_until(size: u64) -> u64 {
        size.saturating_sub(HEADROOM) / 5 * 4
    }

    /// Grows the root to what `content` bytes call for (never shrinks it: the final size is
    /// that of all the content, which is at least what was stored at any time).
    fn grow(&self, content: u64, device: &LoopDevice, mountpoint: &Path) -> Result<()> {
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        let old = *size;
        let new = root_size(content).0.div_ceil(MIB) * MIB;
        if new <= old {
            return Ok(());
        }
        let end = self.root_offset + old;
        // The GPT's backup at the old end becomes root space: no stale header left in it.
        self.disk.write_all_at(&vec![0u8; GPT_TAIL as usize], end).context("growing the disk image")?;
        self.disk
            .set_len(self.root_offset + new + GPT_TAIL)
            .context("growing the disk image (is the disk holding the output full?)")?;
        device.set_size(new)?;
        grow_filesystem(&self.fs, mountpoint, new).with_context(|| format!("growing the root filesystem ({}) to {} MiB", self.fs, new / MIB))?;
        *size = new;
        self.next_check.store(Self::lasts_until(new), Ordering::SeqCst);
        Ok(())
    }
}

/// The filesystems grown online (see above for ext4).
const GROWS: [&str; 2] = ["xfs", "btrfs"];

/// Whether a root of type `fs`, laid out by `layout`, can grow on `disk` while it is written:
/// an image (a device's size is fixed), the root its last partition, a filesystem in [`GROWS`].
pub fn possible(disk: &Disk, layout: &Layout, fs: &str) -> bool {
    can_grow(disk, layout.partitions.last().map(|p| p.role), fs)
}

fn can_grow(disk: &Disk, last: Option<Role>, fs: &str) -> bool {
    matches!(disk.target, Target::Image) && last == Some(Role::Root) && GROWS.contains(&fs)
}

const XFS_IOC_FSGEOMETRY_V1: libc::c_ulong = 0x8070_5864;
const XFS_IOC_FSGROWFSDATA: libc::c_ulong = 0x4010_586e;
const BTRFS_IOC_RESIZE: libc::c_ulong = 0x5000_9403;

/// `struct xfs_fsop_geom_v1`: of its fields, growing needs the block size and the share of
/// space inodes may take (kept as it is).
#[repr(C)]
struct XfsGeometryV1 {
    blocksize: u32,
    rtextsize: u32,
    agblocks: u32,
    agcount: u32,
    logblocks: u32,
    sectsize: u32,
    inodesize: u32,
    imaxpct: u32,
    rest: [u64; 6],
    rest32: [u32; 7],
}

#[repr(C)]
struct XfsGrowfsData {
    newblocks: u64,
    imaxpct: u32,
}

#[repr(C)]
struct BtrfsVolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// Grows the mounted filesystem `fs` on `mountpoint` to fill `size` bytes of its (grown) device,
/// with the calls xfs_growfs and `btrfs filesystem resize` make.
fn grow_filesystem(fs: &str, mountpoint: &Path, size: u64) -> Result<()> {
    let dir = File::open(mountpoint).with_context(|| format!("cannot open {}", mountpoint.display()))?;
    let fd = dir.as_raw_fd();
    let r = match fs {
        "xfs" => {
            let mut g: XfsGeometryV1 = unsafe { std::mem::zeroed() };
            if unsafe { libc::ioctl(fd, XFS_IOC_FSGEOMETRY_V1, &mut g) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let grow = XfsGrowfsData { newblocks: size / g.blocksize as u64, imaxpct: g.imaxpct };
            unsafe { libc::ioctl(fd, XFS_IOC_FSGROWFSDATA, &grow) }
        }
        "btrfs" => {
            let mut args = BtrfsVolArgs { fd: 0, name: [0; 4088] };
            args.name[..3].copy_from_slice(b"max");
            unsafe { libc::ioctl(fd, BTRFS_IOC_RESIZE, &mut args) }
        }
        other => bail!("kiln cannot grow a {other} filesystem"),
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// A root that grows, with the loop device it is on and where it is mounted.
pub struct Growing<'a> {
    pub growth: &'a RootGrowth,
    pub device: &'a LoopDevice,
    pub mountpoint: &'a Path,
}

impl Growing<'_> {
    /// Files of `bytes` more are about to be stored: grows the root when what was stored comes
    /// within the headroom of filling it.
    pub fn make_room(&self, bytes: u64) -> Result<()> {
        let g = self.growth;
        let stored = g.stored.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if stored <= g.next_check.load(Ordering::SeqCst) {
            return Ok(());
        }
        g.grow(stored, self.device, self.mountpoint)
    }

    /// Every file is stored and the layers held `content` bytes: the root gets the size that
    /// content calls for.
    pub fn fit(&self, content: u64) -> Result<()> {
        self.growth.grow(content, self.device, self.mountpoint)
    }
}
