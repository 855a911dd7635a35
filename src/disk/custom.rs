//! The build config's disk customizations turned into a [`Layout`], the same data
//! `layouts/*.toml` give, as bootc-image-builder turns them into its partition table
//! (`osbuild/images pkg/disk`, `NewPartitionTable` and `NewCustomPartitionTable`):
//!
//! - `[[customizations.filesystem]]` changes the base layout: `/` sets the root's minimum,
//!   `/boot` grows (or adds) the boot partition, every other mountpoint becomes a partition of
//!   the root's filesystem type placed before the root, which stays last and takes the rest.
//! - `[customizations.disk]` replaces it: the platform's boot partitions (BIOS boot, and an ESP
//!   of the base layout's size unless the config has `/boot/efi`), then the config's
//!   partitions in order, then a root partition if none has `/`.

use anyhow::{bail, Result};

use super::layout::{Layout, PartitionSpec, Role, SubvolumeSpec, MIB};
use crate::config::{DiskConfig, PartitionContent};

const XBOOTLDR: &str = "BC13C2FF-59E6-4262-A352-B275FD6F7172";
const SWAP: &str = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F";

fn mib(bytes: u64) -> String {
    format!("{}MiB", bytes.div_ceil(MIB).max(1))
}

/// The layout `disk` asks for, starting from `base` (the image's or the platform's), for a
/// root of type `root_fs`.
pub fn apply(base: &Layout, disk: &DiskConfig, root_fs: &str) -> Result<Layout> {
    let layout = match disk {
        DiskConfig::Filesystems(mounts) => {
            let mut l = base.clone();
            for m in mounts {
                match m.mountpoint.as_str() {
                    "/" => {
                        let root = l.partitions.iter_mut().find(|p| p.role == Role::Root).expect("validated: a layout has a root");
                        root.min_size = Some(mib(m.min_size));
                    }
                    "/boot" => match l.partitions.iter_mut().find(|p| p.role == Role::Boot) {
                        Some(boot) => {
                            let now = super::layout::parse_size(&boot.size)?;
                            boot.size = mib(now.max(m.min_size));
                        }
                        None => {
                            let at = l.partitions.iter().position(|p| p.role == Role::Root).unwrap_or(l.partitions.len());
                            let fs = if root_fs == "xfs" { "xfs" } else { "ext4" };
                            l.partitions.insert(at, boot_spec(m.min_size, fs));
                        }
                    },
                    mp => {
                        if root_fs == "btrfs" {
                            bail!(
                                "customizations.filesystem: {mp}: with a btrfs root only / and /boot can be sized (as in bootc-image-builder); give {mp} a btrfs subvolume with [customizations.disk]"
                            );
                        }
                        let at = l.partitions.iter().position(|p| p.role == Role::Root).unwrap_or(l.partitions.len());
                        l.partitions.insert(
                            at,
                            PartitionSpec {
                                role: Role::Data,
                                size: mib(m.min_size),
                                filesystem: Some(root_fs.to_string()),
                                mountpoint: Some(mp.to_string()),
                                ..PartitionSpec::default()
                            },
                        );
                    }
                }
            }
            l
        }
        DiskConfig::Partitions(table) => {
            let mut parts: Vec<PartitionSpec> = base.partitions.iter().filter(|p| p.role == Role::BiosBoot).cloned().collect();
            let has_esp = table.partitions.iter().any(|p| matches!(&p.content, PartitionContent::Filesystem { mountpoint, .. } if mountpoint == "/boot/efi"));
            if !has_esp {
                parts.extend(base.partitions.iter().filter(|p| p.role == Role::Esp).cloned());
            }
            let mut has_root = false;
            for (i, p) in table.partitions.iter().enumerate() {
                let at = format!("customizations.disk.partitions[{i}]");
                let mut spec = PartitionSpec {
                    role: Role::Data,
                    name: p.part_label.clone().unwrap_or_default(),
                    type_guid: p.part_type.clone(),
                    uuid: p.part_uuid.clone(),
                    size: mib(p.min_size),
                    ..PartitionSpec::default()
                };
                match &p.content {
                    PartitionContent::Filesystem { mountpoint, fs_type, label } => {
                        spec.label = label.clone();
                        let fs = fs_type.clone().unwrap_or_else(|| root_fs.to_string());
                        match mountpoint.as_str() {
                            "/" => {
                                if fs != root_fs {
                                    bail!("{at}.fs_type: the root is {fs} here but {root_fs} for the bake: make them agree (--rootfs {fs}, or fs_type = \"{root_fs}\")");
                                }
                                has_root = true;
                                spec.role = Role::Root;
                                spec.min_size = Some(spec.size.clone());
                                spec.size = "rest".into();
                                spec.label = spec.label.or(Some("root".into()));
                            }
                            "/boot" => {
                                spec.role = Role::Boot;
                                spec.type_guid = spec.type_guid.or(Some(XBOOTLDR.into()));
                                spec.filesystem = Some(fs);
                                spec.label = spec.label.or(Some("boot".into()));
                            }
                            "/boot/efi" => {
                                spec.role = Role::Esp;
                                spec.type_guid = spec.type_guid.or(Some(base_esp_type(base)));
                                spec.filesystem = Some("vfat".into());
                            }
                            m => {
                                spec.mountpoint = Some(m.to_string());
                                spec.filesystem = Some(fs);
                            }
                        }
                    }
                    PartitionContent::Swap { label } => {
                        spec.filesystem = Some("swap".into());
                        spec.label = label.clone();
                        spec.type_guid = spec.type_guid.or(Some(SWAP.into()));
                    }
                    PartitionContent::Btrfs { subvolumes } => {
                        if subvolumes.iter().any(|(_, m)| m == "/") {
                            bail!(
                                "{at}.subvolumes: kiln cannot put the root into a btrfs subvolume yet: give / a plain partition (type \"plain\", fs_type \"btrfs\"), and keep the subvolumes for directories under /var"
                            );
                        }
                        spec.filesystem = Some("btrfs".into());
                        spec.subvolumes = subvolumes.iter().map(|(n, m)| SubvolumeSpec { name: n.clone(), mountpoint: m.clone() }).collect();
                    }
                    PartitionContent::Empty => {}
                }
                parts.push(spec);
            }
            if !has_root {
                // bib's EnsureRootFilesystem: a root of the default type, last.
                parts.push(PartitionSpec { role: Role::Root, name: String::new(), size: "rest".into(), label: Some("root".into()), ..PartitionSpec::default() });
            }
            Layout {
                description: Some("the build config's [customizations.disk]".into()),
                min_disk_size: table.min_size.map(|s| format!("{s}")),
                disk_uuid: None,
                mounts: base.mounts,
                partitions: parts,
            }
        }
    };
    layout.validate().map_err(|e| e.context("the partition table of the build config"))?;
    Ok(layout)
}

fn base_esp_type(base: &Layout) -> String {
    base.partitions
        .iter()
        .find(|p| p.role == Role::Esp)
        .and_then(|p| p.type_guid.clone())
        .unwrap_or_else(|| "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".into())
}

fn boot_spec(size: u64, fs: &str) -> PartitionSpec {
    PartitionSpec {
        role: Role::Boot,
        name: "boot".into(),
        type_guid: Some(XBOOTLDR.into()),
        size: mib(size),
        filesystem: Some(fs.into()),
        label: Some("boot".into()),
        ..PartitionSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskTable, MountSize, PartitionConfig};
    use crate::disk::{plan, Ids};

    fn fs(list: &[(&str, u64)]) -> DiskConfig {
        DiskConfig::Filesystems(list.iter().map(|(m, s)| MountSize { mountpoint: m.to_string(), min_size: *s }).collect())
    }

    #[test]
    fn filesystem_mountpoints_become_partitions_before_the_root() {
        let base = Layout::load("default").unwrap();
        let l = apply(&base, &fs(&[("/", 12 << 30), ("/var/lib/data", 2 << 30), ("/boot", 2 << 30)]), "ext4").unwrap();
        let roles: Vec<Role> = l.partitions.iter().map(|p| p.role).collect();
        assert_eq!(roles, [Role::BiosBoot, Role::Esp, Role::Boot, Role::Data, Role::Root]);
        let p = plan(&l, "ext4", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 1 << 30, 3 << 30, None, &Ids::from_seed(Some("s"))).unwrap();
        assert_eq!(p.partitions[3].size, 2 << 30);
        assert_eq!(p.partitions[3].mountpoint.as_deref(), Some("/var/lib/data"));
        assert_eq!(p.partitions[3].type_guid, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        assert_eq!(p.partitions[2].size, 2 << 30);
        assert_eq!(p.root().size, 12 << 30, "the root's minimum wins over the content's size");
        // A table larger than --size is refused.
        let e = plan(&l, "ext4", "x", 1 << 30, 3 << 30, Some(8 << 30), &Ids::from_seed(None)).unwrap_err().to_string();
        assert!(e.contains("does not fit --size 8192"), "{e}");
        let e = apply(&base, &fs(&[("/var/lib/data", 1 << 30)]), "btrfs").unwrap_err().to_string();
        assert!(e.contains("btrfs root"), "{e}");
    }

    #[test]
    fn a_disk_table_replaces_the_layout_keeping_the_boot_partitions() {
        let base = Layout::load("default").unwrap();
        let table = DiskTable {
            min_size: Some(20 << 30),
            partitions: vec![
                PartitionConfig { min_size: 123 << 20, content: PartitionContent::Swap { label: Some("swap".into()) }, ..Default::default() },
                PartitionConfig {
                    min_size: 5 << 30,
                    part_label: Some("data".into()),
                    part_uuid: Some("11111111-2222-4333-8444-555555555555".into()),
                    content: PartitionContent::Filesystem { mountpoint: "/var/log".into(), fs_type: Some("xfs".into()), label: None },
                    ..Default::default()
                },
            ],
        };
        let l = apply(&base, &DiskConfig::Partitions(table), "ext4").unwrap();
        let roles: Vec<Role> = l.partitions.iter().map(|p| p.role).collect();
        assert_eq!(roles, [Role::BiosBoot, Role::Esp, Role::Data, Role::Data, Role::Root]);
        let p = plan(&l, "ext4", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 1 << 30, 2 << 30, None, &Ids::from_seed(Some("s"))).unwrap();
        assert_eq!(p.size, 20 << 30, "the disk's minsize");
        assert_eq!(p.partitions[2].type_guid, SWAP);
        assert_eq!(p.partitions[3].guid, "11111111-2222-4333-8444-555555555555");
        assert_eq!(p.partitions[3].name, "data");
        assert_eq!(p.partitions[1].size, 501 << 20, "the base layout's ESP");
    }
}
