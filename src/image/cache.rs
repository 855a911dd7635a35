//! The content-addressed blob cache for registry pulls: `<dir>/blobs/sha256/<hex>`, written
//! to a temporary name and renamed once its digest is verified, so a present file is a good
//! blob and a second bake of the same image downloads nothing.

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
