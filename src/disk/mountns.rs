//! kiln's own mount namespace: the mounts a run makes (the sysroot it writes the deployment
//! through) exist only in it, so they vanish with the process however it ends, SIGKILL and the
//! OOM killer included; the loop devices under them (auto-clearing) detach as the mounts go.
//! Children (mkfs, mke2fs -d) inherit the namespace.
//!
//! Propagation is made private so nothing mounted here reaches the host's namespace (systemd
//! makes `/` shared, and a new namespace starts as a peer of it).

use anyhow::{bail, Context, Result};

/// Moves this process into a new, private mount namespace. A mount namespace belongs to a
/// thread, so this must run before any thread is spawned.
pub fn enter_private() -> Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1);
    if threads > 1 {
        bail!("internal error: the mount namespace must be entered before threads start ({threads} running)");
    }
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(e).context("cannot create a mount namespace for kiln's mounts (kiln needs root, CAP_SYS_ADMIN, to write filesystems)");
    }
    let root = c"/";
    if unsafe { libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot make kiln's mount namespace private");
    }
    Ok(())
}
