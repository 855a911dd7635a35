//! The disk stage: a partition layout (data in `layouts/`) laid out on an image file, its GPT,
//! filesystems (root and /boot through loop devices, the ESP in userspace), and the mounts the
//! deployment is written through.

pub mod blockdev;
pub mod custom;
mod disk_yaml;
pub mod esp;
pub mod grow;
pub mod image;
pub mod ids;
pub mod layout;
pub mod loopdev;
pub mod mkfs;
pub mod mountns;
pub mod mounts;
pub mod sysroot;
pub mod table;
pub mod verity;

pub use ids::Ids;
pub use layout::{plan, Layout, Partition, Plan, Role, MIB};
pub use mounts::write_mounts;
pub use sysroot::Sysroot;

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use blockdev::BlockDevice;
use loopdev::LoopDevice;
use table::{Geometry, PreparedTable};

/// The disk being written, and what to call it in messages.
pub struct Disk {
    pub file: File,
    pub name: String,
    pub target: Target,
}

/// What the disk is: the stages differ only in the few places this decides.
pub enum Target {
    /// An image file (which has no name until the bake is complete), sized to the plan, of
    /// 512-byte sectors; its filesystems are made through loop devices.
    Image,
    /// A whole-disk block device: its size and sector size are the device's, its partitions
    /// are made known to the kernel (BLKPG) and written through their nodes.
    Device(DeviceTarget),
}

pub struct DeviceTarget {
    pub device: BlockDevice,
    /// Partition nodes by number, once the kernel knows them.
    nodes: RefCell<Vec<(u32, PathBuf)>>,
    /// Set once kiln wrote to the device.
    touched: Cell<bool>,
}

impl Disk {
    pub fn image(file: File, name: String) -> Disk {
        Disk { file, name, target: Target::Image }
    }

    pub fn device(device: BlockDevice) -> Result<Disk> {
        let file = device.file.try_clone().context("cannot reopen the device")?;
        let name = device.path.display().to_string();
        Ok(Disk { file, name, target: Target::Device(DeviceTarget { device, nodes: RefCell::default(), touched: Cell::new(false) }) })
    }

    /// The size a device imposes (an image is sized to its content or `--size`).
    pub fn fixed_size(&self) -> Option<u64> {
        match &self.target {
            Target::Image => None,
            Target::Device(d) => Some(d.device.size),
        }
    }

    pub fn sector_size(&self) -> u64 {
        match &self.target {
            Target::Image => table::SECTOR,
            Target::Device(d) => d.device.sector_size,
        }
    }

    /// Writes `plan`'s partition table, uncommitted (see `table`), and makes its partitions
    /// reachable. A device gets an empty GPT first and the kernel forgets its old partitions.
    pub fn prepare_table(&self, plan: &Plan) -> Result<PreparedTable<'_, File>> {
        let d = match &self.target {
            Target::Image => return table::create_image(&self.file, plan).with_context(|| format!("creating {}", self.name)),
            Target::Device(d) => d,
        };
        let geometry = Geometry { size: d.device.size, sector: d.device.sector_size };
        d.touched.set(true);
        for p in d.device.partitions() {
            d.device.delete_partition(p.number)?;
        }
        // Signatures of what the disk held before (filesystems, RAID, LVM) live in its first
        // and last MiB, outside where the new filesystems write.
        let edge = MIB.min(d.device.size / 2);
        for at in [0, d.device.size - edge] {
            std::os::unix::fs::FileExt::write_all_at(&self.file, &vec![0u8; edge as usize], at)
                .with_context(|| format!("erasing the start and end of {}", self.name))?;
        }
        table::write_empty(&self.file, geometry).with_context(|| format!("writing an empty partition table on {}", self.name))?;
        let prepared = table::prepare(&self.file, plan, geometry).with_context(|| format!("partitioning {}", self.name))?;
        for p in &plan.partitions {
            let node = d.device.add_partition(p.number, p.offset, p.size)?;
            d.nodes.borrow_mut().push((p.number, node));
        }
        Ok(prepared)
    }

    /// The device a partition's filesystem is made and mounted on.
    pub fn partition_device(&self, part: &Partition) -> Result<PartitionDevice> {
        match &self.target {
            Target::Image => Ok(PartitionDevice::Loop(LoopDevice::attach(&self.file, &self.name, part.offset, part.size)?)),
            Target::Device(d) => {
                let nodes = d.nodes.borrow();
                let node = nodes.iter().find(|(n, _)| *n == part.number).map(|(_, p)| p.clone());
                Ok(PartitionDevice::Node(node.with_context(|| format!("partition {} of {} has no node", part.number, self.name))?))
            }
        }
    }

    /// Whether kiln has written to the device (an image: always false, it is kiln's own file).
    pub fn written(&self) -> bool {
        matches!(&self.target, Target::Device(d) if d.touched.get())
    }

    /// After a failed write: a device kiln wrote to is left with an empty GPT and no boot code,
    /// its partitions forgotten by the kernel, so no firmware boots a half-written disk. The
    /// caller has unmounted everything. An image needs nothing: it never gets a name.
    pub fn reset(&self) -> Result<()> {
        let Target::Device(d) = &self.target else { return Ok(()) };
        if !d.touched.get() {
            return Ok(());
        }
        let mut first_err = None;
        for p in d.device.partitions() {
            if let Err(e) = d.device.delete_partition(p.number) {
                first_err.get_or_insert(e);
            }
        }
        let geometry = Geometry { size: d.device.size, sector: d.device.sector_size };
        if let Err(e) = table::write_empty(&self.file, geometry) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Where a partition's filesystem is made: a loop device over an image's range, or a
/// device's partition node.
pub enum PartitionDevice {
    Loop(LoopDevice),
    Node(PathBuf),
}

impl PartitionDevice {
    pub fn path(&self) -> &Path {
        match self {
            PartitionDevice::Loop(l) => &l.path,
            PartitionDevice::Node(p) => p,
        }
    }

    /// Flushes what was written through the device, reporting a write that failed.
    pub fn flush(&self) -> Result<()> {
        match self {
            PartitionDevice::Loop(l) => l.flush(),
            PartitionDevice::Node(p) => File::open(p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("writing {} failed", p.display())),
        }
    }
}

/// Refuses a device of `size` bytes too small for `layout` with a root of `root_min` bytes.
pub fn check_fits(name: &str, size: u64, layout: &Layout, root_min: u64) -> Result<()> {
    let least = layout::least_disk_size(layout, root_min)?;
    anyhow::ensure!(
        size >= least,
        "{name} is too small: it has {} MiB, but the layout's partitions ({} MiB) and a root filesystem for this image (at least {} MiB) need {} MiB: choose a disk of at least that size",
        size / MIB,
        layout.fixed_bytes() / MIB,
        root_min.div_ceil(MIB),
        least.div_ceil(MIB)
    );
    Ok(())
}

/// Gives the root partition `size` bytes (bootc's `--root-size`), leaving what it had beyond
/// that unallocated.
pub fn limit_root(plan: &mut Plan, size: u64, root_min: u64) -> Result<()> {
    let size = size.div_ceil(MIB) * MIB;
    let root = plan.partitions.iter_mut().find(|p| p.role == Role::Root).context("the plan has no root partition")?;
    anyhow::ensure!(size >= root_min, "--root-size {} MiB is too small: this image needs a root of at least {} MiB", size / MIB, root_min.div_ceil(MIB));
    anyhow::ensure!(size <= root.size, "--root-size {} MiB does not fit: the disk leaves {} MiB for the root", size / MIB, root.size / MIB);
    root.size = size;
    Ok(())
}

/// How big a root filesystem to make for `content` bytes of files: room for the filesystem's
/// own metadata and block rounding (a quarter more), the deployment's copies of /etc and /var
/// and the kernel in /boot, and a gigabyte to live in. Returns (size, the least that fits).
pub fn root_size(content: u64) -> (u64, u64) {
    let least = content + content / 4 + 256 * MIB;
    (least + (1 << 30), least)
}

/// The kernel arguments the disk contributes: the root (by UUID unless another mount spec was
/// given; none when that is empty), read-write, and /boot (for FIPS' check of the kernel), as
/// bootc adds them.
pub fn kargs(plan: &Plan) -> Vec<String> {
    let mut k = Vec::new();
    let root = plan.root().spec();
    if !root.is_empty() {
        k.push(format!("root={root}"));
    }
    k.push("rw".to_string());
    if let Some(boot) = plan.part(Role::Boot).map(|b| b.spec()).filter(|s| !s.is_empty()) {
        k.push(format!("boot={boot}"));
    }
    k
}
