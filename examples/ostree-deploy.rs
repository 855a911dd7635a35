//! kiln's ostree stage on a directory tree, for the side-by-side benchmark with
//! `ostree commit` + `ostree admin deploy` (scripts/bench/ostree.sh): reads TREE into a new
//! bare repository in SYSROOT, commits it and deploys it.
//!
//! usage: ostree-deploy TREE SYSROOT

use std::collections::HashSet;
use std::path::PathBuf;

use kiln::ostree::{self, gvariant, object, Repo};

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [tree, sysroot] = args.as_slice() else { anyhow::bail!("usage: ostree-deploy TREE SYSROOT") };
    std::fs::create_dir_all(sysroot.join("boot"))?;
    let repo = Repo::create(&sysroot.join("ostree/repo"), ostree::SYSROOT_CONFIG)?;
    let (root, _) = ostree::convert(kiln::tree::from_dir::from_dir(tree, &repo)?)?;
    let (t, m) = ostree::commit::write_tree(&repo, &root, "", &mut HashSet::new())?;
    let commit = repo.write_metadata(object::Kind::Commit, &object::commit(gvariant::dict_sv(vec![]), 0, &t, &m))?;
    let kargs = vec!["root=UUID=00000000-0000-4000-8000-000000000000".to_string(), "rw".to_string()];
    ostree::deploy(
        sysroot,
        &repo,
        &commit,
        root,
        &ostree::DeployOptions { stateroot: "default", origin: "ostree-unverified-registry:example/os:latest", kargs: &kargs, version: None, image: "example/os:latest", labels: None, selinux_state: "disabled", object_verity: None },
    )?;
    Ok(())
}
