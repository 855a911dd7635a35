//! Setting an entry's owner, mode, xattrs and mtime on the filesystem, in the order that
//! keeps each: owner first (chown clears setuid bits and security.capability), then mode,
//! then xattrs, then the mtime.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Result};

use crate::tree::Meta;

fn check(r: libc::c_int, what: &str, path: &Path) -> Result<()> {
    if r != 0 {
        bail!("{what} {}: {}", path.display(), io::Error::last_os_error());
    }
    Ok(())
}

fn timespec(secs: i64) -> libc::timespec {
    libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: 0 }
}

/// Sets `meta` on an open regular file; `mtime` overrides the entry's own.
pub fn set_fd(f: &File, meta: &Meta, mtime: Option<i64>) -> Result<()> {
    let fd = f.as_raw_fd();
    let p = Path::new("(open file)");
    unsafe {
        check(libc::fchown(fd, meta.uid, meta.gid), "chown", p)?;
        check(libc::fchmod(fd, meta.mode), "chmod", p)?;
        for (k, v) in &meta.xattrs {
            let k = CString::new(k.clone())?;
            check(libc::fsetxattr(fd, k.as_ptr(), v.as_ptr().cast(), v.len(), 0), "setxattr", p)?;
        }
        let t = timespec(mtime.unwrap_or(meta.mtime));
        check(libc::futimens(fd, [t, t].as_ptr()), "utimens", p)?;
    }
    Ok(())
}

/// Sets `meta` on a path without following a final symlink (whose mode cannot be set).
pub fn set_path(path: &Path, meta: &Meta, is_symlink: bool, mtime: Option<i64>) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    unsafe {
        check(libc::lchown(c.as_ptr(), meta.uid, meta.gid), "chown", path)?;
        if !is_symlink {
            check(libc::chmod(c.as_ptr(), meta.mode), "chmod", path)?;
        }
        for (k, v) in &meta.xattrs {
            let k = CString::new(k.clone())?;
            check(libc::lsetxattr(c.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0), "setxattr", path)?;
        }
        let t = timespec(mtime.unwrap_or(meta.mtime));
        check(libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW), "utimens", path)?;
    }
    Ok(())
}

/// Copies one extended attribute (when `from` has it) from `from` to `to`, not following
/// symlinks.
pub fn copy_xattr(from: &Path, to: &Path, name: &[u8]) -> Result<()> {
    let f = CString::new(from.as_os_str().as_bytes())?;
    let t = CString::new(to.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    let mut buf = vec![0u8; 4096];
    let len = unsafe { libc::lgetxattr(f.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(()),
            _ => bail!("getxattr {}: {e}", from.display()),
        };
    }
    unsafe { check(libc::lsetxattr(t.as_ptr(), n.as_ptr(), buf.as_ptr().cast(), len as usize, 0), "setxattr", to) }
}
