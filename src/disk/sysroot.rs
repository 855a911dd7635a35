//! The target's filesystems made and mounted as the sysroot kiln writes the deployment into:
//! root at a mount point in the run directory, /boot (if the layout has one) on root's `boot`.
//! One loop device per partition. Everything is undone when the value drops, on success, error
//! or panic; and since the mounts live in kiln's own mount namespace (`mountns`) and the loop
//! devices auto-clear, also when the process is killed.
//!
//! This is the one place kiln needs the kernel to write a filesystem; it is kept this small so
//! that an unprivileged writer can replace it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sys_mount::{Mount, UnmountFlags};

use super::layout::{Partition, Plan, Role};
use super::loopdev::LoopDevice;
use super::grow::{Growing, RootGrowth};
use super::verity::{self, Ext4Fixup};
use super::{mkfs, Disk, PartitionDevice};
use crate::pending::PendingFile;

pub struct Sysroot {
    /// Where the root filesystem is mounted (or staged).
    pub root: PathBuf,
    /// Mount points, in mount order.
    mounts: Vec<PathBuf>,
    /// Kept open until after the unmounts.
    loops: Vec<PartitionDevice>,
    /// The directories the mounts cover (not the root's own), opened before mounting: their
    /// metadata can still be set once they are hidden (a mount point needs its SELinux label).
    covered: Vec<(PathBuf, std::fs::File)>,
    /// Set when the filesystems are staged and made at the end.
    staged: Option<Staged>,
    /// The root filesystem's type.
    root_fs: String,
    /// fs-verity still to be finished on the root filesystem once unmounted (ext4).
    verity: Vec<Ext4Fixup>,
    /// Set when the root grows as files are stored (see `grow`).
    growth: Option<RootGrowth>,
}

/// The reproducible way (`--seed`): the sysroot is written to plain directories, and the
/// filesystems are made from them in userspace (`mke2fs -d`) when it is closed, their times
/// then set to 0. The kernel's allocator and clock play no part, so the same input gives the
/// same bytes. It costs a second copy of the data, so it is only used when asked for.
///
/// The directories are on a scratch ext4 filesystem whose backing file has no name (it is
/// made beside the output), so a killed bake leaves no staged copy behind: the mount goes with
/// the namespace, the loop device with the mount, the file with the loop device.
struct Staged {
    disk: Disk,
    plan: Plan,
    workdir: PathBuf,
    /// Closed after the scratch filesystem is unmounted.
    _scratch: PendingFile,
}

/// The scratch filesystem's UUID and hash seed: fixed, so that directories list in the same
/// order every time (`mke2fs -d` adds entries in that order).
const STAGING_UUID: &str = "6b696c6e-7374-6167-696e-670000000001";

impl Sysroot {
    /// Makes the root and /boot filesystems of `plan` on `disk` and mounts them under
    /// `workdir` (which must exist and be empty).
    pub fn create(disk: &Disk, plan: &Plan, workdir: &Path) -> Result<Sysroot> {
        // Data partitions first: mkfs.btrfs refuses a loop device whose backing file has
        // another loop device mounted (the root's), whatever the offsets.
        format_data(disk, plan, workdir)?;
        let root_fs = plan.root().filesystem.clone().unwrap_or_default();
        let mut s = Sysroot::empty(workdir.to_path_buf(), root_fs);
        s.format_mount(disk.partition_device(plan.root())?, plan.root(), workdir, plan.sector_4k)?;
        if let Some(boot) = plan.part(Role::Boot) {
            let at = workdir.join("boot");
            std::fs::create_dir_all(&at)?;
            s.format_mount(disk.partition_device(boot)?, boot, &at, plan.sector_4k)?;
        }
        Ok(s)
    }

    /// Like [`Sysroot::create`], but reproducible (see [`Staged`]); ext4 only. The scratch
    /// filesystem's file is made in `scratch_dir`.
    pub fn create_staged(disk: &Disk, plan: &Plan, workdir: &Path, scratch_dir: &Path) -> Result<Sysroot> {
        for p in plan.partitions.iter().filter(|p| matches!(p.role, Role::Root | Role::Boot | Role::Data) && p.filesystem.is_some()) {
            if !matches!(p.filesystem.as_deref(), Some("ext4") | Some("swap")) {
                anyhow::bail!(
                    "--seed makes byte-identical disks with ext4 filesystems only ({} is {}): use --rootfs ext4, or leave out --seed",
                    p.describe(),
                    p.filesystem.as_deref().unwrap_or("none")
                );
            }
        }
        format_data(disk, plan, workdir)?;
        // Room for what the root and /boot filesystems will hold (the file is sparse).
        let size: u64 = plan.partitions.iter().filter(|p| matches!(p.role, Role::Root | Role::Boot)).map(|p| p.size).sum();
        let scratch = PendingFile::create(scratch_dir, "staging")?;
        scratch.file().set_len(size).with_context(|| format!("cannot make a {size}-byte staging file in {}", scratch_dir.display()))?;
        let staging = Partition {
            role: Role::Root,
            number: 0,
            name: "staging".into(),
            type_guid: String::new(),
            guid: String::new(),
            offset: 0,
            size,
            filesystem: Some("ext4".into()),
            label: Some("kiln-staging".into()),
            fs_uuid: STAGING_UUID.into(),
            mountpoint: None,
            options: None,
            subvolumes: Vec::new(),
            mount_spec: None,
        };
        let mut s = Sysroot::empty(workdir.join("root"), "ext4".into());
        let dev = LoopDevice::attach(scratch.file(), "kiln staging file", staging.offset, staging.size)?;
        // kiln's own scratch: only its files are copied to the disk.
        s.format_mount(PartitionDevice::Loop(dev), &staging, workdir, false)?;
        std::fs::create_dir_all(s.root.join("boot"))?;
        let disk = Disk::image(disk.file.try_clone()?, disk.name.clone());
        s.staged = Some(Staged { disk, plan: plan.clone(), workdir: workdir.to_path_buf(), _scratch: scratch });
        Ok(s)
    }

    /// Like [`Sysroot::create`], with a root that grows from its size in `plan` as files are
    /// stored into it (see `grow`, and `grow::possible`).
    pub fn create_growing(disk: &Disk, plan: &Plan, workdir: &Path) -> Result<Sysroot> {
        let growth = RootGrowth::new(disk, plan)?;
        let mut s = Sysroot::create(disk, plan, workdir)?;
        s.growth = Some(growth);
        Ok(s)
    }

    /// The root's growth, while it is mounted and grows (see `grow`).
    pub fn growing(&self) -> Option<Growing<'_>> {
        match (&self.growth, self.loops.first()) {
            (Some(growth), Some(PartitionDevice::Loop(device))) => Some(Growing { growth, device, mountpoint: &self.root }),
            _ => None,
        }
    }

    /// The root partition's size, for a root that grows (the plan's is its first).
    pub fn grown_root_size(&self) -> Option<u64> {
        self.growth.as_ref().map(RootGrowth::root_size)
    }

    /// A sysroot on filesystems someone else made and mounted (`install to-filesystem`):
    /// nothing of it is unmounted when it closes.
    pub fn existing(root: PathBuf, root_fs: String) -> Sysroot {
        Sysroot::empty(root, root_fs)
    }

    fn empty(root: PathBuf, root_fs: String) -> Sysroot {
        Sysroot { root, mounts: Vec::new(), loops: Vec::new(), covered: Vec::new(), staged: None, root_fs, verity: Vec::new(), growth: None }
    }

    /// `sector_4k`: the filesystem is made for 4 KiB logical sectors too (see `Plan::sector_4k`).
    fn format_mount(&mut self, dev: PartitionDevice, part: &Partition, at: &Path, sector_4k: bool) -> Result<()> {
        let fs = part.filesystem.as_deref().context("partition without a filesystem")?;
        mkfs::format(dev.path(), fs, part.label.as_deref().unwrap_or(&part.name), &part.fs_uuid, None, sector_4k)
            .with_context(|| format!("making the {fs} filesystem of partition {}", part.name))?;
        if at != self.root && at.starts_with(&self.root) {
            let dir = std::fs::File::open(at).with_context(|| format!("cannot open {}", at.display()))?;
            self.covered.push((at.to_path_buf(), dir));
        }
        Mount::builder()
            .fstype(fs)
            .data(mkfs::mount_options(fs))
            .mount(dev.path(), at)
            .with_context(|| format!("cannot mount {} ({fs}) on {}", dev.path().display(), at.display()))?;
        self.mounts.push(at.to_path_buf());
        self.loops.push(dev);
        Ok(())
    }

    /// The mount points below the root (where, and the directory the mount hides).
    pub fn covered_dirs(&self) -> impl Iterator<Item = (&Path, &std::fs::File)> {
        self.covered.iter().map(|(p, f)| (p.as_path(), f))
    }

    /// Fails early, with the remedy, when fs-verity cannot be written on the root filesystem.
    pub fn check_verity(&self) -> Result<()> {
        if self.root_fs == "ext4" && self.loops.is_empty() && self.staged.is_none() {
            // kiln writes ext4's fs-verity offline, on the unmounted filesystem it made.
            anyhow::bail!("fs-verity on an ext4 root kiln did not make is not supported: install to a whole disk (install to-disk) instead");
        }
        verity::check_supported(&self.root_fs, &self.root, self.staged.is_some())
    }

    /// Makes `files` (under [`Sysroot::root`]) verity files. Their content must not be read
    /// through the filesystem afterwards: on ext4 the metadata sits past their data until the
    /// sysroot is closed.
    pub fn enable_verity(&mut self, files: &[PathBuf]) -> Result<()> {
        let fixups = verity::enable(&self.root_fs, &self.root, files, self.staged.is_some())?;
        self.verity.extend(fixups);
        Ok(())
    }

    /// Unmounts everything (flushing the filesystems) and detaches the loop devices,
    /// reporting a failure to unmount.
    pub fn close(mut self) -> Result<()> {
        match self.staged.take() {
            // The scratch filesystem is thrown away: no need to flush it.
            Some(st) => st.make_filesystems(&self.root, &self.verity).and(self.unmount_all(true)),
            None => self.unmount_all(false),
        }
    }

    fn unmount_all(&mut self, lazy: bool) -> Result<()> {
        // Open directories would keep the root filesystem busy.
        self.covered.clear();
        let mut first_err = None;
        // Flush first and look at the result: a write the backing file could not take (its
        // disk full) only shows here, and unmounting would hide it.
        if !lazy {
            for m in self.mounts.iter().rev() {
                if let Err(e) = syncfs(m) {
                    first_err.get_or_insert(e);
                }
            }
        }
        while let Some(m) = self.mounts.pop() {
            let flags = if lazy { UnmountFlags::DETACH } else { UnmountFlags::empty() };
            if let Err(e) = sys_mount::unmount(&m, flags) {
                let _ = sys_mount::unmount(&m, UnmountFlags::DETACH);
                first_err.get_or_insert(anyhow::anyhow!("cannot unmount {}: {e}", m.display()));
            }
        }
        if !lazy {
            // The root's device is the first: finish its fs-verity now it is unmounted.
            if first_err.is_none() {
                if let Some(root) = self.loops.first() {
                    if let Err(e) = verity::finish_ext4(root.path(), &std::mem::take(&mut self.verity)) {
                        first_err.get_or_insert(e);
                    }
                }
            }
            for l in &self.loops {
                if let Err(e) = l.flush() {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.loops.clear();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Makes the filesystems of the data partitions (empty: they are mounted over the deployment's
/// directories at boot), and their btrfs subvolumes.
fn format_data(disk: &Disk, plan: &Plan, workdir: &Path) -> Result<()> {
    for part in plan.partitions.iter().filter(|p| p.role == Role::Data) {
        let Some(fs) = part.filesystem.as_deref() else { continue };
        let dev = disk.partition_device(part)?;
        mkfs::format(dev.path(), fs, part.label.as_deref().unwrap_or(""), &part.fs_uuid, None, plan.sector_4k)
            .with_context(|| format!("making the {fs} filesystem of {}", part.describe()))?;
        if !part.subvolumes.is_empty() {
            let at = workdir.join(format!("subvolumes-{}", part.number));
            std::fs::create_dir_all(&at)?;
            let made = (|| -> Result<()> {
                let _mount = Mount::builder()
                    .fstype(fs)
                    .mount_autodrop(dev.path(), &at, UnmountFlags::empty())
                    .with_context(|| format!("cannot mount {} to make its subvolumes", part.describe()))?;
                for sv in &part.subvolumes {
                    let out = std::process::Command::new("btrfs")
                        .args(["subvolume", "create"])
                        .arg(at.join(&sv.name))
                        .output()
                        .context("cannot run btrfs (btrfs-progs)")?;
                    if !out.status.success() {
                        anyhow::bail!("btrfs subvolume create {}: {}", sv.name, String::from_utf8_lossy(&out.stderr).trim());
                    }
                }
                syncfs(&at)
            })();
            let _ = std::fs::remove_dir(&at);
            made?;
        }
        dev.flush()?;
    }
    Ok(())
}

fn syncfs(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    if unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&f)) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("writing the filesystem mounted on {} failed: {e} (is the disk holding the output full?)", dir.display());
    }
    Ok(())
}

impl Drop for Sysroot {
    fn drop(&mut self) {
        let _ = self.unmount_all(true);
    }
}

fn settle_mtimes(dir: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let set = |p: &Path| -> Result<()> {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
        let t = libc::timespec { tv_sec: 1, tv_nsec: 0 };
        if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            anyhow::bail!("cannot set the times of {}: {}", p.display(), std::io::Error::last_os_error());
        }
        Ok(())
    };
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let md = std::fs::symlink_metadata(&p)?;
        if md.is_dir() {
            settle_mtimes(&p)?;
        }
        if md.mtime() != 0 {
            set(&p)?;
        }
    }
    // A directory last, after its entries changed it.
    if std::fs::symlink_metadata(dir)?.mtime() != 0 {
        set(dir)?;
    }
    Ok(())
}

impl Staged {
    fn make_filesystems(&self, root: &Path, verity: &[Ext4Fixup]) -> Result<()> {
        // Deployment roots are immutable (as ostree leaves them): cleared for the copy, set
        // again in the new filesystem.
        let mut immutable = Vec::new();
        for d in deployment_roots(root) {
            crate::ostree::deploy::set_immutable(&d, false)?;
            immutable.push(format!("/{}", d.strip_prefix(root).unwrap().display()));
        }
        let mut parts = vec![(self.plan.root().clone(), root.to_path_buf(), immutable)];
        if let Some(boot) = self.plan.part(Role::Boot) {
            let boot_dir = self.workdir.join("boot");
            std::fs::rename(root.join("boot"), &boot_dir)?;
            std::fs::create_dir(root.join("boot"))?;
            // The mount point keeps the label the directory had.
            crate::fsmeta::copy_xattr(&boot_dir, &root.join("boot"), b"security.selinux")?;
            parts.push((boot.clone(), boot_dir, Vec::new()));
        }
        // Modification times kiln did not set (directories written into, the repository's
        // own) become 1 second past the epoch; 0 is what ostree gives content, and a sysroot
        // whose ostree/deploy has mtime 0 looks "not loaded" to libostree.
        for (_, dir, _) in &parts {
            settle_mtimes(dir)?;
        }
        for (part, dir, immutable) in parts {
            let dev = LoopDevice::attach(&self.disk.file, &self.disk.name, part.offset, part.size)?;
            mkfs::format(&dev.path, "ext4", part.label.as_deref().unwrap_or(&part.name), &part.fs_uuid, Some(&dir), self.plan.sector_4k)
                .with_context(|| format!("making the filesystem of partition {}", part.name))?;
            mkfs::settle_ext4(&dev.path, &immutable)?;
            if part.role == Role::Root {
                verity::finish_ext4(&dev.path, verity)?;
            }
            dev.flush()?;
        }
        Ok(())
    }
}

/// Clears the immutable flag of the deployments an older kiln staged under `dir` (in
/// `dir/root`), so that the directory can be removed.
pub fn clear_immutable_deployments(dir: &Path) {
    clear_immutable(&dir.join("root"));
}

/// Clears the immutable flag of the deployments of the ostree sysroot at `sysroot`.
pub fn clear_immutable(sysroot: &Path) {
    for d in deployment_roots(sysroot) {
        let _ = crate::ostree::deploy::set_immutable(&d, false);
    }
}

/// `ostree/deploy/<stateroot>/deploy/<checksum>.<serial>` directories under a sysroot.
fn deployment_roots(sysroot: &Path) -> Vec<PathBuf> {
    let dirs = |p: PathBuf| std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| e.path());
    dirs(sysroot.join("ostree/deploy")).flat_map(|stateroot| dirs(stateroot.join("deploy"))).filter(|d| d.is_dir()).collect()
}
