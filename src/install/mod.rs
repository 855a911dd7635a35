//! `kiln install`: the image onto a machine's disk. `to-disk` is the bake with a block device
//! as its disk (`bake::write_disk`, `disk::Target::Device`): the same plan, table, sysroot,
//! deployment and bootloader code, after the checks of [`checks`] and with the device locked
//! for the whole run. A run that fails or is interrupted leaves the device with an empty GPT
//! and no boot code (`--preserve-on-error` keeps what was written, for a look at it).

pub mod checks;
pub mod from_iso;
pub mod nvram;
pub mod to_filesystem;

use anyhow::{Context, Result};
use clap::{Args, FromArgMatches};

use crate::bake;
use crate::cli::{BakeArgs, InstallDeploymentArgs, ToDiskArgs, ToFilesystemArgs};
use crate::disk::{self, blockdev::{partitions_of, BlockDevice}, Disk};
use crate::interrupt;
use crate::progress::Progress;
use crate::workspace::RunDir;

/// The layout `install to-disk` uses unless told: bootc's.
const DEFAULT_LAYOUT: &str = "bootc";

pub fn to_disk(args: &ToDiskArgs, progress: &Progress) -> Result<()> {
    // First, before any thread starts: the mounts this run makes live and die with it.
    disk::mountns::enter_private()?;
    interrupt::install();
    let checked = checks::check(&args.device, args.wipe)?;
    let device = BlockDevice::open(&checked.path, checked.dev, checked.name)?;
    device.lock()?;
    let is_loop = device.is_loop();
    let firmware = args.firmware_config();
    firmware.check(is_loop)?;
    let kernel_name = device.name.clone();
    let disk = Disk::device(device)?;
    let run_dir = RunDir::create(progress)?;
    let bake_args = args.bake_args()?;
    let inputs = bake::Inputs::read(&bake_args)?;
    let result = bake::write_disk(&bake_args, &inputs, &disk, run_dir.path(), progress);
    let e = match interrupt::check().and(result) {
        Ok(baked) => {
            progress.info(&format!("installed {} on {}", args.image, disk.name));
            // The disk is complete and boots through the removable path whatever happens here.
            let written = nvram::write(&firmware, &baked, &disk.name, disk.sector_size(), is_loop, progress)
                .with_context(|| format!("{} is installed and boots through its removable path (EFI/BOOT), but the firmware variables were not written", disk.name))?;
            let nodes = partitions_of(&kernel_name);
            let node = |n: u32| nodes.iter().find(|p| p.number == n).map(|p| p.node().display().to_string());
            let mut result = result_event(&bake_args, &baked.plan, &baked.system, node);
            result["device"] = disk.name.clone().into();
            result["sector_size"] = disk.sector_size().into();
            result["firmware"] = serde_json::to_value(&written)?;
            progress.result(result);
            return Ok(());
        }
        Err(e) => e,
    };
    // Refused before the first write (too small, say): the disk is as it was.
    if !disk.written() {
        return Err(e.context(format!("nothing was written to {}", disk.name)));
    }
    if args.preserve_on_error {
        progress.warn(&format!("--preserve-on-error: {} keeps what was written before the failure", disk.name));
        return Err(e);
    }
    match disk.reset() {
        Ok(()) => Err(e.context(format!("{} was left with an empty partition table", disk.name))),
        Err(r) => Err(e.context(format!("clearing the partition table of {} failed too ({r:#}): wipe it before booting from it", disk.name))),
    }
}

/// The `result` event of `--progress json`: the partitions (number, node, GPT name, start
/// and size in bytes, filesystem, its UUID and label) and the deployment.
pub(crate) fn result_event(args: &BakeArgs, plan: &disk::Plan, system: &bake::SystemWritten, node: impl Fn(u32) -> Option<String>) -> serde_json::Value {
    let partitions: Vec<serde_json::Value> = plan
        .partitions
        .iter()
        .map(|p| {
            serde_json::json!({
                "number": p.number,
                "node": node(p.number),
                "role": p.role,
                "name": p.name,
                "start": p.offset,
                "size": p.size,
                "filesystem": p.filesystem,
                "uuid": p.filesystem.as_ref().map(|_| &p.fs_uuid),
                "label": p.label,
            })
        })
        .collect();
    serde_json::json!({
        "image": args.image,
        "partitions": partitions,
        "deployment": {
            "stateroot": args.stateroot,
            "path": system.deployment,
            "uefi_loader": system.bootloader.uefi_loader,
        },
    })
}

impl ToDiskArgs {
    fn firmware_config(&self) -> nvram::FirmwareConfig {
        nvram::FirmwareConfig {
            efivars: crate::efi::EFIVARS.into(),
            boot_entry: !self.no_nvram,
            enroll_mok: self.enroll_mok.clone(),
            mok_password: self.mok_password.clone(),
        }
    }

    /// The bake's options for this install: the device sets the disk's size.
    fn bake_args(&self) -> Result<BakeArgs> {
        // bootc's unit when none is given: MiB.
        let root_size = self.root_size.as_deref().map(|s| if s.bytes().all(|b| b.is_ascii_digit()) { format!("{s}M") } else { s.to_string() });
        Ok(BakeArgs {
            rootfs: self.filesystem.clone(),
            root_size: root_size.as_deref().map(disk::layout::parse_size).transpose().context("--root-size")?,
            layout: Some(self.layout.clone().unwrap_or_else(|| DEFAULT_LAYOUT.into())),
            ..install_bake_args(&self.image, &self.deployment)?
        })
    }
}

impl ToFilesystemArgs {
    pub(crate) fn bake_args(&self) -> Result<BakeArgs> {
        install_bake_args(&self.image, &self.deployment)
    }
}

/// The bake options an install shares; the rest (outputs, seed: a machine's disk gets fresh
/// ids) are the bake's defaults.
fn install_bake_args(image: &str, d: &InstallDeploymentArgs) -> Result<BakeArgs> {
    let defaults = BakeArgs::augment_args(clap::Command::new("install")).try_get_matches_from(["install", image])?;
    Ok(BakeArgs {
        kargs: d.kargs.clone(),
        target_imgref: d.target_imgref.clone(),
        stateroot: d.stateroot.clone(),
        source: d.source.clone(),
        ..BakeArgs::from_arg_matches(&defaults)?
    })
}
