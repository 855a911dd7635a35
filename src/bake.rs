//! `kiln bake`: image → tree → ostree → disk → bootloader → outputs, one pass.
//!
//! The disk is created first and the layers are applied straight into the ostree repository on
//! its mounted root filesystem, so every file's bytes are written once. Decisions that must
//! precede the disk (root filesystem type, root size) come from the user or, failing that, from
//! a scan of the image.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bootloader::{self, BiosBootPartition, BiosTarget, BootFilesystem, BootTarget, EspWriter};
use crate::cli::BakeArgs;
use crate::disk::{self, esp::Esp, layout::parse_size, table, Ids, Layout, Role, Sysroot};
use crate::image::{reference::RegistryRef, Image, Source};
use crate::interrupt;
use crate::ostree::{self, kargs, object::Kind, prepare_root, Repo};
use crate::platform::Platform;
use crate::output::{self, Format, RawDisk};
use crate::progress::Progress;
use crate::selinux;
use crate::tree::{self, ContentKey, ContentStore, Dir, Meta, Node};

pub fn run(args: &BakeArgs, progress: &Progress) -> Result<()> {
    interrupt::install();
    let formats = Format::parse_list(&args.types)?;
    let outputs: Vec<(Format, PathBuf)> = formats.iter().map(|f| (*f, f.path_in(&args.output))).collect();
    for (_, path) in &outputs {
        prepare_output(path, args.force)?;
    }
    let raw = Format::Raw.path_in(&args.output);
    std::fs::create_dir_all(raw.parent().unwrap()).with_context(|| format!("cannot create {}", raw.parent().unwrap().display()))?;
    let partial = Partial::new(raw.with_file_name(".disk.raw.kiln-partial"));
    let result = bake_raw(args, partial.path(), progress);
    interrupt::check().and(result)?;
    // One raw build feeds every format.
    let disk = RawDisk::open(partial.path())?;
    let mut written: Vec<Partial> = Vec::new();
    for (format, path) in outputs.iter().filter(|(f, _)| *f != Format::Raw) {
        interrupt::check()?;
        output::write(*format, &disk, path, &args.ova.options(), progress)?;
        // Kept only if the whole bake succeeds.
        written.push(Partial::new_existing(path.clone()));
        progress.info(&format!("wrote {}", path.display()));
    }
    if formats.contains(&Format::Raw) {
        std::fs::rename(partial.path(), &raw).with_context(|| format!("cannot move the finished disk to {}", raw.display()))?;
        partial.disarm();
        progress.info(&format!("wrote {}", raw.display()));
    }
    written.iter().for_each(Partial::disarm);
    Ok(())
}

/// Refuses to overwrite an output unless forced, and checks the directory is writable.
fn prepare_output(path: &Path, force: bool) -> Result<()> {
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    if path.exists() {
        if !force {
            bail!("{} already exists: remove it or pass --force to replace it", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    let probe = dir.join(format!(".kiln-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("the output directory {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe)?;
    Ok(())
}

/// A file or directory removed when dropped, unless disarmed.
struct Partial(PathBuf, std::cell::Cell<bool>);

impl Partial {
    fn new(p: PathBuf) -> Partial {
        let _ = std::fs::remove_file(&p);
        Partial(p, std::cell::Cell::new(true))
    }
    /// Guards a file that exists already.
    fn new_existing(p: PathBuf) -> Partial {
        Partial(p, std::cell::Cell::new(true))
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn disarm(&self) {
        self.1.set(false);
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.1.get() {
            let _ = if self.0.is_dir() { std::fs::remove_dir(&self.0) } else { std::fs::remove_file(&self.0) };
        }
    }
}

fn bake_raw(args: &BakeArgs, raw: &Path, progress: &Progress) -> Result<()> {
    let opts = args.source.open_options();
    let image = Image::open(&args.image, &opts)?;
    image.require_bootable_label()?;
    let arch = if image.config.architecture.is_empty() { opts.arch.clone() } else { image.config.architecture.clone() };
    let platform = Platform::for_oci_arch(&arch)?;
    image.fetch_layers(progress)?;
    interrupt::check()?;

    // What the disk needs to know before it exists.
    if let Some(fs) = &args.rootfs {
        disk::mkfs::check_supported(fs)?;
    }
    let disk_size = args.size.as_deref().map(parse_size).transpose()?;
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
    let plan = disk::plan(&layout, &rootfs, &platform.arch.root_type, root_min, root_size, disk_size, &ids)?;
    drop(scan);

    check_free_space(raw.parent().unwrap(), root_min)?;
    let stage = progress.stage("disk", None);
    table::create_image(raw, &plan)?;
    let workdir = Partial::new(raw.with_file_name(format!(".kiln-sysroot-{}", std::process::id())));
    std::fs::create_dir_all(workdir.path())?;
    let mut sysroot = if ids.is_seeded() {
        Sysroot::create_staged(raw, &plan, workdir.path())?
    } else {
        Sysroot::create(raw, &plan, workdir.path())?
    };
    stage.finish();
    interrupt::check()?;

    let Deployed { deployment, policy, verity } = write_deployment(args, &image, &platform, &plan, &sysroot, progress).map_err(explain_enospc)?;

    let stage = progress.stage("bootloader", None);
    let mut esp = plan.part(Role::Esp).map(|p| Esp::format(raw, p)).transpose()?;
    let boot_part = plan.part(Role::Boot);
    let target = BootTarget {
        boot_dir: &sysroot.root.join("boot"),
        boot_fs: BootFilesystem {
            uuid: boot_part.unwrap_or(plan.root()).fs_uuid.clone(),
            separate_partition: boot_part.is_some(),
        },
        entries_dir: sysroot.root.join("boot/loader/entries"),
        esp: esp.as_mut().map(|e| e as &mut dyn EspWriter),
        bios: plan.part(Role::BiosBoot).map(|p| BiosTarget {
            disk: raw,
            partition: BiosBootPartition { first_lba: p.offset / 512, sectors: p.size / 512 },
        }),
    };
    bootloader::install(&platform.bootloader, &deployment.dir, target)?;
    if let (Some(e), Some(p)) = (esp, plan.part(Role::Esp)) {
        e.close(raw, p)?;
    }
    stage.finish();
    if let Some(policy) = &policy {
        let stage = progress.stage("labels", None);
        label_what_is_left(policy.labeler(), &sysroot, &deployment)?;
        stage.finish();
    }

    if verity {
        // Last: on ext4 the objects' fs-verity metadata sits past their data until the
        // filesystem is closed, so nothing may read them after this.
        let stage = progress.stage("verity", None);
        sysroot.enable_verity(&ostree::composefs::verity_files(&sysroot.root)?).map_err(explain_enospc)?;
        stage.finish();
    }
    let stage = progress.stage("finish", None);
    sysroot.close()?;
    std::fs::File::open(raw)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {} failed (is its disk full?)", raw.display()))?;
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

fn write_deployment(
    args: &BakeArgs,
    image: &Image,
    platform: &Platform,
    plan: &disk::Plan,
    target: &Sysroot,
    progress: &Progress,
) -> Result<Deployed> {
    let sysroot = target.root.as_path();
    let repo = Repo::create(&sysroot.join("ostree/repo"), ostree::SYSROOT_CONFIG)?;
    // Files are labelled as they stream in, when the image has a policy and labels are wanted.
    let (merged, written) = if args.disable_selinux {
        (tree::apply_layers(image, &Interruptible(&repo), progress, "layers")?, Default::default())
    } else {
        let store = ostree::selabel::StreamLabels::new(&repo);
        let merged = tree::apply_layers(image, &Interruptible(&store), progress, "layers")?;
        (merged, store.into_written())
    };
    interrupt::check()?;
    let (mut root, filtered) = ostree::convert(merged.root)?;
    let mut layers = merged.layers.into_iter().map(|l| ostree::commit::filter(l).map(|(d, _)| d)).collect::<Result<Vec<_>>>()?;
    let policy = image_policy(&repo, &root, args.disable_selinux)?;
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
    let kver = tree::kernels(&root).remove(0);
    let (origin, transport_ref) = target_reference(args.target_imgref.as_deref(), &image.source, progress)?;
    let commit = ostree::commit(
        &repo,
        &root,
        layers,
        &ostree::CommitInfo { image, target_transport_ref: &transport_ref, filtered: &filtered, kernel: &kver },
    )?;
    stage.finish();

    let stage = progress.stage("deploy", None);
    let config = read_files(&repo, &root, &|p| kargs::wanted(p) || prepare_root::wanted(p))?;
    let install = kargs::install_config(&config, &platform.arch.kernel)?;
    let mut all_kargs = disk::kargs(plan);
    all_kargs.extend(install.kargs);
    all_kargs.extend(kargs::kargs_d(&config, &platform.arch.kernel)?);
    if args.disable_selinux {
        // As bootc's --disable-selinux: the installed system is told too.
        all_kargs.push("selinux=0".to_string());
    }
    all_kargs.extend(args.kargs.iter().cloned());
    // How the initramfs will mount the deployment; fs-verity on every object where required.
    let composefs = prepare_root::at_boot(&config, &all_kargs)?;
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
        &root,
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
    disk::write_mounts(plan, &dep.dir)?;
    stage.finish();
    Ok(Deployed { deployment: dep, policy, verity: object_verity.is_some() })
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
