//! What an AMI's registration needs to know about a raw disk, read from its GPT: the
//! architecture (the root partition's discoverable-partitions type) and the firmware it boots
//! with (an EFI system partition, a BIOS boot partition).

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Partition types that tell the architecture, and the AWS name for it.
const ROOT_TYPES: &[(&str, &str)] = &[
    ("4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "x86_64"), // root x86-64
    ("8484680c-9521-48c6-9c11-b0720656f69e", "x86_64"), // /usr x86-64
    ("b921b045-1df0-41c3-af44-4c6f280d3fae", "arm64"),  // root aarch64
    ("b0e01050-ee5f-4390-949a-9101b17104e9", "arm64"),  // /usr aarch64
];
const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    /// `x86_64` or `arm64`, when the GPT says.
    pub arch: Option<String>,
    pub uefi: bool,
    pub bios: bool,
}

impl DiskFacts {
    pub fn read(path: &Path) -> Result<DiskFacts> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let no_gpt = |e: String| {
            anyhow::anyhow!("{} has no readable GPT ({e}): `kiln upload aws` takes a GPT disk image, such as `kiln bake --type raw` makes", path.display())
        };
        let entries = crate::disk::table::read_entries(&file, crate::disk::table::SECTOR).map_err(|e| no_gpt(format!("{e:#}")))?;
        let mut header = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, crate::disk::table::SECTOR).map_err(|e| no_gpt(e.to_string()))?;
        if &header != b"EFI PART" {
            return Err(no_gpt("no GPT header at LBA 1".into()));
        }
        let types: Vec<String> = entries.iter().map(|e| e.type_guid.to_ascii_lowercase()).collect();
        if types.is_empty() {
            bail!("{} has a GPT without partitions: nothing to boot", path.display());
        }
        let arch = types.iter().find_map(|t| ROOT_TYPES.iter().find(|(g, _)| g == t).map(|(_, a)| a.to_string()));
        Ok(DiskFacts { arch, uefi: types.iter().any(|t| t == ESP), bios: types.iter().any(|t| t == BIOS_BOOT) })
    }

    /// The architecture: `--arch` (OCI or AWS spelling) when given, else the GPT's.
    pub fn architecture(&self, given: Option<&str>, path: &Path) -> Result<String> {
        match given {
            Some(a) => aws_arch(a),
            None => self.arch.clone().with_context(|| {
                format!("{}: no root partition of a known architecture type in its GPT; pass --arch x86_64|arm64", path.display())
            }),
        }
    }
}

/// The AWS architecture name for an OCI or kernel one.
pub fn aws_arch(name: &str) -> Result<String> {
    Ok(match name {
        "amd64" | "x86_64" => "x86_64",
        "arm64" | "aarch64" => "arm64",
        other => bail!("AWS has no AMIs for architecture {other:?}: use x86_64 or arm64"),
    }
    .to_string())
}
