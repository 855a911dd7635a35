//! What an installed image tells the firmware steps: the boot entry's label, as bootupd
//! names it (`get_product_name`: `/etc/system-release` without its ` release …` tail, else
//! os-release's `NAME`), and the kernel-module signing certificates Universal Blue and
//! Immutablue images ship for MOK enrollment (`/etc/pki/akmods/certs/*.der`).

use anyhow::Result;

use crate::bootloader::image_files::ImageRoot;

pub const AKMODS_CERTS: &str = "etc/pki/akmods/certs";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageFirmware {
    pub product_name: String,
    /// (image path, DER bytes), by name.
    pub akmods_certs: Vec<(String, Vec<u8>)>,
}

impl ImageFirmware {
    pub fn read(image: &ImageRoot) -> Result<ImageFirmware> {
        let mut akmods_certs = Vec::new();
        if image.is_dir(AKMODS_CERTS)? {
            for e in image.list_dir(AKMODS_CERTS)? {
                if !e.is_dir && e.name.ends_with(".der") {
                    akmods_certs.push((format!("/{}", e.path), image.read(&e.path)?));
                }
            }
        }
        akmods_certs.sort();
        Ok(ImageFirmware { product_name: product_name(image)?, akmods_certs })
    }
}

fn product_name(image: &ImageRoot) -> Result<String> {
    if image.exists("etc/system-release")? {
        let text = String::from_utf8_lossy(&image.read("etc/system-release")?).into_owned();
        let first = text.lines().next().unwrap_or_default();
        let name = first.find(" release").map_or(first, |at| &first[..at]).trim();
        if !name.is_empty() {
            return Ok(name.to_string());
        }
    }
    for path in ["etc/os-release", "usr/lib/os-release"] {
        if image.exists(path)? {
            let text = String::from_utf8_lossy(&image.read(path)?).into_owned();
            if let Some(name) = os_release_value(&text, "NAME") {
                return Ok(name);
            }
        }
    }
    // os-release(5)'s default.
    Ok("Linux".into())
}

fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
        (!v.is_empty()).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_as_bootupd() {
        let dir = std::env::temp_dir().join(format!("kiln-efi-image-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("usr/lib")).unwrap();
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("usr/lib/os-release"), "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", dir.join("etc/os-release")).unwrap();
        let image = ImageRoot::new(&dir);
        assert_eq!(ImageFirmware::read(&image).unwrap().product_name, "Debian GNU/Linux");
        for (release, name) in [("Fedora release 40 (Forty)", "Fedora"), ("CentOS Stream release 9\n", "CentOS Stream"), ("Red Hat Enterprise Linux CoreOS release 4\n  \n", "Red Hat Enterprise Linux CoreOS")] {
            std::fs::write(dir.join("etc/system-release"), release).unwrap();
            assert_eq!(ImageFirmware::read(&image).unwrap().product_name, name);
        }
        std::fs::create_dir_all(dir.join("etc/pki/akmods/certs")).unwrap();
        std::fs::write(dir.join("etc/pki/akmods/certs/akmods-ublue.der"), b"der").unwrap();
        std::fs::write(dir.join("etc/pki/akmods/certs/README"), b"x").unwrap();
        assert_eq!(ImageFirmware::read(&image).unwrap().akmods_certs, [("/etc/pki/akmods/certs/akmods-ublue.der".to_string(), b"der".to_vec())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
