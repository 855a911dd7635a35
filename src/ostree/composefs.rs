//! The deployment's `.ostree.cfs`: the composefs image of the commit that ostree ≥ 2025.1
//! writes into every deployment (`checkout_deployment_tree` → `ostree_repo_checkout_composefs`),
//! and that `ostree-prepare-root` mounts as `/` when the initramfs enables composefs.
//!
//! The tree is built as `_ostree_repo_checkout_composefs` builds it (ostree
//! `src/libostree/ostree-repo-composefs.c`): the commit's tree, not the deployment's (no
//! merged `/etc`, no stateroot `/var`); every mtime 0; each path its own inode (nlink 1);
//! regular files with data redirected to their object `xx/yyyy….file` under
//! `ostree/repo/objects`, empty ones without a backing file; owners, modes and xattrs as the
//! objects and dirmeta carry them; then `usr etc boot var sysroot` added under the root where
//! missing (mode 0755, root-owned, no xattrs) as mount points. Whiteouts hiding the object
//! directories and the opaque root are the image writer's part.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::object::{self, hex, Checksum};
use super::repo::Repo;
use crate::composefs::{self, Kind, Mtime, Node, Xattrs};
use crate::fsverity;
use crate::tree::{self, Dir, Meta};

/// The image's name in a deployment (`OSTREE_COMPOSEFS_NAME`).
pub const IMAGE_NAME: &str = ".ostree.cfs";

/// Directories ostree adds to the image's root as mount points.
const ROOT_DIRS: [&str; 5] = ["usr", "etc", "boot", "var", "sysroot"];

/// fs-verity digests of content objects, by object checksum (when the objects have fs-verity).
pub type ObjectVerity = HashMap<Checksum, [u8; 32]>;

/// The composefs tree of the commit whose (converted) tree is `root`. The commit tree is
/// consumed as it is converted (each directory's entries freed once moved), so the two whole
/// trees are never in memory at once.
pub fn image_tree(root: Dir, verity: Option<&ObjectVerity>) -> Node {
    let mut node = dir_node(root, verity, &mut SharedXattrs::default());
    let entries = node.entries_mut().expect("a directory");
    for name in ROOT_DIRS {
        entries.entry(name.as_bytes().to_vec()).or_insert_with(|| Node::dir(0o755, 0, 0));
    }
    node
}

/// The xattr sets converted so far, by the tree's interned set: the nodes with the same set
/// (an SELinux label on thousands of files) share one map.
#[derive(Default)]
struct SharedXattrs(HashMap<tree::Xattrs, Arc<BTreeMap<Vec<u8>, Vec<u8>>>>);

impl SharedXattrs {
    fn get(&mut self, set: tree::Xattrs) -> Xattrs {
        if set.is_empty() {
            return Xattrs::default();
        }
        let map = self.0.entry(set).or_insert_with_key(|set| Arc::new(set.iter().cloned().collect()));
        Xattrs::shared(map)
    }
}

fn base(meta: Meta, kind: Kind, shared: &mut SharedXattrs) -> Node {
    Node {
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        nlink: 1,
        mtime: Mtime::default(),
        xattrs: shared.get(meta.xattrs),
        kind,
    }
}

fn dir_node(dir: Dir, verity: Option<&ObjectVerity>, shared: &mut SharedXattrs) -> Node {
    let entries: BTreeMap<Vec<u8>, Node> = dir
        .entries
        .into_iter()
        .map(|(name, node)| {
            let n = match node {
                tree::Node::Dir(d) => dir_node(d, verity, shared),
                tree::Node::File(f) => {
                    let kind = Kind::Regular {
                        size: f.size,
                        // Absolute, so the image writer's redirect (`/` + a relative payload,
                        // the same bytes) borrows it instead of copying it for every file.
                        payload: (f.size > 0).then(|| format!("/{}", object_path(&f.content)).into_bytes()),
                        verity: verity.and_then(|v| v.get(&f.content).copied()).filter(|_| f.size > 0),
                    };
                    base(f.meta, kind, shared)
                }
                // A symlink object's mode is what lstat says of a symlink: 0777.
                tree::Node::Symlink(s) => Node { mode: 0o777, ..base(s.meta, Kind::Symlink(s.target), shared) },
            };
            (name, n)
        })
        .collect();
    base(dir.meta, Kind::Dir(entries), shared)
}

/// An object's path relative to `objects/` in a bare repository: `xx/yyyy….file`.
pub fn object_path(c: &Checksum) -> String {
    let h = hex(c);
    format!("{}/{}.file", &h[..2], &h[2..])
}

/// The fs-verity digests of the content objects `root` uses, computed from their bytes (two
/// threads; each object read once).
pub fn object_digests(repo: &Repo, root: &Dir) -> Result<ObjectVerity> {
    fn collect(dir: &Dir, out: &mut HashSet<Checksum>) {
        for node in dir.entries.values() {
            match node {
                tree::Node::Dir(d) => collect(d, out),
                tree::Node::File(f) => {
                    out.insert(f.content);
                }
                tree::Node::Symlink(_) => {}
            }
        }
    }
    let mut objects = HashSet::new();
    collect(root, &mut objects);
    let objects: Vec<Checksum> = objects.into_iter().collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(objects.len().max(1));
    let chunk = objects.len().div_ceil(workers).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = objects
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<Vec<(Checksum, [u8; 32])>> {
                    part.iter()
                        .map(|c| {
                            let p = repo.object_path(c, object::Kind::File);
                            let mut f = fs::File::open(&p).with_context(|| format!("cannot open {}", p.display()))?;
                            Ok((*c, fsverity::digest_reader(&mut f).with_context(|| format!("reading {}", p.display()))?))
                        })
                        .collect()
                })
            })
            .collect();
        let mut all = ObjectVerity::with_capacity(objects.len());
        for h in handles {
            all.extend(h.join().expect("a digest thread panicked")?);
        }
        Ok(all)
    })
}

/// The files of a sysroot that get fs-verity when the image requires it, as bootc gives it:
/// every regular content object, every deployment's `.ostree.cfs`, and the repository's
/// config (bootc's mark that the whole repository has it).
pub fn verity_files(sysroot: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let repo = sysroot.join("ostree/repo");
    let read = |d: &Path| fs::read_dir(d).with_context(|| format!("cannot read {}", d.display()));
    for dir in read(&repo.join("objects"))? {
        let dir = dir?;
        if !dir.file_type()?.is_dir() {
            continue;
        }
        for e in read(&dir.path())? {
            let e = e?;
            if e.file_type()?.is_file() && e.file_name().as_encoded_bytes().ends_with(b".file") {
                files.push(e.path());
            }
        }
    }
    for stateroot in read(&sysroot.join("ostree/deploy"))? {
        for dep in read(&stateroot?.path().join("deploy"))? {
            let image = dep?.path().join(IMAGE_NAME);
            if image.is_file() {
                files.push(image);
            }
        }
    }
    files.push(repo.join("config"));
    files.sort();
    Ok(files)
}

/// Writes `<deployment>/.ostree.cfs` (mode 0644) for the commit tree `root` (consumed: the
/// image is the last thing a deployment needs the tree for); returns the image's fs-verity
/// digest.
pub fn write_image(deployment: &Path, root: Dir, verity: Option<&ObjectVerity>) -> Result<[u8; 32]> {
    let tree = image_tree(root, verity);
    let image = composefs::erofs::Image::new(&tree).context("encoding the deployment's composefs image")?;
    let path = deployment.join(IMAGE_NAME);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // The mode must not depend on the umask.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let digest = image.write_to(&mut out).and_then(|d| out.flush().map(|()| d)).with_context(|| format!("writing {}", path.display()))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{File, Symlink};

    #[test]
    fn ostree_shape() {
        let label = (b"security.selinux".to_vec(), b"system_u:object_r:usr_t:s0\0".to_vec());
        let mut usr = Dir { meta: Meta { mode: 0o755, xattrs: vec![label.clone()].into(), ..Meta::default() }, ..Dir::default() };
        usr.entries.insert(b"empty".to_vec(), tree::Node::File(File { meta: Meta { mode: 0o644, ..Meta::default() }, size: 0, content: [1; 32] }));
        usr.entries.insert(b"data".to_vec(), tree::Node::File(File { meta: Meta { mode: 0o4755, mtime: 99, xattrs: vec![label.clone()].into(), ..Meta::default() }, size: 5, content: [0xab; 32] }));
        usr.entries.insert(b"link".to_vec(), tree::Node::Symlink(Symlink { meta: Meta { mode: 0o644, ..Meta::default() }, target: b"data".to_vec() }));
        let mut root = Dir { meta: Meta { mode: 0o755, ..Meta::default() }, ..Dir::default() };
        root.entries.insert(b"usr".to_vec(), tree::Node::Dir(usr));
        let t = image_tree(root, None);
        let e = t.entries().unwrap();
        assert_eq!(e.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>(), ["boot", "etc", "sysroot", "usr", "var"]);
        assert!(e[b"etc".as_slice()].xattrs.is_empty());
        let usr = e[b"usr".as_slice()].entries().unwrap();
        assert_eq!(e[b"usr".as_slice()].xattrs.get(label.0.as_slice()), Some(&label.1));
        let Kind::Regular { payload, .. } = &usr[b"data".as_slice()].kind else { panic!() };
        assert_eq!(payload.as_deref(), Some(format!("/ab/{}.file", "ab".repeat(31)).as_bytes()));
        assert_eq!(usr[b"data".as_slice()].mtime, Mtime::default());
        assert_eq!(usr[b"data".as_slice()].mode, 0o4755);
        assert!(matches!(&usr[b"empty".as_slice()].kind, Kind::Regular { payload: None, .. }));
        assert_eq!(usr[b"link".as_slice()].mode, 0o777);
        // The same label set is one map, shared.
        let data = &usr[b"data".as_slice()].xattrs;
        assert!(e[b"usr".as_slice()].xattrs.shares_with(data) && !data.shares_with(&usr[b"empty".as_slice()].xattrs));
    }
}
