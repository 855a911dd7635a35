//! `kiln install from-iso` (hidden): the installer ISO's job, run by its kiln-install.service
//! inside the image's initramfs. It finds its medium among the block devices by the volume
//! set id the kernel command line names (`kiln.iso=`), as blkid would read the ISO 9660
//! primary volume descriptor, and reads the install settings the ISO's kiln.img carries.
//!
//! Then it picks the target (`kiln.install.disk=`, else the settings; `auto`: the only fixed
//! disk large enough that is not the medium; none: it lists the disks on the console and asks
//! which one, and to confirm erasing it when it holds data), mounts the medium read-only and
//! runs `install to-disk` (`--wipe` when the settings say so, or the user confirmed) with the
//! payload on it, requesting the MOK enrollment the settings ask for when the machine booted
//! through UEFI. The unit powers the machine off (or reboots it) when this succeeds.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

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
    let mut wipe = settings.wipe;
    let target = match karg(DISK_KARG).or(settings.target.clone()) {
        Some(t) if t == "auto" => {
            let fit: Vec<&DiskInfo> = disks.iter().filter(|d| !d.removable && d.size >= MIN_AUTO_SIZE).collect();
            match fit.as_slice() {
                [one] => one.path.clone(),
                _ => {
                    eprint!("{}", disk_table(&disks));
                    bail!("the target is auto, but {} disks fit (fixed, {} GiB or more): name one with {DISK_KARG}=DEVICE; nothing was written", fit.len(), MIN_AUTO_SIZE >> 30)
                }
            }
        }
        Some(t) => PathBuf::from(t),
        None => match ask_target(&disks)? {
            Some(Choice { path, erase }) => {
                wipe = erase;
                path
            }
            None => {
                progress.info("kiln installer: no disk chosen, nothing was written; powering off");
                // Nothing is mounted or written yet; the unit's success action may be a
                // reboot, which would only start the installer again.
                unsafe {
                    libc::sync();
                    libc::reboot(libc::RB_POWER_OFF);
                }
                bail!("cannot power off: {}", std::io::Error::last_os_error());
            }
        },
    };
    progress.info(&format!("kiln installer: installing onto {}", target.display()));

    crate::disk::mountns::enter_private()?;
    let mount_point = Path::new(MEDIUM_MOUNT);
    std::fs::create_dir_all(mount_point).with_context(|| format!("cannot create {MEDIUM_MOUNT}"))?;
    mount_iso(&medium, mount_point)?;
    let image = format!("oci:{}", mount_point.join(PAYLOAD_DIR).display());
    let mut argv: Vec<String> = vec!["to-disk".into()];
    if wipe {
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
    if let Some(certificate) = &settings.enroll_mok {
        // MokManager is shim's, a UEFI program: a machine booted through BIOS has no use for
        // the request (and no variables to hold it).
        if Path::new(EFI_FIRMWARE).exists() {
            let certificate = if certificate == "auto" { certificate.clone() } else { mount_point.join(certificate).display().to_string() };
            argv.extend(["--enroll-mok".into(), certificate]);
            argv.extend(settings.mok_password.iter().flat_map(|p| ["--mok-password".into(), p.clone()]));
        } else {
            progress.info("kiln installer: this machine booted through BIOS: no MOK enrollment requested (MokManager runs under UEFI)");
        }
    }
    argv.extend([target.display().to_string(), image]);
    let matches = ToDiskArgs::augment_args(clap::Command::new("to-disk")).try_get_matches_from(&argv)?;
    let args = ToDiskArgs::from_arg_matches(&matches)?;
    super::to_disk(&args, progress).map_err(|e| {
        // A pulled stick or an ejected CD fails the install as a read error of some blob:
        // say what happened.
        match Path::new("/sys/class/block").join(medium.file_name().unwrap_or_default()).exists() {
            true => e,
            false => e.context(format!("the installer's medium {} was removed during the install: attach it again and restart the install", medium.display())),
        }
    })?;
    progress.info(&format!("kiln installer: installed onto {}; {}", target.display(), if settings.reboot { "rebooting" } else { "powering off" }));
    Ok(())
}

/// The kernel argument naming the target disk (before the ISO's settings).
const DISK_KARG: &str = "kiln.install.disk";
/// Present when the machine booted through UEFI.
const EFI_FIRMWARE: &str = "/sys/firmware/efi";
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
    serial: String,
    /// What is on it (partition table and partitions, or a signature); None: empty.
    content: Option<String>,
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
        let path = PathBuf::from("/dev").join(&name);
        // virtio-blk has the serial beside the disk, NVMe on its controller, SCSI and ATA in
        // the unit serial number page (after a 4-byte header).
        let vpd = std::fs::read(sys.join("device/vpd_pg80")).ok().and_then(|p| p.get(4..).map(|s| String::from_utf8_lossy(s).trim_matches(char::from(0)).trim().to_string()));
        let serial = [read("serial"), read("device/serial")].into_iter().find(|s| !s.is_empty()).or(vpd).unwrap_or_default();
        out.push(DiskInfo {
            content: super::checks::content_summary(&path, &name).unwrap_or_else(|e| Some(format!("unreadable: {e:#}"))),
            path,
            size: read("size").parse::<u64>().unwrap_or(0) * 512,
            removable: read("removable") == "1",
            model: read("device/model"),
            serial,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The disks as a numbered table, one line each, columns aligned.
fn disk_table(disks: &[DiskInfo]) -> String {
    let or_dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    let mut rows = vec![["#".to_string(), "DISK".into(), "SIZE".into(), "MODEL".into(), "SERIAL".into(), "CONTENT".into()]];
    for (i, d) in disks.iter().enumerate() {
        let content = d.content.clone().unwrap_or_else(|| "empty".into()) + if d.removable { " (removable)" } else { "" };
        rows.push([(i + 1).to_string(), d.path.display().to_string(), format!("{:.1} GiB", d.size as f64 / (1u64 << 30) as f64), or_dash(&d.model), or_dash(&d.serial), content]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::from("kiln installer: the disks of this machine:\n");
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out += &format!("  {}\n", cells.join("  ").trim_end());
    }
    out
}

/// The disk the user chose, and whether they agreed to erase what is on it.
struct Choice {
    path: PathBuf,
    erase: bool,
}

/// Shows the disk table on the console and asks which disk to install onto (by number or
/// path), and to confirm erasing it when it holds data; a bad answer asks again. None: the
/// user quit (an empty answer or `q`).
fn ask_target(disks: &[DiskInfo]) -> Result<Option<Choice>> {
    use std::os::unix::fs::OpenOptionsExt;
    // The unit's standard input is not the console: talk to it directly (the kernel's last
    // console= argument, the serial port here), without making it the controlling terminal.
    let console = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open("/dev/console").context("cannot open /dev/console to ask for the target disk")?;
    let mut out = &console;
    let mut input = std::io::BufReader::new(&console);
    let mut ask = |question: &str| -> Result<String> {
        (&console).write_all(question.as_bytes())?;
        let mut line = String::new();
        ensure!(input.read_line(&mut line)? > 0, "the console closed while asking for the target disk; nothing was written");
        Ok(line.trim().to_string())
    };
    write!(out, "\n{}", disk_table(disks))?;
    ensure!(!disks.is_empty(), "this machine has no disk to install onto (besides the medium); nothing was written");
    loop {
        let answer = ask(&format!("kiln installer: install onto which disk? (1-{}, or its path; empty or q: power off, nothing written) ", disks.len()))?;
        if answer.is_empty() || answer == "q" {
            return Ok(None);
        }
        let picked = answer.parse::<usize>().ok().and_then(|n| disks.get(n.wrapping_sub(1))).or_else(|| disks.iter().find(|d| d.path == Path::new(&answer)));
        let Some(disk) = picked else {
            writeln!(out, "kiln installer: {answer:?} is none of the disks listed")?;
            continue;
        };
        if let Some(what) = &disk.content {
            let sure = ask(&format!("kiln installer: {} has {what}: everything on it will be erased; type yes to go on: ", disk.path.display()))?;
            if sure != "yes" {
                writeln!(out, "kiln installer: {} is left as it is", disk.path.display())?;
                continue;
            }
        }
        writeln!(out)?;
        return Ok(Some(Choice { path: disk.path.clone(), erase: disk.content.is_some() }));
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

