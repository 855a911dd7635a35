//! Making a root or /boot filesystem on a device with the host's mkfs tools. Which tool and
//! options each filesystem type takes is data; the options keep to features the kernels and
//! GRUB of current bootc images read.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

struct Mkfs {
    fs: &'static str,
    tool: &'static str,
    package: &'static str,
    /// Arguments before the device; `@LABEL@` and `@UUID@` are replaced.
    args: &'static [&'static str],
    /// Longest label the filesystem takes.
    max_label: usize,
}

const MKFS: &[Mkfs] = &[
    Mkfs {
        fs: "ext4",
        tool: "mkfs.ext4",
        package: "e2fsprogs",
        // orphan_file is newer than the kernels of some current images (EL9); lazy inode table
        // init stays on but the mount disables the background zeroing (noinit_itable).
        args: &["-q", "-F", "-L", "@LABEL@", "-U", "@UUID@", "-E", "nodiscard,hash_seed=@UUID@", "-O", "^orphan_file"],
        max_label: 16,
    },
    Mkfs { fs: "xfs", tool: "mkfs.xfs", package: "xfsprogs", args: &["-q", "-f", "-K", "-L", "@LABEL@", "-m", "uuid=@UUID@"], max_label: 12 },
    Mkfs { fs: "btrfs", tool: "mkfs.btrfs", package: "btrfs-progs", args: &["-q", "-f", "-K", "-L", "@LABEL@", "-U", "@UUID@"], max_label: 255 },
];

/// The root filesystem types kiln can make.
pub fn supported() -> Vec<&'static str> {
    MKFS.iter().map(|m| m.fs).collect()
}

pub fn check_supported(fs: &str) -> Result<()> {
    if !MKFS.iter().any(|m| m.fs == fs) {
        bail!("unknown root filesystem type {fs:?}: use one of {}", supported().join(", "));
    }
    Ok(())
}

/// Options to mount a fresh filesystem of type `fs` with while kiln writes it.
pub fn mount_options(fs: &str) -> &'static str {
    match fs {
        "ext4" => "noinit_itable",
        _ => "",
    }
}

/// Makes a filesystem of type `fs` on `device`.
pub fn format(device: &Path, fs: &str, label: &str, uuid: &str) -> Result<()> {
    let m = MKFS.iter().find(|m| m.fs == fs).with_context(|| format!("unknown filesystem type {fs:?}"))?;
    if label.len() > m.max_label {
        bail!("label {label:?} is longer than {fs} allows ({} bytes)", m.max_label);
    }
    let args: Vec<String> = m.args.iter().map(|a| a.replace("@LABEL@", label).replace("@UUID@", uuid)).collect();
    let out = Command::new(m.tool)
        .args(&args)
        .arg(device)
        // mke2fs stamps its times from this: the same seed gives the same superblock.
        .env("E2FSPROGS_FAKE_TIME", "1")
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!("{} not found: install {} to make {fs} filesystems", m.tool, m.package),
            _ => anyhow::Error::new(e).context(format!("cannot run {}", m.tool)),
        })?;
    if !out.status.success() {
        bail!("{} {} failed: {}", m.tool, device.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
