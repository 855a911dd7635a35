//! Per-platform data (`platforms/<arch>.toml`, built into the binary): architecture names,
//! firmware, default layout, the root partition type, and the bootloader's files.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::bootloader::BootloaderPlatform;

const PLATFORMS: &[(&str, &str)] = &[
    ("amd64", include_str!("../platforms/x86_64.toml")),
    ("arm64", include_str!("../platforms/aarch64.toml")),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    /// The OCI architecture name (`amd64`).
    pub oci: String,
    /// The kernel's name for it (`x86_64`), as kargs.d's match-architectures spells it.
    pub kernel: String,
    /// The discoverable-partitions root partition type GUID.
    pub root_type: String,
    pub default_layout: String,
    pub firmware: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    pub arch: Arch,
    pub bootloader: BootloaderPlatform,
}

impl Platform {
    /// The platform for an image architecture (OCI naming).
    pub fn for_oci_arch(arch: &str) -> Result<Platform> {
        let Some((_, text)) = PLATFORMS.iter().find(|(a, _)| *a == arch) else {
            let known: Vec<&str> = PLATFORMS.iter().map(|(a, _)| *a).collect();
            bail!(
                "kiln has no platform for {arch} images: it bakes {} (platforms/*.toml); for a multi-platform image, pick one of those with --target-arch",
                known.join(" and ")
            );
        };
        toml::from_str(text).with_context(|| format!("the built-in platform file for {arch}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_platforms_parse() {
        let p = super::Platform::for_oci_arch("amd64").unwrap();
        assert_eq!(p.arch.kernel, "x86_64");
        assert_eq!(p.bootloader.grub_dir, "grub2");
        assert!(p.bootloader.bios.unwrap().core_modules.iter().any(|m| m == "biosdisk"));
        assert_eq!(p.bootloader.uefi.unwrap().shim, "shimx64.efi");
        assert!(p.bootloader.m1n1.is_none());
        let p = super::Platform::for_oci_arch("arm64").unwrap();
        assert_eq!((p.arch.kernel.as_str(), p.arch.firmware.as_slice()), ("aarch64", ["uefi".to_string()].as_slice()));
        assert!(p.bootloader.bios.is_none());
        assert_eq!(p.bootloader.uefi.unwrap().grub, "grubaa64.efi");
        assert!(p.bootloader.m1n1.unwrap().dtbs.contains(&"t81*.dtb".to_string()));
        let err = super::Platform::for_oci_arch("mips").unwrap_err().to_string();
        assert!(err.contains("mips") && err.contains("amd64 and arm64"), "{err}");
    }
}
