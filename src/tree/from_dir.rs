//! A tree read from a directory on disk (lstat, readlink, xattrs), its files stored through a
//! content store: for comparing kiln's ostree objects with `ostree commit --tree=dir=` of the
//! same directory, and for benchmarks.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::{ContentKey, ContentStore, Dir, File, Meta, Node, Symlink};

/// Reads `root` recursively. Hardlinked files are stored once.
pub fn from_dir(root: &Path, store: &dyn ContentStore) -> Result<Dir> {
    let mut seen = HashMap::new();
    let md = fs::symlink_metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    read_dir(root, meta_of(root, &md)?, store, &mut Vec::new(), &mut seen)
}

fn read_dir(
    path: &Path,
    meta: Meta,
    store: &dyn ContentStore,
    components: &mut Vec<Vec<u8>>,
    seen: &mut HashMap<(u64, u64), ContentKey>,
) -> Result<Dir> {
    let mut dir = Dir { meta, ..Dir::default() };
    for entry in fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))? {
        let entry = entry?;
        let p = entry.path();
        let name = entry.file_name().as_bytes().to_vec();
        let md = fs::symlink_metadata(&p)?;
        let meta = meta_of(&p, &md)?;
        components.push(name.clone());
        let node = if md.is_dir() {
            Node::Dir(read_dir(&p, meta, store, components, seen)?)
        } else if md.file_type().is_symlink() {
            Node::Symlink(Symlink { meta, target: fs::read_link(&p)?.as_os_str().as_bytes().to_vec() })
        } else if md.is_file() {
            let content = match seen.get(&(md.dev(), md.ino())) {
                Some(k) => *k,
                None => {
                    let mut f = fs::File::open(&p)?;
                    let k = store.put(components, &meta, md.len(), &mut f)?;
                    seen.insert((md.dev(), md.ino()), k);
                    k
                }
            };
            Node::File(File { meta, size: md.len(), content })
        } else {
            components.pop();
            continue;
        };
        components.pop();
        dir.entries.insert(name, node);
    }
    Ok(dir)
}

fn meta_of(p: &Path, md: &fs::Metadata) -> Result<Meta> {
    let c = CString::new(p.as_os_str().as_bytes())?;
    let mut xattrs = Vec::new();
    let mut names = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n > 0 {
        for name in names[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let cn = CString::new(name)?;
            let mut val = vec![0u8; 65536];
            let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
            if m >= 0 {
                val.truncate(m as usize);
                xattrs.push((name.to_vec(), val));
            }
        }
    }
    xattrs.sort();
    Ok(Meta { uid: md.uid(), gid: md.gid(), mode: md.mode() & 0o7777, mtime: md.mtime(), xattrs })
}
