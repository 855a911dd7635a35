//! A bare-mode ostree repository, written directly: content objects are the files themselves
//! (owner, mode and xattrs on the object), metadata objects are serialised GVariants.
//!
//! The repository is the image's content store while layers are applied: each regular file
//! is hashed and written once, straight to `objects/xx/<rest>.file`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::object::{self, hex, Checksum, Kind, S_IFLNK, S_IFREG};
use crate::fsmeta;
use crate::tree::{ContentKey, ContentStore, Meta};

pub struct Repo {
    pub path: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
    /// Content objects this run created (to remove those the final tree does not use).
    created: Mutex<HashSet<Checksum>>,
}

/// The `[sysroot]` settings bootc gives the repository of an installed system.
pub const SYSROOT_CONFIG: &str = "[sysroot]\nbootloader=none\nbootprefix=true\nreadonly=true\n";

impl Repo {
    /// Creates an empty bare repository at `path` (which must not hold one), with `extra`
    /// appended to its config.
    pub fn create(path: &Path, extra_config: &str) -> Result<Repo> {
        if path.join("config").exists() {
            bail!("{} already holds an ostree repository", path.display());
        }
        for d in ["refs/heads", "refs/remotes", "refs/mirrors", "tmp/cache", "state", "extensions"] {
            fs::create_dir_all(path.join(d)).with_context(|| format!("cannot create {}", path.join(d).display()))?;
        }
        let objects = path.join("objects");
        fs::create_dir_all(&objects)?;
        for i in 0..256 {
            fs::create_dir(objects.join(format!("{i:02x}")))?;
        }
        fs::write(path.join("config"), format!("[core]\nrepo_version=1\nmode=bare\n\n{extra_config}"))?;
        Ok(Repo::open(path))
    }

    pub fn open(path: &Path) -> Repo {
        Repo { path: path.to_path_buf(), tmp: path.join("tmp"), counter: AtomicU64::new(0), created: Mutex::new(HashSet::new()) }
    }

    pub fn object_path(&self, c: &Checksum, kind: Kind) -> PathBuf {
        let h = hex(c);
        self.path.join("objects").join(&h[..2]).join(format!("{}.{}", &h[2..], kind.suffix()))
    }

    fn tmp_path(&self) -> PathBuf {
        self.tmp.join(format!("kiln-{}-{}", std::process::id(), self.counter.fetch_add(1, Ordering::Relaxed)))
    }

    /// Moves a finished object into place unless an equal one is there.
    fn commit_tmp(&self, tmp: &Path, c: &Checksum, kind: Kind) -> Result<bool> {
        let dest = self.object_path(c, kind);
        if fs::symlink_metadata(&dest).is_ok() {
            fs::remove_file(tmp)?;
            return Ok(false);
        }
        fs::rename(tmp, &dest).with_context(|| format!("cannot store object {}", dest.display()))?;
        Ok(true)
    }

    /// Writes a metadata object (dirtree, dirmeta, commit); returns its checksum.
    pub fn write_metadata(&self, kind: Kind, bytes: &[u8]) -> Result<Checksum> {
        let c: Checksum = Sha256::digest(bytes).into();
        let dest = self.object_path(&c, kind);
        if dest.exists() {
            return Ok(c);
        }
        let tmp = self.tmp_path();
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        drop(f);
        self.commit_tmp(&tmp, &c, kind)?;
        Ok(c)
    }

    /// Writes a symlink content object (a real symlink in bare mode).
    pub fn write_symlink(&self, meta: &Meta, target: &str) -> Result<Checksum> {
        let mut meta = meta.clone();
        meta.mode = 0o777;
        let c: Checksum = Sha256::digest(object::file_header(&meta, S_IFLNK, target)).into();
        if self.object_path(&c, Kind::File).exists() {
            return Ok(c);
        }
        let tmp = self.tmp_path();
        symlink(target, &tmp).with_context(|| format!("cannot create symlink {}", tmp.display()))?;
        fsmeta::set_path(&tmp, &meta, true, Some(0))?;
        self.commit_tmp(&tmp, &c, Kind::File)?;
        Ok(c)
    }

    /// Marks the repository as bootc marks one whose objects have fs-verity
    /// (`[ex-integrity] fsverity=true`): ostree then gives new objects fs-verity too.
    pub fn mark_fsverity(&self) -> Result<()> {
        let p = self.path.join("config");
        let mut f = fs::OpenOptions::new().append(true).open(&p).with_context(|| format!("cannot open {}", p.display()))?;
        f.write_all(b"\n[ex-integrity]\nfsverity=true\n").with_context(|| format!("cannot write {}", p.display()))
    }

    /// Points `refs/heads/<name>` at `commit`.
    pub fn set_ref(&self, name: &str, commit: &Checksum) -> Result<()> {
        let p = self.path.join("refs/heads").join(name);
        fs::create_dir_all(p.parent().unwrap())?;
        fs::write(&p, format!("{}\n", hex(commit))).with_context(|| format!("cannot write ref {}", p.display()))
    }

    /// Moves content object `old` to `new` (the same bytes, now with the SELinux label `label`):
    /// the label is set on the object's own inode, which is then renamed. When `new` exists
    /// already, `old` just goes.
    pub fn relabel_object(&self, old: &Checksum, new: &Checksum, label: Option<&[u8]>) -> Result<()> {
        let from = self.object_path(old, Kind::File);
        if let Some(v) = label {
            super::selabel::set(&from, v)?;
        }
        let to = self.object_path(new, Kind::File);
        if fs::symlink_metadata(&to).is_ok() {
            fs::remove_file(&from).with_context(|| format!("removing {}", from.display()))?;
        } else {
            fs::rename(&from, &to).with_context(|| format!("cannot store object {}", to.display()))?;
        }
        let mut created = self.created.lock().unwrap();
        if created.remove(old) {
            created.insert(*new);
        }
        Ok(())
    }

    /// Writes content object `new`: the bytes of object `old` with metadata `meta`.
    pub fn copy_object(&self, old: &Checksum, new: &Checksum, meta: &Meta) -> Result<()> {
        let to = self.object_path(new, Kind::File);
        if fs::symlink_metadata(&to).is_ok() {
            return Ok(());
        }
        let tmp = self.tmp_path();
        let mut out = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let result = io::copy(&mut fs::File::open(self.object_path(old, Kind::File))?, &mut out)
            .map_err(anyhow::Error::from)
            .and_then(|_| fsmeta::set_fd(&out, meta, Some(0)));
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing object {}", to.display()));
        }
        self.commit_tmp(&tmp, new, Kind::File)?;
        self.created.lock().unwrap().insert(*new);
        Ok(())
    }

    /// Removes the content objects this run wrote that `keep` does not name: files that later
    /// layers deleted or replaced.
    pub fn remove_unused(&self, keep: &HashSet<Checksum>) -> Result<u64> {
        let created = std::mem::take(&mut *self.created.lock().unwrap());
        let mut removed = 0;
        for c in created.difference(keep) {
            let p = self.object_path(c, Kind::File);
            fs::remove_file(&p).with_context(|| format!("removing unused object {}", p.display()))?;
            removed += 1;
        }
        Ok(removed)
    }
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 << 10]);
}

impl ContentStore for Repo {
    fn put(&self, _path: &[Vec<u8>], meta: &Meta, size: u64, data: &mut dyn Read) -> Result<ContentKey> {
        let mut hasher = Sha256::new();
        hasher.update(object::file_header(meta, S_IFREG, ""));
        let tmp = self.tmp_path();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let result = BUF.with(|b| -> io::Result<()> {
            let buf = &mut *b.borrow_mut();
            let mut left = size;
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = data.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the layer ends inside a file"));
                }
                hasher.update(&buf[..n]);
                f.write_all(&buf[..n])?;
                left -= n as u64;
            }
            Ok(())
        });
        if let Err(e) = result.and_then(|()| fsmeta::set_fd(&f, meta, Some(0)).map_err(io::Error::other)) {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing object {}", tmp.display()));
        }
        drop(f);
        let c: Checksum = hasher.finalize().into();
        if self.commit_tmp(&tmp, &c, Kind::File)? {
            self.created.lock().unwrap().insert(c);
        }
        Ok(c)
    }
}
