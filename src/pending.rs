//! Files that get their name only once they are complete.
//!
//! A file is created unnamed in the directory it will live in (`O_TMPFILE`) and linked in under
//! its name once written and synced. A run that dies however it dies (SIGKILL, the OOM killer,
//! a cancelled CI job) leaves no file behind: the kernel frees an unnamed file when its last
//! user goes, a loop device attached to it included.
//!
//! Where the filesystem cannot make unnamed files (some network and FUSE filesystems), the
//! file is written under a partial name, `.kiln-partial-<pid>-<n>-<name>`, which its writer
//! holds an exclusive `flock` on for its whole life; [`sweep`] removes the partial files whose
//! writer is gone. The lock, not the pid, tells them apart: it holds across pid namespaces
//! (CI containers sharing a cache directory) and does not mistake a reused pid for a writer.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};

/// How partial names start.
pub const PARTIAL_PREFIX: &str = ".kiln-partial-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written that has no name yet (or only a partial one).
pub struct PendingFile {
    file: File,
    /// The fallback's partial name; `None` when the file is unnamed.
    partial: Option<PathBuf>,
}

impl PendingFile {
    /// A new, empty file in `dir`, for a name in the same directory or filesystem; `hint` (the
    /// final file name) is part of a partial name.
    pub fn create(dir: &Path, hint: &str) -> Result<PendingFile> {
        let unnamed = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o666)
            .custom_flags(libc::O_TMPFILE)
            .open(dir);
        match unnamed {
            Ok(file) => {
                lock(&file, true)?;
                Ok(PendingFile { file, partial: None })
            }
            // EOPNOTSUPP: the filesystem cannot; EISDIR: a kernel without O_TMPFILE.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => create_partial(dir, hint),
            Err(e) => Err(e).with_context(|| format!("cannot create a file in {}", dir.display())),
        }
    }

    /// A new file for `dest`, in its directory or, when that does not exist yet, in the
    /// nearest directory above it that does: the missing directories are made by
    /// [`PendingFile::persist`], so a run that dies leaves no directory either.
    pub fn create_for(dest: &Path) -> Result<PendingFile> {
        let mut dir = dest.parent().context("an output path needs a directory")?;
        while !dir.is_dir() {
            dir = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        }
        PendingFile::create(dir, &dest.file_name().unwrap_or_default().to_string_lossy())
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Syncs the file and gives it the name `dest`, making its directory; a file already
    /// named `dest` is replaced in one step (it stays whole until then).
    pub fn persist(mut self, dest: &Path) -> Result<()> {
        self.file.sync_all().with_context(|| format!("writing {} failed (is its disk full?)", dest.display()))?;
        let dir = dest.parent().context("an output path needs a directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        match self.partial.take() {
            Some(partial) => {
                if let Err(e) = std::fs::rename(&partial, dest) {
                    self.partial = Some(partial);
                    return Err(e).with_context(|| format!("cannot name {}", dest.display()));
                }
            }
            None => match link(&self.file, dest) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    // Linked beside it, then renamed over it: the old file stays whole until
                    // the new one takes its name. The link is locked (by our descriptor), so a
                    // sweep leaves it alone while we live.
                    let tmp = dir.join(partial_name(&dest.file_name().unwrap_or_default().to_string_lossy()));
                    link(&self.file, &tmp).with_context(|| format!("cannot name {}", tmp.display()))?;
                    if let Err(e) = std::fs::rename(&tmp, dest) {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e).with_context(|| format!("cannot replace {}", dest.display()));
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("cannot name {}", dest.display())),
            },
        }
        File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if let Some(p) = &self.partial {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn partial_name(hint: &str) -> String {
    format!("{PARTIAL_PREFIX}{}-{}-{hint}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn create_partial(dir: &Path, hint: &str) -> Result<PendingFile> {
    for _ in 0..8 {
        let path = dir.join(partial_name(hint));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        lock(&file, true)?;
        // A sweep may have taken the name between its creation and the lock.
        if same_file(&file, &path) {
            return Ok(PendingFile { file, partial: Some(path) });
        }
    }
    bail!("cannot create a partial file in {}: it keeps disappearing", dir.display())
}

/// Links an open file (unnamed or not) under `dest`; fails with EEXIST when `dest` exists.
fn link(file: &File, dest: &Path) -> std::io::Result<()> {
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
    let to = std::ffi::CString::new(dest.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    if unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// An exclusive `flock` on `file` (a file or a directory), waiting for it or not.
pub fn lock(file: &File, wait: bool) -> Result<bool> {
    let op = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    loop {
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e).context("cannot lock"),
        }
    }
}

/// Whether `path` still names the open `file`.
pub fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Opens `path` and takes its lock without waiting: `Some` (holding the lock) when nobody
/// holds it, i.e. whoever made it is gone.
pub fn lock_if_abandoned(path: &Path) -> Option<File> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
    (lock(&file, false).ok()? && same_file(&file, path)).then_some(file)
}

/// Removes from `dir` the partial files whose writers are gone; returns their paths.
pub fn sweep(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if !entry.file_name().as_bytes().starts_with(PARTIAL_PREFIX.as_bytes()) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Some(_held) = lock_if_abandoned(&path) {
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-pending-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn unnamed_until_persisted_and_gone_when_dropped() {
        let d = scratch("unnamed");
        let p = PendingFile::create_for(&d.join("sub/disk.raw")).unwrap();
        assert!(p.partial.is_none(), "this filesystem makes unnamed files");
        std::io::Write::write_all(&mut p.file(), b"disk").unwrap();
        assert_eq!(names(&d), Vec::<String>::new());
        p.persist(&d.join("sub/disk.raw")).unwrap();
        assert_eq!(std::fs::read(d.join("sub/disk.raw")).unwrap(), b"disk");

        // Replacing keeps the old file whole until the new one takes the name.
        let p = PendingFile::create_for(&d.join("sub/disk.raw")).unwrap();
        std::io::Write::write_all(&mut p.file(), b"new disk").unwrap();
        assert_eq!(std::fs::read(d.join("sub/disk.raw")).unwrap(), b"disk");
        p.persist(&d.join("sub/disk.raw")).unwrap();
        assert_eq!(std::fs::read(d.join("sub/disk.raw")).unwrap(), b"new disk");
        assert_eq!(names(&d.join("sub")), vec!["disk.raw"]);

        drop(PendingFile::create(&d, "x").unwrap());
        assert_eq!(names(&d), vec!["sub"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The fallback: a partial name, removed on drop, renamed on persist; a sweep removes only
    /// the partial files nobody holds.
    #[test]
    fn partial_names_are_swept_only_when_abandoned() {
        let d = scratch("partial");
        let live = create_partial(&d, "disk.raw").unwrap();
        assert!(live.partial.is_some());
        let abandoned = d.join(partial_name("disk.qcow2"));
        std::fs::write(&abandoned, b"left by a dead kiln").unwrap();
        std::fs::write(d.join("precious"), b"user's").unwrap();
        assert_eq!(sweep(&d), vec![abandoned.clone()]);
        assert!(live.partial.as_ref().unwrap().exists(), "a live writer's partial file was swept");
        assert_eq!(names(&d).len(), 2);

        live.persist(&d.join("disk.raw")).unwrap();
        assert_eq!(names(&d), vec!["disk.raw", "precious"]);
        drop(create_partial(&d, "gone").unwrap());
        assert_eq!(names(&d), vec!["disk.raw", "precious"]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
