//! `kiln image unpack`: the merged tree written to a directory, as `umoci raw unpack` makes it.
//!
//! File bytes are written once, as layers stream, to numbered files in a staging directory
//! inside the target (same filesystem); once the tree is merged each file is renamed into
//! place (its hardlinks linked to it), and content that later layers removed is deleted.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};

use super::{ContentKey, ContentStore, Dir, Meta, Node};

const STAGING: &str = ".kiln-unpack-staging";

/// Stores each regular file, with its final owner, mode, xattrs and mtime, as a numbered file.
pub struct StagingStore {
    dir: PathBuf,
    next: AtomicU64,
}

impl StagingStore {
    pub fn create(target: &Path) -> Result<StagingStore> {
        let dir = target.join(STAGING);
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(StagingStore { dir, next: AtomicU64::new(0) })
    }

    fn path_of(&self, key: &ContentKey) -> PathBuf {
        let n = u64::from_le_bytes(key[..8].try_into().unwrap());
        self.dir.join(n.to_string())
    }
}

impl ContentStore for StagingStore {
    fn put(&self, _path: &[Vec<u8>], meta: &Meta, size: u64, data: &mut dyn Read) -> Result<ContentKey> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&n.to_le_bytes());
        let path = self.path_of(&key);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        copy_exact(data, &mut f, size).with_context(|| format!("writing {}", path.display()))?;
        crate::fsmeta::set_fd(&f, meta, None).with_context(|| format!("setting owner, mode and xattrs of {}", path.display()))?;
        Ok(key)
    }
}

/// Copies exactly `size` bytes.
pub fn copy_exact(from: &mut dyn Read, to: &mut dyn Write, size: u64) -> io::Result<()> {
    let mut buf = vec![0u8; (size as usize).clamp(1, 1 << 20)];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the layer ends inside a file"));
        }
        to.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Writes the merged tree under `target` (which holds the staging directory).
pub fn materialize(root: &Dir, target: &Path, store: &StagingStore) -> Result<()> {
    if root.entries.contains_key(STAGING.as_bytes()) {
        bail!("the image itself has an entry named /{STAGING}, which kiln uses while unpacking");
    }
    let mut placed: HashMap<ContentKey, PathBuf> = HashMap::new();
    write_dir(root, target, store, &mut placed)?;
    fs::remove_dir_all(&store.dir).with_context(|| format!("removing {}", store.dir.display()))?;
    crate::fsmeta::set_path(target, &root.meta, false, None)?;
    Ok(())
}

fn write_dir(dir: &Dir, path: &Path, store: &StagingStore, placed: &mut HashMap<ContentKey, PathBuf>) -> Result<()> {
    for (name, node) in &dir.entries {
        let p = path.join(std::ffi::OsStr::from_bytes(name));
        match node {
            Node::Dir(d) => {
                fs::create_dir(&p).with_context(|| format!("cannot create {}", p.display()))?;
                write_dir(d, &p, store, placed)?;
                crate::fsmeta::set_path(&p, &d.meta, false, None)?;
            }
            Node::File(f) => match placed.get(&f.content) {
                Some(first) => fs::hard_link(first, &p)
                    .with_context(|| format!("cannot link {} to {}", p.display(), first.display()))?,
                None => {
                    fs::rename(store.path_of(&f.content), &p)
                        .with_context(|| format!("cannot move file into {}", p.display()))?;
                    placed.insert(f.content, p);
                }
            },
            Node::Symlink(s) => {
                symlink(std::ffi::OsStr::from_bytes(&s.target), &p)
                    .with_context(|| format!("cannot create symlink {}", p.display()))?;
                crate::fsmeta::set_path(&p, &s.meta, true, None)?;
            }
        }
    }
    Ok(())
}
