//! Boots a small hand-made GPT disk whose bootloader kiln installed, in QEMU, once with OVMF
//! (UEFI: the image's shim and signed GRUB) and once with SeaBIOS (kiln's core.img).
//!
//! The disk: BIOS boot partition, FAT32 ESP (mkfs.vfat and mtools), an ext4 /boot
//! laid out as ostree lays it out (`ostree/…` kernel and initramfs, `boot -> .`, a BLS entry
//! under `loader -> loader.1`), and an ext4 root holding a copy of the test image's root with a
//! probe unit that prints a line on ttyS0 and powers off. It is not an ostree system: the
//! initramfs only prepares an ostree root when `ostree=` is on the command line.
//!
//! Passing means the serial log shows the kernel started with the command line of our BLS
//! entry, by way of GRUB (`BOOT_IMAGE=` is GRUB's), and then the probe's line.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln::bootloader::{self, BiosBootPartition, BiosTarget, BootFilesystem, BootTarget, BootloaderPlatform, EspDir, GrubConfig};

const BASE: &str = "/var/cache/kiln-test/base-dev";
const KERNEL_VERSION: &str = "6.1.0-50-amd64";
const BOOT_UUID: &str = "b0071e55-0000-4000-8000-00000000b007";
const ROOT_UUID: &str = "4007f5e5-0000-4000-8000-000000004007";
const BOOTCSUM: &str = "default-0123456789abcdef";
const PROBE_LINE: &str = "KILN-PROBE-OK";
const ENTRY_MARKER: &str = "kiln.entry=ostree-1";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;
const BIOS_BOOT: (u64, u64) = (2048, 2048);
const ESP_SIZE: u64 = 64 * MIB;
const BOOT_SIZE: u64 = 160 * MIB;
const ROOT_SIZE: u64 = 1024 * MIB;

/// The disk is made once; the two boots take turns (each QEMU keeps a core busy).
static DISK: OnceLock<Result<Disk, String>> = OnceLock::new();
static QEMU: Mutex<()> = Mutex::new(());
/// Boots that passed; after both, the disk is removed.
static PASSED: AtomicUsize = AtomicUsize::new(0);
const BOOTS: usize = 2;

struct Disk {
    dir: PathBuf,
    raw: PathBuf,
}

#[test]
fn boots_with_uefi_through_shim_and_grub() {
    let disk = disk();
    let _turn = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let vars = disk.dir.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).expect("copying OVMF's variable store (ovmf)");
    let firmware = [
        "-drive".to_string(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        "-drive".to_string(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ];
    boot(disk, "uefi", &firmware);
}

#[test]
fn boots_with_bios_through_core_img() {
    let disk = disk();
    let _turn = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    boot(disk, "bios", &[]);
}

fn disk() -> &'static Disk {
    match DISK.get_or_init(|| make_disk().map_err(|e| format!("{e:#}"))) {
        Ok(disk) => disk,
        Err(e) => panic!("making the test disk failed: {e}"),
    }
}

fn make_disk() -> anyhow::Result<Disk> {
    let base = PathBuf::from(std::env::var("KILN_TEST_BASE").unwrap_or_else(|_| BASE.into()));
    anyhow::ensure!(base.join("usr/lib/modules").join(KERNEL_VERSION).join("vmlinuz").is_file(), "the test image root {} is missing", base.display());
    // A fixed place: a failed run's disk and serial logs stay for a look, the next run replaces them.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-boot-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    // The partition table.
    let raw = dir.join("disk.raw");
    let esp_start = BIOS_BOOT.0 + BIOS_BOOT.1;
    let boot_start = esp_start + ESP_SIZE / SECTOR;
    let root_start = boot_start + BOOT_SIZE / SECTOR;
    std::fs::File::create(&raw)?.set_len((root_start + ROOT_SIZE / SECTOR + 2048) * SECTOR)?;
    let layout = format!(
        "label: gpt\n\
         start={}, size={}, type=21686148-6449-6E6F-744E-656564454649, name=BIOS-BOOT\n\
         start={esp_start}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=EFI-SYSTEM\n\
         start={boot_start}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=boot\n\
         start={root_start}, size={}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n",
        BIOS_BOOT.0,
        BIOS_BOOT.1,
        ESP_SIZE / SECTOR,
        BOOT_SIZE / SECTOR,
        ROOT_SIZE / SECTOR
    );
    run(Command::new("sfdisk").arg("-q").arg(&raw), Some(&layout))?;

    // /boot as ostree leaves it, before the bootloader.
    let boot = dir.join("boot");
    let kernel_dir = boot.join("ostree").join(BOOTCSUM);
    std::fs::create_dir_all(&kernel_dir)?;
    std::fs::create_dir_all(boot.join("loader.1/entries"))?;
    std::os::unix::fs::symlink(".", boot.join("boot"))?;
    std::os::unix::fs::symlink("loader.1", boot.join("loader"))?;
    let modules = base.join("usr/lib/modules").join(KERNEL_VERSION);
    std::fs::copy(modules.join("vmlinuz"), kernel_dir.join(format!("vmlinuz-{KERNEL_VERSION}")))?;
    std::fs::copy(modules.join("initramfs.img"), kernel_dir.join(format!("initramfs-{KERNEL_VERSION}.img")))?;
    std::fs::write(
        boot.join("loader.1/entries/ostree-1.conf"),
        format!(
            "title kiln boot test (ostree:0)\nversion 1\n\
             options root=UUID={ROOT_UUID} rw console=ttyS0,115200 {ENTRY_MARKER}\n\
             linux /boot/ostree/{BOOTCSUM}/vmlinuz-{KERNEL_VERSION}\n\
             initrd /boot/ostree/{BOOTCSUM}/initramfs-{KERNEL_VERSION}.img\n"
        ),
    )?;

    // The bootloader, both firmwares at once as a bake installs it.
    let platform = BootloaderPlatform::from_toml(include_str!("../platforms/x86_64.toml"))?;
    let esp_dir = dir.join("esp");
    let mut esp = EspDir(esp_dir.clone());
    let installed = bootloader::install(
        &platform,
        &base,
        BootTarget {
            boot_dir: &boot,
            boot_fs: BootFilesystem { uuid: BOOT_UUID.into(), separate_partition: true },
            entries_dir: boot.join("loader/entries"),
            esp: Some(&mut esp),
            bios: Some(BiosTarget { disk: &raw, partition: BiosBootPartition { first_lba: BIOS_BOOT.0, sectors: BIOS_BOOT.1 } }),
        },
    )?;
    anyhow::ensure!(installed.grub_config == GrubConfig::RenderedEntries, "Debian's GRUB has no blscfg, yet {:?}", installed.grub_config);
    anyhow::ensure!(installed.uefi_vendor.as_deref() == Some("debian"), "vendor {:?}", installed.uefi_vendor);
    // Not kiln's: the platform's console settings, so GRUB's menu shows on the serial log.
    std::fs::write(boot.join("grub2/console.cfg"), "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n")?;

    // The ESP: staged in a directory, copied into FAT32 with mtools (fatfs 0.3.6 writes LFN
    // entries for `.` and `..`, which fsck.fat rejects), checked with fsck.fat and mtools.
    let esp_image = dir.join("esp.img");
    run(Command::new("mkfs.vfat").args(["-F", "32", "-n", "EFI-SYSTEM", "-C"]).arg(&esp_image).arg((ESP_SIZE / 1024).to_string()), None)?;
    run(Command::new("mcopy").args(["-s", "-i"]).arg(&esp_image).arg(esp_dir.join("EFI")).arg("::"), None)?;
    run(Command::new("fsck.fat").arg("-n").arg(&esp_image), None)?;
    let listing = run(Command::new("mdir").args(["-/", "-b", "-i"]).arg(&esp_image).arg("::/EFI"), None)?;
    for file in ["::/EFI/BOOT/BOOTX64.EFI", "::/EFI/BOOT/fbx64.efi", "::/EFI/debian/shimx64.efi", "::/EFI/debian/grubx64.efi", "::/EFI/debian/mmx64.efi", "::/EFI/debian/BOOTX64.CSV", "::/EFI/debian/grub.cfg", "::/EFI/debian/bootuuid.cfg"] {
        anyhow::ensure!(listing.lines().any(|l| l.eq_ignore_ascii_case(file)), "the ESP lacks {file}:\n{listing}");
    }
    let bootuuid = run(Command::new("mtype").arg("-i").arg(&esp_image).arg("::/EFI/debian/bootuuid.cfg"), None)?;
    anyhow::ensure!(bootuuid.contains(BOOT_UUID), "EFI/debian/bootuuid.cfg: {bootuuid}");

    // The filesystems, made from directories (no mounts), then placed into the disk.
    let boot_image = dir.join("boot.img");
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-U", BOOT_UUID, "-L", "boot", "-d"]).arg(&boot).arg(&boot_image).arg(format!("{}M", BOOT_SIZE / MIB)), None)?;
    let root_image = dir.join("root.img");
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-U", ROOT_UUID, "-L", "root", "-d"]).arg(&base).arg(&root_image).arg(format!("{}M", ROOT_SIZE / MIB)), None)?;
    add_probe(&dir, &root_image)?;
    for (image, start) in [(&esp_image, esp_start), (&boot_image, boot_start), (&root_image, root_start)] {
        copy_sparse(image, &raw, start * SECTOR)?;
        std::fs::remove_file(image)?;
    }
    run(Command::new("sgdisk").arg("-v").arg(&raw), None)?;
    Ok(Disk { dir, raw })
}

/// A unit in the root that prints PROBE_LINE on the serial console and powers off.
fn add_probe(dir: &Path, root_image: &Path) -> anyhow::Result<()> {
    let unit = dir.join("kiln-probe.service");
    std::fs::write(
        &unit,
        format!(
            "[Unit]\nDescription=kiln boot test probe\n\n[Service]\nType=oneshot\n\
             ExecStart=/bin/sh -c 'echo \"{PROBE_LINE} $(uname -r)\" > /dev/ttyS0'\n\
             ExecStartPost=/bin/systemctl --no-block poweroff\n\n[Install]\nWantedBy=multi-user.target\n"
        ),
    )?;
    let commands = format!(
        "write {} /etc/systemd/system/kiln-probe.service\n\
         mkdir /etc/systemd/system/multi-user.target.wants\n\
         symlink /etc/systemd/system/multi-user.target.wants/kiln-probe.service /etc/systemd/system/kiln-probe.service\n",
        unit.display()
    );
    run(Command::new("debugfs").arg("-w").arg("-f").arg("-").arg(root_image), Some(&commands))?;
    Ok(())
}

/// Boots the disk and waits for the probe; on timeout the serial log's tail is the message.
fn boot(disk: &Disk, firmware: &str, firmware_args: &[String]) {
    let log = disk.dir.join(format!("serial-{firmware}.log"));
    let timeout = Duration::from_secs(std::env::var("KILN_BOOT_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(900));
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-machine", "q35", "-m", "2048", "-smp", "2", "-display", "none", "-monitor", "none"])
        .args(["-serial", &format!("file:{}", log.display())])
        .args(firmware_args)
        .args(["-drive", &format!("file={},format=raw,if=virtio,snapshot=on", disk.raw.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let mut qemu = Qemu(child);
    let start = Instant::now();
    loop {
        let serial = std::fs::read(&log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let exited = qemu.0.try_wait().expect("waiting for QEMU");
        if serial.contains(PROBE_LINE) {
            let cmdline = serial.lines().find(|l| l.contains("Command line:")).unwrap_or("");
            assert!(
                cmdline.contains(&format!("BOOT_IMAGE=/boot/ostree/{BOOTCSUM}/vmlinuz-{KERNEL_VERSION}")) && cmdline.contains(ENTRY_MARKER),
                "{firmware}: the kernel did not start from our GRUB entry: {cmdline:?}\n{}",
                tail(&serial)
            );
            eprintln!("{firmware}: booted in {:?}", start.elapsed());
            drop(qemu);
            if PASSED.fetch_add(1, Ordering::SeqCst) + 1 == BOOTS {
                let _ = std::fs::remove_dir_all(&disk.dir);
            }
            return;
        }
        if let Some(status) = exited {
            let mut stderr = String::new();
            let _ = qemu.0.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
            panic!("{firmware}: QEMU exited ({status}) before the probe ran; stderr: {stderr}\nserial log {}:\n{}", log.display(), tail(&serial));
        }
        if start.elapsed() > timeout {
            panic!("{firmware}: no probe line after {timeout:?}; serial log {}:\n{}", log.display(), tail(&serial));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Kills QEMU however the test ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn run(command: &mut Command, stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| anyhow::anyhow!("{command:?}: {e}"))?;
    if let Some(input) = stdin {
        child.stdin.take().expect("piped stdin").write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "{command:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies `image` into `disk` at `offset`, skipping zero blocks (the images are sparse).
fn copy_sparse(image: &Path, disk: &Path, offset: u64) -> anyhow::Result<()> {
    let mut from = std::fs::File::open(image)?;
    let mut to = std::fs::OpenOptions::new().write(true).open(disk)?;
    let mut block = vec![0u8; MIB as usize];
    let mut at = 0u64;
    loop {
        let n = from.read(&mut block)?;
        if n == 0 {
            return Ok(());
        }
        if block[..n].iter().any(|&b| b != 0) {
            to.seek(SeekFrom::Start(offset + at))?;
            to.write_all(&block[..n])?;
        }
        at += n as u64;
    }
}
