//! The output stage: a raw disk turned into the formats users ship, with native writers
//! (qemu-img is only a test oracle). Every writer streams the raw once, skips its holes and
//! zero blocks, compresses on all cores, and writes into a file with no name (`pending`),
//! named only when the whole run has succeeded, so a failure or a kill leaves nothing behind.

pub mod asahi;
mod gce;
pub mod iso;
mod ova;
mod parallel;
mod qcow2;
mod rawdisk;
mod tar_header;
mod vhd;
mod vmdk;
mod zip;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::pending::PendingFile;
use crate::progress::Progress;
use crate::workspace::OutputDir;

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
    /// The installer ISO: made from the image (it carries it), see [`iso::installer`].
    Iso,
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
    (Format::Iso, &["iso"], "bootiso/install.iso"),
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

    /// The directories the outputs go to under the output directory.
    pub fn dirs_in(output_dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = FORMATS.iter().map(|(f, _, _)| f.path_in(output_dir).parent().unwrap().to_path_buf()).collect();
        v.dedup();
        v
    }

    pub fn name(self) -> &'static str {
        FORMATS.iter().find(|(f, _, _)| *f == self).expect("listed").1[0]
    }
}

/// Writes `format` from the raw disk into `out`, a file with no name yet; `dest` is the name
/// it will get (the vmdk's descriptor and messages use it).
pub fn write(format: Format, raw: &RawDisk, out: &PendingFile, dest: &Path, ova: &OvaOptions, progress: &Progress) -> Result<()> {
    let stage = progress.stage(format.name(), Some(raw.data_bytes()));
    let file = out.file().try_clone()?;
    let result = match format {
        Format::Raw => raw.copy_sparse(file, &stage),
        Format::Qcow2 => qcow2::write(raw, file, &stage),
        Format::Vmdk => vmdk::write(raw, file, &dest.file_name().unwrap().to_string_lossy(), &stage),
        Format::Vhd => vhd::write(raw, file, &stage),
        Format::Gce => gce::write(raw, file, &stage),
        Format::Ova => ova::write(raw, file, ova, &stage),
        Format::Asahi => Err(anyhow::anyhow!(
            "an Asahi package is made from the image (m1n1, its device trees, U-Boot), not from a disk: use kiln bake --type asahi IMAGE"
        )),
        Format::Iso => Err(anyhow::anyhow!("an installer ISO carries the image, not a disk: use kiln bake --type iso IMAGE")),
    };
    if let Err(e) = result {
        let full = e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC)));
        let e = e.context(format!("writing {}", dest.display()));
        let dir = dest.parent().unwrap();
        return Err(if full { e.context(format!("{} is full: free some space or choose another --output", dir.display())) } else { e });
    }
    stage.finish();
    Ok(())
}

/// Names the finished outputs, all at the end of a run, so that a run that fails or dies
/// before leaves none of them.
pub fn name_all(outputs: Vec<(PendingFile, PathBuf)>, progress: &Progress) -> Result<()> {
    for (file, dest) in outputs {
        file.persist(&dest)?;
        progress.info(&format!("wrote {}", dest.display()));
    }
    Ok(())
}

/// `kiln convert`: an existing raw disk into the requested formats.
pub fn convert(raw: &Path, types: &[String], output: &Path, ova: &OvaOptions, progress: &Progress) -> Result<()> {
    let formats = Format::parse_list(types)?;
    let _claim = OutputDir::claim(output, &Format::dirs_in(output), progress)?;
    let disk = RawDisk::open(raw)?;
    let mut written = Vec::new();
    for f in formats {
        let dest = f.path_in(output);
        if dest.exists() {
            bail!("{} already exists: remove it first", dest.display());
        }
        crate::interrupt::check()?;
        let out = PendingFile::create_for(&dest)?;
        write(f, &disk, &out, &dest, ova, progress)?;
        written.push((out, dest));
    }
    name_all(written, progress)
}
