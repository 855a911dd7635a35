//! The target's filesystems made and mounted as the sysroot kiln writes the deployment into:
//! root at a work directory, /boot (if the layout has one) on root's `boot`. One loop device
//! per partition. Everything is undone when the value drops, on success, error or panic.
//!
//! This is the one place kiln needs the kernel to write a filesystem; it is kept this small so
//! that an unprivileged writer can replace it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sys_mount::{Mount, UnmountFlags};

use super::layout::{Partition, Plan, Role};
use super::loopdev::LoopDevice;
use super::mkfs;

pub struct Sysroot {
    /// Where the root filesystem is mounted.
    pub root: PathBuf,
    /// Mount points, in mount order.
    mounts: Vec<PathBuf>,
    /// Kept open until after the unmounts.
    loops: Vec<LoopDevice>,
}

impl Sysroot {
    /// Makes the root and /boot filesystems of `plan` inside `image` and mounts them under
    /// `workdir` (which must exist and be empty).
    pub fn create(image: &Path, plan: &Plan, workdir: &Path) -> Result<Sysroot> {
        let mut s = Sysroot { root: workdir.to_path_buf(), mounts: Vec::new(), loops: Vec::new() };
        s.attach_format_mount(image, plan.root(), workdir)?;
        if let Some(boot) = plan.part(Role::Boot) {
            let at = workdir.join("boot");
            std::fs::create_dir_all(&at)?;
            s.attach_format_mount(image, boot, &at)?;
        }
        Ok(s)
    }

    fn attach_format_mount(&mut self, image: &Path, part: &Partition, at: &Path) -> Result<()> {
        let fs = part.filesystem.as_deref().context("partition without a filesystem")?;
        let dev = LoopDevice::attach(image, part.offset, part.size)?;
        mkfs::format(&dev.path, fs, part.label.as_deref().unwrap_or(&part.name), &part.fs_uuid)
            .with_context(|| format!("making the {fs} filesystem of partition {}", part.name))?;
        Mount::builder()
            .fstype(fs)
            .data(mkfs::mount_options(fs))
            .mount(&dev.path, at)
            .with_context(|| format!("cannot mount {} ({fs}) on {}", dev.path.display(), at.display()))?;
        self.mounts.push(at.to_path_buf());
        self.loops.push(dev);
        Ok(())
    }

    /// Unmounts everything (flushing the filesystems) and detaches the loop devices,
    /// reporting a failure to unmount.
    pub fn close(mut self) -> Result<()> {
        self.unmount_all(false)
    }

    fn unmount_all(&mut self, lazy: bool) -> Result<()> {
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
