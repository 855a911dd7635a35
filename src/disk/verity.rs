//! fs-verity on files of the root filesystem, for images whose composefs mode requires it.
//!
//! ext4 is written without the kernel's help (the machine baking need not have fs-verity, and
//! a kernel without it cannot even mount an ext4 that has the feature read-write), in the
//! layout fs/ext4/verity.c reads: the Merkle tree from the first 64 KiB boundary past the
//! end of the data, the root level first; the descriptor at the next block boundary after
//! it; the descriptor's size in the last 4 bytes of the last block. kiln appends these while
//! the filesystem is mounted; once unmounted, debugfs sets each file's size back to its data
//! and its `EXT4_VERITY_FL`, and tune2fs the `verity` feature. btrfs keeps verity items in
//! its trees, which only its kernel driver writes: there the kernel enables it
//! (`FS_IOC_ENABLE_VERITY`), if this machine's can.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::fsverity;

/// `EXT4_VERITY_FL`.
const EXT4_VERITY_FL: u32 = 0x0010_0000;
/// `EXT4_EXTENTS_FL`: the only flag mke2fs gives the regular files it copies in.
const EXT4_EXTENTS_FL: u32 = 0x0008_0000;
/// ext4 puts the Merkle tree at this boundary past the data.
const EXT4_METADATA_ALIGN: u64 = 65536;

const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_ENABLE_VERITY: libc::c_ulong = 0x4080_6685;
const FS_IOC_MEASURE_VERITY: libc::c_ulong = 0xc004_6686;

/// What is left to do on an ext4 file once the filesystem is unmounted.
#[derive(Clone, Debug)]
pub struct Ext4Fixup {
    /// The file's path inside the filesystem (`/ostree/repo/…`).
    pub path: String,
    /// Its data size (what `i_size` must say again).
    pub size: u64,
    /// Its inode flags, before `EXT4_VERITY_FL`.
    pub flags: u32,
}

/// Fails early, with the remedy, when fs-verity cannot be written on a root filesystem of
/// type `fs` mounted (or staged) at `root`.
pub fn check_supported(fs: &str, root: &Path, staged: bool) -> Result<()> {
    match fs {
        "ext4" => {
            for tool in ["debugfs", "tune2fs"] {
                if Command::new(tool).arg("-V").output().is_err() {
                    bail!("{tool} not found: install e2fsprogs, which kiln needs to write fs-verity on ext4");
                }
            }
            Ok(())
        }
        "btrfs" if staged => bail!("--seed stages the root in directories and makes only ext4 from them: use --rootfs ext4 for an image that needs fs-verity"),
        "btrfs" => {
            // Try it on a scratch file: the kernel doing it is the only way on btrfs.
            let probe = root.join(format!(".kiln-verity-probe-{}", std::process::id()));
            fs::write(&probe, b"kiln")?;
            let result = enable_with_kernel(&probe);
            let _ = fs::remove_file(&probe);
            result.map(|_| ()).context(
                "fs-verity on btrfs is written by the kernel, and this machine's kernel cannot do it (it needs CONFIG_FS_VERITY): use --rootfs ext4, whose fs-verity kiln writes itself",
            )
        }
        other => bail!("{other} has no fs-verity: use --rootfs ext4 (or btrfs)"),
    }
}

/// Makes `files` (paths under `root`, the root filesystem of type `fs`) verity files; returns
/// the ext4 fix-ups to apply once the filesystem is unmounted (see [`finish_ext4`]).
pub fn enable(fs: &str, root: &Path, files: &[PathBuf], staged: bool) -> Result<Vec<Ext4Fixup>> {
    let mut fixups = Vec::new();
    for f in files {
        match fs {
            "ext4" => fixups.push(append_ext4(root, f, staged)?),
            _ => {
                let digest = enable_with_kernel(f)?;
                let expected = fsverity::digest_reader(&mut File::open(f)?)?;
                if digest != expected {
                    bail!("the kernel measured fs-verity digest {} for {}, not {}", hex::encode(digest), f.display(), hex::encode(expected));
                }
            }
        }
    }
    Ok(fixups)
}

/// Appends the Merkle tree and descriptor of `file` past its data, as ext4 stores them, and
/// keeps its times.
fn append_ext4(root: &Path, file: &Path, staged: bool) -> Result<Ext4Fixup> {
    let md = fs::symlink_metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    let size = md.len();
    let meta = fsverity::metadata(&mut File::open(file)?).with_context(|| format!("reading {}", file.display()))?;
    let f = OpenOptions::new().write(true).open(file).with_context(|| format!("cannot open {}", file.display()))?;
    // The filesystem's block: ext4 aligns the descriptor to it.
    let block = md.blksize();
    let tree_at = size.div_ceil(EXT4_METADATA_ALIGN) * EXT4_METADATA_ALIGN;
    let desc_at = (tree_at + meta.tree.len() as u64).div_ceil(block) * block;
    let size_at = (desc_at + meta.descriptor.len() as u64 + 4).div_ceil(block) * block - 4;
    let write = |bytes: &[u8], at: u64| f.write_all_at(bytes, at).with_context(|| format!("writing fs-verity metadata to {}", file.display()));
    write(&meta.tree, tree_at)?;
    write(&meta.descriptor, desc_at)?;
    write(&(meta.descriptor.len() as u32).to_le_bytes(), size_at)?;
    let flags = if staged { EXT4_EXTENTS_FL } else { get_flags(&f).with_context(|| format!("reading the flags of {}", file.display()))? };
    let times = [
        libc::timespec { tv_sec: md.atime() as libc::time_t, tv_nsec: md.atime_nsec() as _ },
        libc::timespec { tv_sec: md.mtime() as libc::time_t, tv_nsec: md.mtime_nsec() as _ },
    ];
    if unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setting the times of {}", file.display()));
    }
    let path = file.strip_prefix(root).with_context(|| format!("{} is not under {}", file.display(), root.display()))?;
    Ok(Ext4Fixup { path: format!("/{}", path.display()), size, flags })
}

fn get_flags(f: &File) -> std::io::Result<u32> {
    let mut flags: libc::c_long = 0;
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags as u32)
}

/// On the unmounted ext4 `device`: the `verity` feature, and each file's size and flag.
pub fn finish_ext4(device: &Path, fixups: &[Ext4Fixup]) -> Result<()> {
    if fixups.is_empty() {
        return Ok(());
    }
    let out = Command::new("tune2fs").args(["-O", "verity"]).arg(device).output().context("cannot run tune2fs (e2fsprogs)")?;
    if !out.status.success() {
        bail!("tune2fs -O verity {} failed: {}", device.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut script = String::with_capacity(fixups.len() * 120);
    for f in fixups {
        if f.path.contains(['"', '\n']) {
            bail!("{:?}: a path debugfs cannot be given", f.path);
        }
        script += &format!("sif \"{}\" size {}\nsif \"{}\" flags {:#x}\n", f.path, f.size, f.path, f.flags | EXT4_VERITY_FL);
    }
    crate::disk::mkfs::debugfs(device, &script)
}

/// Enables fs-verity through the kernel; returns the digest it measures.
fn enable_with_kernel(path: &Path) -> Result<[u8; 32]> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // struct fsverity_enable_arg: version 1, SHA-256, 4 KiB blocks, no salt, no signature.
    let mut arg = [0u8; 128];
    arg[0..4].copy_from_slice(&1u32.to_ne_bytes());
    arg[4..8].copy_from_slice(&(fsverity::HASH_ALG_SHA256 as u32).to_ne_bytes());
    arg[8..12].copy_from_slice(&(fsverity::BLOCK_SIZE as u32).to_ne_bytes());
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_ENABLE_VERITY, arg.as_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e).with_context(|| format!("enabling fs-verity on {}", path.display()));
        }
    }
    // struct fsverity_digest { __u16 digest_algorithm; __u16 digest_size; __u8 digest[]; }
    let mut d = [0u8; 4 + 64];
    d[2..4].copy_from_slice(&64u16.to_ne_bytes());
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_MEASURE_VERITY, d.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("measuring fs-verity on {}", path.display()));
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&d[4..36]);
    Ok(digest)
}
