//! The `[bootloader]` part of a platform file (`platforms/<arch>.toml`): which of the image's
//! files make each firmware's bootloader. Nothing here is hard-coded in the installer.

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootloaderPlatform {
    /// GRUB's directory inside /boot (`grub2`, bootupd's choice).
    pub grub_dir: String,
    /// bootupd's update payloads in the image: `EFI/`, `EFI.json`, `BIOS.json`.
    pub bootupd_updates: String,
    /// bootupd's static GRUB configs in the image (`grub-static-pre.cfg`, `configs.d/`,
    /// `grub-static-efi.cfg`).
    pub bootupd_static_configs: String,
    /// The image's package database, read for versions when bootupd's metadata is absent
    /// (a dpkg status file).
    pub package_db: String,
    pub uefi: Option<UefiPlatform>,
    pub bios: Option<BiosPlatform>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UefiPlatform {
    /// shim's file name; the directory holding it is the vendor directory (as bootupd finds it).
    pub shim: String,
    /// GRUB's file name, next to shim.
    pub grub: String,
    /// Newer images: `<efi_components>/<package>/<version>/EFI/…`.
    pub efi_components: String,
    /// Images without bootupd's layout: the packages' own files.
    pub fallback: Option<UefiFallback>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UefiFallback {
    /// Packages whose versions describe these files.
    pub packages: Vec<String>,
    /// Files copied to the ESP; `to` is below `EFI/`, `@VENDOR@` is the directory GRUB's
    /// built-in prefix names.
    pub files: Vec<FileCopy>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCopy {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BiosPlatform {
    /// GRUB's i386-pc directory in the image: kernel.img, *.mod, moddep.lst, boot.img…
    pub modules_dir: String,
    /// Modules built into core.img (their dependencies are added).
    pub core_modules: Vec<String>,
    /// Packages whose versions describe the BIOS bootloader when `BIOS.json` is absent.
    pub packages: Vec<String>,
}
