//! The deployment: what `ostree admin deploy` (driven by `bootc install`) writes into a
//! sysroot for a first deployment, written directly (ostree-sysroot-deploy.c is the reference).
//!
//! ```text
//! ostree/deploy/<stateroot>/deploy/<commit>.0        checkout, hardlinked to the repo
//! ostree/deploy/<stateroot>/deploy/<commit>.0.origin container-image-reference=…
//! ostree/deploy/<stateroot>/var                      the image's /var, copied once
//! ostree/boot.1 -> boot.1.1, boot.1.1/<stateroot>/<bootcsum>/0 -> the deployment
//! boot/ostree/<stateroot>-<bootcsum>/{vmlinuz,initramfs}-<kver> (+ devicetree-<kver> or dtb/)
//! boot/loader -> loader.1, boot/loader.1/entries/ostree-1.conf, boot/boot -> .
//! ```
//! (A first deployment gets boot version 1 and sub-boot version 1: ostree flips both from 0.)

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::object::{hex, Checksum, Kind, S_IFDIR, S_IFLNK, S_IFREG};
use super::repo::Repo;
use super::selabel::Runtime;
use crate::fsmeta;
use crate::tree::{Dir, Meta, Node};

const BOOT_VERSION: u32 = 1;
const SUBBOOT_VERSION: u32 = 1;

pub struct DeployOptions<'a> {
    pub stateroot: &'a str,
    /// The origin's `container-image-reference` (`ostree-unverified-registry:…`).
    pub origin: &'a str,
    /// Every kernel argument, in order; `ostree=` is appended.
    pub kargs: &'a [String],
    /// The commit's `version`, shown in the boot entry's title.
    pub version: Option<&'a str>,
    /// The image reference recorded in `/.bootc-aleph.json`.
    pub image: &'a str,
    /// The image's SELinux labels, when it has a policy: `/etc` and `/var` get them by their
    /// runtime paths.
    pub labels: Option<Runtime<'a>>,
    /// What `/.bootc-aleph.json` says of SELinux, in bootc's words (`enabled`, `disabled`,
    /// `force-target-disabled`).
    pub selinux_state: &'a str,
    /// The objects' fs-verity digests, carried in `.ostree.cfs` (when they have fs-verity).
    pub object_verity: Option<&'a super::composefs::ObjectVerity>,
}

/// A written deployment.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The checked-out tree.
    pub dir: PathBuf,
    /// The stateroot's `/var`.
    pub var: PathBuf,
    pub kver: String,
    pub bootcsum: String,
    pub entry: BootEntry,
}

/// The BLS entry ostree writes (`loader.1/entries/ostree-1.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub path: PathBuf,
    pub title: String,
    pub version: String,
    pub options: String,
    pub linux: String,
    pub initrd: String,
    /// `devicetree <file>` or `fdtdir <directory>`, when the kernel ships device trees.
    pub devicetree: Option<(&'static str, String)>,
}

impl BootEntry {
    /// The file's text, fields in ostree's order.
    pub fn render(&self) -> String {
        let mut text = format!(
            "title {}\nversion {}\noptions {}\nlinux {}\ninitrd {}\n",
            self.title, self.version, self.options, self.linux, self.initrd
        );
        if let Some((key, path)) = &self.devicetree {
            text += &format!("{key} {path}\n");
        }
        text
    }
}

/// The kernel's device trees, as ostree deploys them: `usr/lib/modules/<kver>/devicetree` (one
/// file, the BLS entry's `devicetree`), else its `dtb/` directory (copied whole, `fdtdir`, for
/// bootloaders that pick a tree by the machine, as U-Boot does).
enum DeviceTrees {
    File(PathBuf),
    Dir(PathBuf),
}

impl DeviceTrees {
    fn find(modules: &Path) -> Option<DeviceTrees> {
        let file = modules.join("devicetree");
        let dir = modules.join("dtb");
        if file.is_file() {
            Some(DeviceTrees::File(file))
        } else if dir.is_dir() {
            Some(DeviceTrees::Dir(dir))
        } else {
            None
        }
    }

    /// Adds the trees to the boot checksum: the file, or every file below the directory,
    /// entries in byte order (ostree's checksum_dir_recurse).
    fn hash(&self, h: &mut Sha256) -> Result<()> {
        fn dir(d: &Path, h: &mut Sha256) -> Result<()> {
            let mut names: Vec<_> = fs::read_dir(d)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                let p = d.join(&name);
                if fs::symlink_metadata(&p)?.is_dir() {
                    dir(&p, h)?;
                } else if let Ok(mut f) = fs::File::open(&p) {
                    std::io::copy(&mut f, h)?;
                }
            }
            Ok(())
        }
        match self {
            DeviceTrees::File(f) => std::io::copy(&mut fs::File::open(f)?, h).map(|_| ()).map_err(Into::into),
            DeviceTrees::Dir(d) => dir(d, h),
        }
    }

    /// Copies the trees into the boot directory; returns the BLS key and the name there.
    fn install(&self, bootdir: &Path, kver: &str) -> Result<(&'static str, String)> {
        match self {
            DeviceTrees::File(f) => {
                let name = format!("devicetree-{kver}");
                copy_file(f, &bootdir.join(&name))?;
                Ok(("devicetree", name))
            }
            DeviceTrees::Dir(d) => {
                copy_dir(d, &bootdir.join("dtb"))?;
                Ok(("fdtdir", "dtb".to_string()))
            }
        }
    }
}

/// Writes the deployment of `commit` (whose tree is `root`, already converted) into the
/// sysroot at `sysroot` (its `/boot` may be another filesystem mounted at `sysroot/boot`).
/// The tree is consumed by the deployment's composefs image, its last use.
pub fn deploy(sysroot: &Path, repo: &Repo, commit: &Checksum, root: Dir, opts: &DeployOptions) -> Result<Deployment> {
    let stateroot_dir = sysroot.join("ostree/deploy").join(opts.stateroot);
    if stateroot_dir.exists() {
        bail!(
            "{} already holds a deployment of stateroot {:?}: install into an empty filesystem or choose another --stateroot",
            sysroot.display(),
            opts.stateroot
        );
    }
    let deploy_root = stateroot_dir.join("deploy");
    fs::create_dir_all(&deploy_root)?;
    fs::create_dir_all(stateroot_dir.join("var"))?;
    let name = format!("{}.0", hex(commit));
    let dir = deploy_root.join(&name);

    // The checkout: every file a hardlink to its object.
    fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_tree(repo, &root, &dir, Place::Link, &mut Vec::new())?;
    fsmeta::set_path(&dir, &root.meta, false, Some(0))?;

    // /etc: a copy of /usr/etc that the admin may edit; /var: the stateroot's starts as a copy
    // of the image's. Both labelled by their paths on the running system, as ostree does.
    let state_var = stateroot_dir.join("var");
    for (from, to, runtime) in [("usr/etc", dir.join("etc"), "/etc"), ("var", state_var.clone(), "/var")] {
        let Some(Node::Dir(tree)) = root.get_path(from) else { continue };
        if !to.exists() {
            fs::create_dir(&to)?;
        }
        write_tree(repo, tree, &to, Place::Copy(opts.labels), &mut runtime.as_bytes().to_vec())?;
        fsmeta::set_path(&to, &place_meta(&opts.labels, runtime.as_bytes(), S_IFDIR, &tree.meta), false, Some(0))?;
    }
    if let Some(labels) = opts.labels {
        // ostree's mark that /var was labelled (else a later deploy relabels it all).
        let stamp = state_var.join(".ostree-selabeled");
        write_file(&stamp, b"")?;
        if let Some(v) = labels.value(b"/var/.ostree-selabeled", S_IFREG | 0o644) {
            super::selabel::set(&stamp, &v)?;
        }
    }
    write_file(&deploy_root.join(format!("{name}.origin")), format!("[origin]\ncontainer-image-reference={}\n", opts.origin).as_bytes())?;

    // The kernel and initramfs, under the boot checksum ostree computes: sha256 over the
    // kernel's bytes, then the initramfs's.
    let kver = crate::tree::kernels(&root).into_iter().next().context("the tree has no kernel")?;
    let modules = format!("usr/lib/modules/{kver}");
    let kernel = dir.join(&modules).join("vmlinuz");
    let initramfs = ["initramfs.img", "initramfs"].iter().map(|n| dir.join(&modules).join(n)).find(|p| p.is_file());
    let device_trees = DeviceTrees::find(&dir.join(&modules));
    let mut h = Sha256::new();
    for f in std::iter::once(&kernel).chain(initramfs.as_ref()) {
        std::io::copy(&mut fs::File::open(f)?, &mut h)?;
    }
    if let Some(trees) = &device_trees {
        trees.hash(&mut h)?;
    }
    let bootcsum = hex::encode(h.finalize());
    let boot = sysroot.join("boot");
    let bootdir_name = format!("ostree/{}-{bootcsum}", opts.stateroot);
    let bootdir = boot.join(&bootdir_name);
    fs::create_dir_all(&bootdir)?;
    copy_file(&kernel, &bootdir.join(format!("vmlinuz-{kver}")))?;
    if let Some(i) = &initramfs {
        copy_file(i, &bootdir.join(format!("initramfs-{kver}.img")))?;
    }
    let devicetree = match &device_trees {
        Some(trees) => {
            let (key, name) = trees.install(&bootdir, &kver)?;
            Some((key, format!("/boot/{bootdir_name}/{name}")))
        }
        None => None,
    };

    // The bootlinks prepare-root follows from the `ostree=` argument.
    let ostree = sysroot.join("ostree");
    let subboot = format!("boot.{BOOT_VERSION}.{SUBBOOT_VERSION}");
    let link_dir = ostree.join(&subboot).join(opts.stateroot).join(&bootcsum);
    fs::create_dir_all(&link_dir)?;
    symlink(format!("../../../deploy/{}/deploy/{name}", opts.stateroot), link_dir.join("0"))?;
    symlink(&subboot, ostree.join(format!("boot.{BOOT_VERSION}")))?;
    repo.set_ref(&format!("ostree/{BOOT_VERSION}/{SUBBOOT_VERSION}/0"), commit)?;

    // The boot loader entry (bootprefix=true: paths start with /boot, which the `boot -> .`
    // link makes valid on a separate boot partition too).
    let pretty = os_release_name(&dir).unwrap_or_else(|| "ostree".to_string());
    let mut title = pretty.clone();
    if let Some(v) = opts.version.filter(|v| !v.is_empty() && !pretty.contains(*v)) {
        title = format!("{title} {v}");
    }
    let mut options: Vec<String> = opts.kargs.iter().filter(|k| !k.starts_with("ostree=")).cloned().collect();
    options.push(format!("ostree=/ostree/boot.{BOOT_VERSION}/{}/{bootcsum}/0", opts.stateroot));
    let entries = boot.join(format!("loader.{BOOT_VERSION}/entries"));
    fs::create_dir_all(&entries)?;
    let entry = BootEntry {
        path: entries.join("ostree-1.conf"),
        title: format!("{title} (ostree:0)"),
        version: "1".to_string(),
        options: options.join(" "),
        linux: format!("/boot/{bootdir_name}/vmlinuz-{kver}"),
        initrd: format!("/boot/{bootdir_name}/initramfs-{kver}.img"),
        devicetree,
    };
    write_file(&entry.path, entry.render().as_bytes())?;
    symlink(format!("loader.{BOOT_VERSION}"), boot.join("loader"))?;
    if fs::symlink_metadata(boot.join("boot")).is_err() {
        symlink(".", boot.join("boot"))?;
    }

    let aleph = serde_json::json!({
        "image": opts.image,
        "version": opts.version,
        "timestamp": serde_json::Value::Null,
        "kernel": kver,
        "selinux": opts.selinux_state,
    });
    write_file(&sysroot.join(".bootc-aleph.json"), serde_json::to_string(&aleph)?.as_bytes())?;
    // What ostree ≥ 2025.1 writes into every deployment, and prepare-root mounts as / when
    // the initramfs enables composefs.
    super::composefs::write_image(&dir, root, opts.object_verity)?;
    if let Some(v) = opts.labels.and_then(|l| l.value(b"/usr", S_IFREG | 0o644)) {
        // As bootc labels it: like /usr.
        super::selabel::set(&dir.join(super::composefs::IMAGE_NAME), &v)?;
    }
    // ostree makes a deployment's root immutable, so that nothing but ostree adds or removes
    // entries at the top of the booted system.
    set_immutable(&dir, true)?;
    Ok(Deployment { dir, var: state_var, kver, bootcsum, entry })
}

const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

/// Sets or clears a directory's immutable attribute (`chattr +i`).
pub fn set_immutable(dir: &Path, on: bool) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let f = fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let mut flags: libc::c_long = 0;
    unsafe {
        if libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("reading the attributes of {}", dir.display()));
        }
        flags = if on { flags | FS_IMMUTABLE_FL } else { flags & !FS_IMMUTABLE_FL };
        if libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS, &flags) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("making {} immutable", dir.display()));
        }
    }
    Ok(())
}

/// How a tree's files land in the sysroot.
#[derive(Clone, Copy)]
enum Place<'a> {
    /// Hardlinks to their repository objects: the deployment's read-only checkout.
    Link,
    /// New files with the objects' bytes: /etc and /var, which the running system changes;
    /// relabelled (when the image has a policy) for where they are on the running system.
    Copy(Option<Runtime<'a>>),
}

/// `meta` as a copy at runtime path `path` carries it: relabelled when there are labels.
fn place_meta(labels: &Option<Runtime>, path: &[u8], ftype: u32, meta: &Meta) -> Meta {
    match labels {
        Some(l) => l.meta(path, ftype, meta),
        None => meta.clone(),
    }
}

/// Writes `dir` into `dest` (existing), directories with their metadata and, like ostree's
/// checkouts, every mtime 0. `path` is `dest`'s path on the running system (for labels).
fn write_tree(repo: &Repo, dir: &Dir, dest: &Path, place: Place, path: &mut Vec<u8>) -> Result<()> {
    for (name, node) in &dir.entries {
        let p = dest.join(std::ffi::OsStr::from_bytes(name));
        let len = path.len();
        path.push(b'/');
        path.extend_from_slice(name);
        match (node, place) {
            (Node::Dir(d), _) => {
                fs::create_dir(&p).with_context(|| format!("cannot create {}", p.display()))?;
                write_tree(repo, d, &p, place, path)?;
                let meta = match place {
                    Place::Copy(labels) => place_meta(&labels, path, S_IFDIR, &d.meta),
                    Place::Link => d.meta.clone(),
                };
                fsmeta::set_path(&p, &meta, false, Some(0))?;
            }
            (Node::File(f), Place::Link) => link(&repo.object_path(&f.content, Kind::File), &p)?,
            (Node::Symlink(s), Place::Link) => {
                let target = std::str::from_utf8(&s.target)?;
                link(&repo.object_path(&repo.write_symlink(&s.meta, target)?, Kind::File), &p)?
            }
            (Node::File(f), Place::Copy(labels)) => {
                let mut out = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p)
                    .with_context(|| format!("cannot create {}", p.display()))?;
                std::io::copy(&mut fs::File::open(repo.object_path(&f.content, Kind::File))?, &mut out)
                    .with_context(|| format!("writing {}", p.display()))?;
                fsmeta::set_fd(&out, &place_meta(&labels, path, S_IFREG, &f.meta), Some(0))?;
            }
            (Node::Symlink(s), Place::Copy(labels)) => {
                symlink(std::ffi::OsStr::from_bytes(&s.target), &p)?;
                let meta = Meta { mode: 0o777, ..place_meta(&labels, path, S_IFLNK, &s.meta) };
                fsmeta::set_path(&p, &meta, true, Some(0))?;
            }
        }
        path.truncate(len);
    }
    Ok(())
}

fn link(object: &Path, at: &Path) -> Result<()> {
    fs::hard_link(object, at).with_context(|| format!("cannot link {} to {}", at.display(), object.display()))
}

/// Copies a file keeping its mode (as ostree copies the kernel into /boot).
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Copies a directory tree as ostree copies device trees: directories and files with their
/// modes, symlinks as symlinks.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let entry = entry?;
        let (src, dest) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&src, &dest)?;
        } else if kind.is_symlink() {
            symlink(fs::read_link(&src)?, &dest)?;
        } else if kind.is_file() {
            copy_file(&src, &dest)?;
        }
    }
    fs::set_permissions(to, fs::Permissions::from_mode(fs::metadata(from)?.permissions().mode()))?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// PRETTY_NAME from the deployment's os-release.
fn os_release_name(deployment: &Path) -> Option<String> {
    os_release(deployment, "PRETTY_NAME")
}

/// A field of the deployment's os-release (`ID`, `PRETTY_NAME`…).
pub fn os_release(deployment: &Path, key: &str) -> Option<String> {
    let text = ["usr/lib/os-release", "etc/os-release"].iter().find_map(|p| fs::read_to_string(deployment.join(p)).ok())?;
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}
