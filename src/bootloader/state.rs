//! `/boot/bootupd-state.json`: what bootupd records after installing, in its format (bootupd
//! src/model.rs `SavedState`), so bootupd on the installed system can update what kiln put down.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use super::image_files::ImageRoot;

pub const STATE_FILE: &str = "bootupd-state.json";
pub const EFI_COMPONENT: &str = "EFI";
pub const BIOS_COMPONENT: &str = "BIOS";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SavedState {
    pub installed: BTreeMap<String, InstalledContent>,
    pub pending: Option<BTreeMap<String, ContentMetadata>>,
    /// Set when bootupd's static GRUB configs are installed (bootupd only checks presence).
    pub static_configs: Option<ContentMetadata>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InstalledContent {
    pub meta: ContentMetadata,
    pub filetree: Option<FileTree>,
    pub adopted_from: Option<ContentMetadata>,
}

/// What bootupd's `EFI.json` / `BIOS.json` hold and its state repeats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ContentMetadata {
    /// RFC 3339; bootupd compares it to find updates.
    pub timestamp: String,
    /// Human readable, never parsed.
    pub version: String,
    #[serde(default)]
    pub versions: Option<Vec<Module>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    pub name: String,
    /// bootupd's name for any package version (dpkg versions too).
    pub rpm_evr: String,
}

/// The ESP files bootupd manages, keyed by their path below the ESP's `EFI/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTree {
    pub children: BTreeMap<String, FileMetadata>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FileMetadata {
    /// The file's path in the source tree it was copied from.
    pub source: Option<String>,
    pub size: u64,
    /// `sha512:<hex>`.
    pub sha512: String,
}

impl FileMetadata {
    pub fn of(source: &str, data: &[u8]) -> FileMetadata {
        FileMetadata { source: Some(source.to_string()), size: data.len() as u64, sha512: format!("sha512:{}", hex::encode(Sha512::digest(data))) }
    }
}

impl ContentMetadata {
    /// bootupd's metadata file in the image (`EFI.json`, `BIOS.json`), when there is one.
    pub fn from_image_json(image: &ImageRoot, path: &str) -> Result<Option<ContentMetadata>> {
        if !image.exists(path)? {
            return Ok(None);
        }
        let meta = serde_json::from_slice(&image.read(path)?).with_context(|| format!("parsing the image's /{path}"))?;
        Ok(Some(meta))
    }

    /// Metadata for `(name, version)` pairs, written the way bootupd writes it for
    /// `usr/lib/efi` components: `name-version,…` and one module each, sorted by name.
    pub fn from_versions(mut packages: Vec<(String, String)>, timestamp: String) -> ContentMetadata {
        packages.sort();
        if packages.is_empty() {
            return ContentMetadata { timestamp, version: "unknown".into(), versions: None };
        }
        ContentMetadata {
            timestamp,
            version: packages.iter().map(|(n, v)| format!("{n}-{v}")).collect::<Vec<_>>().join(","),
            versions: Some(packages.into_iter().map(|(name, rpm_evr)| Module { name, rpm_evr }).collect()),
        }
    }
}

/// The modification time of an image file as RFC 3339: a stand-in for a build time that keeps
/// the output the same for the same image.
pub fn image_file_timestamp(image: &ImageRoot, path: &str) -> Result<String> {
    let meta = image.metadata(path)?.with_context(|| format!("the image has no /{path}"))?;
    let seconds = match meta.modified()?.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    Ok(rfc3339(seconds))
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (days to civil date: H. Hinnant's method).
fn rfc3339(seconds: i64) -> String {
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_420_070_400), "2015-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn serializes_as_bootupd_does() {
        let meta = ContentMetadata::from_versions(vec![("shim".into(), "15.8-4".into()), ("grub2".into(), "1:2.12-41.fc44".into())], "2025-08-20T08:48:03Z".into());
        assert_eq!(meta.version, "grub2-1:2.12-41.fc44,shim-15.8-4");
        let mut installed = BTreeMap::new();
        installed.insert(BIOS_COMPONENT.to_string(), InstalledContent { meta: meta.clone(), filetree: None, adopted_from: None });
        let state = SavedState { installed, pending: None, static_configs: None };
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.starts_with(r#"{"installed":{"BIOS":{"meta":{"timestamp":"2025-08-20T08:48:03Z","version":"grub2-1:2.12-41.fc44,shim-15.8-4","versions":[{"name":"grub2","rpm_evr":"1:2.12-41.fc44"}"#), "{json}");
        assert!(json.ends_with(r#""filetree":null,"adopted-from":null}},"pending":null,"static-configs":null}"#), "{json}");
    }
}
