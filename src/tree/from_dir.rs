//! A tree read from a directory on disk (lstat, readlink, xattrs), its files stored through a
//! content store on all cores: for comparing kiln's ostree objects with
//! `ostree commit --tree=dir=` of the same directory, and for benchmarks.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};

use super::{ContentKey, ContentStore, Dir, File, Meta, Node, Symlink};

/// A regular file found by the walk, stored afterwards.
struct Pending {
    path: PathBuf,
    components: Vec<Vec<u8>>,
    meta: Meta,
    size: u64,
}

/// Reads `root` recursively. Hardlinked files are stored once.
pub fn from_dir(root: &Path, store: &dyn ContentStore) -> Result<Dir> {
    let md = fs::symlink_metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    let mut files = Vec::new();
    let mut first_of_inode = HashMap::new();
    let tree = read_dir(root, meta_of(root, &md)?, &mut Vec::new(), &mut files, &mut first_of_inode)?;
    // Store the files on all cores; each gets its key by its index in `files`.
    let keys: Vec<Mutex<Option<ContentKey>>> = files.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = files.get(i) else { return Ok(()) };
                        let mut data = fs::File::open(&f.path).with_context(|| format!("cannot open {}", f.path.display()))?;
                        *keys[i].lock().unwrap() = Some(store.put(&f.components, &f.meta, f.size, &mut data)?);
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("storing thread panicked"))
    })?;
    let keys: Vec<ContentKey> = keys.into_iter().map(|k| k.into_inner().unwrap().expect("every file stored")).collect();
    Ok(fill_keys(tree, &keys))
}

/// Replaces the placeholder keys (file indexes) with the stored ones.
fn fill_keys(mut dir: Dir, keys: &[ContentKey]) -> Dir {
    for node in dir.entries.values_mut() {
        match node {
            Node::Dir(d) => *d = fill_keys(std::mem::take(d), keys),
            Node::File(f) => {
                let i = u64::from_le_bytes(f.content[..8].try_into().unwrap()) as usize;
                f.content = keys[i];
            }
            Node::Symlink(_) => {}
        }
    }
    dir
}

fn read_dir(
    path: &Path,
    meta: Meta,
    components: &mut Vec<Vec<u8>>,
    files: &mut Vec<Pending>,
    first_of_inode: &mut HashMap<(u64, u64), usize>,
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
            Some(Node::Dir(read_dir(&p, meta, components, files, first_of_inode)?))
        } else if md.file_type().is_symlink() {
            Some(Node::Symlink(Symlink { meta, target: fs::read_link(&p)?.as_os_str().as_bytes().to_vec() }))
        } else if md.is_file() {
            let index = *first_of_inode.entry((md.dev(), md.ino())).or_insert_with(|| {
                files.push(Pending { path: p.clone(), components: components.clone(), meta: meta.clone(), size: md.len() });
                files.len() - 1
            });
            let mut content = [0u8; 32];
            content[..8].copy_from_slice(&(index as u64).to_le_bytes());
            Some(Node::File(File { meta, size: md.len(), content }))
        } else {
            None
        };
        components.pop();
        if let Some(node) = node {
            dir.entries.insert(name, node);
        }
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
    Ok(Meta { uid: md.uid(), gid: md.gid(), mode: md.mode() & 0o7777, mtime: md.mtime(), xattrs: xattrs.into() })
}
