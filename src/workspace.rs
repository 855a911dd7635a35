//! Where a run keeps its state, and how a later run tells what a dead kiln left from what a
//! live one is using.
//!
//! - The output directory is claimed for the run with an exclusive `flock` on the directory
//!   itself (no lock file to leave behind): a second kiln writing into it is refused, naming
//!   the first; what a dead kiln left there (partial files, work directories of older kilns)
//!   is removed, saying so.
//! - Mount points live in a run directory under the runtime directory (`/run/kiln/<pid>`,
//!   `$KILN_RUNTIME_DIR`), never beside the outputs. It is locked the same way for the run's
//!   life and removed at its end; one whose kiln died is removed by the next run.
//!
//! The mounts themselves live in kiln's own mount namespace (`disk::mountns`), so they never
//! outlive the process; what can outlive it is an empty mount point.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::pending::{self, lock, lock_if_abandoned, same_file};
use crate::progress::Progress;

/// An output directory this run has to itself, until dropped. The directories the run
/// made (the output directory, the outputs' ones) are removed when dropped if they are still
/// empty, so a failed run leaves nothing where nothing was.
pub struct OutputDir {
    made: Vec<PathBuf>,
    _lock: File,
}

impl OutputDir {
    /// Makes `path` if needed and claims it; refuses when another kiln holds it. Stale state
    /// in it and in `subdirs` (the outputs' directories) is removed.
    pub fn claim(path: &Path, subdirs: &[PathBuf], progress: &Progress) -> Result<OutputDir> {
        // Innermost first, so that dropping removes the outputs' directories before their parent.
        let made: Vec<PathBuf> =
            subdirs.iter().map(PathBuf::as_path).chain(std::iter::once(path)).filter(|d| !d.exists()).map(Path::to_path_buf).collect();
        std::fs::create_dir_all(path).with_context(|| format!("cannot create the output directory {}", path.display()))?;
        let dir = File::open(path).with_context(|| format!("cannot open the output directory {}", path.display()))?;
        if !lock(&dir, false)? {
            let holder = lock_holder(&dir).map(|pid| format!(" (pid {pid})")).unwrap_or_default();
            bail!(
                "another kiln{holder} is writing into {}: wait for it to finish, or choose another --output",
                path.display()
            );
        }
        for d in std::iter::once(path).chain(subdirs.iter().map(PathBuf::as_path)) {
            remove_stale(d, progress);
        }
        Ok(OutputDir { made, _lock: dir })
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        for d in &self.made {
            // Fails, leaving it, when an output is in it.
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// This run's own directory for mount points, removed when dropped (after what is mounted
/// in it has been unmounted).
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Creates the run directory, first removing those of kilns that died.
    pub fn create(progress: &Progress) -> Result<RunDir> {
        let base = runtime_dir();
        std::fs::create_dir_all(&base).with_context(|| format!("cannot create kiln's runtime directory {}", base.display()))?;
        remove_dead_runs(&base, progress);
        let path = base.join(std::process::id().to_string());
        for _ in 0..8 {
            match std::fs::create_dir(&path) {
                Ok(()) => {}
                // A dead kiln had this pid and is still being swept, or its directory is held.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if lock_if_abandoned(&path).is_none() {
                        bail!("{} is in use by another process", path.display());
                    }
                    let _ = std::fs::remove_dir_all(&path);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
            let dir = match File::open(&path) {
                Ok(dir) => dir,
                // Swept by a kiln that took this pid's earlier owner for dead: make it again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
            };
            lock(&dir, true)?;
            // Another run's sweep may have taken it between its creation and the lock.
            if same_file(&dir, &path) {
                return Ok(RunDir { path, _lock: dir });
            }
        }
        bail!("cannot create the run directory {}", path.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    /// Removes the (by now empty) mount points and the directory; never reaches into a
    /// filesystem still mounted on one.
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.path).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(entry.path());
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Removes the run directories under `base` of kilns that died.
fn remove_dead_runs(base: &Path, progress: &Progress) {
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let path = entry.path();
        // A live kiln's directory is skipped even before it is locked: the window between
        // its creation and its lock is where a sweep would otherwise take it.
        if entry.file_type().is_ok_and(|t| t.is_dir()) && !named_for_a_live_process(&entry.file_name()) {
            if let Some(_held) = lock_if_abandoned(&path) {
                remove_abandoned_dir(&path, progress);
            }
        }
    }
}

/// Whether a run directory's name is the pid of a running process (ours excluded: a dead
/// kiln that had our pid left it).
fn named_for_a_live_process(name: &std::ffi::OsStr) -> bool {
    let Some(pid) = name.to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else { return false };
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    // Signal 0 only checks: EPERM still means the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `$KILN_RUNTIME_DIR`, else `/run/kiln` for root, else `$XDG_RUNTIME_DIR/kiln`, else the
/// temporary directory's `kiln-<uid>`.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_RUNTIME_DIR") {
        return PathBuf::from(d);
    }
    let uid = unsafe { libc::geteuid() };
    if uid == 0 && Path::new("/run").is_dir() {
        return PathBuf::from("/run/kiln");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("kiln"),
        _ => std::env::temp_dir().join(format!("kiln-{uid}")),
    }
}

/// Removes what dead kilns left in `dir`: partial files nobody holds, and the names older
/// kilns used (`.disk.raw.kiln-partial`, `.kiln-sysroot-<pid>` work directories), which only
/// the output directory's holder can own.
fn remove_stale(dir: &Path, progress: &Progress) {
    for p in pending::sweep(dir) {
        progress.info(&format!("removed {}, a partial file left by a kiln that is no longer running", p.display()));
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.as_bytes();
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && name.starts_with(b".kiln-sysroot-") {
            remove_abandoned_dir(&path, progress);
        } else if !is_dir && (name.ends_with(b".kiln-partial") || name.starts_with(b".kiln-write-test-")) && std::fs::remove_file(&path).is_ok() {
            progress.info(&format!("removed {}, a partial file left by a kiln that is no longer running", path.display()));
        }
    }
}

/// Removes a dead kiln's directory, unless something is still mounted in it (kilns before
/// mount namespaces left their mounts): that is left for the user, with the command to run.
fn remove_abandoned_dir(path: &Path, progress: &Progress) {
    let mounted = mounts_under(path);
    if !mounted.is_empty() {
        progress.warn(&format!(
            "{} was left by a kiln that is no longer running and still has mounts ({}): unmount them with `umount -R {}`, then remove it",
            path.display(),
            mounted.join(", "),
            path.display()
        ));
        return;
    }
    let result = std::fs::remove_dir_all(path).or_else(|_| {
        // Older kilns staged deployments here, which ostree leaves immutable.
        crate::disk::sysroot::clear_immutable_deployments(path);
        std::fs::remove_dir_all(path)
    });
    match result {
        Ok(()) => progress.info(&format!("removed {}, left by a kiln that is no longer running", path.display())),
        Err(e) => progress.warn(&format!("cannot remove {} (left by a kiln that is no longer running): {e}", path.display())),
    }
}

/// Mount points at or under `dir`, from this process's view of the mounts.
fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(dir) = dir.canonicalize() else { return Vec::new() };
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect()
}

/// `/proc/*/mountinfo` escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pid holding a `flock` on `file`, from `/proc/locks`.
fn lock_holder(file: &File) -> Option<u32> {
    let md = file.metadata().ok()?;
    let want = format!("{:02x}:{:02x}:{}", libc::major(md.dev()), libc::minor(md.dev()), md.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str())).then(|| f.get(4)?.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory whose kiln is alive but has not locked it yet (just made) is left;
    /// one whose kiln is gone is removed.
    #[test]
    fn only_dead_kilns_run_directories_are_swept() {
        let base = std::env::temp_dir().join(format!("kiln-rundir-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mut live = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        dead.wait().unwrap();
        for pid in [live.id(), dead.id()] {
            std::fs::create_dir_all(base.join(pid.to_string()).join("sysroot")).unwrap();
        }
        remove_dead_runs(&base, &Progress::quiet());
        let live_kept = base.join(live.id().to_string()).exists();
        let dead_kept = base.join(dead.id().to_string()).exists();
        live.kill().unwrap();
        live.wait().unwrap();
        std::fs::remove_dir_all(&base).unwrap();
        assert!(live_kept, "a live kiln's unlocked run directory was swept");
        assert!(!dead_kept, "a dead kiln's run directory was left");
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mount_path(r"/plain\04"), r"/plain\04");
    }
}
