//! `kiln bake` of images that boot on composefs: the sid test image (`[composefs] enabled =
//! yes` in its initramfs) baked by kiln carries, in its deployment, the `.ostree.cfs` sid's
//! ostree writes for the commit found on the disk, and boots with `/` on it; the same disk
//! without the file stops in the initramfs with ostree-prepare-root's composefs error; and a
//! `prepare-root.conf` kiln cannot honour is refused clearly, leaving nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::boot::{Boot, Firmware};
use common::{bake_fails, bake_raw as bake, kiln, run, sid, sid_image, tiny_image, Scratch};
use sha2::Digest;

/// The root partition (the last one) of a raw disk: (offset, size) in bytes.
fn root_partition(raw: &Path) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(raw))).unwrap();
    let p = v["partitiontable"]["partitions"].as_array().unwrap().last().unwrap().clone();
    (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512)
}

/// A loop device on a disk's root partition (the last one); detached on drop.
struct RootLoop(String);

impl RootLoop {
    fn new(raw: &Path, writable: bool) -> RootLoop {
        let (offset, size) = root_partition(raw);
        let mut losetup = Command::new("losetup");
        losetup.args(["--find", "--show", "--offset", &offset.to_string(), "--sizelimit", &size.to_string()]);
        if !writable {
            losetup.arg("--read-only");
        }
        RootLoop(run(losetup.arg(raw)).trim().to_string())
    }

    /// Runs a debugfs request on it; returns the output.
    fn debugfs(&self, request: &str) -> Vec<u8> {
        Command::new("debugfs").args(["-R", request, &self.0]).output().unwrap().stdout
    }

    fn debugfs_text(&self, request: &str) -> String {
        String::from_utf8_lossy(&self.debugfs(request)).into_owned()
    }
}

impl Drop for RootLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The disk's root filesystem mounted at `at`; unmounted on drop (before its loop device).
struct Mounted {
    at: PathBuf,
    _dev: RootLoop,
}

impl Mounted {
    fn new(raw: &Path, at: &Path, writable: bool) -> Mounted {
        let dev = RootLoop::new(raw, writable);
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("mount").args(["-t", "ext4", "-o", if writable { "rw" } else { "ro,noload" }, &dev.0]).arg(at));
        Mounted { at: at.to_path_buf(), _dev: dev }
    }

    /// The deployment directory `ostree/deploy/default/deploy/<commit>.0`.
    fn deployment(&self) -> PathBuf {
        let d = self.at.join("ostree/deploy/default/deploy");
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).expect("a deployment")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

fn sid_ref() -> String {
    format!("oci:{}:latest", sid_image().join("oci").display())
}

#[test]
fn sid_boots_with_its_root_on_the_deployments_composefs_image() {
    let s = Scratch::new("bake-composefs-sid");
    // ext4 under UEFI, SELinux on: the sid boot of tests/fedora.rs covers xfs under BIOS (a btrfs
    // root is written as an xfs one is, through the kernel: the bookworm btrfs boot covers it).
    let raw = bake(&s, &sid_ref(), &["--rootfs", "ext4", "--target-imgref", "quay.io/kiln/sid:latest"]);

    // sid's ostree, given the repository found on the disk, writes the same image.
    {
        let m = Mounted::new(&raw, &s.path().join("mnt"), false);
        let dep = m.deployment();
        let commit = dep.file_name().unwrap().to_string_lossy().trim_end_matches(".0").to_string();
        let cfs = dep.join(".ostree.cfs");
        let md = std::fs::metadata(&cfs).expect("the deployment has .ostree.cfs");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o7777, 0o644);
        let script = format!(
            "set -e; cd /tmp; ostree --repo={repo} checkout --composefs-noverity {commit} ref.cfs; \
             cmp ref.cfs {cfs} && echo SAME; echo MISSING:$(composefs-info missing-objects --basedir={repo}/objects {cfs} | wc -l)",
            repo = sid::host(&m.at.join("ostree/repo")),
            cfs = sid::host(&cfs),
        );
        let out = sid::run_ok(&script, &[&m.at]);
        assert!(out.contains("SAME\n") && out.contains("MISSING:0\n"), "on the baked disk:\n{out}");
    }

    let report = Boot::new(&raw, Firmware::Uefi, "bake-composefs-sid").run().unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    for check in ["composefs.root", "composefs.image", "selinux.restorecon", "selinux.no-unlabeled"] {
        assert!(report.checks.contains_key(check), "the probe did not check {check}:\n{report}");
    }
    report.assert_outcome(&[]);

    // The same disk without the image stops in the initramfs, as Fedora-family images did
    // before kiln wrote it.
    let broken = s.path().join("no-cfs.raw");
    run(Command::new("cp").arg("--sparse=always").arg(&raw).arg(&broken));
    {
        let m = Mounted::new(&broken, &s.path().join("mnt-rw"), true);
        let dep = m.deployment();
        run(Command::new("chattr").arg("-i").arg(&dep));
        std::fs::remove_file(dep.join(".ostree.cfs")).unwrap();
        run(Command::new("chattr").arg("+i").arg(&dep));
    }
    let console = Boot::new(&broken, Firmware::Uefi, "bake-composefs-sid-no-cfs")
        .until_console("Failed to mount composefs")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(console.contains("No such file or directory"), "the console shows another composefs error:\n{console}");
    common::assert_no_leftovers(s.path());
}

// ---- prepare-root.conf kiln cannot honour: a clear error, nothing left behind ----

#[test]
fn a_prepare_root_conf_kiln_cannot_honour_is_refused() {
    let s = Scratch::new("bake-composefs-unparsable");
    let img = tiny_image(&s, &[("usr/lib/ostree/prepare-root.conf", "[composefs]\nenabled = yes\nthis line is no key\n")]);
    bake_fails(&s, &img, &["--rootfs", "ext4"], &["/usr/lib/ostree/prepare-root.conf", "line 3"]);

    let s = Scratch::new("bake-composefs-bad-value");
    let img = tiny_image(&s, &[("etc/ostree/prepare-root.conf", "[composefs]\nenabled = sometimes\n")]);
    bake_fails(&s, &img, &["--rootfs", "ext4"], &["/etc/ostree/prepare-root.conf", "line 2", "sometimes"]);

    let s = Scratch::new("bake-composefs-signed");
    let img = tiny_image(&s, &[("usr/lib/ostree/prepare-root.conf", "[composefs]\nenabled = signed\n")]);
    bake_fails(&s, &img, &["--rootfs", "ext4"], &["prepare-root.conf:2", "signed", "cannot sign", "--karg ostree.prepare-root.composefs="]);

    let s = Scratch::new("bake-composefs-verity-xfs");
    let img = tiny_image(&s, &[("usr/lib/ostree/prepare-root.conf", "[composefs]\nenabled = verity\n")]);
    bake_fails(&s, &img, &["--rootfs", "xfs"], &["prepare-root.conf:2", "verity", "xfs", "--rootfs ext4"]);
}

/// A cpio archive (newc) holding one regular file, to append to an initramfs: the kernel
/// unpacks concatenated archives in order, so its file replaces the one before.
fn cpio_with(path: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |name: &str, mode: u32, data: &[u8]| {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            1, mode, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(4) * 4, 0);
    };
    entry(path, 0o100644, data);
    entry("TRAILER!!!", 0, b"");
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// The sid image with a layer that makes its composefs mode `verity`: `prepare-root.conf`
/// in the tree and in the initramfs (an archive appended to it, as the initramfs is what
/// ostree-prepare-root reads).
fn sid_with_verity(s: &Scratch) -> String {
    let base = sid_image().join("base");
    let kver = std::fs::read_dir(base.join("usr/lib/modules")).unwrap().next().unwrap().unwrap().file_name().into_string().unwrap();
    let conf = b"[composefs]\nenabled = verity\n[sysroot]\nreadonly = true\n";
    let mut initramfs = std::fs::read(base.join(format!("usr/lib/modules/{kver}/initramfs.img"))).unwrap();
    initramfs.resize(initramfs.len().div_ceil(512) * 512, 0);
    initramfs.extend(cpio_with("usr/lib/ostree/prepare-root.conf", conf));
    let tar = common::oci::RawTar::default()
        .entry(&format!("usr/lib/modules/{kver}/initramfs.img"), b'0', 0o644, "", &initramfs)
        .entry("usr/lib/ostree/prepare-root.conf", b'0', 0o644, "", conf)
        .finish();
    common::oci::append_layer(&sid_image().join("oci"), &s.path().join("layout-verity"), &common::oci::LayerBlob { tar, gzip: true })
}

#[test]
fn sid_with_verity_boots_with_every_object_verity_protected() {
    let s = Scratch::new("bake-composefs-verity");
    let image = sid_with_verity(&s);
    // Without labels, so that the reference commit below (unlabelled) is the same commit; and
    // so SELinux off at boot: sid's kernel ignores the `selinux=0` --disable-selinux adds, so
    // AppArmor is made the major LSM again.
    let raw = bake(&s, &image, &["--rootfs", "ext4", "--disable-selinux", "--karg", "security=apparmor", "--target-imgref", "quay.io/kiln/sid:verity"]);

    // The filesystem checker accepts the verity files kiln wrote without the kernel. (This
    // machine's kernel has no fs-verity and so refuses to open them: they are read with
    // debugfs.)
    let dev = RootLoop::new(&raw, false);
    let fsck = Command::new("e2fsck").args(["-fn", &dev.0]).output().unwrap();
    let features = dev.debugfs_text("features");
    let config = dev.debugfs_text("cat /ostree/repo/config");
    let deployment = dev.debugfs_text("ls -p /ostree/deploy/default/deploy").split('/').find(|f| f.ends_with(".0")).map(str::to_string);
    let cfs = s.path().join("kiln.cfs");
    if let Some(d) = &deployment {
        std::fs::write(&cfs, dev.debugfs(&format!("cat /ostree/deploy/default/deploy/{d}/.ostree.cfs"))).unwrap();
    }
    drop(dev);
    assert!(fsck.status.success(), "e2fsck -fn:\n{}{}", String::from_utf8_lossy(&fsck.stdout), String::from_utf8_lossy(&fsck.stderr));
    assert!(features.contains(" verity"), "{features}");
    assert!(config.contains("[ex-integrity]\nfsverity=true\n"), "{config}");
    let commit = deployment.expect("a deployment").trim_end_matches(".0").to_string();

    // sid's ostree, computing every object's digest itself from a repository kiln writes of
    // the same image, makes the same image, digests included.
    let sysroot = s.path().join("reference");
    let repo = kiln::ostree::Repo::create(&sysroot.join("ostree/repo"), "").unwrap();
    let image = kiln::image::Image::open(&image, &Default::default()).unwrap();
    let merged = kiln::tree::apply_layers(&image, &repo, &kiln::progress::Progress::quiet(), "layers").unwrap();
    let (root, filtered) = kiln::ostree::convert(merged.root).unwrap();
    let kver = kiln::tree::kernels(&root).remove(0);
    let info = kiln::ostree::CommitInfo { image: &image, target_transport_ref: "docker://quay.io/kiln/sid:verity", filtered: &filtered, kernel: &kver };
    let layers = merged.layers.into_iter().map(|l| kiln::ostree::commit::filter(l).unwrap().0).collect();
    let ours = kiln::ostree::commit(&repo, &root, layers, &info).unwrap();
    assert_eq!(kiln::ostree::object::hex(&ours), commit, "the same image gives the same commit");
    let script = format!(
        "set -e; cd /tmp; ostree --repo={repo} checkout --composefs {commit} ref.cfs; \
         cmp ref.cfs {cfs} && echo SAME; echo UNVERIFIED:$(composefs-info dump {cfs} | awk '$3 ~ /^100/ && $2 > 0 && $11 == \"-\"' | wc -l)",
        repo = sid::host(&sysroot.join("ostree/repo")),
        cfs = sid::host(&cfs),
    );
    let out = sid::run_ok(&script, &[&sysroot, &cfs]);
    assert!(out.contains("SAME\n") && out.contains("UNVERIFIED:0\n"), "sid's ostree disagrees with the baked disk:\n{out}");

    let report = Boot::new(&raw, Firmware::Uefi, "bake-composefs-verity").run().unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    for check in ["composefs.root", "composefs.image", "composefs.verity"] {
        assert!(report.checks.contains_key(check), "the probe did not check {check}:\n{report}");
    }
    report.assert_outcome(&[]);
    common::assert_no_leftovers(s.path());
}

/// The bookworm test image with a layer making its composefs mode verity (kiln does not
/// care that bookworm's ostree would not use it), baked on a mounted filesystem and staged
/// (`--seed`, mke2fs -d): e2fsck accepts the disk; this machine's kernel (no fs-verity) sees
/// the objects as verity files and refuses to open them; each one's last block holds its
/// fs-verity descriptor, which names its data size and whose digest is the digest of its
/// data; the image's metacopy digests are those. (That a kernel with fs-verity accepts them
/// is the boot test's part.)
#[test]
fn verity_files_are_written_on_ext4_mounted_and_staged() {
    let big = "0123456789abcdef".repeat(40_000);
    let tar = common::oci::RawTar::default()
        .file("usr/lib/ostree/prepare-root.conf", "[composefs]\nenabled = verity\n")
        .file("usr/share/kiln-verity/big", &big)
        .file("usr/share/kiln-verity/empty", "")
        .finish();
    for (name, extra) in [("mounted", &[][..]), ("staged", &["--seed", "kiln-verity"][..])] {
        let s = Scratch::new(&format!("bake-composefs-verity-{name}"));
        let img = common::oci::append_layer(&common::test_image().join("oci"), &s.path().join("layout"), &common::oci::LayerBlob { tar: tar.clone(), gzip: true });
        let mut args = vec!["--rootfs", "ext4"];
        args.extend_from_slice(extra);
        let raw = bake(&s, &img, &args);
        let m = Mounted::new(&raw, &s.path().join("mnt"), false);
        let mnt = m.at.clone();
        // A sample of the objects (debugfs takes a while per file): the largest, empty ones,
        // every 400th.
        let mut objects: Vec<(String, u64)> = Vec::new();
        for d in std::fs::read_dir(mnt.join("ostree/repo/objects")).unwrap() {
            for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                let md = std::fs::symlink_metadata(&p).unwrap();
                if md.is_file() && p.extension().is_some_and(|e| e == "file") {
                    objects.push((format!("/{}", p.strip_prefix(&mnt).unwrap().display()), md.len()));
                }
            }
        }
        objects.sort();
        let largest = objects.iter().max_by_key(|(_, size)| *size).unwrap().clone();
        let mut files: Vec<(String, u64)> = objects.iter().step_by(400).cloned().collect();
        files.extend(objects.iter().filter(|(_, size)| *size == 0).take(2).cloned());
        files.push(largest);
        let deployment = std::fs::read_dir(mnt.join("ostree/deploy/default/deploy")).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
        let cfs = format!("/{}", deployment.join(".ostree.cfs").strip_prefix(&mnt).unwrap().display());
        files.push((cfs.clone(), std::fs::metadata(mnt.join(&cfs[1..])).unwrap().len()));
        files.push(("/ostree/repo/config".into(), std::fs::metadata(mnt.join("ostree/repo/config")).unwrap().len()));
        let refused = std::fs::read(mnt.join(&files[0].0[1..])).unwrap_err();
        drop(m);
        let dev = RootLoop::new(&raw, false);
        let fsck = Command::new("e2fsck").args(["-fn", &dev.0]).output().unwrap();
        assert!(fsck.status.success(), "{name}: e2fsck -fn:\n{}{}", String::from_utf8_lossy(&fsck.stdout), String::from_utf8_lossy(&fsck.stderr));
        assert!(dev.debugfs_text("features").contains(" verity"), "{name}: no verity feature");
        assert!(files.iter().any(|(_, size)| *size >= 640_000) && files.iter().any(|(_, size)| *size == 0), "{name}: {files:?}");
        assert_eq!(refused.raw_os_error(), Some(libc::EOPNOTSUPP), "{name}: this kernel does not see a verity file");

        let mut part = std::fs::File::open(&dev.0).unwrap();
        let mut digests = std::collections::BTreeMap::new();
        for (path, size) in &files {
            let stat = dev.debugfs_text(&format!("stat \"{path}\""));
            assert!(stat.contains("Flags: 0x180000"), "{name}: {path} is not an extents verity file:\n{stat}");
            // The last block: the descriptor at its start, its size in its last 4 bytes.
            let blocks = dev.debugfs_text(&format!("blocks \"{path}\""));
            let last: u64 = blocks.split_whitespace().last().unwrap().parse().unwrap();
            let mut block = vec![0u8; 4096];
            std::io::Seek::seek(&mut part, std::io::SeekFrom::Start(last * 4096)).unwrap();
            std::io::Read::read_exact(&mut part, &mut block).unwrap();
            assert_eq!(block[4092..], 256u32.to_le_bytes(), "{name}: {path}: the descriptor size");
            assert_eq!(block[..4], [1, 1, 12, 0], "{name}: {path}: version, SHA-256, 4 KiB blocks, no salt");
            assert_eq!(block[8..16], size.to_le_bytes(), "{name}: {path}: the data size");
            let data = dev.debugfs(&format!("cat \"{path}\""));
            assert_eq!(data.len() as u64, *size, "{name}: {path}");
            let digest = kiln::fsverity::digest(&data);
            assert_eq!(<[u8; 32]>::from(sha2::Sha256::digest(&block[..256])), digest, "{name}: {path}: the descriptor's digest");
            digests.insert(path.clone(), hex::encode(digest));
        }
        // The image redirects to each object with that digest.
        let image = dev.debugfs(&format!("cat \"{cfs}\""));
        drop(part);
        drop(dev);
        let image_path = s.path().join("image.cfs");
        std::fs::write(&image_path, image).unwrap();
        let dump = sid::run_ok(&format!("composefs-info dump {}", sid::host(&image_path)), &[&image_path]);
        let mut checked = 0;
        for line in dump.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f[8] != "-" && f[2].starts_with("100") {
                assert_ne!(f[10], "-", "{name}: an object without its digest: {line}");
                if let Some(d) = digests.get(&format!("/ostree/repo/objects/{}", f[8])) {
                    assert_eq!(f[10], d, "{name}: {line}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "{name}: only {checked} sampled objects in the image");
        common::assert_no_leftovers(s.path());
    }
}

/// Whether this machine's kernel can enable fs-verity (its config says so).
fn kernel_has_fs_verity() -> bool {
    let Ok(f) = std::fs::File::open("/proc/config.gz") else { return false };
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(f), &mut text);
    text.lines().any(|l| l == "CONFIG_FS_VERITY=y")
}

/// btrfs keeps fs-verity in its trees, which only its kernel driver writes: where this
/// machine's kernel cannot, an image that needs it is refused with the remedy.
#[test]
fn verity_on_btrfs_needs_a_kernel_with_fs_verity() {
    let s = Scratch::new("bake-composefs-verity-btrfs");
    let img = tiny_image(&s, &[("usr/lib/ostree/prepare-root.conf", "[composefs]\nenabled = verity\n")]);
    if kernel_has_fs_verity() {
        // The kernel writes it; a read-only mount shows every object measured.
        let raw = bake(&s, &img, &["--rootfs", "btrfs"]);
        let (offset, size) = root_partition(&raw);
        let mnt = s.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        run(Command::new("mount").args(["-t", "btrfs", "-o", &format!("ro,loop,offset={offset},sizelimit={size}")]).arg(&raw).arg(&mnt));
        let unmeasured = Command::new("sh").arg("-c").arg(format!("find {}/ostree/repo/objects -name '*.file' -type f -exec fsverity measure {{}} + 2>&1 >/dev/null", mnt.display())).output().unwrap();
        let _ = Command::new("umount").arg(&mnt).status();
        assert!(unmeasured.status.success() && unmeasured.stdout.is_empty(), "{}", String::from_utf8_lossy(&unmeasured.stdout));
    } else {
        bake_fails(&s, &img, &["--rootfs", "btrfs"], &["prepare-root.conf:2", "verity", "CONFIG_FS_VERITY", "--rootfs ext4"]);
    }
}

/// `kiln image inspect` says which composefs mode the image boots with, and where that comes
/// from, or why its configuration cannot be read.
#[test]
fn inspect_reports_the_composefs_mode() {
    let inspect = |reference: &str| {
        let o = kiln(&["image", "inspect", reference]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = inspect(&sid_ref());
    assert!(out.contains("Composefs:    yes (/usr/lib/ostree/prepare-root.conf:2)"), "{out}");

    let s = Scratch::new("inspect-composefs");
    let img = tiny_image(&s, &[("usr/lib/ostree/prepare-root.conf", "[composefs]\nenabled = yes\n"), ("etc/ostree/prepare-root.conf", "[composefs]\n\nenabled = verity\n")]);
    let out = inspect(&img);
    assert!(out.contains("Composefs:    verity (/etc/ostree/prepare-root.conf:3)"), "{out}");
    let s = Scratch::new("inspect-composefs-bad");
    let img = tiny_image(&s, &[("usr/lib/ostree/prepare-root.conf", "[composefs]\nenabled: yes\n")]);
    let out = inspect(&img);
    assert!(out.contains("Composefs:    unreadable:") && out.contains("line 2"), "{out}");
    let s = Scratch::new("inspect-composefs-none");
    let out = inspect(&tiny_image(&s, &[]));
    assert!(out.contains("Composefs:    no (no [composefs] enabled"), "{out}");
}
