//! What an image says about its own disk, as image-builder reads it
//! (`osbuild/image-builder pkg/bib/osinfo`): a build config in
//! `/usr/lib/bootc-image-builder/config.{json,toml}` whose filesystem or disk customizations
//! apply when the user gives none, and a whole partition table in `disk.yaml`
//! (`/usr/lib/image-builder/bootc/` first, then `/usr/lib/bootc-image-builder/`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::layout::Layout;
use crate::config::{self, DiskConfig};

const CONFIGS: &[&str] = &["usr/lib/bootc-image-builder/config.json", "usr/lib/bootc-image-builder/config.toml"];
pub const DISK_YAML: &[&str] = &["usr/lib/image-builder/bootc/disk.yaml", "usr/lib/bootc-image-builder/disk.yaml"];

/// True for the paths this module reads (what a scan of the image must keep).
pub fn wanted(path: &str) -> bool {
    CONFIGS.contains(&path) || DISK_YAML.contains(&path)
}

/// The image's disk description.
#[derive(Debug, Default)]
pub struct ImageDisk {
    /// The table of its disk.yaml, and the root filesystem type it names.
    pub layout: Option<(Layout, Option<String>)>,
    /// The filesystem or disk customizations of its embedded build config.
    pub config: Option<DiskConfig>,
}

impl ImageDisk {
    /// Reads the image's files (path → content, as a scan keeps them).
    pub fn from_files(files: &BTreeMap<String, Vec<u8>>) -> Result<ImageDisk> {
        let mut out = ImageDisk::default();
        // config.json is looked at first, as image-builder does.
        if let Some((path, bytes)) = CONFIGS.iter().find_map(|p| files.get(*p).map(|b| (*p, b))) {
            let text = std::str::from_utf8(bytes).with_context(|| format!("/{path} in the image is not UTF-8"))?;
            let format = if path.ends_with(".json") { config::Format::Json } else { config::Format::Toml };
            let cfg = config::parse(text, format, &format!("/{path} in the image"))?;
            out.config = cfg.disk;
        }
        if let Some((path, bytes)) = DISK_YAML.iter().find_map(|p| files.get(*p).map(|b| (*p, b))) {
            let text = std::str::from_utf8(bytes).with_context(|| format!("/{path} in the image is not UTF-8"))?;
            out.layout = Some(super::disk_yaml::parse(text).with_context(|| format!("/{path} in the image"))?);
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.layout.is_none() && self.config.is_none()
    }
}
