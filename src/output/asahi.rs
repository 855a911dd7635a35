//! The Asahi installer's package (`kiln bake --type asahi`): what the Asahi Linux installer,
//! run from macOS, installs an OS from on an Apple Silicon Mac (AsahiLinux/asahi-installer's
//! `osinstall.py` is the reference for what it reads).
//!
//! - `asahi/<name>.zip`: `esp/`, the ESP's tree (shim, GRUB and their configs, `m1n1/boot.bin`),
//!   which the installer copies into the FAT filesystem it makes; `root.img` (and `boot.img`
//!   with a separate /boot), the disk's filesystems as they are, copied onto the partitions the
//!   installer makes (their sizes are whole 4 KiB: Apple's NVMe has 4 KiB sectors); the boot
//!   picker's icon when the image has one.
//! - `asahi/installer_data.json`: the OS list entry naming those parts. The EFI partition's
//!   `volume_id` is the FAT serial the installer gives it (`newfs_msdos -I`): the one kiln gave
//!   the disk's ESP, which the installed system's fstab mounts by. The root partition expands
//!   into the room the user grants; the root filesystem grows into it on first boot.
//!
//! The parts come from the raw disk the bake made (one build feeds every format): its ESP is
//! read back file by file, its filesystems copied byte for byte, deflated on all cores.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::rawdisk::RawDisk;
use super::zip::ZipWriter;
use crate::disk::esp::{read_tree, TreeEntry};
use crate::disk::Partition;
use crate::pending::PendingFile;
use crate::progress::Progress;

/// The installer data's file name, beside the package.
pub const INSTALLER_DATA: &str = "installer_data.json";
const BLOCK: u64 = 4 << 20;

/// What the package is made of besides the disk's bytes.
#[derive(Clone, Debug)]
pub struct Package {
    /// The zip's file name without `.zip`.
    pub name: String,
    /// The installer's menu entry (`name`) and the name macOS' boot picker shows
    /// (`default_os_name`).
    pub menu_name: String,
    pub os_name: String,
    /// The boot picker's icon: (file name, bytes).
    pub icon: Option<(String, Vec<u8>)>,
    /// macOS firmware versions the OS's stub partition may get.
    pub supported_fw: Vec<String>,
    pub esp: Partition,
    pub boot: Option<Partition>,
    pub root: Partition,
}

impl Package {
    /// The FAT serial as the installer's `volume_id` (`0x` and 8 hex digits).
    pub fn volume_id(&self) -> Result<String> {
        let hex = self.esp.fs_uuid.replace('-', "").to_lowercase();
        if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("the ESP's volume id {:?} is not a FAT serial (XXXX-XXXX)", self.esp.fs_uuid);
        }
        Ok(format!("0x{hex}"))
    }

    /// The OS list entry (`installer_data.json`'s `os_list` item).
    pub fn os_entry(&self) -> Result<serde_json::Value> {
        let mut partitions = vec![json!({
            "name": "EFI",
            "type": "EFI",
            "size": format!("{}B", self.esp.size),
            "format": "fat",
            "volume_id": self.volume_id()?,
            "copy_firmware": true,
            "copy_installer_data": true,
            "source": "esp",
        })];
        if let Some(boot) = &self.boot {
            partitions.push(json!({"name": "Boot", "type": "Linux", "size": format!("{}B", boot.size), "image": "boot.img"}));
        }
        partitions.push(json!({"name": "Root", "type": "Linux", "size": format!("{}B", self.root.size), "expand": true, "image": "root.img"}));
        let mut entry = json!({
            "name": self.menu_name,
            "default_os_name": self.os_name,
            "boot_object": "m1n1.bin",
            "next_object": crate::bootloader::m1n1::BOOT_BIN,
            "package": format!("{}.zip", self.name),
            "supported_fw": self.supported_fw,
            "partitions": partitions,
        });
        if let Some((icon, _)) = &self.icon {
            entry["icon"] = json!(icon);
        }
        Ok(entry)
    }
}

/// The package's files under `dir`: (zip, installer data).
pub fn paths(pkg: &Package, dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(format!("{}.zip", pkg.name)), dir.join(INSTALLER_DATA))
}

/// Writes the package for `dir` from the baked disk into files that get their names only
/// with the other outputs' (see [`crate::pending`]): (file, name) for the zip and the
/// installer data.
pub fn write(raw: &RawDisk, pkg: &Package, dir: &Path, progress: &Progress) -> Result<Vec<(PendingFile, PathBuf)>> {
    let (zip_path, data_path) = paths(pkg, dir);
    let result = (|| -> Result<_> {
        let zip = PendingFile::create_for(&zip_path)?;
        write_zip(raw, pkg, zip.file().try_clone()?, progress)?;
        let data = PendingFile::create_for(&data_path)?;
        let text = serde_json::to_string_pretty(&json!({ "os_list": [pkg.os_entry()?] }))? + "\n";
        data.file().write_all(text.as_bytes())?;
        Ok(vec![(zip, zip_path), (data, data_path)])
    })();
    result.with_context(|| format!("writing the Asahi package in {}", dir.display()))
}

fn write_zip(raw: &RawDisk, pkg: &Package, out: File, progress: &Progress) -> Result<()> {
    let images: Vec<(&str, &Partition)> = pkg.boot.iter().map(|b| ("boot.img", b)).chain([("root.img", &pkg.root)]).collect();
    let total: u64 = images.iter().map(|(_, p)| p.size).sum();
    let stage = progress.stage("asahi", Some(total));
    let mut zip = ZipWriter::new(out)?;
    zip.add_dir("esp")?;
    for entry in read_tree(&raw.file, &pkg.esp).with_context(|| format!("reading the ESP of {}", raw.path.display()))? {
        match entry {
            TreeEntry::Dir(d) => zip.add_dir(&format!("esp/{d}"))?,
            TreeEntry::File(f, data) => zip.add_file(&format!("esp/{f}"), &data)?,
        }
    }
    for (name, part) in images {
        if part.size % 4096 != 0 {
            bail!("{} is {} bytes, not whole 4 KiB blocks, which the Asahi installer refuses", part.describe(), part.size);
        }
        let blocks = (0..part.size.div_ceil(BLOCK)).map(|i| -> Result<(usize, Option<Vec<u8>>)> {
            let at = part.offset + i * BLOCK;
            let len = BLOCK.min(part.size - i * BLOCK);
            if !raw.has_data(at, len) {
                return Ok((len as usize, None));
            }
            let mut buf = vec![0u8; len as usize];
            raw.read_at(&mut buf, at)?;
            Ok((len as usize, Some(buf)))
        });
        zip.add_deflated(name, part.size, blocks, |n| {
            stage.inc(n);
            Ok(())
        })?;
    }
    if let Some((name, data)) = &pkg.icon {
        zip.add_file(name, data)?;
    }
    zip.finish()?;
    stage.finish();
    Ok(())
}

/// A file name from the image's name and version: lower case, `-` for what is not a letter,
/// a digit, `.` or `_`.
pub fn package_name(name: &str, version: &str) -> String {
    let raw = format!("{name}-{version}").to_lowercase();
    let mut out = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out.trim_matches(['-', '.']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_entry() {
        assert_eq!(package_name("Kiln Test Image", "12.kiln-test.1"), "kiln-test-image-12.kiln-test.1");
        assert_eq!(package_name("a/b:c", "v"), "a-b-c-v");
        let part = |size, fs_uuid: &str| Partition { size, fs_uuid: fs_uuid.into(), ..Partition::default() };
        let pkg = Package {
            name: "os-1".into(),
            menu_name: "OS 1".into(),
            os_name: "OS".into(),
            icon: None,
            supported_fw: vec!["13.5".into()],
            esp: part(512 << 20, "ABCD-12EF"),
            boot: None,
            root: part(3 << 30, "x"),
        };
        let e = pkg.os_entry().unwrap();
        assert_eq!(e["partitions"][0]["volume_id"], "0xabcd12ef");
        assert_eq!(e["partitions"][1]["size"], format!("{}B", 3u64 << 30));
        assert_eq!(e["partitions"][1]["expand"], true);
        assert_eq!(e["next_object"], "m1n1/boot.bin");
        assert!(e.get("icon").is_none());
    }
}
