//! The Fedora-shaped image (the sid test image: composefs enabled in its initramfs, SELinux
//! policy installed) baked by kiln, checked with Debian sid's own tools run in the sid root:
//! `setfiles` finds nothing to relabel, `ostree commit --selinux-policy` gives the same tree
//! checksums as kiln's labelled commit, and the disk boots with SELinux on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::boot::{Boot, Firmware};
use common::{bake_fails, run, sid, sid_image, tiny_image, Scratch};

fn sid_ref() -> String {
    format!("oci:{}:latest", sid_image().join("oci").display())
}

/// Bakes the sid image into `<scratch>/out`; returns the raw disk.
fn bake(s: &Scratch, extra: &[&str]) -> PathBuf {
    let mut args = vec!["--target-imgref", "quay.io/kiln/test-sid:latest"];
    args.extend_from_slice(extra);
    common::bake_raw(s, &sid_ref(), &args)
}

/// A partition of a raw disk mounted read-only; unmounted and detached when dropped.
struct Mounted {
    dir: PathBuf,
    dev: String,
}

impl Mounted {
    fn new(raw: &Path, number: usize, at: &Path) -> Mounted {
        let v: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(raw))).unwrap();
        let p = &v["partitiontable"]["partitions"][number - 1];
        let (start, size) = (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512);
        let dev = run(Command::new("losetup")
            .args(["--find", "--show", "--read-only", "--offset", &start.to_string(), "--sizelimit", &size.to_string()])
            .arg(raw))
        .trim()
        .to_string();
        std::fs::create_dir_all(at).unwrap();
        let m = Mounted { dir: at.to_path_buf(), dev };
        run(Command::new("mount").args(["-o", "ro"]).arg(&m.dev).arg(at));
        m
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// The one deployment under a mounted root: (deployment dir, stateroot dir).
fn deployment(root: &Path) -> (PathBuf, PathBuf) {
    let stateroot = root.join("ostree/deploy/default");
    let dep = std::fs::read_dir(stateroot.join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a deployment");
    (dep, stateroot)
}

/// `setfiles -n -v` with the image's own policy over `target`, paths taken relative to `alt_root`
/// (`-r`), `exclude`d directories skipped; returns what it would relabel.
fn setfiles(deploy: &Path, alt_root: &Path, target: &Path, exclude: &[PathBuf], binds: &[&Path]) -> Vec<String> {
    let fc = deploy.join("etc/selinux/default/contexts/files/file_contexts");
    let policy = std::fs::read_dir(deploy.join("etc/selinux/default/policy")).unwrap().next().unwrap().unwrap().path();
    let mut script = format!(
        "setfiles -n -v -F -m -c {} -r {} {} {}",
        sid::host(&policy),
        sid::host(alt_root),
        sid::host(&fc),
        sid::host(target)
    );
    for e in exclude {
        script += &format!(" -e {}", sid::host(e));
    }
    let out = sid::run(&script, binds);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "setfiles failed:\n{text}");
    text.lines().filter(|l| l.contains("relabel")).map(str::to_string).collect()
}

/// Every label kiln wrote is the one `setfiles` (libselinux 3.11, the image's `file_contexts`)
/// would give: the deployment by its paths (`/usr/...`, `/usr/etc/...` as committed, `/etc/...`
/// as copied), the stateroot's `/var`, and the rest of the physical root and `/boot`.
#[test]
fn setfiles_finds_nothing_to_relabel() {
    let s = Scratch::new("fedora-setfiles");
    let raw = &bake(&s, &["--rootfs", "ext4"]);
    let root = Mounted::new(raw, 4, &s.path().join("root"));
    let boot = Mounted::new(raw, 3, &root.dir.join("boot"));
    let (dep, stateroot) = deployment(&root.dir);
    let binds: [&Path; 1] = [&root.dir];
    let _ = &boot;
    let mut wrong = setfiles(&dep, &dep, &dep, &[], &binds);
    wrong.extend(setfiles(&dep, &stateroot, &stateroot.join("var"), &[], &binds));
    // The physical root: everything but the deployment, /var and the content objects (labelled
    // by their commit paths, checked through the deployment's hardlinks above).
    let exclude = [dep.clone(), stateroot.join("var"), root.dir.join("ostree/repo/objects")];
    wrong.extend(setfiles(&dep, &root.dir, &root.dir, &exclude, &binds));
    // Two labels differ from the policy on purpose: ostree looks `/proc` up as `/mnt` (its
    // ostree_sepolicy_get_label), and bootc labels the physical `/ostree` as `/usr`.
    let deliberate = [format!("{}/proc from ", sid::host(&dep)), format!("{} from ", sid::host(&root.dir.join("ostree")))];
    wrong.retain(|l| !deliberate.iter().any(|d| l.starts_with(&format!("Would relabel {d}"))));
    assert!(wrong.is_empty(), "setfiles would relabel {} entries:\n{}", wrong.len(), wrong.iter().take(40).cloned().collect::<Vec<_>>().join("\n"));
}

/// The root dirtree and dirmeta checksums of a commit, as sid's ostree reports them.
fn root_checksums(repo: &Path, rev: &str, binds: &[&Path]) -> (String, String) {
    let out = sid::run_ok(&format!("ostree --repo={} ls -d -C {rev} /", sid::host(repo)), binds);
    let w: Vec<&str> = out.split_whitespace().collect();
    (w[4].to_string(), w[5].to_string())
}

/// For the same tree and policy, kiln's labelled commit has the checksums `ostree commit
/// --selinux-policy` computes (labels are part of every object's checksum).
#[test]
fn labelled_commit_equals_ostree_commit_with_the_policy() {
    let s = Scratch::new("fedora-commit");
    let raw = &bake(&s, &["--rootfs", "ext4"]);
    let root = Mounted::new(raw, 4, &s.path().join("root"));
    let repo = root.dir.join("ostree/repo");
    let refs = run(Command::new("ostree").arg(format!("--repo={}", repo.display())).arg("refs"));
    let image_ref = refs.lines().find(|r| r.starts_with("ostree/container/image/")).expect("the image ref").to_string();

    // The image's tree as ostree-ext commits it: umoci's unpack, /etc moved to /usr/etc.
    let tree = s.path().join("tree");
    let gz = format!("{}:latest", sid_image().join("oci-gzip").display());
    run(Command::new("umoci").args(["raw", "unpack", "--image", &gz]).arg(&tree));
    std::fs::rename(tree.join("etc"), tree.join("usr/etc")).unwrap();
    // ostree-ext keeps the API filesystems' directories, not what the image has in them.
    for api in ["run", "tmp", "proc", "sys", "dev"] {
        for e in std::fs::read_dir(tree.join(api)).unwrap() {
            let p = e.unwrap().path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
    let theirs = s.path().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    let binds: [&Path; 3] = [&root.dir, &tree, &theirs];
    sid::run_ok(
        &format!(
            "ostree --repo={r} init --mode=bare && ostree --repo={r} commit -b t --no-bindings --selinux-policy={t} --tree=dir={t}",
            r = sid::host(&theirs),
            t = sid::host(&tree)
        ),
        &binds,
    );
    let ours = root_checksums(&repo, &image_ref, &binds);
    let theirs = root_checksums(&theirs, "t", &binds);
    assert_eq!(ours, theirs, "kiln's labelled commit (tree, meta) differs from ostree commit --selinux-policy's");
}

/// `--disable-selinux` (bootc's option): no labels anywhere, `selinux=0` on the command line,
/// and the aleph says so.
#[test]
fn disable_selinux_leaves_labels_off() {
    let s = Scratch::new("fedora-disable-selinux");
    let raw = bake(&s, &["--rootfs", "ext4", "--layout", "bootc", "--disable-selinux"]);
    let root = Mounted::new(&raw, 3, &s.path().join("root"));
    let (dep, _) = deployment(&root.dir);
    let labelled = run(Command::new("sh").arg("-c").arg(format!(
        "getfattr -R -h -n security.selinux --absolute-names {} {} 2>/dev/null | grep -c '^# file' || true",
        dep.join("usr/bin").display(),
        root.dir.join("boot").display()
    )));
    assert_eq!(labelled.trim(), "0", "files carry labels despite --disable-selinux");
    let entry = std::fs::read_dir(root.dir.join("boot/loader/entries")).unwrap().next().unwrap().unwrap().path();
    let entry = std::fs::read_to_string(entry).unwrap();
    assert!(entry.contains(" selinux=0 "), "{entry}");
    let aleph = std::fs::read_to_string(root.dir.join(".bootc-aleph.json")).unwrap();
    assert!(aleph.contains("\"selinux\":\"force-target-disabled\""), "{aleph}");
}

/// The sid image boots with SELinux on (permissive), on composefs, with every probe check
/// passing, the SELinux ones included; the AVC denials are reported. With the ext4/UEFI boot of
/// tests/bake_composefs.rs, each firmware boots once; a btrfs root is written as an xfs one is
/// (through the kernel), and the bookworm btrfs boot of tests/bake.rs covers it.
#[test]
fn sid_image_boots_with_selinux_on_xfs() {
    let s = Scratch::new("fedora-xfs");
    let raw = bake(&s, &["--rootfs", "xfs"]);
    let report = Boot::new(&raw, Firmware::Bios, "fedora-xfs").run().unwrap_or_else(|e| panic!("{e}"));
    println!("sid xfs BIOS:\n{report}");
    report.assert_outcome(&[]);
    for check in ["selinux.restorecon", "selinux.no-unlabeled", "composefs.root", "composefs.image"] {
        assert!(report.checks.contains_key(check), "the probe ran no {check} check:\n{report}");
    }
    println!("AVC denials during the xfs boot: {}", report.info("avc-denials").unwrap_or("?"));
}

/// A policy kiln cannot apply stops the bake with the file, the line and the way out, and
/// leaves nothing behind.
#[test]
fn a_policy_kiln_cannot_read_is_refused() {
    let fc = "etc/selinux/targeted/contexts/files/file_contexts";
    let config = ("etc/selinux/config", "SELINUX=enforcing\nSELINUXTYPE=targeted\n");
    let s = Scratch::new("fedora-bad-regex");
    let image = tiny_image(&s, &[config, (fc, "/ system_u:object_r:root_t:s0\n/usr/(lib system_u:object_r:usr_t:s0\n")]);
    bake_fails(&s, &image, &["--rootfs", "ext4"], &[&format!("usr/{fc}: line 2: regex \"/usr/(lib\" does not compile"), "--disable-selinux"]);

    let s = Scratch::new("fedora-bad-policy-type");
    let image = tiny_image(&s, &[("etc/selinux/config", "SELINUX=enforcing\nSELINUXTYPE=mls\n"), (fc, "/ system_u:object_r:root_t:s0\n")]);
    bake_fails(&s, &image, &["--rootfs", "ext4"], &["usr/etc/selinux/config: SELINUXTYPE=mls but the image has no usr/etc/selinux/mls/contexts/files/file_contexts; it has policies targeted", "the image's /etc is usr/etc"]);

    // The way out gets past the policy (the tiny image then lacks a bootloader).
    let s = Scratch::new("fedora-bad-regex-disabled");
    let image = tiny_image(&s, &[config, (fc, "/usr/(lib system_u:object_r:usr_t:s0\n")]);
    let err = bake_fails(&s, &image, &["--rootfs", "ext4", "--disable-selinux"], &["no UEFI bootloader"]);
    assert!(!err.contains("SELinux"), "{err}");
}
