//! `kiln bake --type iso`: the installer ISO (`research/install-and-iso.md` §5, design B). It
//! boots the image's own signed chain (shim, GRUB, kernel) and its *unchanged* initramfs, plus
//! `kiln.img`, a cpio appended as a second initrd: kiln with its libraries, the install
//! settings and two systemd units. `rd.systemd.unit=kiln-install.target` makes the initramfs's
//! systemd start kiln's target instead of `initrd.target`: no root is mounted, nothing
//! switches root, and kiln installs the payload the ISO carries, the image as an OCI layout
//! whose blobs are the published ones (no second compression).
//!
//! ```text
//! /boot/grub/grub.cfg              the menu: Install (default)
//! /boot/grub/i386-pc/eltorito.img  GRUB's El Torito core (BIOS entry), from the image's modules
//! /boot/grub/i386-pc/*             the image's other i386-pc modules, for normal mode
//! /boot/vmlinuz, /boot/initramfs.img   the image's
//! /boot/kiln.img                   the appended initrd
//! /kiln/image/…                    the payload (oci-layout, index.json, blobs/sha256/…)
//! appended ESP (UEFI entry)        EFI/BOOT/{BOOTX64.EFI (shim), grubx64.efi, mmx64.efi, grub.cfg}
//!                                  and EFI/<vendor>/grub.cfg: find the volume, read its grub.cfg
//! ```

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::cpio::CpioWriter;
use super::elf::{self, Elf};
use super::{Content, IsoFile, IsoSpec};
use crate::bake;
use crate::bootloader::{self, core_image, image_files::ImageRoot};
use crate::cli::BakeArgs;
use crate::config;
use crate::disk::Ids;
use crate::efi::image::{ImageFirmware, AKMODS_CERTS};
use crate::efi::mok;
use crate::install::nvram::EnrollMok;
use crate::image::Image;
use crate::progress::Progress;
use crate::tree::{self, ContentKey, ContentStore, Dir, Meta, Node};

/// The kernel argument naming the medium (its volume set id) to the installer.
pub const MEDIUM_KARG: &str = "kiln.iso";
/// Where the install settings are in the installer's initramfs.
pub const SETTINGS_PATH: &str = "etc/kiln/iso.toml";
/// Where the payload is on the ISO.
pub const PAYLOAD_DIR: &str = "kiln/image";
/// Where the certificate `--iso-enroll-mok PATH.der` names is on the ISO.
const MOK_CERTIFICATE: &str = "kiln/mok.der";
/// Where kiln and the libraries it runs with are in the installer's initramfs.
pub const BUNDLE_DIR: &str = "usr/lib/kiln";
const TARGET_UNIT: &str = "kiln-install.target";
const SERVICE_UNIT: &str = "kiln-install.service";
/// What an initramfs needs to host the installer: systemd, which starts kiln's target.
const INITRAMFS_SYSTEMD: &str = "usr/lib/systemd/systemd";
/// The image's tools `install to-disk` runs (an initramfs has none of them), by their path in
/// the image and the names kiln calls them by; they go into kiln.img with their libraries.
const IMAGE_TOOLS: &[(&str, &[&str])] = &[
    ("usr/sbin/mke2fs", &["mke2fs", "mkfs.ext4"]),
    ("usr/sbin/tune2fs", &["tune2fs"]),
    ("usr/sbin/debugfs", &["debugfs"]),
    ("usr/sbin/mkfs.xfs", &["mkfs.xfs"]),
    ("usr/sbin/mkfs.btrfs", &["mkfs.btrfs"]),
    ("usr/bin/btrfs", &["btrfs"]),
];
/// Where the image's (x86_64) libraries are, in the loader's search order.
const LIB_DIRS: &[&str] = &["usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib"];
/// The image architectures kiln makes installer ISOs for so far (OCI naming).
const ISO_ARCHES: &[&str] = &["amd64"];
/// GRUB modules of the BIOS El Torito core: enough to find this volume by its label and read
/// its grub.cfg; normal mode loads the rest from /boot/grub/i386-pc.
const BIOS_CORE_MODULES: &[&str] = &["biosdisk", "iso9660", "part_gpt", "part_msdos", "search", "search_label", "configfile", "normal", "linux", "echo", "test"];
/// Kernel arguments of the installer environment: a console on screen and serial port, and
/// leftover RAID/LVM/crypt signatures on the target kept inactive while it is written.
const INSTALLER_KARGS: &str = "console=tty0 console=ttyS0,115200 rd.md=0 rd.lvm=0 rd.dm=0 rd.luks=0";

/// The install settings the ISO carries (`/etc/kiln/iso.toml` in the installer).
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IsoSettings {
    /// The disk to install to: a path, or `auto` (the only fixed disk large enough that is
    /// not the medium); none: the installer lists the disks on the console and asks.
    pub target: Option<String>,
    /// Extra kernel arguments of the installed system.
    #[serde(default)]
    pub kargs: Vec<String>,
    /// The root filesystem type (default: the image's install configuration).
    pub filesystem: Option<String>,
    /// The volume set id of the ISO the payload is on.
    pub medium_id: String,
    /// The registry reference the installed system updates from (`--target-imgref`, else the
    /// baked image's own); none: it would name the medium's path, which the installed system
    /// does not have.
    pub target_imgref: Option<String>,
    /// Whether the target may hold data (partitions, filesystem signatures) that the install
    /// then erases; otherwise `install to-disk` refuses such a disk.
    pub wipe: bool,
    /// Reboot rather than power off once installed.
    pub reboot: bool,
    /// Ask MokManager to enroll certificates on the installed machine's next boot (under UEFI):
    /// `auto` (the image's akmods certificates), or a DER file's path on the medium.
    pub enroll_mok: Option<String>,
    /// The password MokManager asks for, with `enroll_mok`.
    pub mok_password: Option<String>,
}

/// Builds the installer ISO of `args.image` into `out` (an empty file); the work files go in
/// `run_dir`.
pub fn bake(args: &BakeArgs, out: &File, run_dir: &Path, progress: &Progress) -> Result<()> {
    let (image, platform) = bake::open_image(args, progress)?;
    let arch = &platform.arch.oci;
    if !ISO_ARCHES.contains(&arch.as_str()) {
        bail!("kiln makes installer ISOs for {} images so far; {} is an {arch} image (bake a disk image for it instead)", ISO_ARCHES.join(", "), image.describe());
    }
    let bios = platform.bootloader.bios.as_ref().context("the platform has no [bootloader.bios]")?;
    let ids = Ids::from_seed(args.seed.as_deref());
    let medium_id = format!("kiln-{}", ids.uuid("iso medium"));
    let volume_id = format!("KILN_{}", medium_id[5..13].to_ascii_uppercase());
    let unix_time = iso_time(&image, ids.is_seeded());

    let root = run_dir.join("iso-files");
    let kver = extract_boot_files(&image, &root, progress)?;
    let modules = format!("usr/lib/modules/{kver}");
    let kernel = root.join(&modules).join("vmlinuz");
    let initramfs = root.join(&modules).join("initramfs.img");
    ensure!(initramfs.is_file(), "{} has no /{modules}/initramfs.img: the installer ISO boots the image's own initramfs", image.describe());
    check_initramfs(&initramfs).with_context(|| format!("{}: the image's /{modules}/initramfs.img cannot host kiln's installer", image.describe()))?;

    let efi = bootloader::removable_efi(&platform.bootloader, &root)?;
    let esp = run_dir.join("esp.img");
    write_esp(&esp, &efi, &esp_config(&volume_id), &ids)?;
    let image_root = ImageRoot::new(&root);
    let core_modules: Vec<String> = BIOS_CORE_MODULES.iter().map(|m| m.to_string()).collect();
    let core_config = format!("search --no-floppy --label --set=root {volume_id}\nset prefix=($root)/boot/grub\n");
    let core = core_image::build_eltorito(&image_root, &bios.modules_dir, &core_image::CoreSpec { modules: &core_modules, config: &core_config, prefix: "/boot/grub" })?;

    let target_imgref = bake::registry_reference(args.target_imgref.as_deref(), &image.source)?;
    if target_imgref.is_none() {
        progress.warn(&format!("systems installed from this ISO will look for updates on its medium, which they do not have: pass --target-imgref REGISTRY/IMAGE:TAG to update from a registry ({} is not one)", image.source));
    }
    let config = args.config.as_deref().map(config::load).transpose()?;
    let installer = config.as_ref().and_then(|c| c.installer.as_ref().map(|i| (i, c.source.as_str())));
    let mut settings = install_settings(args, installer, medium_id.clone(), target_imgref, progress)?;
    let mok_certificate = mok_request(args, installer, &image_root, &mut settings)?;
    let boot_kargs = installer.map(|(i, _)| i.kargs.join(" ")).unwrap_or_default();
    let kiln_img = run_dir.join("kiln.img");
    write_kiln_img(&kiln_img, &settings, &image_root, unix_time, run_dir)?;

    let mut files = vec![
        IsoFile { path: "boot/grub/grub.cfg".into(), content: Content::Bytes(menu_config(&menu_title(&image, &root), &medium_id, &boot_kargs).into_bytes()) },
        IsoFile { path: "boot/grub/i386-pc/eltorito.img".into(), content: Content::Bytes(core) },
        IsoFile { path: "boot/vmlinuz".into(), content: Content::File(kernel) },
        IsoFile { path: "boot/initramfs.img".into(), content: Content::File(initramfs) },
        IsoFile { path: "boot/kiln.img".into(), content: Content::File(kiln_img) },
    ];
    for module in image_root.list_dir(&bios.modules_dir)?.into_iter().filter(|e| !e.is_dir && e.name != "eltorito.img") {
        files.push(IsoFile { path: format!("boot/grub/i386-pc/{}", module.name), content: Content::File(image_root.require(&module.path)?) });
    }
    files.extend(mok_certificate.map(|der| IsoFile { path: MOK_CERTIFICATE.into(), content: Content::Bytes(der) }));
    files.extend(payload_files(&image, run_dir)?);
    let spec = IsoSpec {
        volume_id,
        medium_id,
        files,
        bios_image: Some("boot/grub/i386-pc/eltorito.img".into()),
        mbr_code: Some(image_root.read(&format!("{}/boot_hybrid.img", bios.modules_dir))?),
        efi_image: Some(Content::File(esp)),
        unix_time,
    };
    let stage = progress.stage("iso", None);
    super::write(&spec, &ids, out, &stage)?;
    stage.finish();
    Ok(())
}

/// The install settings: the `--iso-*` and bake options, else the build config's
/// `[customizations.installer]` (`installer`, with the config's name). The config's target
/// counts only when it says `unattended = true`: an ISO installs onto no disk nobody asked
/// it to. Without a config the installer wipes the disk it was told to use (`--iso-target-disk`
/// names it); with one, only when it says `wipe = true`.
fn install_settings(args: &BakeArgs, installer: Option<(&config::Installer, &str)>, medium_id: String, target_imgref: Option<String>, progress: &Progress) -> Result<IsoSettings> {
    let mut config_target = None;
    if let Some((i, source)) = installer {
        match (&i.target_disk, i.unattended) {
            (Some(t), true) => config_target = Some(t.clone()),
            (Some(t), false) => progress.warn(&format!("{source}: customizations.installer.target-disk {t:?} is not used: the install is not unattended (set unattended = true to install onto it without asking; otherwise the installer lists the disks and asks which one)")),
            (None, _) => {}
        }
    }
    let installer = installer.map(|(i, _)| i);
    Ok(IsoSettings {
        target: args.iso_target_disk.clone().or(config_target),
        kargs: args.kargs.clone(),
        filesystem: args.rootfs.clone().or_else(|| installer.and_then(|i| i.filesystem.clone())),
        medium_id,
        target_imgref,
        wipe: installer.is_none_or(|i| i.wipe),
        reboot: args.iso_reboot || installer.is_some_and(|i| i.finish == config::Finish::Reboot),
        enroll_mok: None,
        mok_password: None,
    })
}

/// The MOK request the installer makes (`--iso-enroll-mok`, else the config's `enroll-mok =
/// true`: auto), checked now rather than on the machine being installed: a certificate file
/// must be DER (it is returned, to go on the ISO), `auto` needs the image's akmods
/// certificates (read as `install to-disk` reads them), the password one MokManager takes.
fn mok_request(args: &BakeArgs, installer: Option<(&config::Installer, &str)>, image: &ImageRoot, settings: &mut IsoSettings) -> Result<Option<Vec<u8>>> {
    let config_auto = installer.is_some_and(|(i, _)| i.enroll_mok).then_some(EnrollMok::Auto);
    let Some(request) = args.iso_enroll_mok.clone().or(config_auto) else {
        ensure!(args.iso_mok_password.is_none(), "--iso-mok-password without --iso-enroll-mok: there is no MOK request for it to confirm");
        return Ok(None);
    };
    let password = args.iso_mok_password.clone().or_else(|| installer.and_then(|(i, _)| i.mok_password.clone())).unwrap_or_else(|| mok::DEFAULT_PASSWORD.into());
    mok::check_password(&password).context("--iso-mok-password")?;
    settings.mok_password = Some(password);
    let certificate = match request {
        EnrollMok::Auto => {
            ensure!(
                !ImageFirmware::read(image)?.akmods_certs.is_empty(),
                "MOK enrollment auto (--iso-enroll-mok or the config's customizations.installer.enroll-mok): the image has no /{AKMODS_CERTS}/*.der (Universal Blue and Immutablue images ship their akmods key there); pass --iso-enroll-mok PATH.der"
            );
            settings.enroll_mok = Some("auto".into());
            None
        }
        EnrollMok::File(path) => {
            let der = std::fs::read(&path).with_context(|| format!("--iso-enroll-mok: cannot read {}", path.display()))?;
            mok::check_certificate(&der, &path.display().to_string())?;
            settings.enroll_mok = Some(MOK_CERTIFICATE.into());
            Some(der)
        }
    };
    Ok(certificate)
}

/// The time the volume's records carry: the image's creation for a seeded (reproducible)
/// bake, else now.
fn iso_time(image: &Image, seeded: bool) -> i64 {
    let created = || -> Option<i64> {
        let config: serde_json::Value = serde_json::from_slice(&image.config_bytes).ok()?;
        Some(bake::days_from_date(config.get("created")?.as_str()?)? * 86400)
    };
    match seeded {
        true => created().unwrap_or(0),
        false => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
    }
}

/// The image's files the ISO is made of (kernels and initramfs images, the EFI and i386-pc
/// boot files, os-release), written below `root` as the image has them; returns the kernel
/// version.
fn extract_boot_files(image: &Image, root: &Path, progress: &Progress) -> Result<String> {
    let objects = root.join(".objects");
    std::fs::create_dir_all(&objects).with_context(|| format!("cannot create {}", objects.display()))?;
    let store = ExtractStore { objects: objects.clone(), next: AtomicU64::new(0) };
    let merged = tree::apply_layers(image, &store, progress, "boot files")?;
    let kver = tree::kernels(&merged.root).into_iter().next().with_context(|| format!("{} has no kernel: expected /usr/lib/modules/<kver>/vmlinuz (is it a bootc image?)", image.describe()))?;
    place(&merged.root, root, &objects, "")?;
    std::fs::remove_dir_all(&objects).with_context(|| format!("cannot remove {}", objects.display()))?;
    Ok(kver)
}

/// Paths below which the ISO takes the image's files.
fn wanted(path: &str) -> bool {
    const PREFIXES: &[&str] = &["usr/lib/efi/", "usr/lib/bootupd/updates/", "usr/lib/grub/", "usr/lib/shim/", "usr/lib/os-release", "etc/os-release", AKMODS_CERTS];
    let kernel_file = path.strip_prefix("usr/lib/modules/").is_some_and(|rest| matches!(rest.split_once('/'), Some((_, "vmlinuz" | "initramfs.img"))));
    let tool = IMAGE_TOOLS.iter().any(|(p, _)| *p == path);
    // The libraries the tools may need (one directory level: not the whole of /usr/lib).
    let library = LIB_DIRS.iter().any(|d| path.strip_prefix(d).and_then(|r| r.strip_prefix('/')).is_some_and(|name| !name.contains('/') && name.contains(".so")));
    kernel_file || tool || library || PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Keeps the wanted files' content as numbered objects; the rest is read and dropped.
struct ExtractStore {
    objects: PathBuf,
    next: AtomicU64,
}

impl ContentStore for ExtractStore {
    fn put(&self, path: &[Vec<u8>], _meta: &Meta, _size: u64, data: &mut dyn Read) -> Result<ContentKey> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&n.to_le_bytes());
        let joined = path.iter().map(|c| String::from_utf8_lossy(c)).collect::<Vec<_>>().join("/");
        if wanted(&joined) {
            let file = self.objects.join(n.to_string());
            let mut out = File::create(&file).with_context(|| format!("cannot create {}", file.display()))?;
            std::io::copy(data, &mut out).with_context(|| format!("writing {}", file.display()))?;
        } else {
            std::io::copy(data, &mut std::io::sink())?;
        }
        Ok(key)
    }
}

/// Puts the merged tree's wanted files (and symlinks, resolved later inside the image) at
/// their paths below `root`.
fn place(dir: &Dir, root: &Path, objects: &Path, prefix: &str) -> Result<()> {
    for (name, node) in &dir.entries {
        let path = format!("{prefix}{}", String::from_utf8_lossy(name));
        let dest = root.join(&path);
        match node {
            Node::Dir(d) => place(d, root, objects, &format!("{path}/"))?,
            Node::File(f) if wanted(&path) => {
                std::fs::create_dir_all(dest.parent().unwrap())?;
                let n = u64::from_le_bytes(f.content[..8].try_into().unwrap());
                std::fs::hard_link(objects.join(n.to_string()), &dest).with_context(|| format!("cannot create {}", dest.display()))?;
            }
            Node::Symlink(l) if wanted(&path) => {
                std::fs::create_dir_all(dest.parent().unwrap())?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&l.target), &dest).with_context(|| format!("cannot create {}", dest.display()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Fails naming what is missing when the initramfs is not systemd-based (kiln's target could
/// not start). Reads every archive of it: an uncompressed early one (CPU microcode) may come
/// first, the main one compressed (gzip, xz or zstd).
fn check_initramfs(path: &Path) -> Result<()> {
    let found = initramfs_entries(path, &[INITRAMFS_SYSTEMD])?;
    ensure!(
        found.contains(INITRAMFS_SYSTEMD),
        "it has no /{INITRAMFS_SYSTEMD}: the installer needs a systemd-based initramfs (dracut's, as bootc images have; build it with dracut --no-hostonly)"
    );
    Ok(())
}

/// Which of `names` the initramfs at `path` holds (paths without a leading `/` or `./`).
pub fn initramfs_entries(path: &Path, names: &[&str]) -> Result<BTreeSet<String>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader: Box<dyn BufRead> = Box::new(BufReader::with_capacity(1 << 16, file));
    let mut found = BTreeSet::new();
    loop {
        // Archives are padded with zeros (to 4 bytes, or to a block).
        loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(found);
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            let all = zeros == buf.len();
            reader.consume(zeros);
            if !all {
                break;
            }
        }
        let head = reader.fill_buf()?.to_vec();
        reader = if head.starts_with(b"0707") {
            read_cpio(&mut reader, names, &mut found)?;
            reader
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(reader)))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(BufReader::new(zstd::stream::read::Decoder::with_buffer(reader)?))
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Box::new(BufReader::new(xz2::bufread::XzDecoder::new_multi_decoder(reader)))
        } else {
            bail!("{}: an archive kiln cannot read (neither a cpio nor gzip, xz or zstd; starts {:02x?})", path.display(), &head[..head.len().min(6)]);
        };
    }
}

/// Reads one newc cpio archive up to its trailer, noting which of `names` it holds.
fn read_cpio(r: &mut dyn BufRead, names: &[&str], found: &mut BTreeSet<String>) -> Result<()> {
    let hex = |h: &[u8], field: usize| -> Result<u64> {
        let s = std::str::from_utf8(&h[6 + field * 8..14 + field * 8]).ok().and_then(|s| u64::from_str_radix(s, 16).ok());
        s.context("a cpio header with a field that is not hex")
    };
    loop {
        let mut h = [0u8; 110];
        r.read_exact(&mut h).context("the initramfs ends inside a cpio archive")?;
        ensure!(&h[..6] == b"070701" || &h[..6] == b"070702", "the initramfs holds a cpio archive that is not newc");
        let (size, name_size) = (hex(&h, 6)?, hex(&h, 11)? as usize);
        let mut name = vec![0u8; name_size + (4 - (110 + name_size) % 4) % 4];
        r.read_exact(&mut name)?;
        let name = String::from_utf8_lossy(&name[..name_size.saturating_sub(1)]).into_owned();
        if name == "TRAILER!!!" {
            return Ok(());
        }
        let name = name.trim_start_matches("./").trim_start_matches('/');
        if names.contains(&name) {
            found.insert(name.to_string());
        }
        let padded = size + (4 - size % 4) % 4;
        let skipped = std::io::copy(&mut r.take(padded), &mut std::io::sink())?;
        ensure!(skipped == padded, "the initramfs ends inside {name}");
    }
}

/// The title of the menu entry: the image's PRETTY_NAME, else its reference.
fn menu_title(image: &Image, root: &Path) -> String {
    let os_release = ["etc/os-release", "usr/lib/os-release"].iter().find_map(|p| std::fs::read_to_string(ImageRoot::new(root).resolve(p).ok()??).ok());
    let pretty = os_release.and_then(|text| {
        text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
    });
    pretty.unwrap_or_else(|| image.describe()).replace(['\'', '\n'], "")
}

/// The ISO's GRUB menu, for BIOS and UEFI alike; `extra_kargs` are the config's for the
/// installer's own boot.
fn menu_config(title: &str, medium_id: &str, extra_kargs: &str) -> String {
    let extra = if extra_kargs.is_empty() { String::new() } else { format!(" {extra_kargs}") };
    format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set timeout=5\n\
         set default=0\n\
         menuentry 'Install {title}' {{\n\
         \x20 linux /boot/vmlinuz rd.systemd.unit={TARGET_UNIT} {MEDIUM_KARG}={medium_id} {INSTALLER_KARGS}{extra}\n\
         \x20 initrd /boot/initramfs.img /boot/kiln.img\n\
         }}\n"
    )
}

/// The ESP's config: the vendor's GRUB reads it from EFI/<vendor>, finds the volume by its
/// label and reads the menu from there.
fn esp_config(volume_id: &str) -> String {
    format!("search --no-floppy --label --set=root {volume_id}\nset prefix=($root)/boot/grub\nconfigfile ($root)/boot/grub/grub.cfg\n")
}

/// The ESP image: FAT (12 or 16, by size: El Torito loads at most 32 MiB, too small for
/// FAT32) holding shim as the removable path, the GRUB and MokManager beside it (shim loads
/// them from its own directory) and the config where GRUB looks for it. No fallback (fbx64):
/// it would make boot entries for the medium.
fn write_esp(path: &Path, efi: &bootloader::RemovableEfi, config: &str, ids: &Ids) -> Result<()> {
    let mut files: Vec<(String, &[u8])> = vec![
        ("EFI/BOOT/BOOTX64.EFI".into(), &efi.shim),
        ("EFI/BOOT/grubx64.efi".into(), &efi.grub),
        ("EFI/BOOT/grub.cfg".into(), config.as_bytes()),
        (format!("EFI/{}/grub.cfg", efi.vendor), config.as_bytes()),
    ];
    if let Some(mm) = &efi.mok_manager {
        files.push(("EFI/BOOT/mmx64.efi".into(), mm));
    }
    let content: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    // Room for the FATs, directories and cluster slack, in whole MiB.
    let size = (content + content / 8 + (1 << 20)).next_multiple_of(1 << 20);
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(size)?;
    fatfs::format_volume(&mut file, fatfs::FormatVolumeOptions::new().volume_label(*b"KILN-ESP   ").volume_id(ids.u32("iso esp volume")))
        .context("formatting the ISO's ESP image")?;
    let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).context("opening the ISO's ESP image")?;
    for (name, data) in &files {
        let mut dir = fs.root_dir();
        let (parent, leaf) = name.rsplit_once('/').unwrap();
        for part in parent.split('/') {
            dir = match dir.open_dir(part) {
                Ok(d) => d,
                Err(_) => dir.create_dir(part)?,
            };
        }
        let mut f = dir.create_file(leaf).with_context(|| format!("creating {name} on the ISO's ESP"))?;
        f.truncate()?;
        f.write_all(data).with_context(|| format!("writing {name} on the ISO's ESP (the image is {size} bytes)"))?;
    }
    fs.unmount().context("closing the ISO's ESP image")?;
    Ok(())
}

/// `kiln.img`: the settings, the units and kiln with the libraries and loader it runs with.
fn write_kiln_img(path: &Path, settings: &IsoSettings, image: &ImageRoot, unix_time: i64, run_dir: &Path) -> Result<()> {
    let out = std::io::BufWriter::new(File::create(path).with_context(|| format!("cannot create {}", path.display()))?);
    let mut cpio = CpioWriter::new(out, unix_time.clamp(0, u32::MAX as i64) as u32);
    let tools = image_tools(image)?;
    let mut dirs = BTreeSet::new();
    let bundle = format!("{BUNDLE_DIR}/x");
    let files = ["etc/kiln/x", "etc/systemd/system/x", &bundle].into_iter().map(String::from).chain(tools.iter().map(|(p, _)| p.clone()));
    // Every file's directories, parents first.
    for file in files.collect::<Vec<_>>() {
        let parts: Vec<&str> = file.split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            if dirs.insert(dir.clone()) {
                cpio.dir(&dir, 0o755)?;
            }
        }
    }
    let text = |cpio: &mut CpioWriter<_>, name: &str, body: &str| cpio.file(name, 0o644, body.len() as u64, &mut body.as_bytes());
    text(&mut cpio, SETTINGS_PATH, &toml::to_string(settings)?)?;
    text(&mut cpio, &format!("etc/systemd/system/{TARGET_UNIT}"), &target_unit())?;
    text(&mut cpio, &format!("etc/systemd/system/{SERVICE_UNIT}"), &service_unit(settings.reboot))?;
    for (name, host) in kiln_bundle(run_dir)? {
        let mut f = File::open(&host).with_context(|| format!("cannot open {}", host.display()))?;
        let size = f.metadata()?.len();
        cpio.file(&format!("{BUNDLE_DIR}/{name}"), 0o755, size, &mut f)?;
    }
    for (path, source) in &tools {
        match source {
            ToolFile::Image(host) => {
                let mut f = File::open(host).with_context(|| format!("cannot open {}", host.display()))?;
                let size = f.metadata()?.len();
                cpio.file(path, 0o755, size, &mut f)?;
            }
            ToolFile::Link(target) => cpio.symlink(path, target)?,
        }
    }
    let (mut out, _) = cpio.finish()?;
    out.flush()?;
    Ok(())
}

fn target_unit() -> String {
    format!(
        "[Unit]\nDescription=kiln installer\nRequires=basic.target\nWants={SERVICE_UNIT}\nAfter=basic.target {SERVICE_UNIT}\nAllowIsolate=yes\n"
    )
}

fn service_unit(reboot: bool) -> String {
    let action = if reboot { "reboot" } else { "poweroff" };
    format!(
        "[Unit]\nDescription=kiln: install the image from this medium\nAfter=basic.target systemd-udev-trigger.service systemd-udev-settle.service\nDefaultDependencies=no\n\
         # The machine powers off (or reboots) once the system is installed; a failure stays on screen.\n\
         SuccessAction={action}\n\n\
         [Service]\nType=oneshot\nStandardOutput=journal+console\nStandardError=journal+console\n\
         ExecStart=/{BUNDLE_DIR}/{LOADER} --library-path /{BUNDLE_DIR} /{BUNDLE_DIR}/kiln install from-iso\n"
    )
}

/// The dynamic loader's name in the bundle (run by path: the initramfs's own loader and
/// libraries may be older than what kiln was built against).
const LOADER: &str = "ld.so";

/// The running kiln (a copy in `run_dir` without its debug info), its loader and the libraries
/// it needs (by their sonames), as (name in the bundle, host file). The loader lists the
/// libraries (`--list`, what ldd does): its search is the one kiln ran with.
fn kiln_bundle(run_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let exe = std::env::current_exe().context("cannot find the running kiln")?;
    let interp = Elf::read(&exe)?.interpreter.with_context(|| format!("{} has no ELF interpreter: a static kiln needs no bundle, but this build is not one", exe.display()))?;
    let out = Command::new(&interp).arg("--list").arg(&exe).output().with_context(|| format!("running {} --list", interp.display()))?;
    ensure!(out.status.success(), "{} --list {} failed: {}", interp.display(), exe.display(), String::from_utf8_lossy(&out.stderr));
    let stripped = run_dir.join("kiln-bundled");
    elf::copy_without_debug_info(&exe, &stripped)?;
    let mut bundle = vec![("kiln".to_string(), stripped), (LOADER.to_string(), interp.clone())];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)"; the vDSO and the loader
        // itself have no "=>".
        if let Some((soname, rest)) = line.trim().split_once(" => ") {
            let host = rest.split(" (").next().unwrap_or_default();
            ensure!(host.starts_with('/'), "kiln needs {soname}, which the loader does not find ({line})");
            bundle.push((soname.to_string(), PathBuf::from(host)));
        }
    }
    Ok(bundle)
}

/// Where a tool's file in kiln.img comes from.
enum ToolFile {
    Image(PathBuf),
    Link(String),
}

/// The image's tools (those it has) under the names kiln calls them by, and the libraries
/// they need, found as the loader would in the image: (path in kiln.img, source). The
/// libraries go where the image has them, beside the initramfs's own (the same image's, so
/// the same builds).
fn image_tools(image: &ImageRoot) -> Result<Vec<(String, ToolFile)>> {
    let mut out = Vec::new();
    let mut libs = BTreeSet::new();
    let mut pending = Vec::new();
    for (path, names) in IMAGE_TOOLS {
        let Some(host) = image.resolve(path)? else { continue };
        let dir = path.rsplit_once('/').unwrap().0;
        for (i, name) in names.iter().enumerate() {
            let dest = format!("{dir}/{name}");
            out.push((dest, if i == 0 { ToolFile::Image(host.clone()) } else { ToolFile::Link(names[0].to_string()) }));
        }
        pending.extend(Elf::read(&host)?.needed);
    }
    while let Some(soname) = pending.pop() {
        if !libs.insert(soname.clone()) {
            continue;
        }
        let found = LIB_DIRS.iter().map(|d| format!("{d}/{soname}")).find_map(|p| image.resolve(&p).ok().flatten().map(|h| (p, h)));
        let (path, host) = found.with_context(|| format!("the image's tools need {soname}, which is in none of /{}", LIB_DIRS.join(", /")))?;
        pending.extend(Elf::read(&host)?.needed);
        out.push((path, ToolFile::Image(host)));
    }
    Ok(out)
}

/// The payload: the image as an OCI layout with its manifest, config and layer blobs as
/// published (the layers streamed from their local files, or copied into `run_dir` first when
/// the source has none, e.g. an oci-archive).
fn payload_files(image: &Image, run_dir: &Path) -> Result<Vec<IsoFile>> {
    let blob_path = |digest: &str| format!("{PAYLOAD_DIR}/blobs/{}", digest.replacen(':', "/", 1));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": image.manifest.media_type, "digest": image.manifest_digest, "size": image.manifest_bytes.len() }],
    });
    let mut files = vec![
        IsoFile { path: format!("{PAYLOAD_DIR}/oci-layout"), content: Content::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()) },
        IsoFile { path: format!("{PAYLOAD_DIR}/index.json"), content: Content::Bytes(serde_json::to_vec(&index)?) },
        IsoFile { path: blob_path(&image.manifest_digest), content: Content::Bytes(image.manifest_bytes.clone()) },
        IsoFile { path: blob_path(&image.manifest.config.digest), content: Content::Bytes(image.config_bytes.clone()) },
    ];
    let mut seen = BTreeSet::new();
    for layer in &image.layers {
        let d = &layer.descriptor;
        // A layer listed twice is one blob.
        if !seen.insert(d.digest.clone()) || d.digest == image.manifest.config.digest {
            continue;
        }
        let content = match image.blob_file(d) {
            Some(p) => p,
            None => {
                let copy = run_dir.join(format!("blob-{}", d.digest.replace(':', "-")));
                let mut out = File::create(&copy).with_context(|| format!("cannot create {}", copy.display()))?;
                std::io::copy(&mut image.raw_blob(d)?, &mut out).with_context(|| format!("copying {}", d.digest))?;
                copy
            }
        };
        files.push(IsoFile { path: blob_path(&d.digest), content: Content::File(content) });
    }
    Ok(files)
}
