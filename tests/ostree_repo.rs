//! The ostree stage against Debian's `ostree` CLI: kiln's objects must be byte-exact (same
//! checksums as `ostree commit` for the same tree), pass `ostree fsck`, and the deployment must
//! be one `ostree admin status` lists.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use common::treediff::{assert_same, snapshot};
use common::{run, test_image, Scratch};
use kiln::ostree::{self, object, Repo};
use kiln::progress::Progress;
use kiln::tree;

/// A directory exercising what a content or dirmeta checksum covers.
fn sample_tree(root: &Path) {
    let w = |p: &str, c: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, c).unwrap();
    };
    std::fs::create_dir_all(root).unwrap();
    w("usr/bin/tool", "#!/bin/sh\n");
    w("usr/bin/suid", "suid\n");
    w("usr/share/data/ünïcødé ☃.txt", "unicode\n");
    w(&format!("usr/share/data/{}", "l".repeat(200)), "long\n");
    w("usr/share/empty-file", "");
    w("usr/lib/modules/6.1.0-test/vmlinuz", "kernel\n");
    w("usr/lib/modules/6.1.0-test/initramfs.img", "initramfs\n");
    w("usr/lib/os-release", "PRETTY_NAME=\"Test OS 1\"\nID=test\n");
    w("etc/owned", "owned\n");
    w("var/lib/seed", "seed\n");
    std::fs::create_dir_all(root.join("usr/share/emptydir")).unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    symlink("tool", root.join("usr/bin/link")).unwrap();
    symlink("../../nowhere", root.join("usr/share/dangling")).unwrap();
    std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-hardlink")).unwrap();
    let chmod = |p: &str, m: u32| run(Command::new("chmod").arg(format!("{m:o}")).arg(root.join(p)));
    chmod("usr/bin/tool", 0o755);
    chmod("usr/bin/suid", 0o4755);
    chmod("usr/share/emptydir", 0o3775);
    run(Command::new("chown").arg("1234:5678").arg(root.join("etc/owned")));
    run(Command::new("setfattr").args(["-n", "user.kiln", "-v", "hello"]).arg(root.join("usr/share/empty-file")));
    run(Command::new("setcap").arg("cap_net_bind_service=ep").arg(root.join("usr/bin/tool")));
    run(Command::new("setfattr").args(["-n", "user.dir", "-v", "d"]).arg(root.join("usr/share/emptydir")));
    chmod(".", 0o755);
}

/// The root dirtree and dirmeta checksums `ostree ls` reports for a ref.
fn ostree_root_checksums(repo: &Path, rev: &str) -> (String, String) {
    let out = run(Command::new("ostree").arg(format!("--repo={}", repo.display())).args(["ls", "-d", "-C", rev, "/"]));
    let words: Vec<&str> = out.split_whitespace().collect();
    // d00755 0 0 0 <dirtree> <dirmeta> /
    (words[4].to_string(), words[5].to_string())
}

#[test]
fn objects_are_byte_exact_with_ostree_commit() {
    let s = Scratch::new("ostree-exact");
    let input = s.path().join("input");
    sample_tree(&input);

    let theirs = s.path().join("theirs");
    run(Command::new("ostree").arg(format!("--repo={}", theirs.display())).args(["init", "--mode=bare"]));
    run(Command::new("ostree")
        .arg(format!("--repo={}", theirs.display()))
        .args(["commit", "-b", "t", "--no-bindings"])
        .arg(format!("--tree=dir={}", input.display())));
    let (their_tree, their_meta) = ostree_root_checksums(&theirs, "t");

    let repo = Repo::create(&s.path().join("ours"), "").unwrap();
    let root = tree::from_dir::from_dir(&input, &repo).unwrap();
    let (tree, meta) = ostree::commit::write_tree(&repo, &root, "", &mut HashSet::new()).unwrap();
    assert_eq!(object::hex(&meta), their_meta, "root dirmeta differs from ostree commit's");
    assert_eq!(object::hex(&tree), their_tree, "root dirtree differs from ostree commit's");
}

/// The test image through kiln's whole ostree stage into a staging sysroot, checked with the
/// ostree CLI.
#[test]
fn test_image_commit_and_deployment_satisfy_ostree() {
    let s = Scratch::new("ostree-image");
    let sysroot = s.path().join("sysroot");
    std::fs::create_dir_all(sysroot.join("boot")).unwrap();
    let reference = format!("oci:{}:latest", test_image().join("oci").display());
    let image = kiln::image::Image::open(&reference, &Default::default()).unwrap();
    let repo = Repo::create(&sysroot.join("ostree/repo"), ostree::SYSROOT_CONFIG).unwrap();
    let merged = tree::apply_layers(&image, &repo, &Progress::quiet(), "layers").unwrap();
    let (root, filtered) = ostree::convert(merged.root).unwrap();
    let kver = tree::kernels(&root).remove(0);
    let target = "docker://quay.io/kiln/test:latest";
    let layers = merged.layers.into_iter().map(|l| ostree::commit::filter(l).unwrap().0).collect();
    let commit = ostree::commit(&repo, &root, layers, &ostree::CommitInfo { image: &image, target_transport_ref: target, filtered: &filtered, kernel: &kver }).unwrap();
    let kargs = vec!["root=UUID=1234".to_string(), "rw".to_string()];
    let dep = ostree::deploy(
        &sysroot,
        &repo,
        &commit,
        root.clone(),
        &ostree::DeployOptions {
            stateroot: "default",
            origin: "ostree-unverified-registry:quay.io/kiln/test:latest",
            kargs: &kargs,
            version: Some("12.kiln-test.1"),
            image: "quay.io/kiln/test:latest",
            labels: None,
            selinux_state: "disabled",
            object_verity: None,
        },
    )
    .unwrap();

    let repo_arg = format!("--repo={}", sysroot.join("ostree/repo").display());
    run(Command::new("ostree").args([&repo_arg, "fsck"]));
    let refs = run(Command::new("ostree").args([&repo_arg, "refs"]));
    assert!(refs.lines().any(|r| r == "ostree/container/image/docker_3A__2F__2F_quay_2E_io/kiln/test_3A_latest"), "{refs}");
    assert!(refs.lines().any(|r| r == "ostree/1/1/0"), "{refs}");
    // One commit per layer, under ostree-ext's blob refs.
    for layer in &image.layers {
        let blob = format!("ostree/container/blob/sha256_3A_{}", &layer.descriptor.digest[7..]);
        assert!(refs.lines().any(|r| r == blob), "no {blob} in:\n{refs}");
    }
    // The top layer's commit holds its whiteout marker as a file, as its tar does.
    let top = format!("ostree/container/blob/sha256_3A_{}", &image.layers[2].descriptor.digest[7..]);
    let ls = run(Command::new("ostree").args([&repo_arg, "ls", &top, "/usr/share/kiln-test"]));
    assert!(ls.contains(".wh.deleted"), "{ls}");
    let hex = object::hex(&commit);
    let meta = |k: &str| run(Command::new("ostree").args([&repo_arg, "show", &format!("--print-metadata-key={k}"), &hex]));
    assert_eq!(meta("version").trim(), "'12.kiln-test.1'");
    assert_eq!(meta("ostree.bootable").trim(), "true");
    assert_eq!(meta("ostree.manifest-digest").trim(), format!("'{}'", image.manifest_digest));
    assert!(meta("ostree.container.image-config").contains("containers.bootc"));
    assert!(meta("ostree.manifest").contains("application/vnd.oci.image.layer.v1.tar+zstd"));

    let status = run(Command::new("ostree").args(["admin", "status", &format!("--sysroot={}", sysroot.display())]));
    assert!(status.contains(&format!("default {hex}.0")), "{status}");
    let entry = std::fs::read_to_string(&dep.entry.path).unwrap();
    assert!(entry.contains(&format!("ostree=/ostree/boot.1/default/{}/0", dep.bootcsum)), "{entry}");
    let origin = std::fs::read_to_string(dep.dir.with_extension("0.origin")).unwrap();
    assert_eq!(origin, "[origin]\ncontainer-image-reference=ostree-unverified-registry:quay.io/kiln/test:latest\n");

    // ostree checkout of kiln's commit is the image tree (with /etc moved to /usr/etc), entry
    // for entry, as umoci unpacks it.
    let checkout = s.path().join("checkout");
    run(Command::new("ostree").args([&repo_arg, "checkout", &hex]).arg(&checkout));
    let umoci = s.path().join("umoci");
    let gz = format!("{}:latest", test_image().join("oci-gzip").display());
    run(Command::new("umoci").args(["raw", "unpack", "--image", &gz]).arg(&umoci));
    std::fs::rename(umoci.join("etc"), umoci.join("usr/etc")).unwrap();
    let mut ours = snapshot(&checkout, &[]);
    let theirs = snapshot(&umoci, &[]);
    // An ostree checkout hardlinks every file to its object, so files of equal content and
    // metadata share an inode: each of the image's hardlink groups must lie within one of ours.
    for group in &theirs.hardlinks {
        assert!(ours.hardlinks.iter().any(|g| group.iter().all(|p| g.contains(p))), "hardlink group {group:?} split");
    }
    ours.hardlinks = theirs.hardlinks.clone();
    assert_same(&ours, &theirs, "ostree checkout of kiln's commit vs umoci");
}

#[test]
fn a_sysroot_with_a_deployment_is_refused() {
    let s = Scratch::new("ostree-existing");
    let input = s.path().join("input");
    sample_tree(&input);
    let sysroot = s.path().join("sysroot");
    std::fs::create_dir_all(sysroot.join("boot")).unwrap();
    let repo = Repo::create(&sysroot.join("ostree/repo"), ostree::SYSROOT_CONFIG).unwrap();
    let (root, _) = ostree::convert(tree::from_dir::from_dir(&input, &repo).unwrap()).unwrap();
    let (tree, meta) = ostree::commit::write_tree(&repo, &root, "", &mut HashSet::new()).unwrap();
    let commit = repo.write_metadata(object::Kind::Commit, &object::commit(ostree::gvariant::dict_sv(vec![]), 0, &tree, &meta)).unwrap();
    let opts = ostree::DeployOptions { stateroot: "default", origin: "ostree-unverified-registry:x/y:z", kargs: &[], version: None, image: "x/y:z", labels: None, selinux_state: "disabled", object_verity: None };
    ostree::deploy(&sysroot, &repo, &commit, root.clone(), &opts).unwrap();
    let err = ostree::deploy(&sysroot, &repo, &commit, root, &opts).unwrap_err().to_string();
    assert!(err.contains("already holds a deployment") && err.contains("--stateroot"), "{err}");
}

/// A kernel's device trees deployed as `ostree admin deploy` deploys them: the same boot
/// checksum (kernel, initramfs, then the trees), the same files under /boot, the same BLS key
/// (`devicetree` for a single file, `fdtdir` for a `dtb/` directory). ostree (Debian's CLI)
/// deploys the very commit kiln made, into a sysroot of its own.
#[test]
fn device_trees_are_deployed_as_ostree_deploys_them() {
    for (name, trees) in [
        ("dtb-dir", vec!["dtb/vendor-b/board-2.dtb", "dtb/vendor-a/board-1.dtb", "dtb/top.dtb"]),
        ("devicetree", vec!["devicetree", "dtb/ignored.dtb"]),
    ] {
        let s = Scratch::new(&format!("ostree-devicetree-{name}"));
        let input = s.path().join("input");
        let w = |p: &str, c: &str| {
            let p = input.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        };
        w("usr/lib/modules/6.1.0-dt/vmlinuz", "kernel\n");
        w("usr/lib/modules/6.1.0-dt/initramfs.img", "initramfs\n");
        for t in &trees {
            w(&format!("usr/lib/modules/6.1.0-dt/{t}"), &format!("tree {t}\n"));
        }
        w("usr/lib/os-release", "PRETTY_NAME=\"Test OS 1\"\nID=test\n");
        w("usr/etc/hostname", "t\n");
        std::fs::create_dir_all(input.join("boot")).unwrap();

        let ours = s.path().join("kiln");
        std::fs::create_dir_all(ours.join("boot")).unwrap();
        let repo = Repo::create(&ours.join("ostree/repo"), ostree::SYSROOT_CONFIG).unwrap();
        let (root, _) = ostree::convert(tree::from_dir::from_dir(&input, &repo).unwrap()).unwrap();
        let (tree_csum, meta) = ostree::commit::write_tree(&repo, &root, "", &mut HashSet::new()).unwrap();
        let commit = repo.write_metadata(object::Kind::Commit, &object::commit(ostree::gvariant::dict_sv(vec![]), 0, &tree_csum, &meta)).unwrap();
        let kargs = vec!["root=UUID=1234".to_string()];
        let opts = ostree::DeployOptions { stateroot: "default", origin: "ostree-unverified-registry:x/y:z", kargs: &kargs, version: None, image: "x/y:z", labels: None, selinux_state: "disabled", object_verity: None };
        let dep = ostree::deploy(&ours, &repo, &commit, root, &opts).unwrap();

        let theirs = s.path().join("ostree");
        let hex = object::hex(&commit);
        std::fs::create_dir_all(&theirs).unwrap();
        run(Command::new("ostree").args(["admin", "init-fs"]).arg(&theirs));
        let sysroot = format!("--sysroot={}", theirs.display());
        run(Command::new("ostree").args(["admin", "os-init", "default", &sysroot]));
        run(Command::new("ostree").arg(format!("--repo={}", theirs.join("ostree/repo").display())).arg("pull-local").arg(ours.join("ostree/repo")).arg(&hex));
        run(Command::new("ostree").args(["admin", "deploy", &sysroot, "--os=default", "--karg=root=UUID=1234", &hex]));

        let bootdirs = |sysroot: &Path| -> Vec<String> { std::fs::read_dir(sysroot.join("boot/ostree")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect() };
        assert_eq!(bootdirs(&ours), bootdirs(&theirs), "{name}: the boot checksum differs from ostree's");
        assert_eq!(bootdirs(&ours), [format!("default-{}", dep.bootcsum)]);
        let entry_dir = theirs.join("boot/loader/entries");
        let their_entry = std::fs::read_to_string(std::fs::read_dir(&entry_dir).unwrap().next().unwrap().unwrap().path()).unwrap();
        let our_entry = std::fs::read_to_string(&dep.entry.path).unwrap();
        let dt_line = |e: &str| e.lines().find(|l| l.starts_with("devicetree ") || l.starts_with("fdtdir ")).map(str::to_string);
        assert!(dt_line(&their_entry).is_some(), "{name}: ostree wrote no device tree line:\n{their_entry}");
        // kiln's entries name every file under /boot/ (its linux and initrd too; on a separate
        // /boot, ostree's `boot -> .` symlink resolves them); ostree's, here, from /boot's root.
        let ours_line = dt_line(&our_entry).map(|l| l.replacen(" /boot/ostree/", " /ostree/", 1));
        assert_eq!(ours_line, dt_line(&their_entry), "{name}:\nkiln:\n{our_entry}\nostree:\n{their_entry}");
        let boot_files = |sysroot: &Path| snapshot(&sysroot.join("boot/ostree"), &[]);
        assert_same(&boot_files(&ours), &boot_files(&theirs), &format!("{name}: kiln's /boot/ostree vs ostree's"));
    }
}
