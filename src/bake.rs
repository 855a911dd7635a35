//! `kiln bake`: image → tree → ostree → disk → bootloader → outputs, one pass.
//!
//! The disk is created first and the layers are applied straight into the ostree repository on
//! its mounted root filesystem, so every file's bytes are written once. Decisions that must
//! precede the disk (root filesystem type, root size) come from the user or, failing that, from
//! a scan of the image.
//!
//! A bake that dies however it dies leaves nothing: the outputs have no name until all are
//! written (`pending`), the mounts are in kiln's own namespace (`disk::mountns`), their mount
//! points in a run directory the next run removes (`workspace`), and the disk's partition
//! table is committed last (`disk::table`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bootloader::{self, BiosBootPartition, BiosTarget, BootFilesystem, BootTarget, EspWriter};
use crate::cli::BakeArgs;
use crate::disk::{self, esp::Esp, layout::parse_size, table, Disk, Ids, Layout, Role, Sysroot};
use crate::image::{reference::RegistryRef, Image, Source};
use crate::interrupt;
use crate::ostree::{self, kargs, object::Kind, Repo};
use crate::platform::Platform;
use crate::output::{self, Format, RawDisk};
use crate::pending::PendingFile;
use crate::progress::Progress;
use crate::tree::{self, ContentKey, ContentStore, Dir, Meta, Node};
use crate::workspace::{OutputDir, RunDir};

pub fn run(args: &BakeArgs, progress: &Progress) -> Result<()> {
    // First, before any thread starts: the mounts this run makes live and die with it.
    disk::mountns::enter_private()?;
    interrupt::install();
    let formats = Format::parse_list(&args.types)?;
    let _claim = OutputDir::claim(&args.output, &Format::dirs_in(&args.output), progress)?;
    let outputs: Vec<(Format, PathBuf)> = formats.iter().map(|f| (*f, f.path_in(&args.output))).collect();
    for (_, path) in &outputs {
        if path.exists() && !args.force {
            bail!("{} already exists: remove it or pass --force to replace it", path.display());
        }
    }
    // The raw disk has no name until the end (none at all unless it was asked for); one
    // raw build feeds every format.
    let raw_dest = Format::Raw.path_in(&args.output);
    let raw = PendingFile::create_for(&raw_dest)?;
    let run_dir = RunDir::create(progress)?;
    let disk = Disk::image(raw.file().try_clone()?, raw_dest.display().to_string());
    let result = write_disk(args, &disk, run_dir.path(), progress);
    interrupt::check().and(result)?;
    let raw_disk = RawDisk::from_file(raw.file().try_clone()?, &raw_dest)?;
    let mut written = Vec::new();
    for (format, path) in outputs.iter().filter(|(f, _)| *f != Format::Raw) {
        interrupt::check()?;
        let out = PendingFile::create_for(path)?;
        output::write(*format, &raw_disk, &out, path, &args.ova.options(), progress)?;
        written.push((out, path.clone()));
    }
    if formats.contains(&Format::Raw) {
        written.push((raw, raw_dest));
    }
    output::name_all(written, progress)
}

/// Writes the disk (an image file, or a block device for `kiln install to-disk`): its table,
/// filesystems, deployment and bootloader; mount points go in `run_dir`.
pub fn write_disk(args: &BakeArgs, disk: &Disk, run_dir: &Path, progress: &Progress) -> Result<()> {
    let (image, platform) = open_image(args, progress)?;

    // What the disk needs to know before it exists.
    if let Some(fs) = &args.rootfs {
        disk::mkfs::check_supported(fs)?;
    }
    let disk_size = match disk.fixed_size() {
        Some(size) => Some(size),
        None => args.size.as_deref().map(parse_size).transpose()?,
    };
    // The root filesystem type comes from the image's install configuration unless given;
    // reading it takes a pass over the layers.
    let scan = if args.rootfs.is_none() {
        let s = tree::scan::scan(&image, &kargs::wanted, progress)?;
        if tree::kernels(&s.root).is_empty() {
            bail!("{} has no kernel: expected /usr/lib/modules/<kver>/vmlinuz (is it a bootc image?)", image.describe());
        }
        Some(s)
    } else {
        None
    };
    let rootfs = match (&args.rootfs, &scan) {
        (Some(fs), _) => fs.clone(),
        (None, Some(s)) => kargs::install_config(&s.files, &platform.arch.kernel)?.root_fs_type.with_context(|| {
            format!(
                "no root filesystem type: the image has no [install.filesystem.root] type in /usr/lib/bootc/install/; pass --rootfs {}",
                disk::mkfs::supported().join("|")
            )
        })?,
        (None, None) => unreachable!("scanned when --rootfs is missing"),
    };
    disk::mkfs::check_supported(&rootfs)?;
    let layout = Layout::load(args.layout.as_deref().unwrap_or(&platform.arch.default_layout))?;
    let content = match (&scan, disk_size) {
        (Some(s), _) => s.content_bytes,
        // With --size only a lower bound is needed to refuse a disk too small.
        (None, Some(_)) => image.layers.iter().map(|l| l.descriptor.size).sum(),
        (None, None) => image.uncompressed_size()?,
    };
    let (root_size, root_min) = disk::root_size(content);
    let ids = Ids::from_seed(args.seed.as_deref());
    if let Some(size) = disk.fixed_size() {
        disk::check_fits(&disk.name, size, &layout, root_min)?;
    }
    let plan = disk::plan(&layout, &rootfs, &platform.arch.root_type, root_min, root_size, disk_size, &ids)?;
    drop(scan);

    if disk.fixed_size().is_none() {
        check_free_space(&args.output, root_min)?;
    }
    let stage = progress.stage("disk", None);
    // The table is committed last: until then the disk has none.
    let table = disk.prepare_table(&plan)?;
    let workdir = run_dir.join("sysroot");
    std::fs::create_dir(&workdir).with_context(|| format!("cannot create {}", workdir.display()))?;
    let sysroot = if ids.is_seeded() {
        Sysroot::create_staged(disk, &plan, &workdir, &args.output)?
    } else {
        Sysroot::create(disk, &plan, &workdir)?
    };
    stage.finish();
    interrupt::check()?;

    let mut esp = plan.part(Role::Esp).map(|p| Esp::format(&disk.file, p, disk.sector_size())).transpose()?;
    // GRUB's BIOS boot code counts 512-byte sectors: a 4Kn disk boots through UEFI only.
    let bios_partition = plan.part(Role::BiosBoot).filter(|_| {
        let fits = disk.sector_size() == table::SECTOR;
        if !fits {
            progress.info(&format!("{} has {}-byte sectors, which BIOS GRUB cannot boot: installing for UEFI only", disk.name, disk.sector_size()));
        }
        fits
    });
    let bios = bios_partition.map(|p| BiosTarget {
        disk: &disk.file,
        partition: BiosBootPartition { first_lba: p.offset / 512, sectors: p.size / 512 },
    });
    write_system(args, &image, &platform, &plan, &sysroot.root, esp.as_mut().map(|e| e as &mut dyn EspWriter), bios, progress)?;
    if let (Some(e), Some(p)) = (esp, plan.part(Role::Esp)) {
        e.close(&disk.file, p)?;
    }

    let stage = progress.stage("finish", None);
    sysroot.close()?;
    table.commit()?;
    disk.file.sync_all().with_context(|| format!("writing {} failed (is its disk full?)", disk.name))?;
    stage.finish();
    Ok(())
}

/// Opens the image, checks it is bootable, finds its platform and fetches its layers.
pub fn open_image(args: &BakeArgs, progress: &Progress) -> Result<(Image, Platform)> {
    let opts = args.source.open_options();
    let image = Image::open(&args.image, &opts)?;
    image.require_bootable_label()?;
    let arch = if image.config.architecture.is_empty() { opts.arch.clone() } else { image.config.architecture.clone() };
    let platform = Platform::for_oci_arch(&arch)?;
    image.fetch_layers(progress)?;
    interrupt::check()?;
    Ok((image, platform))
}

/// Writes the system into a sysroot whose filesystems `plan` describes (made by kiln, or
/// found by `install to-filesystem`): the deployment, then the bootloader into `esp` and
/// `bios`.
#[allow(clippy::too_many_arguments)]
pub fn write_system(
    args: &BakeArgs,
    image: &Image,
    platform: &Platform,
    plan: &disk::Plan,
    sysroot: &Path,
    esp: Option<&mut (dyn EspWriter + 'static)>,
    bios: Option<BiosTarget<'_>>,
    progress: &Progress,
) -> Result<()> {
    let deployment = write_deployment(args, image, platform, plan, sysroot, progress).map_err(explain_enospc)?;
    let stage = progress.stage("bootloader", None);
    let boot_part = plan.part(Role::Boot);
    let boot_dir = sysroot.join("boot");
    let target = BootTarget {
        boot_dir: &boot_dir,
        boot_fs: BootFilesystem {
            uuid: boot_part.unwrap_or(plan.root()).fs_uuid.clone(),
            separate_partition: boot_part.is_some(),
        },
        entries_dir: sysroot.join("boot/loader/entries"),
        esp: esp.map(|e| e as &mut dyn EspWriter),
        bios,
    };
    bootloader::install(&platform.bootloader, &deployment.dir, target)?;
    stage.finish();
    Ok(())
}

/// Fails early when the output's filesystem cannot hold the disk's data (the raw file is
/// sparse: what counts is what will be written, about `needed` bytes).
fn check_free_space(dir: &Path, needed: u64) -> Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Ok(());
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    if free < needed {
        bail!(
            "{} has {} MiB free, but the disk will hold about {} MiB: free some space or choose another --output",
            dir.display(),
            free >> 20,
            needed >> 20
        );
    }
    Ok(())
}

/// Applies the image into an ostree repository on the sysroot, commits and deploys it.
fn write_deployment(
    args: &BakeArgs,
    image: &Image,
    platform: &Platform,
    plan: &disk::Plan,
    sysroot: &Path,
    progress: &Progress,
) -> Result<ostree::Deployment> {
    let repo = Repo::create(&sysroot.join("ostree/repo"), ostree::SYSROOT_CONFIG)?;
    let merged = tree::apply_layers(image, &Interruptible(&repo), progress, "layers")?;
    interrupt::check()?;
    let stage = progress.stage("commit", None);
    let (root, filtered) = ostree::convert(merged.root)?;
    let layers = merged.layers;
    let kver = tree::kernels(&root).into_iter().next().with_context(|| {
        format!("{} has no kernel: expected /usr/lib/modules/<kver>/vmlinuz (is it a bootc image?)", image.describe())
    })?;
    let (origin, transport_ref) = target_reference(args.target_imgref.as_deref(), &image.source, progress)?;
    let commit = ostree::commit(
        &repo,
        &root,
        layers,
        &ostree::CommitInfo { image, target_transport_ref: &transport_ref, filtered: &filtered, kernel: &kver },
    )?;
    stage.finish();

    let stage = progress.stage("deploy", None);
    let config = read_files(&repo, &root, &kargs::wanted)?;
    let install = kargs::install_config(&config, &platform.arch.kernel)?;
    let mut all_kargs = disk::kargs(plan);
    all_kargs.extend(install.kargs);
    all_kargs.extend(kargs::kargs_d(&config, &platform.arch.kernel)?);
    all_kargs.extend(args.kargs.iter().cloned());
    let version = image.labels().get("org.opencontainers.image.version").cloned();
    let dep = ostree::deploy(
        sysroot,
        &repo,
        &commit,
        &root,
        &ostree::DeployOptions {
            stateroot: &args.stateroot,
            origin: &origin,
            kargs: &all_kargs,
            version: version.as_deref(),
            image: origin.split_once(':').map_or(origin.as_str(), |(_, r)| r),
        },
    )?;
    disk::write_mounts(plan, &dep.dir)?;
    stage.finish();
    Ok(dep)
}

/// The origin the installed system updates from and the ref's image reference:
/// `--target-imgref`, else the source when it names a registry image; a local source is kept
/// as it is, with a warning.
fn target_reference(target: Option<&str>, source: &Source, progress: &Progress) -> Result<(String, String)> {
    let registry = match target {
        Some(t) => {
            let t = t
                .trim_start_matches("ostree-unverified-registry:")
                .trim_start_matches("docker://")
                .trim_start_matches("registry:");
            RegistryRef::parse(t).with_context(|| format!("--target-imgref {t:?} is not a registry image reference"))?;
            Some(t.to_string())
        }
        None => match source {
            Source::Registry(_) => Some(source.to_string().trim_start_matches("docker://").to_string()),
            _ => source.registry_form(),
        },
    };
    Ok(match registry {
        Some(r) => (format!("ostree-unverified-registry:{r}"), format!("docker://{r}")),
        None => {
            progress.warn(&format!(
                "the installed system will look for updates at {source}, a path on this machine; pass --target-imgref REGISTRY/IMAGE:TAG to update from a registry"
            ));
            (format!("ostree-unverified-image:{source}"), source.to_string())
        }
    })
}

/// The content of the tree's files whose paths `wanted` accepts, read from the repository.
fn read_files(repo: &Repo, root: &Dir, wanted: &dyn Fn(&str) -> bool) -> Result<BTreeMap<String, Vec<u8>>> {
    fn walk(repo: &Repo, dir: &Dir, prefix: &str, wanted: &dyn Fn(&str) -> bool, out: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
        for (name, node) in &dir.entries {
            let path = format!("{prefix}{}", String::from_utf8_lossy(name));
            match node {
                Node::Dir(d) => walk(repo, d, &format!("{path}/"), wanted, out)?,
                Node::File(f) if wanted(&path) => {
                    let mut v = Vec::new();
                    std::fs::File::open(repo.object_path(&f.content, Kind::File))?.read_to_end(&mut v)?;
                    out.insert(path, v);
                }
                _ => {}
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(repo, root, "", wanted, &mut out)?;
    Ok(out)
}

/// A content store that stops at a signal.
struct Interruptible<'a>(&'a dyn ContentStore);

impl ContentStore for Interruptible<'_> {
    fn put(&self, path: &[Vec<u8>], meta: &Meta, size: u64, data: &mut dyn Read) -> Result<ContentKey> {
        interrupt::check()?;
        self.0.put(path, meta, size, data)
    }
}

/// A full root filesystem gets the remedy in its message.
fn explain_enospc(e: anyhow::Error) -> anyhow::Error {
    let full = e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC)));
    if full {
        e.context("the disk's root filesystem is full: give a larger --size (or leave it out to size the disk from the image)")
    } else {
        e
    }
}
