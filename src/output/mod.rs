//! The output stage: a raw disk turned into the formats users ship, with native writers
//! (qemu-img is only a test oracle). Every writer streams the raw once, skips its holes and
//! zero blocks, compresses on all cores, and writes to a temporary file renamed into place at
//! the end, so a failure leaves nothing behind.

pub mod asahi;
mod gce;
mod ova;
mod parallel;
mod qcow2;
mod rawdisk;
mod tar_header;
mod vhd;
mod vmdk;
mod zip;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::progress::Progress;

pub use ova::OvaOptions;
pub use rawdisk::RawDisk;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
    Gce,
    Ova,
    /// The Asahi installer's package: made by the bake (it needs the image), see [`asahi`].
    Asahi,
}

/// `--type` names (bootc-image-builder's where it has them) and where each output goes.
const FORMATS: &[(Format, &[&str], &str)] = &[
    (Format::Raw, &["raw"], "image/disk.raw"),
    (Format::Qcow2, &["qcow2"], "qcow2/disk.qcow2"),
    (Format::Vmdk, &["vmdk"], "vmdk/disk.vmdk"),
    (Format::Vhd, &["vhd", "vpc"], "vpc/disk.vhd"),
    (Format::Gce, &["gce"], "gce/image.tar.gz"),
    (Format::Ova, &["ova"], "ova/disk.ova"),
    (Format::Asahi, &["asahi"], "asahi/installer_data.json"),
];

impl Format {
    pub fn parse(name: &str) -> Result<Format> {
        match FORMATS.iter().find(|(_, names, _)| names.contains(&name)) {
            Some((f, _, _)) => Ok(*f),
            None => {
                let known: Vec<&str> = FORMATS.iter().flat_map(|(_, n, _)| n.iter().copied()).collect();
                bail!("unknown output type {name:?}: use one of {}", known.join(", "))
            }
        }
    }

    /// Parses repeated and comma-separated `--type` values, without duplicates.
    pub fn parse_list(names: &[String]) -> Result<Vec<Format>> {
        let mut v: Vec<Format> = names.iter().filter(|n| !n.is_empty()).map(|n| Format::parse(n)).collect::<Result<_>>()?;
        v.sort();
        v.dedup();
        if v.is_empty() {
            bail!("no output type given");
        }
        Ok(v)
    }

    /// The output's path under the output directory.
    pub fn path_in(self, output_dir: &Path) -> PathBuf {
        output_dir.join(FORMATS.iter().find(|(f, _, _)| *f == self).expect("every format is listed").2)
    }

    pub fn name(self) -> &'static str {
        FORMATS.iter().find(|(f, _, _)| *f == self).expect("listed").1[0]
    }
}

/// Writes `format` from the raw disk to `dest`, through a temporary file beside it.
pub fn write(format: Format, raw: &RawDisk, dest: &Path, ova: &OvaOptions, progress: &Progress) -> Result<()> {
    let dir = dest.parent().unwrap();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.kiln-partial", dest.file_name().unwrap().to_string_lossy()));
    let stage = progress.stage(format.name(), Some(raw.data_bytes()));
    let result = match format {
        Format::Raw => raw.copy_sparse(&tmp, &stage),
        Format::Qcow2 => qcow2::write(raw, &tmp, &stage),
        Format::Vmdk => vmdk::write(raw, &tmp, &dest.file_name().unwrap().to_string_lossy(), &stage),
        Format::Vhd => vhd::write(raw, &tmp, &stage),
        Format::Gce => gce::write(raw, &tmp, &stage),
        Format::Ova => ova::write(raw, &tmp, ova, &stage),
        Format::Asahi => Err(anyhow::anyhow!(
            "an Asahi package is made from the image (m1n1, its device trees, U-Boot), not from a disk: use kiln bake --type asahi IMAGE"
        )),
    };
    let result = result.and_then(|()| {
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dest).with_context(|| format!("cannot move the {} into {}", format.name(), dest.display()))
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        let full = e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC)));
        let e = e.context(format!("writing {}", dest.display()));
        return Err(if full { e.context(format!("{} is full: free some space or choose another --output", dir.display())) } else { e });
    }
    stage.finish();
    Ok(())
}

/// `kiln convert`: an existing raw disk into the requested formats.
pub fn convert(raw: &Path, types: &[String], output: &Path, ova: &OvaOptions, progress: &Progress) -> Result<()> {
    let formats = Format::parse_list(types)?;
    let disk = RawDisk::open(raw)?;
    for f in formats {
        let dest = f.path_in(output);
        if dest.exists() {
            bail!("{} already exists: remove it first", dest.display());
        }
        crate::interrupt::check()?;
        write(f, &disk, &dest, ova, progress)?;
        progress.info(&format!("wrote {}", dest.display()));
    }
    Ok(())
}
