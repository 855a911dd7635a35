//! Whether a device may be installed to, decided before anything is written, in the order of
//! the research note (`install-and-iso.md` §1.3): what the path is (a whole-disk block device
//! that can hold partitions), whether it holds the running system, whether anything uses it
//! (mounts in this and pid 1's mount namespace, swap, holders, then an exclusive open as the
//! catch-all), and whether it has content that `--wipe` must be asked for. Each refusal names
//! the culprit and what to do instead. The disk's size is checked by the bake once the image's
//! size is known.

use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::disk::blockdev::{dev_of_node, partitions_of, read_trim, Dev};

/// A device that passed the checks.
pub struct Checked {
    pub path: PathBuf,
    pub dev: Dev,
    pub name: String,
}

pub fn check(given: &Path, wipe: bool) -> Result<Checked> {
    let path = std::fs::canonicalize(given).with_context(|| format!("{} does not exist", given.display()))?;
    let shown = if path == given { given.display().to_string() } else { format!("{} ({})", given.display(), path.display()) };
    let md = std::fs::metadata(&path).with_context(|| format!("cannot read {shown}"))?;
    let ft = md.file_type();
    if ft.is_char_device() {
        bail!("{shown} is a character device, not a disk: pass the disk's block device (for an NVMe controller /dev/nvme0, its namespace /dev/nvme0n1)");
    }
    if !ft.is_block_device() {
        bail!("{shown} is not a block device: pass a whole disk such as /dev/sda or /dev/nvme0n1 (to make a disk image file, use `kiln bake --type raw`)");
    }
    let dev = Dev::from_rdev(md.rdev());
    let name = dev.name().with_context(|| format!("{shown} is not in /sys/dev/block: is sysfs mounted?"))?;
    let sys = Path::new("/sys/class/block").join(&name);

    // What the path is.
    if let Some(n) = read_trim(&sys.join("partition")) {
        let whole = dev.whole_disk().name().unwrap_or_else(|| "its disk".into());
        bail!("{shown} is partition {n} of /dev/{whole}, not a whole disk: pass /dev/{whole} (kiln partitions the whole disk)");
    }
    if sys.join("loop").exists() {
        if read_trim(&sys.join("loop/backing_file")).is_none() {
            bail!("{shown} is a loop device with no file attached");
        }
        if read_trim(&sys.join("loop/partscan")).as_deref() != Some("1") {
            bail!("{shown} is a loop device without partition scanning, so it cannot hold partitions: detach it (losetup -d {}) and attach the file again with `losetup --partscan`", path.display());
        }
    } else if read_trim(&sys.join("partscan")).as_deref() == Some("0") || read_trim(&sys.join("ext_range")).as_deref() == Some("1") {
        bail!("{shown} cannot hold partitions (a device-mapper or other virtual device): pass the whole physical disk");
    }
    if read_trim(&sys.join("ro")).as_deref() == Some("1") {
        bail!("{shown} is read-only");
    }

    // Whether it holds the running system.
    let ours = |d: &Dev| d.underlying_disks().contains(&dev);
    for (mountinfo, whose) in [("/proc/self/mountinfo", "the running system's"), ("/proc/1/mountinfo", "the host's (pid 1)")] {
        if let Some(m) = mounts(mountinfo).into_iter().find(|m| m.point == "/") {
            if ours(&m.dev) {
                bail!("{shown} holds {whose} root filesystem (/ is {}): choose another disk", m.source);
            }
        }
    }
    if let Some(exe_dev) = std::fs::metadata("/proc/self/exe").ok().map(|m| Dev::from_rdev(m.dev())) {
        if let Some(m) = mounts("/proc/self/mountinfo").into_iter().find(|m| m.st_dev == exe_dev) {
            if ours(&m.dev) {
                bail!("{shown} holds kiln itself ({} on {}): run kiln from another medium, or choose another disk", m.source, m.point);
            }
        }
    }

    // Whether anything uses it or one of its partitions.
    let parts = partitions_of(&name);
    let node_of = |d: &Dev| -> String {
        parts.iter().find(|p| &p.dev == d).map(|p| p.node().display().to_string()).unwrap_or_else(|| path.display().to_string())
    };
    let mut culprits: Vec<String> = Vec::new();
    let mut add = |c: String| {
        if !culprits.contains(&c) {
            culprits.push(c)
        }
    };
    let own = mounts("/proc/self/mountinfo");
    let host: Vec<Mount> = mounts("/proc/1/mountinfo").into_iter().filter(|h| !own.iter().any(|m| m.dev == h.dev && m.point == h.point)).collect();
    for (list, whose) in [(own, ""), (host, " (in pid 1's mount namespace)")] {
        for m in list {
            if m.dev.whole_disk() == dev {
                add(format!("{} is mounted on {}{whose}", node_of(&m.dev), m.point));
            } else if ours(&m.dev) {
                add(format!("{} (on {shown}) is mounted on {}{whose}", m.source, m.point));
            }
        }
    }
    for line in std::fs::read_to_string("/proc/swaps").unwrap_or_default().lines().skip(1) {
        let Some(file) = line.split_whitespace().next() else { continue };
        let file = file.replace("\\040", " ");
        if let Some(d) = dev_of_node(Path::new(&file)) {
            if d.whole_disk() == dev {
                add(format!("{} is in use as swap (swapoff {})", node_of(&d), node_of(&d)));
            }
        }
    }
    for (holder_dir, what) in std::iter::once((sys.join("holders"), path.display().to_string())).chain(parts.iter().map(|p| (Path::new("/sys/class/block").join(&p.name).join("holders"), p.node().display().to_string()))) {
        for h in std::fs::read_dir(&holder_dir).into_iter().flatten().flatten() {
            let holder = h.file_name().to_string_lossy().into_owned();
            let shown_holder = match read_trim(&Path::new("/sys/class/block").join(&holder).join("dm/name")) {
                Some(dm) => format!("/dev/{holder} (/dev/mapper/{dm}: remove it with dmsetup remove {dm}, or vgchange -an its volume group)"),
                None => format!("/dev/{holder} (stop it first, e.g. mdadm --stop /dev/{holder})"),
            };
            add(format!("{what} is held by {shown_holder}"));
        }
    }
    if !culprits.is_empty() {
        bail!("{shown} is in use:\n  {}\nfree it first (unmount, swapoff, remove what holds it)", culprits.join("\n  "));
    }
    // The catch-all: anything else that claimed the disk or a partition.
    if let Err(e) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(&path) {
        if e.raw_os_error() == Some(libc::EBUSY) {
            bail!("{shown} is in use by another program (it cannot be opened exclusively): close what holds it, then try again");
        }
        return Err(e).with_context(|| format!("cannot open {shown}"));
    }

    // What is on it.
    if !wipe {
        if let Some(what) = existing_content(&path, &name)? {
            bail!("{shown} has {what}: pass --wipe to erase it (everything on the disk is lost)");
        }
    }
    Ok(Checked { path, dev, name })
}

struct Mount {
    point: String,
    source: String,
    /// The device mounted: the source node's, else the filesystem's (mountinfo's MAJ:MIN).
    dev: Dev,
    /// The filesystem's st_dev (mountinfo's MAJ:MIN).
    st_dev: Dev,
}

/// The mounts of a mountinfo file (`proc(5)`).
fn mounts(mountinfo: &str) -> Vec<Mount> {
    let unescape = |s: &str| s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
    std::fs::read_to_string(mountinfo)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let st_dev = Dev::parse(fields.get(2)?)?;
            let point = unescape(fields.get(4)?);
            let sep = fields.iter().position(|f| *f == "-")?;
            let source = unescape(fields.get(sep + 2)?);
            let dev = if source.starts_with('/') { dev_of_node(Path::new(&source)) } else { None }.unwrap_or_else(|| st_dev.clone());
            Some(Mount { point, source, dev, st_dev })
        })
        .collect()
}

/// A description of what `path` holds, if anything: partitions the kernel knows, a partition
/// table, or a filesystem or volume signature at the start of the disk.
fn existing_content(path: &Path, name: &str) -> Result<Option<String>> {
    let parts = partitions_of(name);
    if !parts.is_empty() {
        let names: Vec<String> = parts.iter().map(|p| p.node().display().to_string()).collect();
        return Ok(Some(format!("partitions ({})", names.join(", "))));
    }
    signature(path, name)
}

/// What `path` holds for a list of disks: its partition table or signature and how many
/// partitions the kernel knows of ("a GPT partition table, 3 partitions"); None: nothing kiln
/// recognizes (an empty disk, as far as an install is concerned).
pub fn content_summary(path: &Path, name: &str) -> Result<Option<String>> {
    let parts = partitions_of(name).len();
    let what = signature(path, name)?;
    let count = |n: usize| format!("{n} partition{}", if n == 1 { "" } else { "s" });
    Ok(match (what, parts) {
        (what, 0) => what,
        (Some(what), n) => Some(format!("{what}, {}", count(n))),
        (None, n) => Some(count(n)),
    })
}

/// The partition table, filesystem or volume signature `path` has (at its start, or a backup
/// GPT at its end).
fn signature(path: &Path, name: &str) -> Result<Option<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut head = vec![0u8; 128 << 10];
    let n = read_at_most(&f, &mut head, 0)?;
    head.truncate(n);
    // sysfs counts 512-byte units whatever the sector size.
    let size = read_trim(&Path::new("/sys/class/block").join(name).join("size")).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 512;
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let signatures: &[(usize, &[u8], &str)] = &[
        (512, b"EFI PART", "a GPT partition table"),
        (4096, b"EFI PART", "a GPT partition table"),
        (0, b"XFSB", "an xfs filesystem"),
        (1080, &[0x53, 0xef], "an ext2/3/4 filesystem"),
        (65600, b"_BHRfS_M", "a btrfs filesystem"),
        (4086, b"SWAPSPACE2", "a swap area"),
        (512, b"LABELONE", "an LVM physical volume"),
        (0, b"LUKS\xba\xbe", "a LUKS volume"),
        (32769, b"CD001", "an ISO 9660 filesystem"),
        (4096, &[0xfc, 0x4e, 0x2b, 0xa9], "an md RAID member"),
        (82, b"FAT32", "a FAT filesystem"),
        (54, b"FAT1", "a FAT filesystem"),
    ];
    if let Some((_, _, what)) = signatures.iter().find(|(off, magic, _)| at(*off, magic)) {
        return Ok(Some(what.to_string()));
    }
    if at(510, &[0x55, 0xaa]) && head[446..510].iter().any(|b| *b != 0) {
        return Ok(Some("an MBR partition table".into()));
    }
    for sector in [512u64, 4096] {
        if size > sector {
            let mut tail = [0u8; 8];
            if read_at_most(&f, &mut tail, size - sector)? == 8 && &tail == b"EFI PART" {
                return Ok(Some("a backup GPT partition table at its end".into()));
            }
        }
    }
    Ok(None)
}

fn read_at_most(f: &std::fs::File, buf: &mut [u8], offset: u64) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
