//! The disk stage: a partition layout (data in `layouts/`) laid out on an image file, its GPT,
//! filesystems (root and /boot through loop devices, the ESP in userspace), and the mounts the
//! deployment is written through.

pub mod custom;
mod disk_yaml;
pub mod esp;
pub mod image;
pub mod ids;
pub mod layout;
pub mod loopdev;
pub mod mkfs;
pub mod mounts;
pub mod sysroot;
pub mod table;
pub mod verity;

pub use ids::Ids;
pub use layout::{plan, Layout, Partition, Plan, Role, MIB};
pub use mounts::write_mounts;
pub use sysroot::Sysroot;


/// How big a root filesystem to make for `content` bytes of files: room for the filesystem's
/// own metadata and block rounding (a quarter more), the deployment's copies of /etc and /var
/// and the kernel in /boot, and a gigabyte to live in. Returns (size, the least that fits).
pub fn root_size(content: u64) -> (u64, u64) {
    let least = content + content / 4 + 256 * MIB;
    (least + (1 << 30), least)
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
