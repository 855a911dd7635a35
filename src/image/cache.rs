//! The content-addressed blob cache for registry pulls: `<dir>/blobs/sha256/<hex>`. A blob is
//! downloaded into a file with no name (`pending`) and named once its size and digest are
//! verified, so a present file is a good blob, a reader never sees a partial one, a second
//! bake of the same image downloads nothing, and kilns pulling the same image at once (two CI
//! jobs sharing a cache) each store a whole copy under the one name, the last replacing the
//! first in one step.

use std::path::{Path, PathBuf};

/// `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`, else
/// `/var/cache/kiln`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("kiln");
    }
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h).join(".cache/kiln"),
        _ => PathBuf::from("/var/cache/kiln"),
    }
}

pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let (algo, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    dir.join("blobs").join(algo).join(hex)
}

/// Removes the partial downloads dead kilns left (only where the filesystem cannot make
/// unnamed files, and from kilns before those); returns their paths.
pub fn sweep(dir: &Path) -> Vec<PathBuf> {
    let blobs = dir.join("blobs");
    let mut removed = Vec::new();
    for algo in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
        let d = algo.path();
        removed.extend(crate::pending::sweep(&d));
        // Older kilns' `.partial-<digest>-<pid>` names carry no lock, so whether their writer
        // still runs cannot be told: they go once they are a day old.
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|a| a.as_secs() > 86_400);
            if e.file_name().to_string_lossy().starts_with(".partial-") && old && std::fs::remove_file(e.path()).is_ok() {
                removed.push(e.path());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_only_what_dead_kilns_left() {
        let dir = std::env::temp_dir().join(format!("kiln-cache-sweep-{}", std::process::id()));
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let write = |name: &str| {
            std::fs::write(blobs.join(name), name).unwrap();
            blobs.join(name)
        };
        let blob = write("4d0f2c6a");
        let fresh = write(".partial-4d0f2c6a-77");
        let stale = write(".partial-4d0f2c6a-66");
        let abandoned = write(&format!("{}66-0-4d0f2c6a", crate::pending::PARTIAL_PREFIX));
        let live = crate::pending::PendingFile::create(&blobs, "4d0f2c6a").unwrap();
        // Two days old.
        let c = std::ffi::CString::new(stale.as_os_str().as_encoded_bytes()).unwrap();
        let t = libc::timespec { tv_sec: 1, tv_nsec: 0 };
        assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) }, 0);

        let mut removed = sweep(&dir);
        removed.sort();
        assert_eq!(removed, vec![abandoned, stale]);
        assert!(blob.exists() && fresh.exists());
        drop(live);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
