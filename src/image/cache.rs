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
        // Older kilns' `.partial-<digest>-<pid>` names: removed when nobody holds them open
        // for writing is unknowable, so only once they are a day old.
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|a| a.as_secs() > 86_400);
            if e.file_name().to_string_lossy().starts_with(".partial-") && old && std::fs::remove_file(e.path()).is_ok() {
                removed.push(e.path());
            }
        }
    }
    removed
}
