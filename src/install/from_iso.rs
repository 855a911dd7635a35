//! `kiln install from-iso` (hidden): the installer ISO's job, run by its kiln-install.service
//! inside the image's initramfs. It finds its medium among the block devices by the volume
//! set id the kernel command line names (`kiln.iso=`), as blkid would read the ISO 9660
//! primary volume descriptor, and reads the install settings the ISO's kiln.img carries.
//!
//! Then it picks the target (`kiln.install.disk=`, else the settings; `auto`: the only fixed
//! disk large enough that is not the medium; none: it lists the disks and stops), mounts the
//! medium read-only and runs `install to-disk` (`--wipe` when the settings say so) with the
//! payload on it. The unit powers the machine off (or reboots it) when this succeeds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use clap::{Args, FromArgMatches};

use crate::cli::ToDiskArgs;
use crate::output::iso::installer::{IsoSettings, MEDIUM_KARG, PAYLOAD_DIR, SETTINGS_PATH};
use crate::progress::Progress;

/// The primary volume descriptor's place on an ISO 9660 volume, and its volume set id's.
const PVD_OFFSET: u64 = 16 * 2048;
const VOLUME_SET_ID: std::ops::Range<usize> = 190..318;

pub fn run(progress: &Progress) -> Result<()> {
    let settings_path = Path::new("/").join(SETTINGS_PATH);
    let text = std::fs::read_to_string(&settings_path).with_context(|| format!("cannot read {}: is this kiln's installer ISO?", settings_path.display()))?;
    let settings: IsoSettings = toml::from_str(&text).with_context(|| format!("{} is not valid", settings_path.display()))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline")?;
    let karg = |key: &str| cmdline.split_whitespace().find_map(|a| a.strip_prefix(&format!("{key}="))).map(str::to_string);
    let wanted = karg(MEDIUM_KARG).unwrap_or_else(|| settings.medium_id.clone());
    progress.info(&format!("kiln installer: looking for the medium {wanted}"));
    let medium = find_medium(&wanted, progress)?;
    progress.info(&format!("kiln installer: the medium is {}", medium.display()));

    let disks = disks(&medium)?;
    let target = match karg(DISK_KARG).or(settings.target.clone()) {
        Some(t) if t == "auto" => {
            let fit: Vec<&DiskInfo> = disks.iter().filter(|d| !d.removable && d.size >= MIN_AUTO_SIZE).collect();
            match fit.as_slice() {
                [one] => one.path.clone(),
                _ => {
                    print_disks(&disks, progress);
                    bail!("the target is auto, but {} disks fit (fixed, {} GiB or more): name one with {DISK_KARG}=DEVICE; nothing was written", fit.len(), MIN_AUTO_SIZE >> 30)
                }
            }
        }
        Some(t) => PathBuf::from(t),
        None => {
            print_disks(&disks, progress);
            bail!("no target disk was named: boot with {DISK_KARG}=DEVICE (or bake the ISO with --iso-target-disk DEVICE|auto); nothing was written")
        }
    };
    progress.info(&format!("kiln installer: installing onto {}", target.display()));

    crate::disk::mountns::enter_private()?;
    let mount_point = Path::new(MEDIUM_MOUNT);
    std::fs::create_dir_all(mount_point).with_context(|| format!("cannot create {MEDIUM_MOUNT}"))?;
    mount_iso(&medium, mount_point)?;
    let image = format!("oci:{}", mount_point.join(PAYLOAD_DIR).display());
    let mut argv: Vec<String> = vec!["to-disk".into()];
    if settings.wipe {
        argv.push("--wipe".into());
    }
    if let Some(fs) = &settings.filesystem {
        argv.extend(["--filesystem".into(), fs.clone()]);
    }
    if let Some(r) = &settings.target_imgref {
        argv.extend(["--target-imgref".into(), r.clone()]);
    }
    for k in &settings.kargs {
        argv.push(format!("--karg={k}"));
    }
    argv.extend([target.display().to_string(), image]);
    let matches = ToDiskArgs::augment_args(clap::Command::new("to-disk")).try_get_matches_from(&argv)?;
    let args = ToDiskArgs::from_arg_matches(&matches)?;
    super::to_disk(&args, progress)?;
    progress.info(&format!("kiln installer: installed onto {}; {}", target.display(), if settings.reboot { "rebooting" } else { "powering off" }));
    Ok(())
}

/// The kernel argument naming the target disk (before the ISO's settings).
const DISK_KARG: &str = "kiln.install.disk";
/// Where the medium is mounted (read-only) while the payload is installed.
const MEDIUM_MOUNT: &str = "/run/kiln-medium";
/// The least size of a disk `auto` takes.
const MIN_AUTO_SIZE: u64 = 4 << 30;

fn mount_iso(dev: &Path, at: &Path) -> Result<()> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let (source, target) = (c(dev), c(at));
    // The kernel loads isofs itself (request_module) when the initramfs has it.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), c"iso9660".as_ptr(), libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot mount {} (ISO 9660) at {}: does the image's initramfs have the isofs module?", dev.display(), at.display()));
    }
    Ok(())
}

struct DiskInfo {
    path: PathBuf,
    size: u64,
    removable: bool,
    model: String,
}

/// The machine's disks, but the medium's and virtual ones (loop, RAM, CD drives, mappers).
fn disks(medium: &Path) -> Result<Vec<DiskInfo>> {
    let medium_name = medium.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/block").context("cannot list /sys/block")? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let sys = entry.path();
        let holds_medium = name == medium_name || sys.join(&medium_name).exists();
        if holds_medium || ["loop", "ram", "sr", "zram", "dm-", "md", "fd"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(sys.join(f)).unwrap_or_default().trim().to_string();
        out.push(DiskInfo {
            path: PathBuf::from("/dev").join(&name),
            size: read("size").parse::<u64>().unwrap_or(0) * 512,
            removable: read("removable") == "1",
            model: read("device/model"),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn print_disks(disks: &[DiskInfo], progress: &Progress) {
    progress.info("kiln installer: the disks of this machine:");
    for d in disks {
        progress.info(&format!("  {}  {} GiB  {}{}", d.path.display(), d.size >> 30, d.model, if d.removable { "  (removable)" } else { "" }));
    }
}

/// How long the installer waits for its medium: the drivers of CD drives and USB sticks are
/// loaded by udev while the installer starts, and a slow machine takes a while.
const MEDIUM_WAIT: Duration = Duration::from_secs(300);

/// The block device holding the ISO whose volume set id is `id`, once it has appeared.
fn find_medium(id: &str, progress: &Progress) -> Result<PathBuf> {
    let started = Instant::now();
    let mut told = false;
    loop {
        let mut seen = Vec::new();
        for entry in std::fs::read_dir("/sys/class/block").context("cannot list /sys/class/block")? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let dev = PathBuf::from("/dev").join(&name);
            if volume_set_id(&dev).as_deref() == Some(id) {
                return Ok(dev);
            }
            seen.push(name);
        }
        if started.elapsed() > MEDIUM_WAIT {
            seen.sort();
            bail!("no block device holds the ISO {id} after {}s (looked at: {}); is the medium still attached?", MEDIUM_WAIT.as_secs(), seen.join(", "));
        }
        if !told {
            progress.info("kiln installer: waiting for the medium's drive to appear");
            told = true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The ISO 9660 volume set id on `dev`, when it holds a primary volume descriptor.
fn volume_set_id(dev: &Path) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(dev).ok()?;
    let mut pvd = [0u8; 2048];
    f.read_exact_at(&mut pvd, PVD_OFFSET).ok()?;
    (pvd[0] == 1 && &pvd[1..6] == b"CD001").then(|| String::from_utf8_lossy(&pvd[VOLUME_SET_ID]).trim_end().to_string())
}

