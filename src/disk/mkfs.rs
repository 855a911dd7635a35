//! Making a root or /boot filesystem on a device with the host's mkfs tools. Which tool and
//! options each filesystem type takes is data; the options keep to features the kernels and
//! GRUB of current bootc images read.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

struct Mkfs {
    fs: &'static str,
    tool: &'static str,
    package: &'static str,
    /// Arguments before the device; `@LABEL@` and `@UUID@` are replaced.
    args: &'static [&'static str],
    /// More arguments for a disk of 4 KiB logical sectors (Apple Silicon's NVMe): blocks and
    /// sectors of at least 4 KiB, whatever the filesystem's size and the host's page size.
    sector_4k: &'static [&'static str],
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
        sector_4k: &["-b", "4096"],
        max_label: 16,
    },
    Mkfs {
        fs: "xfs",
        tool: "mkfs.xfs",
        package: "xfsprogs",
        args: &["-q", "-f", "-K", "-L", "@LABEL@", "-m", "uuid=@UUID@"],
        sector_4k: &["-s", "size=4096"],
        max_label: 12,
    },
    Mkfs {
        fs: "btrfs",
        tool: "mkfs.btrfs",
        package: "btrfs-progs",
        args: &["-q", "-f", "-K", "-L", "@LABEL@", "-U", "@UUID@"],
        sector_4k: &["--sectorsize", "4096"],
        max_label: 255,
    },
    Mkfs { fs: "swap", tool: "mkswap", package: "util-linux", args: &["-L", "@LABEL@", "-U", "@UUID@"], sector_4k: &[], max_label: 16 },
];

/// The root filesystem types kiln can make.
pub fn supported() -> Vec<&'static str> {
    MKFS.iter().map(|m| m.fs).filter(|f| *f != "swap").collect()
}

pub fn check_supported(fs: &str) -> Result<()> {
    if !MKFS.iter().any(|m| m.fs == fs) {
        bail!("unknown root filesystem type {fs:?}: use one of {}", supported().join(", "));
    }
    Ok(())
}

/// Options to mount a fresh filesystem of type `fs` with while kiln writes it (none is recorded
/// in the filesystem). ext4: no background zeroing of inode tables.
pub fn mount_options(fs: &str) -> &'static str {
    match fs {
        "ext4" => "noinit_itable",
        _ => "",
    }
}

/// Makes a filesystem of type `fs` on `device`; with `content`, filled in userspace with that
/// directory's tree (ext4 only: `mke2fs -d`); with `sector_4k`, fit for 4 KiB logical sectors.
pub fn format(device: &Path, fs: &str, label: &str, uuid: &str, content: Option<&Path>, sector_4k: bool) -> Result<()> {
    let m = MKFS.iter().find(|m| m.fs == fs).with_context(|| format!("unknown filesystem type {fs:?}"))?;
    if label.len() > m.max_label {
        bail!("label {label:?} is longer than {fs} allows ({} bytes)", m.max_label);
    }
    let mut args: Vec<String> = Vec::new();
    for a in m.args {
        // No label: the option goes with its value.
        if label.is_empty() && (*a == "-L" || *a == "@LABEL@") {
            continue;
        }
        args.push(a.replace("@LABEL@", label).replace("@UUID@", uuid));
    }
    if sector_4k {
        args.extend(m.sector_4k.iter().map(|a| a.to_string()));
    }
    if let Some(dir) = content {
        if fs != "ext4" {
            bail!("kiln fills only ext4 filesystems in userspace, not {fs}");
        }
        args.push("-d".into());
        args.push(dir.display().to_string());
    }
    let out = tool(m.tool)
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

/// Sets every used inode's access, change and creation times to 0 and marks `immutable` paths immutable (chattr +i),
/// with debugfs on an unmounted ext4 filled by `mke2fs -d`, whose inodes are numbered in
/// order from the first non-reserved one. (mke2fs copies times from the files it reads,
/// which the kernel stamped with the clock.)
pub fn settle_ext4(device: &Path, immutable: &[String]) -> Result<()> {
    let stats = tool("debugfs").arg("-R").arg("stats").arg(device).output().context("cannot run debugfs (e2fsprogs)")?;
    let text = String::from_utf8_lossy(&stats.stdout);
    let field = |name: &str| -> Option<u64> { text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()) };
    let (Some(count), Some(free)) = (field("Inode count:"), field("Free inodes:")) else {
        bail!("debugfs could not read the filesystem on {}", device.display());
    };
    let mut cmds = String::new();
    for ino in std::iter::once(2).chain(11..=count - free) {
        for f in ["atime", "ctime", "crtime"] {
            cmds += &format!("sif <{ino}> {f} 0\n");
        }
    }
    for path in immutable {
        cmds += &format!("sif \"{path}\" flags 0x80010\n");
    }
    debugfs(device, &cmds)
}

/// Runs a debugfs script writing to the unmounted ext4 on `device`. The commands go through a
/// pipe (a file for them could be left behind), and debugfs dies with kiln.
pub fn debugfs(device: &Path, script: &str) -> Result<()> {
    let mut child = tool("debugfs")
        .arg("-w")
        .args(["-f", "-"])
        .arg(device)
        .env("E2FSPROGS_FAKE_TIME", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run debugfs (e2fsprogs)")?;
    let mut stdin = child.stdin.take().unwrap();
    let script = script.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let out = child.wait_with_output().context("cannot run debugfs")?;
    writer.join().map_err(|_| anyhow::anyhow!("writing to debugfs panicked"))?.context("writing debugfs' commands")?;
    // debugfs reports a failed command on stderr and still exits 0.
    let errors: Vec<&str> = std::str::from_utf8(&out.stderr).unwrap_or("").lines().filter(|l| !l.starts_with("debugfs ")).collect();
    if !out.status.success() || !errors.is_empty() {
        bail!("debugfs on {} failed: {}", device.display(), errors.join("; "));
    }
    Ok(())
}

/// A command for a tool that works on kiln's devices and dies with kiln: a kiln killed with
/// SIGKILL takes its mkfs along instead of leaving it holding a loop device.
pub fn tool(program: &str) -> Command {
    let mut c = Command::new(program);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent may have died before the prctl.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("kiln exited"));
            }
            Ok(())
        });
    }
    c
}
