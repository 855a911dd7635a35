//! Loop devices for one partition each: attached with an offset and a size limit (partition
//! scanning does not create `loopNpM` nodes reliably on every kernel) to an open file (which
//! may have no name: see `pending`), auto-clearing, so the kernel detaches them when their
//! last user goes (the handle dropped, the mount on them gone, or the process killed).
//!
//! The user named the `loopdev` crate; its 0.4 release generates bindings with bindgen at build
//! time (libclang, a minute of compiling) for three ioctls, so they are written here.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device; detached (auto-clear) once dropped and no longer mounted.
pub struct LoopDevice {
    pub path: PathBuf,
    device: File,
}

impl LoopDevice {
    /// Attaches `size` bytes of `backing` starting at `offset`; `name` is what the device
    /// reports as its file (`LOOP_GET_STATUS`).
    pub fn attach(backing: &File, name: &str, offset: u64, size: u64) -> Result<LoopDevice> {
        let control = OpenOptions::new().read(true).write(true).open("/dev/loop-control")
            .context("cannot open /dev/loop-control (kiln needs root and the loop module to write filesystems)")?;
        for _ in 0..16 {
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                bail!("no free loop device: {}", std::io::Error::last_os_error());
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let device = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
            };
            let mut file_name = [0u8; 64];
            let b = name.as_bytes();
            file_name[..b.len().min(63)].copy_from_slice(&b[..b.len().min(63)]);
            let config = LoopConfig {
                fd: backing.as_raw_fd() as u32,
                block_size: 0,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: offset,
                    lo_sizelimit: size,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    lo_flags: LO_FLAGS_AUTOCLEAR,
                    lo_file_name: file_name,
                    lo_crypt_name: [0; 64],
                    lo_encrypt_key: [0; 32],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            let r = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
            if r == 0 {
                return Ok(LoopDevice { path, device });
            }
            let err = std::io::Error::last_os_error();
            // Another process took it between GET_FREE and CONFIGURE: try the next one.
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(err).with_context(|| format!("cannot attach {name} to {}", path.display()));
            }
        }
        bail!("could not get a free loop device (all busy)")
    }
}

impl LoopDevice {
    /// Makes the device `size` bytes long (its backing file must reach that far), mounted or
    /// not: the kernel drains its I/O, changes the limit and announces the new capacity.
    pub fn set_size(&self, size: u64) -> Result<()> {
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(self.device.as_raw_fd(), LOOP_GET_STATUS64, &mut info) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot read the settings of {}", self.path.display()));
        }
        info.lo_sizelimit = size;
        if unsafe { libc::ioctl(self.device.as_raw_fd(), LOOP_SET_STATUS64, &info) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot make {} {size} bytes long", self.path.display()));
        }
        Ok(())
    }

    /// Flushes the device to its backing file, reporting a write the file refused.
    pub fn flush(&self) -> Result<()> {
        self.device.sync_all().with_context(|| {
            format!("writing {} to its backing file failed (is the disk holding the output full?)", self.path.display())
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // With auto-clear the kernel detaches once the last user is gone; clearing here also
        // covers a device that was never mounted. EBUSY (still mounted) leaves auto-clear to it.
        unsafe { libc::ioctl(self.device.as_raw_fd(), LOOP_CLR_FD) };
    }
}
