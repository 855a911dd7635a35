//! Installed package versions from the image's dpkg status file, for bootupd's metadata when
//! the image carries none of its own (`EFI.json`, `BIOS.json`).

use anyhow::Result;

use super::image_files::ImageRoot;

/// (package, version) of each of `names` installed per the status file at `db`, in `names`
/// order; packages not installed are left out, and so is everything when there is no file.
pub fn installed_versions(image: &ImageRoot, db: &str, names: &[String]) -> Result<Vec<(String, String)>> {
    if !image.exists(db)? {
        return Ok(Vec::new());
    }
    let status = String::from_utf8_lossy(&image.read(db)?).into_owned();
    let installed: Vec<(&str, &str)> = status.split("\n\n").filter_map(installed_package).collect();
    Ok(names
        .iter()
        .filter_map(|name| installed.iter().find(|(p, _)| p == name).map(|(p, v)| (p.to_string(), v.to_string())))
        .collect())
}

/// (package, version) of one status paragraph, when it is installed.
fn installed_package(paragraph: &str) -> Option<(&str, &str)> {
    let field = |name: &str| paragraph.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim);
    (field("Status")? == "install ok installed").then_some((field("Package")?, field("Version")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_installed_paragraphs_only() {
        let p = "Package: grub-pc-bin\nStatus: install ok installed\nVersion: 2.06-13\n";
        assert_eq!(installed_package(p), Some(("grub-pc-bin", "2.06-13")));
        assert_eq!(installed_package("Package: x\nStatus: deinstall ok config-files\nVersion: 1\n"), None);
    }
}
