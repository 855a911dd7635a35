//! Partition layouts (`layouts/*.toml`, built into the binary, or a file the user names) and
//! the plan they become for one disk: offsets, sizes, GUIDs and filesystem UUIDs.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use super::ids::Ids;

pub const MIB: u64 = 1 << 20;
/// Partitions start at 1 MiB and are MiB-aligned; the backup GPT needs the last 33 sectors.
const FIRST: u64 = MIB;
/// The end of a disk holds the GPT's backup (rounded up to a MiB).
pub(crate) const GPT_TAIL: u64 = MIB;

const BUILTIN: &[(&str, &str)] = &[
    ("default", include_str!("../../layouts/default.toml")),
    ("bootc", include_str!("../../layouts/bootc.toml")),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    BiosBoot,
    Esp,
    Boot,
    Root,
    /// Any other partition: a filesystem with a mountpoint, swap, btrfs subvolumes, or none.
    #[default]
    Data,
}

impl Role {
    /// The firmware a partition of this role is there for, if it serves one.
    pub fn firmware(self) -> Option<&'static str> {
        match self {
            Role::BiosBoot => Some("bios"),
            Role::Esp => Some("uefi"),
            _ => None,
        }
    }
}

/// How the installed system learns its mounts (bootc-image-builder's `mount_configuration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MountScheme {
    /// Lines in the deployment's /etc/fstab (what bootc writes for /boot).
    #[default]
    Fstab,
    /// systemd .mount and .swap units in the deployment's /etc/systemd/system.
    Units,
    /// Nothing: the image mounts its partitions itself.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubvolumeSpec {
    pub name: String,
    pub mountpoint: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    pub role: Role,
    /// The GPT partition name (none by default).
    #[serde(default)]
    pub name: String,
    /// The GPT type GUID; a root partition without one gets the platform's.
    #[serde(rename = "type")]
    pub type_guid: Option<String>,
    /// `<n>MiB`, `<n>GiB`, or `rest` (the root only).
    pub size: String,
    /// The least a `rest` root may have (beyond what the image's content needs).
    pub min_size: Option<String>,
    /// Fixed filesystem (the root's is chosen per bake): ext4, xfs, btrfs, vfat, swap; none
    /// leaves a data partition empty.
    pub filesystem: Option<String>,
    /// The filesystem label.
    pub label: Option<String>,
    /// Where a data partition is mounted on the installed system.
    pub mountpoint: Option<String>,
    /// Mount options (default `defaults`).
    pub options: Option<String>,
    /// A fixed partition GUID (else one is made from the seed).
    pub uuid: Option<String>,
    /// A fixed filesystem UUID (else one is made from the seed).
    pub fs_uuid: Option<String>,
    /// btrfs subvolumes made in a data partition, each mounted.
    #[serde(default, rename = "subvolume")]
    pub subvolumes: Vec<SubvolumeSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub description: Option<String>,
    /// The least the whole disk may be.
    pub min_disk_size: Option<String>,
    /// A fixed disk GUID (else one is made from the seed).
    pub disk_uuid: Option<String>,
    #[serde(default)]
    pub mounts: MountScheme,
    #[serde(rename = "partition")]
    pub partitions: Vec<PartitionSpec>,
}

impl Layout {
    /// A built-in layout by name, or a TOML file.
    pub fn load(name_or_file: &str) -> Result<Layout> {
        let (what, text) = match BUILTIN.iter().find(|(n, _)| *n == name_or_file) {
            Some((n, t)) => (format!("built-in layout {n}"), t.to_string()),
            None if Path::new(name_or_file).is_file() => (
                format!("layout file {name_or_file}"),
                std::fs::read_to_string(name_or_file).with_context(|| format!("cannot read {name_or_file}"))?,
            ),
            None => {
                let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                bail!("unknown layout {name_or_file:?}: use one of {} or the path of a layout TOML file", names.join(", "));
            }
        };
        let layout: Layout = toml::from_str(&text).with_context(|| format!("{what} is not a valid layout"))?;
        layout.validate().with_context(|| what)?;
        Ok(layout)
    }

    pub fn validate(&self) -> Result<()> {
        let count = |r: Role| self.partitions.iter().filter(|p| p.role == r).count();
        ensure!(count(Role::Root) == 1, "a layout needs exactly one root partition");
        for r in [Role::BiosBoot, Role::Esp, Role::Boot] {
            ensure!(count(r) <= 1, "a layout may have at most one {r:?} partition");
        }
        ensure!(count(Role::Esp) + count(Role::BiosBoot) > 0, "a layout needs an ESP or a BIOS boot partition to boot");
        let mut mountpoints = std::collections::BTreeSet::new();
        for (i, p) in self.partitions.iter().enumerate() {
            let what = p.describe(i);
            let rest = p.size == "rest";
            ensure!(!rest || p.role == Role::Root, "{what}: only the root may take the rest of the disk");
            if !rest {
                parse_size(&p.size).with_context(|| what.clone())?;
            }
            if let Some(m) = &p.min_size {
                ensure!(rest, "{what}: min_size is for a root that takes the rest of the disk");
                parse_size(m).with_context(|| what.clone())?;
            }
            ensure!(p.name.encode_utf16().count() <= 36, "partition name {:?} is longer than GPT's 36 characters", p.name);
            for g in p.type_guid.iter().chain(&p.uuid) {
                uuid::Uuid::try_parse(g).map_err(|_| anyhow::anyhow!("{what}: {g:?} is not a GUID"))?;
            }
            let fs = p.filesystem.as_deref();
            if p.role == Role::Data {
                ensure!(
                    matches!(fs, None | Some("ext4" | "xfs" | "btrfs" | "swap")),
                    "{what}: filesystem {:?} cannot be made on a data partition (ext4, xfs, btrfs or swap)",
                    fs.unwrap()
                );
                ensure!(p.mountpoint.is_none() || matches!(fs, Some("ext4" | "xfs" | "btrfs")), "{what}: only a filesystem has a mountpoint");
                ensure!(p.subvolumes.is_empty() || fs == Some("btrfs"), "{what}: only btrfs has subvolumes");
            } else {
                ensure!(p.mountpoint.is_none() && p.subvolumes.is_empty(), "{what}: the mountpoint of a {:?} partition is fixed", p.role);
            }
            for m in p.mountpoint.iter().chain(p.subvolumes.iter().map(|s| &s.mountpoint)) {
                ensure!(m.starts_with('/') && m != "/", "{what}: mountpoint {m:?} must be an absolute path other than /");
                ensure!(mountpoints.insert(m.clone()), "{what}: mountpoint {m} is used twice");
            }
        }
        Ok(())
    }

    /// The layout for a platform whose machines boot with `firmware`: a partition there for
    /// another firmware (the BIOS boot partition, on aarch64) is left out. One layout thus
    /// serves every platform, and says in its roles what each boot partition is for.
    pub fn for_firmware(mut self, firmware: &[String]) -> Result<Layout> {
        let serves = |p: &PartitionSpec| p.role.firmware().is_none_or(|f| firmware.iter().any(|x| x == f));
        self.partitions.retain(serves);
        ensure!(
            self.partitions.iter().any(|p| p.role.firmware().is_some()),
            "the layout has no partition to boot from with {} firmware: add an ESP (role = \"esp\")",
            firmware.join(" or ")
        );
        Ok(self)
    }

    /// The root's minimum size from the layout (`min_size`), if any.
    pub fn root_min(&self) -> Result<u64> {
        self.partitions.iter().filter_map(|p| p.min_size.as_deref()).map(parse_size).sum()
    }

    pub fn fixed_bytes(&self) -> u64 {
        self.partitions.iter().filter_map(|p| parse_size(&p.size).ok()).sum()
    }
}

/// `512MiB`, `1GiB`, `10G`, `4096M`, or plain bytes; rounded up to whole MiB.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().with_context(|| format!("size {s:?} is not a number with a unit (e.g. 10G, 512MiB)"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => MIB,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        u => bail!("size {s:?}: unknown unit {u:?} (use K, M, G or T, powers of 1024)"),
    };
    let bytes = n.checked_mul(mult).context("size too large")?;
    Ok(bytes.div_ceil(MIB) * MIB)
}

impl PartitionSpec {
    /// How messages name the partition.
    pub fn describe(&self, index: usize) -> String {
        match (&self.name, &self.mountpoint) {
            (n, _) if !n.is_empty() => format!("partition {n}"),
            (_, Some(m)) => format!("partition {} ({m})", index + 1),
            _ => format!("partition {}", index + 1),
        }
    }
}

/// One partition of a planned disk.
#[derive(Debug, Clone, Default)]
pub struct Partition {
    pub role: Role,
    pub number: u32,
    pub name: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    pub filesystem: Option<String>,
    pub label: Option<String>,
    /// The filesystem's UUID (for FAT, the volume id as `XXXX-XXXX`).
    pub fs_uuid: String,
    /// Where it is mounted (data partitions; the others' are fixed).
    pub mountpoint: Option<String>,
    pub options: Option<String>,
    pub subvolumes: Vec<SubvolumeSpec>,
    /// How the installed system names the filesystem (`root=`, `boot=`, fstab's first field)
    /// when not by its UUID: `install to-filesystem --root-mount-spec/--boot-mount-spec`; empty:
    /// not named at all (bootc: no `root=`, for a system that finds its root by itself).
    pub mount_spec: Option<String>,
}

impl Partition {
    /// `UUID=…`, or the mount spec given for it.
    pub fn spec(&self) -> String {
        self.mount_spec.clone().unwrap_or_else(|| format!("UUID={}", self.fs_uuid))
    }

    /// How messages name the partition.
    pub fn describe(&self) -> String {
        match (&self.name, &self.mountpoint) {
            (n, _) if !n.is_empty() => format!("partition {} ({n})", self.number),
            (_, Some(m)) => format!("partition {} ({m})", self.number),
            _ => format!("partition {}", self.number),
        }
    }
}

/// A disk to create: its size, GUID and partitions.
#[derive(Debug, Clone)]
pub struct Plan {
    pub size: u64,
    pub disk_guid: String,
    pub partitions: Vec<Partition>,
    pub mounts: MountScheme,
    /// The filesystems are made for disks of 4 KiB logical sectors too (Apple Silicon's NVMe,
    /// where the Asahi installer copies them), not only for 512-byte ones.
    pub sector_4k: bool,
    /// The root filesystem grows to fill its partition on first boot: the Asahi installer
    /// gives it the room the user chose.
    pub grow_root: bool,
}

impl Plan {
    pub fn part(&self, role: Role) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.role == role)
    }

    pub fn root(&self) -> &Partition {
        self.part(Role::Root).expect("validated: a plan has a root")
    }

    /// The root, the disk's last partition, grew to `size` bytes: the disk grows with it.
    pub fn resize_root(&mut self, size: u64) {
        let root = self.partitions.iter_mut().find(|p| p.role == Role::Root).expect("validated: a plan has a root");
        root.size = size;
        self.size = root.offset + size + GPT_TAIL;
    }
}

/// Lays `layout` out on a disk. `root_size` is the root's size when the disk size is not
/// given; with `disk_size` the root takes what the other partitions leave, and must be at
/// least `root_min`. The layout's own root minimum and disk minimum raise both.
pub fn plan(layout: &Layout, root_fs: &str, root_type: &str, root_min: u64, root_size: u64, disk_size: Option<u64>, ids: &Ids) -> Result<Plan> {
    let fixed = layout.fixed_bytes();
    let layout_min = layout.root_min()?;
    let root_min = root_min.max(layout_min);
    let root_size = root_size.max(layout_min);
    let min_disk = layout.min_disk_size.as_deref().map(parse_size).transpose()?.unwrap_or(0);
    let size = match disk_size {
        Some(s) => {
            let room = s.saturating_sub(FIRST + GPT_TAIL + fixed);
            ensure!(
                room >= root_min && s >= min_disk,
                "the layout does not fit --size {}: its fixed partitions take {} MiB, leaving {} MiB for a root that needs at least {} MiB{}; use --size {}M or more",
                s / MIB,
                fixed / MIB,
                room / MIB,
                root_min / MIB,
                if min_disk > 0 { format!(" (and the disk must be at least {} MiB)", min_disk / MIB) } else { String::new() },
                (FIRST + GPT_TAIL + fixed + root_min).max(min_disk).div_ceil(MIB)
            );
            s / MIB * MIB
        }
        None => (FIRST + fixed + root_size.div_ceil(MIB) * MIB + GPT_TAIL).max(min_disk.div_ceil(MIB) * MIB),
    };
    let mut offset = FIRST;
    let mut partitions = Vec::new();
    for (i, spec) in layout.partitions.iter().enumerate() {
        let bytes = if spec.size == "rest" { size - GPT_TAIL - offset - (fixed_after(layout, i)) } else { parse_size(&spec.size)? };
        let what = spec.describe(i);
        let type_guid = match (&spec.type_guid, spec.role) {
            (Some(t), _) => t.clone(),
            (None, Role::Root) => root_type.to_string(),
            (None, Role::Data) => LINUX_DATA.to_string(),
            (None, r) => bail!("{what} ({r:?}) has no type"),
        };
        let filesystem = match spec.role {
            Role::Root => Some(root_fs.to_string()),
            _ => spec.filesystem.clone(),
        };
        // Named partitions keep the ids they always had for a seed; others go by number.
        let purpose = if spec.name.is_empty() { format!("partition #{}", i + 1) } else { format!("partition {}", spec.name) };
        let fs_uuid = match (&spec.fs_uuid, filesystem.as_deref()) {
            (Some(u), _) => u.clone(),
            (None, Some("vfat")) => ids.fat_volume_id(&purpose),
            (None, _) => ids.uuid(&format!("{purpose} filesystem")),
        };
        partitions.push(Partition {
            role: spec.role,
            number: i as u32 + 1,
            name: spec.name.clone(),
            type_guid: type_guid.to_uppercase(),
            guid: spec.uuid.clone().unwrap_or_else(|| ids.uuid(&purpose)),
            offset,
            size: bytes,
            filesystem,
            label: spec.label.clone(),
            fs_uuid,
            mountpoint: spec.mountpoint.clone(),
            options: spec.options.clone(),
            subvolumes: spec.subvolumes.clone(),
            mount_spec: None,
        });
        offset += bytes;
    }
    let disk_guid = layout.disk_uuid.clone().unwrap_or_else(|| ids.uuid("disk"));
    Ok(Plan { size, disk_guid, partitions, mounts: layout.mounts, sector_4k: false, grow_root: false })
}

/// The least disk `layout` fits on with a root of `root_min` bytes (what [`plan`] accepts).
pub fn least_disk_size(layout: &Layout, root_min: u64) -> Result<u64> {
    let root_min = root_min.max(layout.root_min()?);
    let min_disk = layout.min_disk_size.as_deref().map(parse_size).transpose()?.unwrap_or(0);
    Ok((FIRST + GPT_TAIL + layout.fixed_bytes() + root_min.div_ceil(MIB) * MIB).max(min_disk))
}

/// The GPT type of Linux data partitions.
pub const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

fn fixed_after(layout: &Layout, i: usize) -> u64 {
    layout.partitions[i + 1..].iter().filter_map(|p| parse_size(&p.size).ok()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("501MiB").unwrap(), 501 * MIB);
        assert_eq!(parse_size("1").unwrap(), MIB);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
    }

    #[test]
    fn builtin_layouts_plan_aligned_and_refuse_small_disks() {
        let ids = Ids::from_seed(Some("t"));
        for name in ["default", "bootc"] {
            let l = Layout::load(name).unwrap();
            let p = plan(&l, "ext4", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 100 * MIB, 2 << 30, None, &ids).unwrap();
            assert!(p.partitions.iter().all(|x| x.offset % MIB == 0 && x.size % MIB == 0), "{name}");
            assert_eq!(p.root().size, 2 << 30);
            let err = plan(&l, "ext4", "x", 4 << 30, 0, Some(2 << 30), &ids).unwrap_err().to_string();
            assert!(err.contains("does not fit --size 2048"), "{err}");
        }
        assert!(Layout::load("nope").unwrap_err().to_string().contains("default"));
    }

    #[test]
    fn a_platform_without_bios_leaves_the_bios_boot_partition_out() {
        let uefi = ["uefi".to_string()];
        for name in ["default", "bootc"] {
            let l = Layout::load(name).unwrap().for_firmware(&uefi).unwrap();
            assert_eq!(l.partitions[0].role, Role::Esp, "{name}");
            assert!(l.partitions.iter().all(|p| p.role != Role::BiosBoot), "{name}");
            let both = Layout::load(name).unwrap().for_firmware(&["uefi".to_string(), "bios".to_string()]).unwrap();
            assert_eq!(both.partitions[0].role, Role::BiosBoot, "{name}");
        }
        let bios_only: Layout = toml::from_str("[[partition]]\nrole = \"bios-boot\"\ntype = \"21686148-6449-6E6F-744E-656564454649\"\nsize = \"1MiB\"\n[[partition]]\nrole = \"root\"\nsize = \"rest\"\n").unwrap();
        let err = bios_only.for_firmware(&uefi).unwrap_err().to_string();
        assert!(err.contains("uefi") && err.contains("esp"), "{err}");
    }
}
