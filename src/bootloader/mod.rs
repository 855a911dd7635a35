//! The bootloader stage: puts the *image's own* bootloader onto the disk, as `bootc install`
//! (through bootupd) would, without running anything from the image.
//!
//! - UEFI: the image's shim and GRUB copied to the ESP as bootupd lays them out, with a small
//!   grub.cfg beside GRUB that finds /boot by UUID (bootupd's static scheme).
//! - BIOS: GRUB's core.img built here from the image's i386-pc modules, written into the BIOS
//!   boot partition, and boot.img into the MBR.
//! - `/boot/grub2/grub.cfg`: bootupd's static config when the image ships it and its GRUB has
//!   blscfg; otherwise menu entries rendered from the BLS entries.
//! - `/boot/bootupd-state.json`, so bootupd can update all this later.
//!
//! Which image files make each bootloader is platform data (`platforms/<arch>.toml`,
//! [`BootloaderPlatform`]); the config templates live in `bootloader/`.

mod bios;
mod bls;
pub mod core_image;
mod esp;
mod grub_cfg;
mod grub_efi;
pub mod image_files;
mod le;
pub mod m1n1;
mod moddep;
mod packages;
mod platform;
pub mod state;
mod template;

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

pub use bios::BiosBootPartition;
pub use platform::{BiosPlatform, BootloaderPlatform, FileCopy, M1n1Platform, UefiFallback, UefiPlatform};

use esp::{EspContent, EspSource};
use image_files::{join, ImageRoot};
use state::{ContentMetadata, FileMetadata, FileTree, InstalledContent, SavedState};

/// Where the ESP's files go. The disk stage implements it over its FAT writer; [`EspDir`]
/// implements it over a mounted ESP. Paths are relative to the ESP's root, `/`-separated.
pub trait EspWriter {
    fn create_dir_all(&mut self, path: &str) -> Result<()>;
    fn write_file(&mut self, path: &str, data: &[u8]) -> Result<()>;
}

/// An ESP mounted at (or staged in) a directory.
pub struct EspDir(pub PathBuf);

impl EspWriter for EspDir {
    fn create_dir_all(&mut self, path: &str) -> Result<()> {
        let dir = self.0.join(path);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))
    }

    fn write_file(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let file = self.0.join(path);
        std::fs::write(&file, data).with_context(|| format!("writing {}", file.display()))
    }
}

/// The filesystem GRUB reads /boot's files from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFilesystem {
    pub uuid: String,
    /// /boot is its own partition (the `default` layout), rather than a directory of the root
    /// filesystem (the `bootc` layout). ostree's BLS paths (`/boot/ostree/…`) work on both: on
    /// a boot partition through ostree's `boot -> .` symlink.
    pub separate_partition: bool,
}

impl BootFilesystem {
    /// A path below /boot as GRUB finds it on this filesystem.
    fn grub_path(&self, below_boot: &str) -> String {
        if self.separate_partition {
            format!("/{below_boot}")
        } else {
            format!("/boot/{below_boot}")
        }
    }

    /// The host directory that is GRUB's `/` on this filesystem, given /boot's mount point.
    fn host_root(&self, boot_dir: &Path) -> PathBuf {
        if self.separate_partition {
            boot_dir.to_path_buf()
        } else {
            boot_dir.join("..")
        }
    }
}

/// The disk and BIOS boot partition for GRUB's BIOS stages.
pub struct BiosTarget<'a> {
    /// The whole disk: an image file or a block device.
    pub disk: &'a std::fs::File,
    pub partition: BiosBootPartition,
}

/// Where the bootloader goes.
pub struct BootTarget<'a> {
    /// The target's /boot, mounted: the boot partition, or the root filesystem's /boot.
    pub boot_dir: &'a Path,
    pub boot_fs: BootFilesystem,
    /// The BLS entries ostree wrote (`<boot_dir>/loader/entries`).
    pub entries_dir: PathBuf,
    /// The ESP, for UEFI; `None` when the disk has none.
    pub esp: Option<&'a mut dyn EspWriter>,
    /// The BIOS boot partition, for BIOS; `None` when the disk has none.
    pub bios: Option<BiosTarget<'a>>,
}

/// How `/boot/grub2/grub.cfg` finds the boot entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrubConfig {
    /// bootupd's static config: GRUB's blscfg reads /boot/loader/entries at boot.
    BootupdStatic,
    /// Menu entries rendered from the BLS entries (a GRUB without blscfg, e.g. Debian's).
    RenderedEntries,
}

/// What [`install`] put down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The ESP directory of shim and GRUB (`debian`, `fedora`…), when UEFI was installed.
    pub uefi_vendor: Option<String>,
    /// What a firmware boot entry starts, below the ESP's root: the vendor's shim, else its
    /// GRUB (`EFI/fedora/shimx64.efi`), when UEFI was installed.
    pub uefi_loader: Option<String>,
    /// core.img's size, when BIOS was installed.
    pub core_img_bytes: Option<usize>,
    pub grub_config: GrubConfig,
}

/// GRUB's files for normal mode, copied beside grub.cfg as grub-install copies them, so that
/// `insmod` and command autoloading (command.lst) find modules core.img does not carry.
const GRUB_MODULE_SUFFIXES: [&str; 2] = [".mod", ".lst"];
const CONFIG_MODE: u32 = 0o600;
const FILE_MODE: u32 = 0o644;
const GRUB_DIR_MODE: u32 = 0o700;

/// Installs the bootloader of the image at `image_root` (a checked-out deployment) onto
/// `target`. Everything is read and built before anything is written.
pub fn install(platform: &BootloaderPlatform, image_root: &Path, target: BootTarget<'_>) -> Result<Installed> {
    ensure!(target.esp.is_some() || target.bios.is_some(), "the disk has neither an ESP nor a BIOS boot partition: no bootloader to install");
    let image = ImageRoot::new(image_root);
    let uuid = target.boot_fs.uuid.as_str();

    let esp = match &target.esp {
        Some(_) => {
            let uefi = platform.uefi.as_ref().context("the disk has an ESP, but the platform has no [bootloader.uefi]")?;
            Some((uefi, esp::locate(&image, platform, uefi)?))
        }
        None => None,
    };
    let bios = match &target.bios {
        Some(bios_target) => {
            let bios = platform.bios.as_ref().context("the disk has a BIOS boot partition, but the platform has no [bootloader.bios]")?;
            let config = grub_cfg::core_config(uuid, &target.boot_fs.grub_path(&platform.grub_dir))?;
            let spec = core_image::CoreSpec { modules: &bios.core_modules, config: &config, prefix: &target.boot_fs.grub_path(&platform.grub_dir) };
            let core = core_image::build(&image, &bios.modules_dir, &spec)?;
            let boot_img = image.read(&join(&bios.modules_dir, "boot.img"))?;
            Some((bios, bios_target.disk, bios_target.partition, core, boot_img))
        }
        None => None,
    };

    let bootupd_static = grub_cfg::bootupd_static(&image, &platform.bootupd_static_configs)?;
    let blscfg_everywhere = esp.as_ref().is_none_or(|(_, e)| e.grub.has_module("blscfg"))
        && match &bios {
            Some((bios, ..)) => image.exists(&join(&bios.modules_dir, "blscfg.mod"))?,
            None => true,
        };
    let (grub_config, main_cfg) = match bootupd_static {
        Some(config) if blscfg_everywhere => (GrubConfig::BootupdStatic, config),
        _ => (GrubConfig::RenderedEntries, rendered_main_config(&target)?),
    };
    let bootuuid = grub_cfg::bootuuid(uuid)?;

    // Writing starts here.
    let grub_dir = target.boot_dir.join(&platform.grub_dir);
    std::fs::DirBuilder::new().recursive(true).mode(GRUB_DIR_MODE).create(&grub_dir).with_context(|| format!("creating {}", grub_dir.display()))?;
    write_file(&grub_dir.join("grub.cfg"), main_cfg.as_bytes(), CONFIG_MODE)?;
    write_file(&grub_dir.join("bootuuid.cfg"), bootuuid.as_bytes(), CONFIG_MODE)?;
    write_file(&grub_dir.join("grubenv"), &grub_cfg::grubenv(), CONFIG_MODE)?;

    let mut installed = BTreeMap::new();
    if let (Some((uefi, content)), Some(writer)) = (&esp, target.esp) {
        let esp_cfg = grub_cfg::esp_config(&image, &platform.bootupd_static_configs, &platform.grub_dir)?;
        let filetree = write_esp(&image, content, writer, &esp_cfg, &bootuuid)?;
        let meta = efi_metadata(&image, platform, uefi, content)?;
        installed.insert(state::EFI_COMPONENT.to_string(), InstalledContent { meta, filetree: Some(filetree), adopted_from: None });
    }
    let mut core_img_bytes = None;
    if let Some((bios_platform, disk, partition, core, boot_img)) = bios {
        copy_grub_modules(&image, &bios_platform.modules_dir, &grub_dir.join(Path::new(&bios_platform.modules_dir).file_name().unwrap_or("i386-pc".as_ref())))?;
        core_img_bytes = Some(core.bytes.len());
        bios::write(disk, partition, &boot_img, core)?;
        let meta = bios_metadata(&image, platform, bios_platform)?;
        installed.insert(state::BIOS_COMPONENT.to_string(), InstalledContent { meta, filetree: None, adopted_from: None });
    }

    let static_configs = match grub_config {
        GrubConfig::BootupdStatic => Some(ContentMetadata {
            timestamp: state::image_file_timestamp(&image, &join(&platform.bootupd_static_configs, "grub-static-pre.cfg"))?,
            version: format!("kiln-{}", env!("CARGO_PKG_VERSION")),
            versions: None,
        }),
        GrubConfig::RenderedEntries => None,
    };
    let saved = SavedState { installed, pending: None, static_configs };
    write_file(&target.boot_dir.join(state::STATE_FILE), &serde_json::to_vec(&saved)?, FILE_MODE)?;

    let uefi_loader = esp.as_ref().map(|(uefi, e)| {
        let shim = format!("{}/{}", e.vendor, uefi.shim);
        format!("EFI/{}", if e.files.contains_key(&shim) { shim } else { format!("{}/{}", e.vendor, uefi.grub) })
    });
    Ok(Installed { uefi_vendor: esp.map(|(_, e)| e.vendor), uefi_loader, core_img_bytes, grub_config })
}

/// grub.cfg from the BLS entries, after checking GRUB will find each file they name.
fn rendered_main_config(target: &BootTarget<'_>) -> Result<String> {
    let entries = bls::read_entries(&target.entries_dir)?;
    let root = target.boot_fs.host_root(target.boot_dir);
    for entry in &entries {
        for file in entry.files() {
            let host = root.join(file.trim_start_matches('/'));
            ensure!(
                host.is_file(),
                "BLS entry {}.conf names {file}, which GRUB would not find on the filesystem holding /boot ({} is missing{})",
                entry.id,
                host.display(),
                if target.boot_fs.separate_partition && file.starts_with("/boot/") { "; on a separate /boot, ostree's `boot -> .` symlink makes /boot/… paths work" } else { "" }
            );
        }
    }
    grub_cfg::from_bls(&entries, &target.boot_fs.uuid)
}

/// Copies the ESP content and writes GRUB's ESP config beside it; returns bootupd's file tree.
fn write_esp(image: &ImageRoot, content: &EspContent, writer: &mut dyn EspWriter, esp_cfg: &str, bootuuid: &str) -> Result<FileTree> {
    let mut children = BTreeMap::new();
    let mut made = std::collections::BTreeSet::new();
    for (path, file) in &content.files {
        let dest = format!("EFI/{path}");
        if let Some((dir, _)) = dest.rsplit_once('/') {
            if made.insert(dir.to_string()) {
                writer.create_dir_all(dir)?;
            }
        }
        let data = image.read(&file.image_path)?;
        writer.write_file(&dest, &data).with_context(|| format!("writing {dest} to the ESP"))?;
        children.insert(path.clone(), FileMetadata::of(&file.source, &data));
    }
    writer.create_dir_all(&format!("EFI/{}", content.vendor))?;
    writer.write_file(&content.vendor_path("grub.cfg"), esp_cfg.as_bytes())?;
    writer.write_file(&content.vendor_path("bootuuid.cfg"), bootuuid.as_bytes())?;
    Ok(FileTree { children })
}

fn efi_metadata(image: &ImageRoot, platform: &BootloaderPlatform, uefi: &UefiPlatform, content: &EspContent) -> Result<ContentMetadata> {
    let timestamp = || state::image_file_timestamp(image, content.timestamp_file());
    match &content.source {
        EspSource::BootupdUpdates => match ContentMetadata::from_image_json(image, &join(&platform.bootupd_updates, "EFI.json"))? {
            Some(meta) => Ok(meta),
            None => Ok(ContentMetadata::from_versions(Vec::new(), timestamp()?)),
        },
        EspSource::EfiComponents(components) => Ok(ContentMetadata::from_versions(components.clone(), timestamp()?)),
        EspSource::Fallback => {
            let names = uefi.fallback.as_ref().map(|f| f.packages.as_slice()).unwrap_or_default();
            Ok(ContentMetadata::from_versions(packages::installed_versions(image, &platform.package_db, names)?, timestamp()?))
        }
    }
}

fn bios_metadata(image: &ImageRoot, platform: &BootloaderPlatform, bios: &BiosPlatform) -> Result<ContentMetadata> {
    if let Some(meta) = ContentMetadata::from_image_json(image, &join(&platform.bootupd_updates, "BIOS.json"))? {
        return Ok(meta);
    }
    let versions = packages::installed_versions(image, &platform.package_db, &bios.packages)?;
    Ok(ContentMetadata::from_versions(versions, state::image_file_timestamp(image, &join(&bios.modules_dir, "kernel.img"))?))
}

fn copy_grub_modules(image: &ImageRoot, modules_dir: &str, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for entry in image.list_dir(modules_dir)? {
        if !entry.is_dir && GRUB_MODULE_SUFFIXES.iter().any(|s| entry.name.ends_with(s)) {
            write_file(&dest.join(&entry.name), &image.read(&entry.path)?, FILE_MODE)?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(data).with_context(|| format!("writing {}", path.display()))
}

/// The image's signed UEFI boot chain, for a removable medium (the installer ISO's ESP):
/// shim, the GRUB it loads and MokManager, found as the disk's ESP finds them.
pub struct RemovableEfi {
    /// The directory GRUB looks for its config in (`EFI/<vendor>`).
    pub vendor: String,
    pub shim: Vec<u8>,
    pub grub: Vec<u8>,
    pub mok_manager: Option<Vec<u8>>,
}

/// MokManager's name beside shim (shim loads it by this name from its own directory).
const MOK_MANAGER: &str = "mmx64.efi";

pub fn removable_efi(platform: &BootloaderPlatform, image_root: &Path) -> Result<RemovableEfi> {
    let image = ImageRoot::new(image_root);
    let uefi = platform.uefi.as_ref().context("the platform has no [bootloader.uefi]")?;
    let content = esp::locate(&image, platform, uefi)?;
    let read = |name: &str| -> Result<Option<Vec<u8>>> {
        match content.files.get(&format!("{}/{name}", content.vendor)) {
            Some(f) => Ok(Some(image.read(&f.image_path)?)),
            None => Ok(None),
        }
    };
    let shim = read(&uefi.shim)?.with_context(|| format!("the image has no EFI/{}/{} (shim): an installer ISO boots through the image's shim", content.vendor, uefi.shim))?;
    let grub = read(&uefi.grub)?.with_context(|| format!("the image has no EFI/{}/{}", content.vendor, uefi.grub))?;
    Ok(RemovableEfi { mok_manager: read(MOK_MANAGER)?, vendor: content.vendor, shim, grub })
}
