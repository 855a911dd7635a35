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
//!
//! `kiln install to-disk` runs the same stages with a block device as the disk
//! ([`write_disk`], `disk::Target`), `install to-filesystem` the deployment and bootloader
//! stages ([`write_system`]) on filesystems it found.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bootloader::{self, BiosBootPartition, BiosTarget, BootFilesystem, BootTarget, EspWriter};
use crate::cli::BakeArgs;
use crate::cloud::{self, aws};
use crate::config::{self, BuildConfig};
use crate::customize::{self, root::SystemRoot};
use crate::efi::image::ImageFirmware;
use crate::disk::{self, esp::Esp, image::ImageDisk, layout::parse_size, table, Disk, Ids, Layout, Role, Sysroot};
use crate::image::{reference::RegistryRef, Image, Source};
use crate::interrupt;
use crate::ostree::{self, kargs, object::Kind, prepare_root, Repo};
use crate::platform::Platform;
use crate::output::{self, Format, RawDisk};
use crate::pending::PendingFile;
use crate::progress::Progress;
use crate::selinux;
use crate::tree::{self, ContentKey, ContentStore, Dir, Meta, Node};
use crate::workspace::{OutputDir, RunDir};

/// What the user gives besides the image, read (and checked) before anything is written.
pub struct Inputs {
    config: Option<BuildConfig>,
    root_ssh_keys: Option<String>,
}

impl Inputs {
    pub fn read(args: &BakeArgs) -> Result<Inputs> {
        let config = args.config.as_deref().map(config::load).transpose()?;
        let root_ssh_keys = args
            .root_ssh_authorized_keys
            .as_ref()
            .map(|p| std::fs::read_to_string(p).with_context(|| format!("--root-ssh-authorized-keys: cannot read {}", p.display())))
            .transpose()?;
        Ok(Inputs { config, root_ssh_keys })
    }
}

/// The image turned out, once its files were in the repository, to describe its own disk
/// (disk.yaml, or bib's embedded config): the disk is laid out again with these files.
#[derive(Debug)]
struct ImageDiskFound(BTreeMap<String, Vec<u8>>);

impl std::fmt::Display for ImageDiskFound {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "the image describes its own disk")
    }
}

impl std::error::Error for ImageDiskFound {}

pub fn run(args: &BakeArgs, progress: &Progress) -> Result<()> {
    // First, before any thread starts: the mounts this run makes live and die with it.
    disk::mountns::enter_private()?;
    interrupt::install();
    let inputs = Inputs::read(args)?;
    let (files, uploads) = cloud::split_types(&args.types);
    let formats = if files.is_empty() && !uploads.is_empty() { Vec::new() } else { Format::parse_list(&files)? };
    // Credentials and regions are checked before the long work.
    let aws = match uploads.iter().any(|u| u == "ami") {
        true => Some(aws::Session::connect(args.aws.config()?, progress)?),
        false => None,
    };
    let _claim = OutputDir::claim(&args.output, &Format::dirs_in(&args.output), progress)?;
    let outputs: Vec<(Format, PathBuf)> = formats.iter().map(|f| (*f, f.path_in(&args.output))).collect();
    for (_, path) in &outputs {
        if path.exists() && !args.force {
            bail!("{} already exists: remove it or pass --force to replace it", path.display());
        }
    }
    let run_dir = RunDir::create(progress)?;
    let mut written = Vec::new();
    // The installer ISO is made from the image, not from a disk: when it is all that was
    // asked for, no disk is made.
    if formats.contains(&Format::Iso) {
        let dest = Format::Iso.path_in(&args.output);
        let out = PendingFile::create_for(&dest)?;
        let result = output::iso::installer::bake(args, out.file(), run_dir.path(), progress);
        interrupt::check().and(result).with_context(|| format!("making {}", dest.display()))?;
        written.push((out, dest));
        if formats.len() == 1 && uploads.is_empty() {
            return output::name_all(written, progress);
        }
    }
    // The raw disk has no name until the end (none at all unless it was asked for); one
    // raw build feeds every format and the upload.
    let raw_dest = Format::Raw.path_in(&args.output);
    let raw = PendingFile::create_for(&raw_dest)?;
    let disk = Disk::image(raw.file().try_clone()?, raw_dest.display().to_string());
    let result = write_disk(args, &inputs, &disk, run_dir.path(), progress);
    let baked = interrupt::check().and(result)?;
    let raw_disk = RawDisk::from_file(raw.file().try_clone()?, &raw_dest)?;
    for (format, path) in outputs.iter().filter(|(f, _)| !matches!(f, Format::Raw | Format::Iso)) {
        interrupt::check()?;
        match (format, &baked.system.asahi) {
            // The package's name comes from the image: known only now.
            (Format::Asahi, Some(package)) => {
                let dir = path.parent().unwrap();
                let (zip, _) = output::asahi::paths(package, dir);
                if zip.exists() && !args.force {
                    bail!("{} already exists: remove it or pass --force to replace it", zip.display());
                }
                written.extend(output::asahi::write(&raw_disk, package, dir, progress)?);
            }
            _ => {
                let out = PendingFile::create_for(path)?;
                output::write(*format, &raw_disk, &out, path, &args.ova.options(), progress)?;
                written.push((out, path.clone()));
            }
        }
    }
    if let Some(session) = &aws {
        interrupt::check()?;
        // The raw disk has no name yet: read through its descriptor.
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", std::os::unix::io::AsRawFd::as_raw_fd(raw.file())));
        let facts = aws::DiskFacts::read(&fd_path)?;
        let uploaded = session.upload(&raw_disk, &aws::aws_arch(&baked.arch)?, &facts, &baked.ami_name, progress)?;
        cloud::report(&uploaded, progress);
    }
    if formats.contains(&Format::Raw) {
        written.push((raw, raw_dest));
    }
    output::name_all(written, progress)
}

/// What the bake learnt that later stages need.
pub struct Baked {
    /// The image's architecture (OCI naming).
    arch: String,
    /// The default AMI name: the image's name and version.
    ami_name: String,
    /// The disk as laid out.
    pub plan: disk::Plan,
    pub system: SystemWritten,
}

/// What [`write_system`] put down, and what the image tells the firmware steps after it.
pub struct SystemWritten {
    pub bootloader: bootloader::Installed,
    /// The deployment's directory below the sysroot (`ostree/deploy/<stateroot>/deploy/<checksum>.0`).
    pub deployment: String,
    pub firmware: ImageFirmware,
    /// What the Asahi package is made of besides the disk, when it was asked for.
    pub asahi: Option<output::asahi::Package>,
}

/// `--type asahi` was asked for: the disk is also made into an Asahi package (4 KiB-sector
/// filesystems, a root that grows, m1n1/boot.bin on the ESP).
fn asahi_wanted(args: &BakeArgs) -> bool {
    args.types.iter().any(|t| Format::parse(t).is_ok_and(|f| f == Format::Asahi))
}

/// The files of the image the disk's layout depends on: the bootc install configuration and
/// the image's own disk description.
fn layout_files(path: &str) -> bool {
    kargs::wanted(path) || disk::image::wanted(path)
}

/// Writes the disk (an image file, or a block device for `kiln install to-disk`): its table,
/// filesystems, deployment and bootloader; mount points go in `run_dir`. When the image turns
/// out to describe its own disk (found only once its files are in the repository), the disk
/// is laid out again with that description.
pub fn write_disk(args: &BakeArgs, inputs: &Inputs, disk: &Disk, run_dir: &Path, progress: &Progress) -> Result<Baked> {
    let mut image_files = None;
    loop {
        match write_disk_once(args, inputs, disk, run_dir, progress, image_files.take()) {
            Err(e) => match e.downcast::<ImageDiskFound>() {
                Ok(found) => {
                    progress.info("the image describes its own disk (disk.yaml or an embedded build config): laying the disk out again with it");
                    if disk.fixed_size().is_none() {
                        disk.file.set_len(0).with_context(|| format!("cannot empty {}", disk.name))?;
                    }
                    image_files = Some(found.0);
                }
                Err(e) => return Err(e),
            },
            Ok(baked) => return Ok(baked),
        }
    }
}

/// `image_files`: the image's files that decide the layout, when a previous attempt found
/// them; otherwise they come from a scan (without `--rootfs`) or are looked at after the
/// commit.
fn write_disk_once(args: &BakeArgs, inputs: &Inputs, disk: &Disk, run_dir: &Path, progress: &Progress, image_files: Option<BTreeMap<String, Vec<u8>>>) -> Result<Baked> {
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
    let scan = if args.rootfs.is_none() && image_files.is_none() {
        let s = tree::scan::scan(&image, &layout_files, progress)?;
        if tree::kernels(&s.root).is_empty() {
            bail!("{} has no kernel: expected /usr/lib/modules/<kver>/vmlinuz (is it a bootc image?)", image.describe());
        }
        Some(s)
    } else {
        None
    };
    let files = image_files.as_ref().or(scan.as_ref().map(|s| &s.files));
    let image_disk = files.map(ImageDisk::from_files).transpose()?.unwrap_or_default();
    let image_disk_known = files.is_some();
    let disk_yaml_fs = image_disk.layout.as_ref().and_then(|(_, fs)| fs.clone());
    let rootfs = match (&args.rootfs, files) {
        (Some(fs), _) => fs.clone(),
        (None, Some(files)) => match disk_yaml_fs.clone() {
            // image-builder takes the root's type from disk.yaml before the install config.
            Some(fs) => fs,
            None => kargs::install_config(files, &platform.arch.kernel)?.root_fs_type.with_context(|| {
                format!(
                    "no root filesystem type: the image has no [install.filesystem.root] type in /usr/lib/bootc/install/; pass --rootfs {}",
                    disk::mkfs::supported().join("|")
                )
            })?,
        },
        (None, None) => unreachable!("scanned when --rootfs is missing"),
    };
    disk::mkfs::check_supported(&rootfs)?;
    let layout = choose_layout(args, inputs, &image_disk, &platform, &rootfs, progress)?;
    let ids = Ids::from_seed(args.seed.as_deref());
    // Without a scan, a root that can grow (`disk::grow`) is sized from what the layers
    // declare and grows as their files are stored, rather than after a pass counting what they
    // hold; a seeded bake (whose filesystems are made at the end), one given --root-size, or an
    // Asahi package (which records the root's size on the way) counts first.
    let grows = scan.is_none()
        && disk_size.is_none()
        && !ids.is_seeded()
        && args.root_size.is_none()
        && !asahi_wanted(args)
        && disk::grow::possible(disk, &layout, &rootfs);
    let content = match (&scan, disk_size) {
        (Some(s), _) => s.content_bytes,
        // With --size only a lower bound is needed to refuse a disk too small.
        (None, Some(_)) => image.layers.iter().map(|l| l.descriptor.size).sum(),
        (None, None) if grows => image.uncompressed_size_lower_bound(),
        (None, None) => image.uncompressed_size()?,
    };
    let (root_size, root_min) = disk::root_size(content);
    if let Some(size) = disk.fixed_size() {
        disk::check_fits(&disk.name, size, &layout, root_min)?;
    }
    let mut plan = disk::plan(&layout, &rootfs, &platform.arch.root_type, root_min, root_size, disk_size, &ids)?;
    // The Asahi installer copies the filesystems onto 4 KiB-sector NVMe partitions it makes
    // as large as the user wants; a 4Kn disk gets its filesystems made for it as well.
    let asahi = asahi_wanted(args);
    (plan.sector_4k, plan.grow_root) = (asahi || disk.sector_size() > table::SECTOR, asahi);
    if asahi && plan.part(Role::Esp).is_none() {
        bail!("--type asahi needs a layout with an ESP: the Asahi installer makes the EFI partition from it");
    }
    if let Some(size) = args.root_size {
        disk::limit_root(&mut plan, size, root_min)?;
    }
    drop(scan);

    if disk.fixed_size().is_none() {
        check_free_space(&args.output, root_min)?;
    }
    let stage = progress.stage("disk", None);
    // The table is committed last: until then the disk has none.
    let table = disk.prepare_table(&plan)?;
    let workdir = run_dir.join("sysroot");
    // An empty mount point an earlier attempt of this run left.
    let _ = std::fs::remove_dir(&workdir);
    std::fs::create_dir(&workdir).with_context(|| format!("cannot create {}", workdir.display()))?;
    let mut sysroot = if ids.is_seeded() {
        Sysroot::create_staged(disk, &plan, &workdir, &args.output)?
    } else if grows {
        Sysroot::create_growing(disk, &plan, &workdir)?
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
    let mut target = SystemTarget { plan: &plan, sysroot: &mut sysroot, ids: &ids, image_disk_known };
    let system = write_system(args, inputs, &image, &platform, &mut target, esp.as_mut().map(|e| e as &mut (dyn EspWriter + 'static)), bios, progress)?;
    if let (Some(e), Some(p)) = (esp, plan.part(Role::Esp)) {
        e.close(&disk.file, p)?;
    }

    let table = match sysroot.grown_root_size() {
        Some(size) if size != plan.root().size => {
            plan.resize_root(size);
            table.regrown(&plan)?
        }
        _ => table,
    };
    let stage = progress.stage("finish", None);
    sysroot.close()?;
    table.commit()?;
    disk.file.sync_all().with_context(|| format!("writing {} failed (is its disk full?)", disk.name))?;
    stage.finish();
    Ok(Baked { arch: platform.arch.oci.clone(), ami_name: default_ami_name(&image), plan, system })
}

/// Opens the image, checks it is bootable (and, for `--type asahi`, an Apple Silicon one),
/// finds its platform and fetches its layers.
pub fn open_image(args: &BakeArgs, progress: &Progress) -> Result<(Image, Platform)> {
    let opts = args.source.open_options();
    let image = Image::open(&args.image, &opts)?;
    image.require_bootable_label()?;
    let arch = if image.config.architecture.is_empty() { opts.arch.clone() } else { image.config.architecture.clone() };
    let platform = Platform::for_oci_arch(&arch).with_context(|| image.describe())?;
    if asahi_wanted(args) && platform.bootloader.m1n1.is_none() {
        bail!(
            "--type asahi makes a package for Apple Silicon Macs, which run arm64 images; {} is an {arch} image{}",
            image.describe(),
            if opts.arch_given { String::new() } else { " (for a multi-platform image, add --target-arch arm64)".to_string() }
        );
    }
    if arch != opts.arch {
        progress.info(&format!("baking for {arch}, the image's architecture"));
    }
    image.fetch_layers(progress)?;
    interrupt::check()?;
    Ok((image, platform))
}

/// The filesystems a system is written into: made by kiln (`plan`'s), or found by `install
/// to-filesystem`, mounted at `sysroot`.
pub struct SystemTarget<'a> {
    pub plan: &'a disk::Plan,
    pub sysroot: &'a mut Sysroot,
    pub ids: &'a Ids,
    /// The image's own disk description was known when the disk was laid out (or does not
    /// matter: the filesystems exist).
    pub image_disk_known: bool,
}

/// Writes the system into its sysroot: the deployment, then the bootloader into `esp` and
/// `bios`. With `--type asahi`, m1n1's boot.bin goes on the ESP too, and what the package is
/// made of besides the disk is returned.
#[allow(clippy::too_many_arguments)]
pub fn write_system(
    args: &BakeArgs,
    inputs: &Inputs,
    image: &Image,
    platform: &Platform,
    target: &mut SystemTarget<'_>,
    mut esp: Option<&mut (dyn EspWriter + 'static)>,
    bios: Option<BiosTarget<'_>>,
    progress: &Progress,
) -> Result<SystemWritten> {
    let SystemTarget { plan, ref mut sysroot, ids, image_disk_known } = *target;
    let Deployed { deployment, policy, verity } =
        write_deployment(args, inputs, image, platform, plan, sysroot, ids, image_disk_known, progress).map_err(explain_enospc)?;
    let m1n1 = platform.bootloader.m1n1.as_ref().filter(|_| asahi_wanted(args));
    let image_root = bootloader::image_files::ImageRoot::new(&deployment.dir);
    let boot_bin = m1n1.map(|m| bootloader::m1n1::assemble(&image_root, &deployment.kver, m)).transpose()?;
    if let (Some(b), Some(m)) = (&boot_bin, m1n1) {
        if !b.ignored.is_empty() {
            progress.warn(&format!("m1n1/boot.bin: lines of the image's /{} m1n1 does not take were left out: {}", m.config, b.ignored.join("; ")));
        }
    }
    let stage = progress.stage("bootloader", None);
    let boot_part = plan.part(Role::Boot);
    let boot_dir = sysroot.root.join("boot");
    let target = BootTarget {
        boot_dir: &boot_dir,
        boot_fs: BootFilesystem {
            uuid: boot_part.unwrap_or(plan.root()).fs_uuid.clone(),
            separate_partition: boot_part.is_some(),
        },
        entries_dir: sysroot.root.join("boot/loader/entries"),
        esp: esp.as_deref_mut().map(|e| e as &mut dyn EspWriter),
        bios,
    };
    let installed = bootloader::install(&platform.bootloader, &deployment.dir, target)?;
    if let (Some(b), Some(e)) = (&boot_bin, esp) {
        bootloader::m1n1::install(b, e)?;
    }
    let firmware = ImageFirmware::read(&bootloader::image_files::ImageRoot::new(&deployment.dir))?;
    let deployment_path = deployment.dir.strip_prefix(&sysroot.root).unwrap_or(&deployment.dir).display().to_string();
    stage.finish();
    let asahi = m1n1.map(|m| asahi_package(image, &deployment.dir, &image_root, m, plan)).transpose()?;
    if let Some(policy) = &policy {
        let stage = progress.stage("labels", None);
        label_what_is_left(policy.labeler(), sysroot, &deployment)?;
        stage.finish();
    }
    if verity {
        // Last: on ext4 the objects' fs-verity metadata sits past their data until the
        // filesystem is closed, so nothing may read them after this.
        let stage = progress.stage("verity", None);
        sysroot.enable_verity(&ostree::composefs::verity_files(&sysroot.root)?).map_err(explain_enospc)?;
        stage.finish();
    }
    Ok(SystemWritten { bootloader: installed, deployment: deployment_path, firmware, asahi })
}

/// The Asahi package's names and icon, from the image, and the disk's partitions it is made of.
fn asahi_package(image: &Image, deployment: &Path, image_root: &bootloader::image_files::ImageRoot, m1n1: &bootloader::M1n1Platform, plan: &disk::Plan) -> Result<output::asahi::Package> {
    let pretty = ostree::deploy::os_release(deployment, "PRETTY_NAME");
    let (name, version) = image_name_and_version(image);
    let labels = image.labels();
    // The installer's menu shows the image's title and version when it has them.
    let menu_name = match (labels.get("org.opencontainers.image.title"), labels.get("org.opencontainers.image.version")) {
        (Some(t), Some(v)) => format!("{t} {v}"),
        (Some(t), None) => t.clone(),
        (None, _) => pretty.clone().unwrap_or_else(|| format!("{name} {version}")),
    };
    let os_id = ostree::deploy::os_release(deployment, "ID").unwrap_or_else(|| "linux".into());
    Ok(output::asahi::Package {
        name: output::asahi::package_name(&name, &version),
        os_name: pretty.unwrap_or_else(|| menu_name.clone()),
        menu_name,
        icon: bootloader::m1n1::icon(image_root, m1n1, &os_id)?,
        supported_fw: m1n1.supported_fw.clone(),
        esp: plan.part(Role::Esp).context("the layout has no ESP")?.clone(),
        boot: plan.part(Role::Boot).cloned(),
        root: plan.root().clone(),
    })
}

/// The image's title and version labels, else its repository's name and manifest digest.
fn image_name_and_version(image: &Image) -> (String, String) {
    let labels = image.labels();
    let name = labels.get("org.opencontainers.image.title").cloned().unwrap_or_else(|| {
        let reference = image.source.registry_form().unwrap_or_else(|| image.source.to_string());
        let repo = reference.rsplit('/').next().unwrap_or("image");
        repo.split([':', '@']).next().unwrap_or(repo).to_string()
    });
    let version = labels.get("org.opencontainers.image.version").cloned().unwrap_or_else(|| {
        image.manifest_digest.trim_start_matches("sha256:").chars().take(12).collect()
    });
    (name, version)
}

fn default_ami_name(image: &Image) -> String {
    let (name, version) = image_name_and_version(image);
    aws::default_ami_name(&name, &version)
}

/// The partition layout: `--layout`, else the image's disk.yaml, else the platform's; changed
/// by the build config's filesystem or disk customizations, else by those of the config the
/// image embeds.
fn choose_layout(args: &BakeArgs, inputs: &Inputs, image_disk: &ImageDisk, platform: &Platform, rootfs: &str, progress: &Progress) -> Result<Layout> {
    let base = match (&args.layout, &image_disk.layout) {
        (Some(l), _) => Layout::load(l)?,
        (None, Some((l, _))) => l.clone(),
        (None, None) => Layout::load(&platform.arch.default_layout)?,
    };
    let custom = match inputs.config.as_ref().and_then(|c| c.disk.as_ref()) {
        Some(d) => Some(d),
        None => {
            if image_disk.config.is_some() {
                progress.info("using the partitions of the image's embedded build config (/usr/lib/bootc-image-builder/config)");
            }
            image_disk.config.as_ref()
        }
    };
    let layout = match custom {
        Some(d) => disk::custom::apply(&base, d, rootfs)?,
        None => base,
    };
    layout.for_firmware(&platform.arch.firmware)
}

/// The day passwords are set (shadow's lastchg, days since 1970-01-01): today, or for a seeded
/// (reproducible) bake the image's creation date.
fn password_day(image: &Image, seeded: bool) -> Option<i64> {
    let secs = if seeded {
        let created = serde_json::from_slice::<serde_json::Value>(&image.config_bytes).ok()?.get("created")?.as_str()?.to_string();
        days_from_date(&created)? * 86400
    } else {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64
    };
    Some(secs / 86400)
}

/// Days since 1970-01-01 of an RFC 3339 date (`2025-05-20T…`).
pub(crate) fn days_from_date(s: &str) -> Option<i64> {
    let (y, m, d): (i64, i64, i64) = (s.get(0..4)?.parse().ok()?, s.get(5..7)?.parse().ok()?, s.get(8..10)?.parse().ok()?);
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146097 + doe - 719468)
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

/// Labels what the bake wrote after the deployment (the deployment's /etc and the stateroot's
/// /var by their runtime paths, then everything else by its place in the physical root), as
/// bootc finishes an install.
fn label_what_is_left(labeler: &selinux::Labeler, sysroot: &Sysroot, deployment: &ostree::Deployment) -> Result<()> {
    ostree::selabel::ensure_labelled(labeler, &deployment.dir.join("etc"), b"/etc", &[])?;
    ostree::selabel::ensure_labelled(labeler, &deployment.var, b"/var", &[])?;
    ostree::selabel::label_physical_root(labeler, &sysroot.root, std::slice::from_ref(&deployment.dir))?;
    // The directories under the mounts (`/boot` on the root filesystem) are seen too.
    for (at, dir) in sysroot.covered_dirs() {
        let physical = Path::new("/").join(at.strip_prefix(&sysroot.root).unwrap_or(at));
        ostree::selabel::label_fd(labeler, dir, physical.as_os_str().as_encoded_bytes())?;
    }
    Ok(())
}

/// The image's SELinux policy, read from its commit tree (`None`: the image has none, or the
/// user turned labelling off).
fn image_policy(repo: &Repo, root: &Dir, disabled: bool) -> Result<Option<selinux::Policy>> {
    if disabled {
        return Ok(None);
    }
    let read = |path: &str| match root.get_path(path) {
        Some(Node::File(f)) => std::fs::read(repo.object_path(&f.content, Kind::File)).ok(),
        _ => None,
    };
    let list = |path: &str| match root.get_path(path) {
        Some(Node::Dir(d)) => d.entries.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect(),
        _ => Vec::new(),
    };
    selinux::Policy::load(&read, &list)
}

/// Applies the image into an ostree repository on the sysroot, commits and deploys it.
/// What writing the deployment leaves for the stages after it.
struct Deployed {
    deployment: ostree::Deployment,
    /// The image's SELinux policy, when its labels were applied.
    policy: Option<selinux::Policy>,
    /// The boot needs fs-verity on every object.
    verity: bool,
}

#[allow(clippy::too_many_arguments)]
fn write_deployment(
    args: &BakeArgs,
    inputs: &Inputs,
    image: &Image,
    platform: &Platform,
    plan: &disk::Plan,
    target: &Sysroot,
    ids: &Ids,
    image_disk_known: bool,
    progress: &Progress,
) -> Result<Deployed> {
    let sysroot = target.root.as_path();
    let repo = Repo::create(&sysroot.join("ostree/repo"), ostree::SYSROOT_CONFIG)?;
    let growing = target.growing();
    // Files are labelled as they stream in, when the image has a policy and labels are wanted.
    let (merged, written) = if args.disable_selinux {
        (tree::apply_layers(image, &Guarded(&repo, growing.as_ref()), progress, "layers")?, Default::default())
    } else {
        let store = ostree::selabel::StreamLabels::new(&repo);
        let merged = tree::apply_layers(image, &Guarded(&store, growing.as_ref()), progress, "layers")?;
        (merged, store.into_written())
    };
    interrupt::check()?;
    if let Some(g) = &growing {
        g.fit(merged.content_bytes)?;
    }
    crate::memory::release_freed();
    let (mut root, filtered) = ostree::convert(merged.root)?;
    let mut layers = merged.layers.into_iter().map(|l| ostree::commit::filter(l).map(|(d, _)| d)).collect::<Result<Vec<_>>>()?;
    let policy = image_policy(&repo, &root, args.disable_selinux)
        .context("the image's SELinux policy cannot be used (fix it in the image, or pass --disable-selinux to bake without labels; paths are the ostree commit's, where the image's /etc is usr/etc)")?;
    if policy.is_some() || !written.is_empty() {
        // Every node labelled by its commit path, and the objects streamed with another label
        // (or with one, when the final tree has no policy after all) re-keyed.
        let stage = progress.stage("labels", None);
        let mut trees: Vec<&mut Dir> = std::iter::once(&mut root).chain(layers.iter_mut()).collect();
        ostree::selabel::label_commits(&repo, policy.as_ref().map(|p| p.labeler()), &written, &mut trees)?;
        stage.finish();
        interrupt::check()?;
    }
    let stage = progress.stage("commit", None);
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
    // The layers' own trees are written and gone.
    crate::memory::release_freed();

    let stage = progress.stage("deploy", None);
    let files = read_files(&repo, &root, &|p| layout_files(p) || prepare_root::wanted(p))?;
    if !image_disk_known {
        let found = ImageDisk::from_files(&files)?;
        let user_disk = inputs.config.as_ref().is_some_and(|c| c.disk.is_some());
        if (found.layout.is_some() && args.layout.is_none()) || (found.config.is_some() && !user_disk) {
            return Err(ImageDiskFound(files).into());
        }
    }
    let install = kargs::install_config(&files, &platform.arch.kernel)?;
    // bootc's order: the root's, the install configuration's, kargs.d's, then the command
    // line's (here the build config's, then --karg).
    let mut all_kargs = disk::kargs(plan);
    all_kargs.extend(install.kargs);
    all_kargs.extend(kargs::kargs_d(&files, &platform.arch.kernel)?);
    if args.disable_selinux {
        // As bootc's --disable-selinux: the installed system is told too.
        all_kargs.push("selinux=0".to_string());
    }
    all_kargs.extend(inputs.config.iter().flat_map(|c| c.kernel_append.iter().cloned()));
    all_kargs.extend(args.kargs.iter().cloned());
    // How the initramfs will mount the deployment; fs-verity on every object where required.
    let composefs = prepare_root::at_boot(&files, &all_kargs)?;
    let object_verity = composefs
        .needs_verity()
        .then(|| -> Result<_> {
            target.check_verity().with_context(|| format!("{}, which needs fs-verity on every object", composefs.why))?;
            repo.mark_fsverity()?;
            ostree::composefs::object_digests(&repo, &root)
        })
        .transpose()?;
    let version = image.labels().get("org.opencontainers.image.version").cloned();
    let dep = ostree::deploy(
        sysroot,
        &repo,
        &commit,
        root,
        &ostree::DeployOptions {
            stateroot: &args.stateroot,
            origin: &origin,
            kargs: &all_kargs,
            version: version.as_deref(),
            image: origin.split_once(':').map_or(origin.as_str(), |(_, r)| r),
            labels: policy.as_ref().map(|p| ostree::selabel::Runtime { labeler: p.labeler() }),
            selinux_state: match (&policy, args.disable_selinux) {
                (Some(_), _) => "enabled",
                (None, true) => "force-target-disabled",
                (None, false) => "disabled",
            },
            object_verity: object_verity.as_ref(),
        },
    )?;
    let system = SystemRoot { deployment: dep.dir.clone(), var: sysroot.join("ostree/deploy").join(&args.stateroot).join("var") };
    disk::write_mounts(plan, &system)?;
    if inputs.config.is_some() || inputs.root_ssh_keys.is_some() {
        let salt = |purpose: &str| ids.bytes(&format!("salt: {purpose}")).to_vec();
        let opts = customize::Options { salt: &salt, days: password_day(image, ids.is_seeded()), root_ssh_keys: inputs.root_ssh_keys.as_deref() };
        customize::apply(inputs.config.as_ref().unwrap_or(&BuildConfig::default()), &system, &opts)
            .with_context(|| format!("applying the build config {}", inputs.config.as_ref().map_or("", |c| c.source.as_str())))?;
    }
    stage.finish();
    Ok(Deployed { deployment: dep, policy, verity: object_verity.is_some() })
}

/// The origin the installed system updates from and the ref's image reference:
/// `--target-imgref`, else the source when it names a registry image; a local source is kept
/// as it is, with a warning.
fn target_reference(target: Option<&str>, source: &Source, progress: &Progress) -> Result<(String, String)> {
    Ok(match registry_reference(target, source)? {
        Some(r) => (format!("ostree-unverified-registry:{r}"), format!("docker://{r}")),
        None => {
            progress.warn(&format!(
                "the installed system will look for updates at {source}, a path on this machine; pass --target-imgref REGISTRY/IMAGE:TAG to update from a registry"
            ));
            (format!("ostree-unverified-image:{source}"), source.to_string())
        }
    })
}

/// The registry reference (`REGISTRY/IMAGE:TAG`) an installed system updates from:
/// `--target-imgref`, else the image's own when it came from a registry.
pub(crate) fn registry_reference(target: Option<&str>, source: &Source) -> Result<Option<String>> {
    Ok(match target {
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

/// The repository's store as a bake uses it: stopped by an interrupt, and a growing root
/// kept ahead of the files stored.
struct Guarded<'a>(&'a dyn ContentStore, Option<&'a disk::grow::Growing<'a>>);

impl ContentStore for Guarded<'_> {
    fn put(&self, path: &[Vec<u8>], meta: &Meta, size: u64, data: &mut dyn Read) -> Result<ContentKey> {
        interrupt::check()?;
        if let Some(g) = self.1 {
            g.make_room(size)?;
        }
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
