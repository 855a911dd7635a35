//! The disk image file and its GPT (protective MBR, primary and backup headers, named
//! partitions), written with the `gpt` crate.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::partition_types::{OperatingSystem, Type};

use super::layout::Plan;

const SECTOR: u64 = 512;

/// Creates `path` (which must not exist) as a sparse file of the plan's size with its GPT.
pub fn create_image(path: &Path, plan: &Plan) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(plan.size).with_context(|| format!("cannot size {} to {} bytes", path.display(), plan.size))?;
    write_gpt(file, plan).with_context(|| format!("writing the partition table of {}", path.display()))
}

/// Writes the protective MBR and both GPTs onto `device` (an image file or a block device).
pub fn write_gpt(mut device: File, plan: &Plan) -> Result<()> {
    let uuid = |s: &str| uuid::Uuid::parse_str(s).with_context(|| format!("{s:?} is not a GUID"));
    let sectors = plan.size / SECTOR;
    gpt::mbr::ProtectiveMBR::with_lb_size((sectors - 1).min(u32::MAX as u64) as u32)
        .overwrite_lba0(&mut device)
        .context("writing the protective MBR")?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(device, Some(uuid(&plan.disk_guid)?))
        .context("initialising the GPT")?;
    let mut parts = BTreeMap::new();
    for p in &plan.partitions {
        parts.insert(
            p.number,
            gpt::partition::Partition {
                part_type_guid: Type { guid: uuid(&p.type_guid)?, os: OperatingSystem::None },
                part_guid: uuid(&p.guid)?,
                first_lba: p.offset / SECTOR,
                last_lba: (p.offset + p.size) / SECTOR - 1,
                flags: 0,
                name: p.name.clone(),
            },
        );
    }
    disk.update_partitions(parts).context("laying out the partitions")?;
    let device = disk.write().context("writing the GPT")?;
    device.sync_data().ok();
    Ok(())
}
