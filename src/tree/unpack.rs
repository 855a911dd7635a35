//! `kiln image unpack`: the merged tree written to a directory, as `umoci raw unpack` makes it.
//!
//! File bytes are written once, as layers stream, to numbered files in a staging directory
//! inside the target (same filesystem); once the tree is merged each file is renamed into
//! place (its hardlinks linked to it), and content that later layers removed is deleted.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
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
        set_meta_fd(&f, meta).with_context(|| format!("setting owner, mode and xattrs of {}", path.display()))?;
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
    set_meta_path(target, &root.meta, false)?;
    Ok(())
}

fn write_dir(dir: &Dir, path: &Path, store: &StagingStore, placed: &mut HashMap<ContentKey, PathBuf>) -> Result<()> {
    for (name, node) in &dir.entries {
        let p = path.join(std::ffi::OsStr::from_bytes(name));
        match node {
            Node::Dir(d) => {
                fs::create_dir(&p).with_context(|| format!("cannot create {}", p.display()))?;
                write_dir(d, &p, store, placed)?;
                set_meta_path(&p, &d.meta, false)?;
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
                set_meta_path(&p, &s.meta, true)?;
            }
        }
    }
    Ok(())
}

fn cstr(p: &Path) -> Result<CString> {
    Ok(CString::new(p.as_os_str().as_bytes())?)
}

fn check(r: libc::c_int, what: &str, path: &Path) -> Result<()> {
    if r != 0 {
        bail!("{what} {}: {}", path.display(), io::Error::last_os_error());
    }
    Ok(())
}

/// Owner, then mode (chown clears setuid bits), then xattrs (chown clears
/// security.capability), then mtime.
fn set_meta_fd(f: &fs::File, meta: &Meta) -> Result<()> {
    let fd = f.as_raw_fd();
    let p = Path::new("(staged file)");
    unsafe {
        check(libc::fchown(fd, meta.uid, meta.gid), "chown", p)?;
        check(libc::fchmod(fd, meta.mode), "chmod", p)?;
        for (k, v) in &meta.xattrs {
            let k = CString::new(k.clone())?;
            check(libc::fsetxattr(fd, k.as_ptr(), v.as_ptr().cast(), v.len(), 0), "setxattr", p)?;
        }
        let times = [timespec(meta.mtime), timespec(meta.mtime)];
        check(libc::futimens(fd, times.as_ptr()), "utimens", p)?;
    }
    Ok(())
}

fn set_meta_path(path: &Path, meta: &Meta, is_symlink: bool) -> Result<()> {
    let c = cstr(path)?;
    unsafe {
        check(libc::lchown(c.as_ptr(), meta.uid, meta.gid), "chown", path)?;
        if !is_symlink {
            check(libc::chmod(c.as_ptr(), meta.mode), "chmod", path)?;
        }
        for (k, v) in &meta.xattrs {
            let k = CString::new(k.clone())?;
            check(libc::lsetxattr(c.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0), "setxattr", path)?;
        }
        let times = [timespec(meta.mtime), timespec(meta.mtime)];
        check(
            libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW),
            "utimens",
            path,
        )?;
    }
    Ok(())
}

fn timespec(secs: i64) -> libc::timespec {
    libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: 0 }
}
