//! The image's files, read as the image itself would see them.
//!
//! The image is a checked-out tree on the host, so a plain path lookup would follow an absolute
//! symlink such as `BOOTX64.EFI -> /usr/lib/shim/shimx64.efi.signed` onto the *host's* file.
//! Every lookup here resolves symlinks with the image root as `/`, so what is read is always
//! the image's own.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Symlink hops allowed in one lookup, as the kernel allows (MAXSYMLINKS).
const MAX_SYMLINK_HOPS: usize = 40;

/// A directory holding an image's root filesystem.
#[derive(Clone, Debug)]
pub struct ImageRoot {
    root: PathBuf,
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: String,
    /// The entry's path inside the image, without a leading `/`.
    pub path: String,
    pub is_dir: bool,
}

impl ImageRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageRoot { root: root.into() }
    }

    /// The host path of the image's `path` with every symlink resolved inside the image, or
    /// `None` when it does not exist.
    pub fn resolve(&self, path: &str) -> Result<Option<PathBuf>> {
        let mut pending: VecDeque<OsString> = components(Path::new(path)).collect();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                resolved.pop();
                continue;
            }
            let candidate = self.host_path(&resolved).join(&name);
            let meta = match std::fs::symlink_metadata(&candidate) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("reading {}", candidate.display())),
            };
            if !meta.file_type().is_symlink() {
                resolved.push(name);
                continue;
            }
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                bail!("too many symlinks resolving /{path} in the image at {}", self.root.display());
            }
            let target = std::fs::read_link(&candidate)
                .with_context(|| format!("reading the symlink {}", candidate.display()))?;
            if target.is_absolute() {
                resolved.clear();
            }
            for part in components(&target).collect::<Vec<_>>().into_iter().rev() {
                pending.push_front(part);
            }
        }
        Ok(Some(self.host_path(&resolved)))
    }

    fn host_path(&self, components: &[OsString]) -> PathBuf {
        components.iter().fold(self.root.clone(), |p, c| p.join(c))
    }

    /// Like [`resolve`](Self::resolve), but a missing path is an error naming it.
    pub fn require(&self, path: &str) -> Result<PathBuf> {
        self.resolve(path)?.with_context(|| format!("the image has no /{path}"))
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.resolve(path)?.is_some())
    }

    pub fn is_dir(&self, path: &str) -> Result<bool> {
        Ok(self.metadata(path)?.is_some_and(|m| m.is_dir()))
    }

    pub fn metadata(&self, path: &str) -> Result<Option<Metadata>> {
        match self.resolve(path)? {
            Some(host) => Ok(Some(std::fs::metadata(&host).with_context(|| format!("reading {}", host.display()))?)),
            None => Ok(None),
        }
    }

    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        let host = self.require(path)?;
        std::fs::read(&host).with_context(|| format!("reading the image's /{path} ({})", host.display()))
    }

    /// The entries of a directory, sorted by name; symlinked entries are resolved.
    pub fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let host = self.require(path)?;
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&host).with_context(|| format!("listing {}", host.display()))? {
            let entry = entry.with_context(|| format!("listing {}", host.display()))?;
            let name = entry.file_name().into_string().map_err(|n| {
                anyhow::anyhow!("the image's /{path} holds a name that is not UTF-8: {n:?}")
            })?;
            let child = join(path, &name);
            let is_dir = self.is_dir(&child)?;
            entries.push(DirEntry { name, path: child, is_dir });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Every regular file below `path`, depth first in name order, as paths inside the image.
    pub fn walk_files(&self, path: &str) -> Result<Vec<String>> {
        let mut files = Vec::new();
        for entry in self.list_dir(path)? {
            if entry.is_dir {
                files.extend(self.walk_files(&entry.path)?);
            } else {
                files.push(entry.path);
            }
        }
        Ok(files)
    }
}

/// Joins image paths with `/`.
pub fn join(dir: &str, name: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The named components of a path (no root, no `.`), `..` kept for the resolver to apply.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from_vec(b"..".to_vec())),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_and_relative_links_stay_inside_the_image() {
        let dir = std::env::temp_dir().join(format!("kiln-image-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("usr/lib/shim")).unwrap();
        std::fs::write(dir.join("usr/lib/shim/shim.signed"), b"image shim").unwrap();
        std::fs::create_dir_all(dir.join("efi")).unwrap();
        symlink("/usr/lib/shim/shim.signed", dir.join("efi/abs")).unwrap();
        symlink("../usr/lib/shim/shim.signed", dir.join("efi/rel")).unwrap();
        symlink("../../../../../../etc/hostname", dir.join("efi/escape")).unwrap();
        symlink("/usr/lib", dir.join("lib")).unwrap();
        let image = ImageRoot::new(&dir);
        assert_eq!(image.read("efi/abs").unwrap(), b"image shim");
        assert_eq!(image.read("/efi/rel").unwrap(), b"image shim");
        assert_eq!(image.read("lib/shim/shim.signed").unwrap(), b"image shim");
        // `..` stops at the image root, so this names the image's /etc/hostname, which is absent.
        assert!(image.resolve("efi/escape").unwrap().is_none());
        assert!(image.resolve("efi/abs/below-a-file").unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
