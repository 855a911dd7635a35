//! The disk stage: a partition layout (data in `layouts/`) laid out on an image file, its GPT,
//! filesystems (root and /boot through loop devices, the ESP in userspace), and the mounts the
//! deployment is written through.

pub mod esp;
pub mod ids;
pub mod layout;
pub mod loopdev;
pub mod mkfs;
pub mod sysroot;
pub mod table;
pub mod verity;

pub use ids::Ids;
pub use layout::{plan, Layout, Partition, Plan, Role, MIB};
pub use sysroot::Sysroot;

use std::path::Path;

use anyhow::{Context, Result};

/// How big a root filesystem to make for `content` bytes of files: room for the filesystem's
/// own metadata and block rounding (a quarter more), the deployment's copies of /etc and /var
/// and the kernel in /boot, and a gigabyte to live in. Returns (size, the least that fits).
pub fn root_size(content: u64) -> (u64, u64) {
    let least = content + content / 4 + 256 * MIB;
    (least + (1 << 30), least)
}

/// Writes the mounts into the deployment's `/etc`: `fstab` with /boot and the ESP by UUID, as
/// bootc-image-builder writes it.
///
/// systemd before 254 (Debian 12's) also automounts the ESP at `/efi` unless fstab names `/efi`
/// itself; on an ostree deployment whose image has no `/efi` that directory cannot be created,
/// so the generated `efi.automount` can only fail and leave the system degraded. It is masked
/// then; the ESP stays mounted at /boot/efi.
pub fn write_mounts(plan: &Plan, deployment: &Path) -> Result<()> {
    let mut fstab = String::new();
    if let Some(boot) = plan.part(Role::Boot) {
        fstab += &format!("UUID={} /boot {} defaults 1 2\n", boot.fs_uuid, boot.filesystem.as_deref().unwrap_or("ext4"));
    }
    if let Some(esp) = plan.part(Role::Esp) {
        fstab += &format!("UUID={} /boot/efi vfat defaults,uid=0,gid=0,umask=077,shortname=winnt 0 2\n", esp.fs_uuid);
    }
    let etc = deployment.join("etc");
    std::fs::write(etc.join("fstab"), fstab).context("writing the deployment's /etc/fstab")?;
    let units = etc.join("systemd/system");
    let exists = |p: &Path| p.symlink_metadata().is_ok();
    if plan.part(Role::Esp).is_some() && !exists(&deployment.join("efi")) && !exists(&units.join("efi.automount")) {
        std::fs::create_dir_all(&units)
            .and_then(|_| std::os::unix::fs::symlink("/dev/null", units.join("efi.automount")))
            .context("masking efi.automount in the deployment's /etc")?;
    }
    Ok(())
}

/// The kernel arguments the disk contributes: the root by UUID, read-write, and /boot (for
/// FIPS' check of the kernel), as bootc adds them.
pub fn kargs(plan: &Plan) -> Vec<String> {
    let mut k = vec![format!("root=UUID={}", plan.root().fs_uuid), "rw".to_string()];
    if let Some(boot) = plan.part(Role::Boot) {
        k.push(format!("boot=UUID={}", boot.fs_uuid));
    }
    k
}
