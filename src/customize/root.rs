//! The installed system as the build config changes it: runtime paths (`/etc/passwd`,
//! `/home/alice/.ssh`, `/root/…`) mapped onto the deployment's `/etc` and the stateroot's
//! `/var`, following the image's own links (`/home -> var/home`, `/usr/local -> ../var/usrlocal`)
//! without leaving the deployment. Everything kiln writes there goes through [`SystemRoot::put`]:
//! the one place where labelling (SELinux) will hook in.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub struct SystemRoot {
    /// The deployment's checkout (its `etc` is the system's /etc).
    pub deployment: PathBuf,
    /// The stateroot's `var` (the system's /var).
    pub var: PathBuf,
}

/// What [`SystemRoot::put`] makes.
pub enum Content<'a> {
    File(&'a [u8]),
    Dir,
    /// A symbolic link to this target (its mode is ignored).
    Symlink(&'a str),
}

impl SystemRoot {
    /// Where runtime `path` (absolute) lives on the sysroot, with the image's links followed;
    /// only /etc and /var are writable.
    pub fn locate(&self, path: &str) -> Result<PathBuf> {
        let resolved = self.resolve(path)?;
        let host = self.host(&resolved);
        match resolved.split('/').nth(1) {
            Some("etc") | Some("var") => Ok(host),
            _ => bail!("{path} is {resolved} on the installed system, which is part of the read-only image: only /etc and /var can be written"),
        }
    }

    /// Runtime `path` with the image's links followed (`/root` → `/var/roothome`).
    pub fn resolve_path(&self, path: &str) -> Result<String> {
        self.resolve(path)
    }

    /// The sysroot path of an already resolved runtime path.
    fn host(&self, path: &str) -> PathBuf {
        match path.strip_prefix("/var") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => self.var.join(rest.trim_start_matches('/')),
            _ => self.deployment.join(path.trim_start_matches('/')),
        }
    }

    /// Follows symbolic links in `path` as the running system would, component by component
    /// (a missing component ends the resolution: it is about to be made).
    fn resolve(&self, path: &str) -> Result<String> {
        let mut todo: Vec<String> = path.split('/').filter(|c| !c.is_empty()).rev().map(String::from).collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            done.push(c);
            let runtime = format!("/{}", done.join("/"));
            let Ok(target) = fs::read_link(self.host(&runtime)) else { continue };
            hops += 1;
            if hops > 40 {
                bail!("{path}: too many levels of symbolic links in the image");
            }
            let target = target.to_string_lossy().into_owned();
            done.pop();
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(target.split('/').filter(|c| !c.is_empty()).rev().map(String::from));
        }
        Ok(format!("/{}", done.join("/")))
    }

    /// The bytes of runtime file `path`, if it exists (read from the image's tree for paths
    /// outside /etc and /var).
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let host = self.host(&self.resolve(path)?);
        match fs::read(&host) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {path} of the image ({})", host.display())),
        }
    }

    /// Mode, uid and gid of runtime `path`, if it exists.
    pub fn stat(&self, path: &str) -> Result<Option<(u32, u32, u32)>> {
        use std::os::unix::fs::MetadataExt;
        let host = self.host(&self.resolve(path)?);
        Ok(fs::symlink_metadata(host).ok().map(|m| (m.mode() & 0o7777, m.uid(), m.gid())))
    }

    /// Whether anything (a dangling link too) is at runtime `path`.
    pub fn exists(&self, path: &str) -> Result<bool> {
        let host = self.host(&self.resolve(path)?);
        Ok(host.symlink_metadata().is_ok())
    }

    pub fn is_dir(&self, path: &str) -> Result<bool> {
        Ok(self.host(&self.resolve(path)?).is_dir())
    }

    /// Writes a file (replacing one that exists) or makes a directory (or sets an existing
    /// one's mode and owner) at runtime `path`, under /etc or /var. The parent must exist.
    pub fn put(&self, path: &str, content: Content, mode: u32, uid: u32, gid: u32) -> Result<()> {
        let host = self.locate(path)?;
        let what = || format!("{path} ({})", host.display());
        if !host.parent().is_some_and(Path::is_dir) {
            bail!("cannot write {path}: its parent directory does not exist on the installed system");
        }
        match content {
            Content::File(bytes) => {
                if fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir()) {
                    bail!("cannot write the file {path}: the image has a directory there");
                }
                let _ = fs::remove_file(&host);
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&host)
                    .with_context(|| format!("cannot create {}", what()))?;
                std::io::Write::write_all(&mut f, bytes).with_context(|| format!("writing {}", what()))?;
            }
            Content::Dir => match fs::symlink_metadata(&host) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!("cannot make the directory {path}: the image has a file there"),
                Err(_) => fs::create_dir(&host).with_context(|| format!("cannot create {}", what()))?,
            },
            Content::Symlink(target) => {
                if fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir()) {
                    bail!("cannot make the link {path}: the image has a directory there");
                }
                let _ = fs::remove_file(&host);
                std::os::unix::fs::symlink(target, &host).with_context(|| format!("cannot create {}", what()))?;
                return std::os::unix::fs::lchown(&host, Some(uid), Some(gid)).with_context(|| format!("cannot set the owner of {}", what()));
            }
        }
        std::os::unix::fs::lchown(&host, Some(uid), Some(gid)).with_context(|| format!("cannot set the owner of {}", what()))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode)).with_context(|| format!("cannot set the mode of {}", what()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn paths_follow_the_images_links_into_etc_and_var() {
        let t = std::env::temp_dir().join(format!("kiln-root-{}", std::process::id()));
        let (d, v) = (t.join("deploy"), t.join("var"));
        for p in [d.join("etc"), d.join("usr/lib"), d.join("var"), v.join("home"), v.join("roothome")] {
            fs::create_dir_all(p).unwrap();
        }
        symlink("var/home", d.join("home")).unwrap();
        symlink("var/roothome", d.join("root")).unwrap();
        symlink("../var/usrlocal", d.join("usr/local")).unwrap();
        let r = SystemRoot { deployment: d.clone(), var: v.clone() };
        assert_eq!(r.locate("/home/alice/.ssh").unwrap(), v.join("home/alice/.ssh"));
        assert_eq!(r.locate("/root/.ssh").unwrap(), v.join("roothome/.ssh"));
        assert_eq!(r.locate("/usr/local/bin/x").unwrap(), v.join("usrlocal/bin/x"));
        assert_eq!(r.locate("/etc/passwd").unwrap(), d.join("etc/passwd"));
        assert!(r.locate("/usr/lib/x").unwrap_err().to_string().contains("read-only"));
        assert!(r.locate("/etc/../usr/x").is_err());
        r.put("/home/alice", Content::Dir, 0o700, 1000, 1000).unwrap();
        r.put("/home/alice/f", Content::File(b"x"), 0o640, 1000, 1000).unwrap();
        assert_eq!(fs::read(v.join("home/alice/f")).unwrap(), b"x");
        assert_eq!(r.stat("/home/alice/f").unwrap(), Some((0o640, 1000, 1000)));
        assert!(r.put("/etc/missing/f", Content::File(b""), 0o644, 0, 0).is_err());
        fs::remove_dir_all(&t).unwrap();
    }
}
