//! `kiln install to-filesystem ROOT IMAGE`, with bootc's semantics (research
//! `install-and-iso.md` §4.1): ROOT is a mounted, empty root filesystem (`--replace wipe`
//! empties it first); a separate `/boot` is a mount at `ROOT/boot` (a different device); the
//! ESP is a vfat mount at `ROOT/boot/efi`, `ROOT/efi` or `ROOT/boot`, else the ESP partition of
//! the disk under ROOT (written in userspace, unmounted). The filesystems found become the
//! plan the bake's own stages write the deployment and the bootloader with, so the kargs
//! (`root=UUID=… rw`, `boot=UUID=…`) and fstab are the bake's.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bake;
use crate::bootloader::{BiosBootPartition, BiosTarget, EspDir, EspWriter};
use crate::cli::{Replace, ToFilesystemArgs};
use crate::disk::blockdev::{dev_of_node, partitions_of, BlockDevice, Dev};
use crate::disk::esp::Esp;
use crate::disk::layout::MountScheme;
use crate::disk::sysroot::Sysroot;
use crate::disk::{table, Ids, Partition, Plan, Role};
use crate::interrupt;
use crate::progress::Progress;

const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";

pub fn to_filesystem(args: &ToFilesystemArgs, progress: &Progress) -> Result<()> {
    interrupt::install();
    let root = std::fs::canonicalize(&args.root).with_context(|| format!("{} does not exist", args.root.display()))?;
    if !root.is_dir() {
        bail!("{} is not a directory: pass the mount point of the target's root filesystem", root.display());
    }
    let mounts = Mounts::read();
    let root_mount = mounts.at(&root).with_context(|| format!("{} is not a mount point: mount the target's root filesystem there first", root.display()))?;
    let boot_mount = mounts.at(&root.join("boot"));
    if let (Some(subvol), None) = (root_mount.subvolume(), &boot_mount) {
        // GRUB reads btrfs from its top subvolume: /boot's paths would need the subvolume's.
        bail!("{} is the btrfs subvolume {subvol}, and GRUB does not find a /boot inside a subvolume: mount a separate /boot filesystem at {}/boot", root.display(), root.display());
    }
    match args.replace {
        None => check_empty(&root, &mounts)?,
        Some(Replace::Wipe) => {
            progress.info(&format!("--replace wipe: deleting everything on the filesystem mounted on {}", root.display()));
            wipe(&root, &mounts)?;
            if let Some(b) = &boot_mount {
                wipe(&b.point, &mounts)?;
            }
        }
        Some(Replace::Alongside) => {
            if root.join("ostree").exists() {
                bail!("{} already holds an ostree system (/ostree): --replace alongside installs next to another system's files; pass --replace wipe to replace it", root.display());
            }
            progress.info(&format!("--replace alongside: emptying /boot and the ESP; the other files on {} stay", root.display()));
            let boot = boot_mount.as_ref().map(|b| b.point.clone()).unwrap_or_else(|| root.join("boot"));
            if boot.is_dir() {
                wipe(&boot, &mounts)?;
            }
        }
    }
    let alongside = args.replace == Some(Replace::Alongside);

    let mut partitions = vec![Partition { mount_spec: args.root_mount_spec.clone(), ..found_partition(Role::Root, root_mount)? }];
    match (boot_mount, &args.boot_mount_spec) {
        (Some(b), spec) => partitions.push(Partition { mount_spec: spec.clone(), ..found_partition(Role::Boot, b)? }),
        (None, Some(_)) => bail!("--boot-mount-spec is for a separate /boot, but nothing is mounted at {}/boot", root.display()),
        (None, None) => {}
    }
    // The ESP: mounted (as bootupd looks for it), else the partition on root's disk.
    let esp_mount = ["boot/efi", "efi", "boot"].iter().map(|d| root.join(d)).find_map(|d| mounts.at(&d).filter(|m| m.fstype == "vfat"));
    let disk = open_disk_of(&root_mount.dev)?;
    let gpt = match &disk {
        Some(d) => table::read_entries(&d.file, d.sector_size).with_context(|| format!("reading the partition table of {}", d.path.display()))?,
        None => Vec::new(),
    };
    let mut esp_writer: Option<Box<dyn EspWriter>> = None;
    let mut esp_on_node = None;
    match (&esp_mount, &disk, gpt.iter().find(|e| e.type_guid == ESP_TYPE)) {
        (Some(m), _, _) => {
            if alongside {
                wipe(&m.point, &mounts)?;
            }
            partitions.push(found_partition(Role::Esp, m)?);
            esp_writer = Some(Box::new(EspDir(m.point.clone())));
        }
        (None, Some(d), Some(entry)) => {
            let node = partitions_of(&d.name).into_iter().find(|p| p.number == entry.number).map(|p| p.node()).with_context(|| {
                format!("the ESP is partition {} of {}, but the kernel has no node for it", entry.number, d.path.display())
            })?;
            let file = std::fs::OpenOptions::new().read(true).write(true).open(&node).with_context(|| format!("cannot open the ESP {}", node.display()))?;
            let size = (entry.last_lba + 1 - entry.first_lba) * d.sector_size;
            let mut part = partition(Role::Esp, "vfat", fs_uuid(&node, "vfat")?);
            part.size = size;
            part.number = entry.number;
            let esp = Esp::open(&file, &part).with_context(|| format!("opening the ESP {}", node.display()))?;
            if alongside {
                esp.clear().with_context(|| format!("emptying the ESP {}", node.display()))?;
            }
            partitions.push(part.clone());
            esp_on_node = Some((esp, file, part));
        }
        _ => bail!(
            "no ESP: mount a vfat filesystem at {}/boot/efi, or give the disk under {} an EFI system partition (type {ESP_TYPE})",
            root.display(),
            root.display()
        ),
    }
    // BIOS GRUB when root's disk has a BIOS boot partition (and 512-byte sectors).
    let bios = match (&disk, gpt.iter().find(|e| e.type_guid == BIOS_BOOT_TYPE)) {
        (Some(d), Some(e)) if d.sector_size == table::SECTOR => {
            Some(BiosTarget { disk: &d.file, partition: BiosBootPartition { first_lba: e.first_lba, sectors: e.last_lba + 1 - e.first_lba } })
        }
        _ => None,
    };
    let plan = Plan { size: 0, disk_guid: String::new(), partitions, mounts: MountScheme::Fstab, sector_4k: false, grow_root: false };

    let mut bake_args = args.bake_args()?;
    // bootc: a btrfs root in a subvolume is mounted with it.
    if let Some(subvol) = root_mount.subvolume() {
        bake_args.kargs.push(format!("rootflags=subvol={subvol}"));
    }
    let inputs = bake::Inputs::read(&bake_args)?;
    let (image, platform) = bake::open_image(&bake_args, progress)?;
    let esp: Option<&mut (dyn EspWriter + 'static)> = match (&mut esp_writer, &mut esp_on_node) {
        (Some(w), _) => Some(w.as_mut()),
        (None, Some((e, _, _))) => Some(e),
        (None, None) => None,
    };
    // The filesystems exist: an image's own disk description does not apply.
    let mut sysroot = Sysroot::existing(root.clone(), plan.root().filesystem.clone().unwrap_or_default());
    let mut target = bake::SystemTarget { plan: &plan, sysroot: &mut sysroot, ids: &Ids::from_seed(None), image_disk_known: true };
    let system = bake::write_system(&bake_args, &inputs, &image, &platform, &mut target, esp, bios, progress)?;
    sysroot.close()?;
    if let Some((esp, file, part)) = esp_on_node {
        esp.close(&file, &part)?;
        file.sync_all().context("writing the ESP")?;
    }
    for m in [Some(root.clone()), plan.part(Role::Boot).map(|_| root.join("boot"))].into_iter().flatten() {
        let f = File::open(&m)?;
        if unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&f)) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("writing the filesystem on {} failed", m.display()));
        }
    }
    progress.info(&format!("installed {} on {}", args.image, root.display()));
    let mut result = super::result_event(&bake_args, &plan, &system, |_| None);
    result["root"] = root.display().to_string().into();
    progress.result(result);
    Ok(())
}

/// A mount of this mount namespace.
struct Mount {
    point: PathBuf,
    fstype: String,
    /// The mounted device.
    dev: Dev,
    node: PathBuf,
    /// The filesystem's own options (mountinfo's super options).
    options: String,
}

impl Mount {
    /// The btrfs subvolume mounted (`subvol=/root` → `/root`), unless it is the top one.
    fn subvolume(&self) -> Option<&str> {
        if self.fstype != "btrfs" {
            return None;
        }
        self.options.split(',').find_map(|o| o.strip_prefix("subvol=")).filter(|s| *s != "/" && !s.is_empty())
    }
}

struct Mounts(Vec<Mount>);

impl Mounts {
    fn read() -> Mounts {
        let unescape = |s: &str| s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Mounts(
            text.lines()
                .filter_map(|line| {
                    let f: Vec<&str> = line.split(' ').collect();
                    let sep = f.iter().position(|x| *x == "-")?;
                    let node = PathBuf::from(unescape(f.get(sep + 2)?));
                    let options = f.get(sep + 3).map(|o| unescape(o)).unwrap_or_default();
                    Some(Mount { point: PathBuf::from(unescape(f.get(4)?)), fstype: f.get(sep + 1)?.to_string(), dev: dev_of_node(&node)?, node, options })
                })
                .collect(),
        )
    }

    /// The mount at `point` (the last one, which hides the others).
    fn at(&self, point: &Path) -> Option<&Mount> {
        self.0.iter().rev().find(|m| m.point == point)
    }

    fn is_mount_point(&self, p: &Path) -> bool {
        self.0.iter().any(|m| m.point == p)
    }
}

fn partition(role: Role, fs: &str, fs_uuid: String) -> Partition {
    Partition {
        role,
        number: 0,
        name: String::new(),
        type_guid: String::new(),
        guid: String::new(),
        offset: 0,
        size: 0,
        filesystem: Some(fs.to_string()),
        label: None,
        fs_uuid,
        mountpoint: None,
        options: None,
        subvolumes: Vec::new(),
        mount_spec: None,
    }
}

fn found_partition(role: Role, m: &Mount) -> Result<Partition> {
    Ok(partition(role, &m.fstype, fs_uuid(&m.node, &m.fstype)?))
}

/// The whole disk under a mounted partition, opened for writing (its ESP and BIOS boot
/// partition); None when the filesystem is not on a partition of a disk.
fn open_disk_of(dev: &Dev) -> Result<Option<BlockDevice>> {
    if !dev.sysfs().join("partition").exists() {
        return Ok(None);
    }
    let disk = dev.whole_disk();
    let name = disk.name().context("the disk under the root filesystem is not in sysfs")?;
    let path = PathBuf::from("/dev").join(&name);
    Ok(Some(BlockDevice::open(&path, disk, name)?))
}

/// A filesystem's UUID as blkid and fstab spell it, read from its superblock.
fn fs_uuid(node: &Path, fstype: &str) -> Result<String> {
    let f = File::open(node).with_context(|| format!("cannot open {}", node.display()))?;
    let read = |offset: u64, len: usize| -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, offset).with_context(|| format!("reading the superblock of {}", node.display()))?;
        Ok(b)
    };
    let uuid = |b: Vec<u8>| uuid::Uuid::from_slice(&b).map(|u| u.hyphenated().to_string()).map_err(anyhow::Error::from);
    match fstype {
        // struct ext4_super_block at 1024: s_uuid at 0x68.
        "ext4" | "ext3" | "ext2" => uuid(read(1024 + 0x68, 16)?),
        // xfs_sb: sb_uuid at 32.
        "xfs" => uuid(read(32, 16)?),
        // btrfs_super_block at 64 KiB: fsid at 0x20.
        "btrfs" => uuid(read(0x10000 + 0x20, 16)?),
        // FAT32 boot sector: BS_VolID at 67.
        "vfat" => {
            let b = read(67, 4)?;
            let id = u32::from_le_bytes(b.try_into().unwrap());
            Ok(format!("{:04X}-{:04X}", id >> 16, id & 0xffff))
        }
        other => bail!("{} has a {other} filesystem: kiln installs onto ext4, xfs or btrfs (and a vfat ESP)", node.display()),
    }
}

/// bootc's rule: empty but for `lost+found` and directories holding nothing but mount points.
fn check_empty(root: &Path, mounts: &Mounts) -> Result<()> {
    fn walk(dir: &Path, top: bool, mounts: &Mounts) -> Result<Option<PathBuf>> {
        for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let p = e?.path();
            if (top && p.file_name().is_some_and(|n| n == "lost+found")) || mounts.is_mount_point(&p) {
                continue;
            }
            if p.symlink_metadata()?.is_dir() {
                if let Some(found) = walk(&p, false, mounts)? {
                    return Ok(Some(found));
                }
                // An empty directory that is no mount point holds nothing either way.
                continue;
            }
            return Ok(Some(p));
        }
        Ok(None)
    }
    if let Some(found) = walk(root, true, mounts)? {
        bail!("{} is not empty (found {}): install onto an empty filesystem, or pass --replace wipe to delete what is on it", root.display(), found.display());
    }
    Ok(())
}

/// Deletes everything on the filesystem mounted at `root`, not crossing into other mounts.
fn wipe(root: &Path, mounts: &Mounts) -> Result<()> {
    // ostree leaves deployment roots immutable.
    crate::disk::sysroot::clear_immutable(root);
    let dev = std::fs::metadata(root)?.dev();
    for e in std::fs::read_dir(root)? {
        let p = e?.path();
        if mounts.is_mount_point(&p) {
            continue;
        }
        let md = p.symlink_metadata()?;
        if md.is_dir() && md.dev() == dev {
            if mounts.0.iter().any(|m| m.point.starts_with(&p)) {
                wipe(&p, mounts)?;
            } else {
                std::fs::remove_dir_all(&p).with_context(|| format!("cannot delete {}", p.display()))?;
            }
        } else {
            std::fs::remove_file(&p).with_context(|| format!("cannot delete {}", p.display()))?;
        }
    }
    Ok(())
}
