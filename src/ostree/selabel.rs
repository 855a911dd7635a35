//! SELinux labels on what the ostree stage writes, given as ostree-ext, ostree and bootc give
//! them when the image carries a policy (`crate::selinux`):
//!
//! - every node of every commit (the merged one and each layer's) by its *commit* path
//!   (`/usr/etc/passwd`, not `/etc/passwd`), as ostree-ext's commit modifier does with the
//!   merged tree's policy — the label is one of the object's xattrs, so it is part of the
//!   object and commit checksums;
//! - the deployment's `/etc` by its runtime path (ostree copies `usr/etc` with the prefix
//!   `/etc`), the stateroot's `/var` by its runtime path, with the `.ostree-selabeled` stamp;
//! - the physical root last, as bootc's final pass does: `/` as `/`, `ostree` as `/usr`, and
//!   every entry still unlabelled by its physical path, the deployment checkouts excepted.
//!
//! File bytes are written once, while the layers stream, and the label is part of a regular
//! file's object checksum, so it must be known then. The policy is itself a file of the image,
//! usually in the base layer, whose tar holds `etc/selinux` before `usr`: [`StreamLabels`]
//! labels each file with the policy seen so far. Once the merged tree and its policy are known,
//! [`label_commits`] checks every file; the few written before the policy was seen, or whose
//! final path differs from their layer path, are hashed again (read back while still in the page
//! cache, on every core) and renamed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::object::{self, Checksum, Kind, S_IFDIR, S_IFLNK, S_IFREG};
use super::repo::Repo;
use crate::selinux::{Labeler, Policy};
use crate::tree::{ContentKey, ContentStore, Dir, Meta, Node, Xattrs};

pub const XATTR: &[u8] = b"security.selinux";

/// `meta` with its `security.selinux` set to `value` (xattrs stay sorted by name).
pub fn with_label(meta: &Meta, value: Vec<u8>) -> Meta {
    Meta { xattrs: meta.xattrs.with(XATTR, &value), ..meta.clone() }
}

/// The label of `path` (with `mode`'s file type) on `meta`, or `meta` unchanged when the
/// policy gives none (ostree keeps what the file had).
fn labelled(labeler: &Labeler, path: &[u8], mode: u32, meta: &Meta) -> Meta {
    match labeler.xattr_value(path, mode) {
        Some(v) => with_label(meta, v),
        None => meta.clone(),
    }
}

/// A regular file's object to hash again with a label: its old object and its new metadata.
struct Rekey {
    old: Checksum,
    meta: Meta,
}

/// The label each content object was written with (by [`StreamLabels`]), as the one-attribute
/// set `security.selinux` (interned: the objects with the same label share it); absent: none.
pub type Written = HashMap<Checksum, Xattrs>;

/// Labels every node of `trees` (commit trees: the merged root and each layer's, already
/// converted) by its commit path (no labels at all with `labeler` None) and moves every regular
/// file whose object was `written` with another label to its rightly labelled object.
/// Returns the number of objects rewritten.
pub fn label_commits(repo: &Repo, labeler: Option<&Labeler>, written: &Written, trees: &mut [&mut Dir]) -> Result<usize> {
    // Pass 1: labels on directories and symlinks; the labelled metadata each file wants.
    let mut wanted: HashMap<(Checksum, Vec<u8>), usize> = HashMap::new();
    let mut rekeys: Vec<Rekey> = Vec::new();
    for tree in trees.iter_mut() {
        let mut path = Vec::with_capacity(256);
        label_dir(labeler, written, tree, &mut path, &mut |old, meta| {
            let label = meta.xattrs.get(XATTR).unwrap_or_default().to_vec();
            *wanted.entry((old, label)).or_insert_with(|| {
                rekeys.push(Rekey { old, meta: meta.clone() });
                rekeys.len() - 1
            })
        });
    }
    // Pass 2: the new checksums, hashed on every core.
    let new = rehash(repo, &rekeys)?;
    // Pass 3: objects renamed (or, when one object now needs two labels, copied).
    move_objects(repo, &rekeys, &new)?;
    // Pass 4: the trees point at the new objects.
    let by_pair: HashMap<(Checksum, Vec<u8>), Checksum> = wanted.into_iter().map(|(k, i)| (k, new[i])).collect();
    for tree in trees.iter_mut() {
        rekey_files(tree, &by_pair);
    }
    Ok(rekeys.len())
}

/// Labels `dir` (at commit path `path`, "" for the root) and below; `file` is told each regular
/// file whose object (as `written`) does not carry the label it must have, with that metadata.
fn label_dir(labeler: Option<&Labeler>, written: &Written, dir: &mut Dir, path: &mut Vec<u8>, file: &mut dyn FnMut(Checksum, &Meta) -> usize) {
    let label = |path: &[u8], mode: u32, meta: &Meta| match labeler {
        Some(l) => labelled(l, path, mode, meta),
        None => meta.clone(),
    };
    let shown: &[u8] = if path.is_empty() { b"/" } else { path };
    dir.meta = label(shown, S_IFDIR | dir.meta.mode, &dir.meta);
    for (name, node) in dir.entries.iter_mut() {
        let len = path.len();
        path.push(b'/');
        path.extend_from_slice(name);
        match node {
            Node::Dir(d) => label_dir(labeler, written, d, path, file),
            Node::Symlink(s) => s.meta = label(path, S_IFLNK | 0o777, &s.meta),
            Node::File(f) => {
                let meta = label(path, S_IFREG | f.meta.mode, &f.meta);
                let as_written = match written.get(&f.content).and_then(|w| w.get(XATTR)) {
                    Some(v) => with_label(&f.meta, v.to_vec()),
                    None => f.meta.clone(),
                };
                if meta != as_written {
                    file(f.content, &meta);
                }
                f.meta = meta;
            }
        }
        path.truncate(len);
    }
}

/// A content store that labels each regular file as the image's policy, as far as the layers
/// have shown it, labels its path (see the module's comment), and remembers the label each
/// object got for [`label_commits`] to check.
pub struct StreamLabels<'a> {
    store: &'a Repo,
    /// The policy's files seen so far, by commit path.
    policy_files: Mutex<BTreeMap<String, Vec<u8>>>,
    /// The policy, once its files have all streamed past (None inside: unusable; the final
    /// policy is read from the merged tree anyway).
    policy: OnceLock<Option<Policy>>,
    written: Mutex<Written>,
}

impl<'a> StreamLabels<'a> {
    pub fn new(store: &'a Repo) -> Self {
        StreamLabels { store, policy_files: Mutex::default(), policy: OnceLock::new(), written: Mutex::default() }
    }

    /// The label each object was written with.
    pub fn into_written(self) -> Written {
        self.written.into_inner().unwrap()
    }

    /// The policy to label with, once the layer reading `path` has gone past the policy's
    /// directory (its files come before anything outside `etc/selinux` in a sorted tar).
    fn policy(&self, path: &str) -> Option<&Policy> {
        if let Some(p) = self.policy.get() {
            return p.as_ref();
        }
        let files = self.policy_files.lock().unwrap();
        if files.is_empty() || path.starts_with("usr/etc/selinux/") {
            return None;
        }
        let config = files.keys().find(|k| k.ends_with("selinux/config"))?;
        let dir = &config[..config.len() - "config".len()];
        if !files.keys().any(|k| k.starts_with(dir) && k.ends_with("contexts/files/file_contexts")) {
            return None;
        }
        let policy = Policy::from_files(&files).ok().flatten();
        drop(files);
        self.policy.get_or_init(|| policy).as_ref()
    }
}

impl ContentStore for StreamLabels<'_> {
    fn put(&self, path: &[Vec<u8>], meta: &Meta, size: u64, data: &mut dyn Read) -> Result<ContentKey> {
        // The commit path: ostree-ext moves /etc to /usr/etc.
        let mut commit = String::with_capacity(128);
        if path.first().is_some_and(|c| c == b"etc") {
            commit.push_str("usr/");
        }
        for (i, c) in path.iter().enumerate() {
            if i > 0 {
                commit.push('/');
            }
            commit.push_str(&String::from_utf8_lossy(c));
        }
        if crate::selinux::wanted(&commit) && size <= POLICY_FILE_MAX {
            let mut bytes = Vec::with_capacity(size as usize);
            data.read_to_end(&mut bytes)?;
            let key = self.store.put(path, meta, size, &mut bytes.as_slice())?;
            self.policy_files.lock().unwrap().insert(commit, bytes);
            return Ok(key);
        }
        let Some(policy) = self.policy(&commit) else {
            return self.store.put(path, meta, size, data);
        };
        let Some(label) = policy.labeler().xattr_value(format!("/{commit}").as_bytes(), S_IFREG | meta.mode) else {
            return self.store.put(path, meta, size, data);
        };
        let key = self.store.put(path, &with_label(meta, label.clone()), size, data)?;
        self.written.lock().unwrap().insert(key, Xattrs::new(vec![(XATTR.to_vec(), label)]));
        Ok(key)
    }
}

/// The largest policy file kept in memory while streaming (Fedora's `file_contexts` is about
/// half a MiB).
const POLICY_FILE_MAX: u64 = 16 << 20;

fn rekey_files(dir: &mut Dir, by_pair: &HashMap<(Checksum, Vec<u8>), Checksum>) {
    for node in dir.entries.values_mut() {
        match node {
            Node::Dir(d) => rekey_files(d, by_pair),
            Node::File(f) => {
                let label = f.meta.xattrs.get(XATTR).unwrap_or_default().to_vec();
                if let Some(new) = by_pair.get(&(f.content, label)) {
                    f.content = *new;
                }
            }
            Node::Symlink(_) => {}
        }
    }
}

/// The checksum of each object once its metadata is `rekeys[i].meta`: the content object
/// header, then the object's bytes, read back.
fn rehash(repo: &Repo, rekeys: &[Rekey]) -> Result<Vec<Checksum>> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(rekeys.len().max(1));
    let chunk = rekeys.len().div_ceil(workers).max(1);
    let results: Vec<Result<Vec<Checksum>>> = std::thread::scope(|s| {
        let handles: Vec<_> = rekeys
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut buf = vec![0u8; 256 << 10];
                    part.iter()
                        .map(|r| {
                            let mut h = Sha256::new();
                            h.update(object::file_header(&r.meta, S_IFREG, ""));
                            let path = repo.object_path(&r.old, Kind::File);
                            let mut f = std::fs::File::open(&path).with_context(|| format!("reading object {}", path.display()))?;
                            loop {
                                let n = f.read(&mut buf).with_context(|| format!("reading object {}", path.display()))?;
                                if n == 0 {
                                    break;
                                }
                                h.update(&buf[..n]);
                            }
                            Ok(h.finalize().into())
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rehash worker panicked")).collect()
    });
    let mut out = Vec::with_capacity(rekeys.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// Gives each labelled object its file: the unlabelled object's own inode for the first label
/// it needs (label set, renamed), a copy for any further one.
fn move_objects(repo: &Repo, rekeys: &[Rekey], new: &[Checksum]) -> Result<()> {
    let mut by_old: HashMap<Checksum, Vec<usize>> = HashMap::new();
    for (i, r) in rekeys.iter().enumerate() {
        by_old.entry(r.old).or_default().push(i);
    }
    for (old, users) in by_old {
        // Copies first: the rename takes the source away.
        for &i in &users[1..] {
            repo.copy_object(&old, &new[i], &rekeys[i].meta)?;
        }
        let first = users[0];
        let label = rekeys[first].meta.xattrs.get(XATTR);
        repo.relabel_object(&old, &new[first], label)?;
    }
    Ok(())
}

/// Runtime labels for what the deployment copies: `/etc` and `/var` by their paths on the
/// running system.
#[derive(Clone, Copy)]
pub struct Runtime<'a> {
    pub labeler: &'a Labeler,
}

impl Runtime<'_> {
    /// `meta` labelled for `path` (the path on the running system) and file type `ftype`.
    pub fn meta(&self, path: &[u8], ftype: u32, meta: &Meta) -> Meta {
        let mode = if ftype == S_IFLNK { 0o777 } else { meta.mode };
        labelled(self.labeler, path, ftype | mode, meta)
    }

    /// The label value for `path` (runtime path) of file type and mode `mode`.
    pub fn value(&self, path: &[u8], mode: u32) -> Option<Vec<u8>> {
        self.labeler.xattr_value(path, mode)
    }
}

/// Labels every entry under `dir` (and `dir` itself) that has no label yet, as if `dir` were
/// `as_path` (`/etc` for a deployment's etc, `/` for the physical root); `skip` are directories
/// left alone with everything below them. bootc's `ensure_dir_labeled_recurse`.
pub fn ensure_labelled(labeler: &Labeler, dir: &Path, as_path: &[u8], skip: &[PathBuf]) -> Result<u64> {
    let mut count = 0;
    ensure_one(labeler, dir, as_path, &mut count)?;
    ensure_below(labeler, dir, &mut as_path.to_vec(), skip, &mut count)?;
    Ok(count)
}

fn ensure_below(labeler: &Labeler, dir: &Path, as_path: &mut Vec<u8>, skip: &[PathBuf], count: &mut u64) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if skip.iter().any(|s| s == &path) {
            continue;
        }
        let len = as_path.len();
        if as_path.last() != Some(&b'/') {
            as_path.push(b'/');
        }
        as_path.extend_from_slice(entry.file_name().as_bytes());
        ensure_one(labeler, &path, as_path, count)?;
        if entry.file_type()?.is_dir() {
            ensure_below(labeler, &path, as_path, skip, count)?;
        }
        as_path.truncate(len);
    }
    Ok(())
}

fn ensure_one(labeler: &Labeler, path: &Path, as_path: &[u8], count: &mut u64) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let name = CString::new(XATTR)?;
    let r = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if r >= 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENODATA) {
        return Err(err).with_context(|| format!("reading the SELinux label of {}", path.display()));
    }
    let md = std::fs::symlink_metadata(path)?;
    if let Some(v) = labeler.xattr_value(as_path, md.mode()) {
        set(path, &v)?;
        *count += 1;
    }
    Ok(())
}

/// Labels an open directory or file as `as_path` says, unless it has a label.
pub fn label_fd(labeler: &Labeler, file: &std::fs::File, as_path: &[u8]) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let name = CString::new(XATTR)?;
    let fd = file.as_raw_fd();
    if unsafe { libc::fgetxattr(fd, name.as_ptr(), std::ptr::null_mut(), 0) } >= 0 {
        return Ok(());
    }
    let mode = file.metadata()?.mode();
    if let Some(v) = labeler.xattr_value(as_path, mode) {
        if unsafe { libc::fsetxattr(fd, name.as_ptr(), v.as_ptr().cast(), v.len(), 0) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("labelling the mount point {}", String::from_utf8_lossy(as_path)));
        }
    }
    Ok(())
}

/// Sets `security.selinux` on `path` without following a final symlink.
pub fn set(path: &Path, value: &[u8]) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let name = CString::new(XATTR)?;
    if unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("labelling {}", path.display()));
    }
    Ok(())
}

/// The physical root's labels, bootc's last step: `/` as `/`, `/ostree` as `/usr`, `/boot`,
/// then everything unlabelled by its physical path. `deployments` (checkouts, whose content is
/// labelled by its own paths) are skipped. Run after everything is written.
pub fn label_physical_root(labeler: &Labeler, sysroot: &Path, deployments: &[PathBuf]) -> Result<u64> {
    let mut count = 0;
    ensure_one(labeler, sysroot, b"/", &mut count)?;
    let ostree = sysroot.join("ostree");
    if ostree.is_dir() {
        ensure_one(labeler, &ostree, b"/usr", &mut count)?;
    }
    Ok(count + ensure_labelled(labeler, sysroot, b"/", deployments)?)
}
