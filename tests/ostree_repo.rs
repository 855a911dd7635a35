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
        &root,
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
    ostree::deploy(&sysroot, &repo, &commit, &root, &opts).unwrap();
    let err = ostree::deploy(&sysroot, &repo, &commit, &root, &opts).unwrap_err().to_string();
    assert!(err.contains("already holds a deployment") && err.contains("--stateroot"), "{err}");
}
