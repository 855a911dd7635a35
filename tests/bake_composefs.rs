//! `kiln bake` of images that boot on composefs: the sid test image (`[composefs] enabled =
//! yes` in its initramfs) baked by kiln carries, in its deployment, the `.ostree.cfs` sid's
//! ostree writes for the commit found on the disk, and boots with `/` on it; the same disk
//! without the file stops in the initramfs with ostree-prepare-root's composefs error; and a
//! `prepare-root.conf` kiln cannot honour is refused clearly, leaving nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::boot::{Boot, Firmware};
use common::{bake_fails, kiln, run, sid, sid_image, tiny_image, Scratch};

/// Bakes `image` into `<scratch>/out`; returns the raw disk.
fn bake(s: &Scratch, image: &str, extra: &[&str]) -> PathBuf {
    let out = s.path().join("out");
    let mut args = vec!["bake", "--type", "raw", "--output", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(image);
    let o = kiln(&args);
    assert!(o.status.success(), "kiln bake failed:\n{}", String::from_utf8_lossy(&o.stderr));
    out.join("image/disk.raw")
}

/// The root partition (the last one) of a raw disk: (offset, size) in bytes.
fn root_partition(raw: &Path) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(raw))).unwrap();
    let p = v["partitiontable"]["partitions"].as_array().unwrap().last().unwrap().clone();
    (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512)
}

/// The disk's root filesystem mounted at `at` through a loop device of its own; undone on drop.
struct Mounted {
    dev: String,
    at: PathBuf,
}

impl Mounted {
    fn new(raw: &Path, at: &Path, writable: bool) -> Mounted {
        let (offset, size) = root_partition(raw);
        let mut losetup = Command::new("losetup");
        losetup.args(["--find", "--show", "--offset", &offset.to_string(), "--sizelimit", &size.to_string()]);
        if !writable {
            losetup.arg("--read-only");
        }
        let dev = run(losetup.arg(raw)).trim().to_string();
        std::fs::create_dir_all(at).unwrap();
        let opts = if writable { "rw" } else { "ro,noload" };
        let m = Mounted { dev, at: at.to_path_buf() };
        run(Command::new("mount").args(["-t", "ext4", "-o", opts, &m.dev]).arg(at));
        m
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
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn sid_ref() -> String {
    format!("oci:{}:latest", sid_image().join("oci").display())
}

#[test]
fn sid_boots_with_its_root_on_the_deployments_composefs_image() {
    let s = Scratch::new("bake-composefs-sid");
    // SELinux labels are not written yet: boot with SELinux off.
    let raw = bake(&s, &sid_ref(), &["--rootfs", "ext4", "--karg", "selinux=0", "--target-imgref", "quay.io/kiln/sid:latest"]);

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
    for check in ["composefs.root", "composefs.image"] {
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
    common::oci::add_layer(&sid_image().join("oci"), &s.path().join("layout-verity"), &tar)
}

#[test]
fn sid_with_verity_boots_with_every_object_verity_protected() {
    let s = Scratch::new("bake-composefs-verity");
    let image = sid_with_verity(&s);
    let raw = bake(&s, &image, &["--rootfs", "ext4", "--karg", "selinux=0", "--target-imgref", "quay.io/kiln/sid:verity"]);

    // The filesystem checker accepts the verity files kiln wrote without the kernel. (This
    // machine's kernel has no fs-verity and so refuses to open them: they are read with
    // debugfs.)
    let (offset, size) = root_partition(&raw);
    let dev = run(Command::new("losetup").args(["--find", "--show", "--read-only", "--offset", &offset.to_string(), "--sizelimit", &size.to_string()]).arg(&raw));
    let dev = dev.trim().to_string();
    let debugfs = |cmd: &str| String::from_utf8_lossy(&Command::new("debugfs").args(["-R", cmd, &dev]).output().unwrap().stdout).into_owned();
    let fsck = Command::new("e2fsck").args(["-fn", &dev]).output().unwrap();
    let features = debugfs("features");
    let config = debugfs("cat /ostree/repo/config");
    let deployment = debugfs("ls -p /ostree/deploy/default/deploy").split('/').find(|f| f.ends_with(".0")).map(str::to_string);
    let cfs = s.path().join("kiln.cfs");
    if let Some(d) = &deployment {
        debugfs(&format!("dump /ostree/deploy/default/deploy/{d}/.ostree.cfs {}", cfs.display()));
    }
    let _ = Command::new("losetup").args(["-d", &dev]).status();
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
    let ours = kiln::ostree::commit(&repo, &root, merged.layers, &info).unwrap();
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
