//! `kiln install from-iso` (hidden): the installer ISO's job, run by its kiln-install.service
//! inside the image's initramfs. It finds its medium among the block devices by the volume
//! set id the kernel command line names (`kiln.iso=`), as blkid would read the ISO 9660
//! primary volume descriptor, and reads the install settings the ISO's kiln.img carries.
//!
//! Not done yet: mounting the medium, choosing the target and running `install to-disk` on it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::output::iso::installer::{IsoSettings, MEDIUM_KARG, SETTINGS_PATH};
use crate::progress::Progress;

/// The primary volume descriptor's place on an ISO 9660 volume, and its volume set id's.
const PVD_OFFSET: u64 = 16 * 2048;
const VOLUME_SET_ID: std::ops::Range<usize> = 190..318;

pub fn run(progress: &Progress) -> Result<()> {
    let settings_path = Path::new("/").join(SETTINGS_PATH);
    let text = std::fs::read_to_string(&settings_path).with_context(|| format!("cannot read {}: is this kiln's installer ISO?", settings_path.display()))?;
    let settings: IsoSettings = toml::from_str(&text).with_context(|| format!("{} is not valid", settings_path.display()))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline")?;
    let wanted = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix(&format!("{MEDIUM_KARG}=")))
        .map(str::to_string)
        .unwrap_or_else(|| settings.medium_id.clone());
    progress.info(&format!("kiln installer: looking for the medium {wanted}"));
    let medium = find_medium(&wanted, progress)?;
    progress.info(&format!("kiln installer: the medium is {}", medium.display()));
    match &settings.target {
        Some(t) => bail!("installing onto {t} from the ISO is not implemented yet"),
        None => bail!("no target disk was named (bake with --iso-target-disk DEVICE|auto): nothing was written"),
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

