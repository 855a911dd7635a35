//! The ESP's content, from the image: which files go below `EFI/`, where each comes from, and
//! the vendor directory. Sources, as bootupd picks them: `usr/lib/efi/<pkg>/<ver>/EFI`, else
//! bootupd's `usr/lib/bootupd/updates/EFI`, else the platform's fallback (the packages' paths).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use super::grub_efi::{self, GrubEfi};
use super::image_files::{join, ImageRoot};
use super::platform::{BootloaderPlatform, UefiPlatform};

const EFI_DIR: &str = "EFI";
const VENDOR_PLACEHOLDER: &str = "@VENDOR@";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspFile {
    /// The image file to copy.
    pub image_path: String,
    /// The path relative to the source tree, as bootupd records it (`source`).
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EspSource {
    /// `usr/lib/efi/<package>/<version>/EFI`: (package, version) of each.
    EfiComponents(Vec<(String, String)>),
    /// bootupd's `updates/EFI`, described by `updates/EFI.json`.
    BootupdUpdates,
    /// The platform's fallback file list.
    Fallback,
}

#[derive(Clone, Debug)]
pub struct EspContent {
    pub source: EspSource,
    /// Files by their path below the ESP's `EFI/` (`BOOT/BOOTX64.EFI`, `debian/grubx64.efi`).
    pub files: BTreeMap<String, EspFile>,
    /// The directory below `EFI/` holding shim and GRUB (`debian`, `fedora`, `centos`).
    pub vendor: String,
    /// What the vendor's GRUB has built in.
    pub grub: GrubEfi,
    /// The image path of the vendor's GRUB, when there is one.
    pub grub_image_path: Option<String>,
}

impl EspContent {
    /// The vendor directory's path on the ESP, for configs placed beside GRUB.
    pub fn vendor_path(&self, name: &str) -> String {
        format!("{EFI_DIR}/{}/{name}", self.vendor)
    }

    /// The file whose modification time stands for the content's build time: GRUB's, else
    /// any (`files` is never empty).
    pub fn timestamp_file(&self) -> &str {
        self.grub_image_path.as_deref().or_else(|| self.files.values().next().map(|f| f.image_path.as_str())).unwrap_or_default()
    }
}

pub fn locate(image: &ImageRoot, platform: &BootloaderPlatform, uefi: &UefiPlatform) -> Result<EspContent> {
    let (source, files) = if let Some(found) = efi_components(image, &uefi.efi_components)? {
        found
    } else if let Some(files) = tree(image, &join(&platform.bootupd_updates, EFI_DIR), "")? {
        (EspSource::BootupdUpdates, files)
    } else {
        // What was looked for, for the message when the fallback finds nothing either.
        let searched = format!("/{}/<package>/<version>/{EFI_DIR}, /{}/{EFI_DIR}", uefi.efi_components, platform.bootupd_updates);
        match &uefi.fallback {
            Some(fallback) => return fallback_content(image, uefi, fallback, &searched),
            None => bail!("the image has no UEFI bootloader: none of {searched} exists"),
        }
    };
    let vendor = vendor_dir(&files, uefi)?;
    let grub_image_path = files.get(&format!("{vendor}/{}", uefi.grub)).map(|f| f.image_path.clone());
    let grub = match &grub_image_path {
        Some(path) => inspect_grub(image, path, &vendor)?,
        None => GrubEfi::default(),
    };
    Ok(EspContent { source, files, vendor, grub, grub_image_path })
}

/// `usr/lib/efi/<package>/<version>/EFI/**`, merged.
fn efi_components(image: &ImageRoot, dir: &str) -> Result<Option<(EspSource, BTreeMap<String, EspFile>)>> {
    if !image.is_dir(dir)? {
        return Ok(None);
    }
    let mut components = Vec::new();
    let mut files = BTreeMap::new();
    for package in image.list_dir(dir)?.into_iter().filter(|e| e.is_dir) {
        for version in image.list_dir(&package.path)?.into_iter().filter(|e| e.is_dir) {
            let prefix = format!("{}/{}/{EFI_DIR}", package.name, version.name);
            if let Some(found) = tree(image, &join(&version.path, EFI_DIR), &prefix)? {
                files.extend(found);
                components.push((package.name.clone(), version.name.clone()));
            }
        }
    }
    Ok((!components.is_empty()).then_some((EspSource::EfiComponents(components), files)))
}

/// Every file below the image directory `dir`, keyed by its path below it; `source_prefix`
/// is put before each source path.
fn tree(image: &ImageRoot, dir: &str, source_prefix: &str) -> Result<Option<BTreeMap<String, EspFile>>> {
    if !image.is_dir(dir)? {
        return Ok(None);
    }
    let mut files = BTreeMap::new();
    for path in image.walk_files(dir)? {
        let relative = path[dir.len()..].trim_start_matches('/').to_string();
        files.insert(relative.clone(), EspFile { image_path: path, source: join(source_prefix, &relative) });
    }
    Ok((!files.is_empty()).then_some(files))
}

/// The directory holding shim (bootupd's rule), or GRUB when an image has no shim.
fn vendor_dir(files: &BTreeMap<String, EspFile>, uefi: &UefiPlatform) -> Result<String> {
    for wanted in [&uefi.shim, &uefi.grub] {
        let dirs: Vec<&str> = files
            .keys()
            .filter_map(|path| path.rsplit_once('/'))
            .filter(|(dir, name)| name == wanted && !dir.contains('/'))
            .map(|(dir, _)| dir)
            .collect();
        match dirs.as_slice() {
            [dir] => return Ok(dir.to_string()),
            [] => continue,
            many => bail!("the image's EFI tree holds {wanted} in several directories ({}); expected one vendor directory", many.join(", ")),
        }
    }
    bail!("the image's EFI tree has neither EFI/<vendor>/{} nor EFI/<vendor>/{}", uefi.shim, uefi.grub)
}

fn inspect_grub(image: &ImageRoot, path: &str, vendor: &str) -> Result<GrubEfi> {
    let info = grub_efi::inspect(&image.read(path)?).with_context(|| format!("reading the image's /{path}"))?;
    if let Some(looks_in) = info.prefix_vendor() {
        if !looks_in.eq_ignore_ascii_case(vendor) {
            bail!("the image's /{path} looks for its config in EFI/{looks_in}, but it sits in EFI/{vendor}");
        }
    }
    Ok(info)
}

/// The fallback list; the vendor directory is the one the GRUB it names was built to read.
/// `searched` names the layouts looked for before, for messages.
fn fallback_content(image: &ImageRoot, uefi: &UefiPlatform, fallback: &super::platform::UefiFallback, searched: &str) -> Result<EspContent> {
    let grub_target = format!("{VENDOR_PLACEHOLDER}/{}", uefi.grub);
    let grub_copy = fallback.files.iter().find(|f| f.to == grub_target).with_context(|| format!("the platform's UEFI fallback names no {grub_target}"))?;
    let missing: Vec<String> = fallback.files.iter().map(|f| f.from.as_str()).filter(|p| !image.exists(p).unwrap_or(false)).map(|p| format!("/{p}")).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if !image.exists(&grub_copy.from)? {
        bail!(
            "the image has no UEFI bootloader: none of {searched} exists, nor /{} ({}'s signed GRUB; also missing: {})",
            grub_copy.from,
            fallback.packages.join(", "),
            missing.join(", ")
        );
    }
    if !missing.is_empty() {
        bail!(
            "the image has neither {searched} nor all of the files of {} that replace them: {} missing",
            fallback.packages.join(", "),
            missing.join(", ")
        );
    }
    let grub = grub_efi::inspect(&image.read(&grub_copy.from)?).with_context(|| format!("reading the image's /{}", grub_copy.from))?;
    let grub_image_path = Some(grub_copy.from.clone());
    let vendor = grub.prefix_vendor().with_context(|| format!("the image's /{} has no /EFI/<vendor> prefix built in", grub_copy.from))?.to_string();
    let mut files = BTreeMap::new();
    for copy in &fallback.files {
        let to = copy.to.replace(VENDOR_PLACEHOLDER, &vendor);
        files.insert(to, EspFile { image_path: copy.from.clone(), source: copy.from.clone() });
    }
    Ok(EspContent { source: EspSource::Fallback, files, vendor, grub, grub_image_path })
}
