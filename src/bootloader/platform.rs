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
    /// Apple Silicon's m1n1 stage 2 (`m1n1/boot.bin` on the ESP).
    pub m1n1: Option<M1n1Platform>,
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct M1n1Platform {
    /// Where images keep m1n1's stage 2 binary, first found wins.
    pub m1n1: Vec<String>,
    /// Where images keep U-Boot for Apple machines (without device tree), first found wins.
    pub u_boot: Vec<String>,
    /// Directories of the kernel's Apple device trees; `@KVER@` is the kernel's version.
    pub dtb_dirs: Vec<String>,
    /// The device trees taken from that directory, in this order (`*` matches any characters).
    pub dtbs: Vec<String>,
    /// m1n1's configuration in the image, and the line prefixes taken from it as variables.
    pub config: String,
    pub config_keys: Vec<String>,
    /// The boot picker icon's directory (`<os-release ID>.icns` in it).
    pub icon_dir: String,
    /// macOS firmware versions the Asahi installer may pair with this m1n1.
    pub supported_fw: Vec<String>,
}
