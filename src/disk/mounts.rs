//! How the installed system mounts the disk's partitions: /boot, the ESP, and the data
//! partitions a layout or build config adds (filesystems, btrfs subvolumes, swap).
//!
//! By default these are `/etc/fstab` lines, as bootc writes /boot's: systemd's fstab generator
//! turns them into the same mount and swap units, ordered by path under `local-fs.target`
//! (so a service needing /var/lib/data finds it mounted) and checked by systemd-fsck, and an
//! administrator finds them where they look first. A layout (an image's `disk.yaml`) may ask
//! for bootc-image-builder's other scheme, `.mount`/`.swap` units in /etc/systemd/system
//! wanted by multi-user.target, or for none.
//!
//! systemd before 254 (Debian 12's) also automounts the ESP at `/efi` unless fstab names `/efi`
//! itself; on an ostree deployment whose image has no `/efi` that directory cannot be created,
//! so the generated `efi.automount` can only fail and leave the system degraded. It is masked
//! then; the ESP stays mounted at /boot/efi.

use anyhow::{Context, Result};

use super::layout::{MountScheme, Plan, Role};
use crate::customize::root::{Content, SystemRoot};

/// One thing to mount.
struct Entry {
    /// The filesystem's UUID (units name the device by it).
    what: String,
    /// fstab's first field: `UUID=…`, or the mount spec given for the filesystem.
    spec: String,
    /// The mountpoint, or `None` for swap.
    at: Option<String>,
    fs: String,
    options: String,
    passno: u32,
}

fn entries(plan: &Plan) -> Vec<Entry> {
    let mut out = Vec::new();
    if plan.grow_root {
        // systemd-growfs grows the root (through the deployment's rw mount of it) to its
        // partition at boot, as Fedora's Asahi images ask in their fstab.
        let root = plan.root();
        let fs = root.filesystem.clone().unwrap_or_else(|| "ext4".into());
        out.push(Entry { what: root.fs_uuid.clone(), spec: root.spec(), at: Some("/".into()), fs, options: "defaults,x-systemd.growfs".into(), passno: 0 });
    }
    if let Some(boot) = plan.part(Role::Boot) {
        let fs = boot.filesystem.clone().unwrap_or_else(|| "ext4".into());
        out.push(Entry { what: boot.fs_uuid.clone(), spec: boot.spec(), at: Some("/boot".into()), fs, options: "defaults".into(), passno: 2 });
    }
    if let Some(esp) = plan.part(Role::Esp) {
        out.push(Entry {
            what: esp.fs_uuid.clone(),
            spec: esp.spec(),
            at: Some("/boot/efi".into()),
            fs: "vfat".into(),
            options: "defaults,uid=0,gid=0,umask=077,shortname=winnt".into(),
            passno: 2,
        });
    }
    let mut data = Vec::new();
    for p in plan.partitions.iter().filter(|p| p.role == Role::Data) {
        let options = p.options.clone().unwrap_or_else(|| "defaults".into());
        match (p.filesystem.as_deref(), &p.mountpoint) {
            (Some("swap"), _) => data.push(Entry { what: p.fs_uuid.clone(), spec: p.spec(), at: None, fs: "swap".into(), options: options.clone(), passno: 0 }),
            (Some(fs), Some(m)) => {
                let passno = if fs == "ext4" { 2 } else { 0 };
                data.push(Entry { what: p.fs_uuid.clone(), spec: p.spec(), at: Some(m.clone()), fs: fs.into(), options: options.clone(), passno })
            }
            _ => {}
        }
        for sv in &p.subvolumes {
            data.push(Entry {
                what: p.fs_uuid.clone(),
                spec: p.spec(),
                at: Some(sv.mountpoint.clone()),
                fs: "btrfs".into(),
                options: format!("subvol={},{options}", sv.name).trim_end_matches(",defaults").to_string(),
                passno: 0,
            });
        }
    }
    data.sort_by(|a, b| a.at.cmp(&b.at));
    out.extend(data);
    out
}

/// `/etc/fstab`'s text.
fn fstab(entries: &[Entry]) -> String {
    entries
        .iter()
        .filter(|e| !e.spec.is_empty())
        .map(|e| format!("{} {} {} {} 0 {}\n", e.spec, e.at.as_deref().unwrap_or("none"), e.fs, e.options, e.passno))
        .collect()
}

/// systemd's path escaping for unit names (`systemd-escape --path`).
fn escape_path(p: &str) -> String {
    let t = p.trim_matches('/');
    if t.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, b) in t.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => out.push(b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// bootc-image-builder's units: (file name, text).
fn units(entries: &[Entry]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            let dev = if e.what.len() == 9 && e.what.as_bytes()[4] == b'-' { format!("/dev/disk/by-uuid/{}", e.what) } else { format!("/dev/disk/by-uuid/{}", e.what.to_lowercase()) };
            match &e.at {
                None => (
                    format!("{}.swap", escape_path(&dev)),
                    format!("[Unit]\nDefaultDependencies=yes\n\n[Swap]\nWhat={dev}\nOptions={}\n\n[Install]\nWantedBy=multi-user.target\n", e.options),
                ),
                Some(at) => (
                    format!("{}.mount", escape_path(at)),
                    format!("[Unit]\nDefaultDependencies=yes\n\n[Mount]\nWhat={dev}\nWhere={at}\nType={}\nOptions={}\n\n[Install]\nWantedBy=multi-user.target\n", e.fs, e.options),
                ),
            }
        })
        .collect()
}

/// Writes the mounts of `plan` into the installed system's /etc.
pub fn write_mounts(plan: &Plan, root: &SystemRoot) -> Result<()> {
    let entries = entries(plan);
    let has_esp = plan.part(Role::Esp).is_some();
    let units_dir = "/etc/systemd/system";
    let mut fstab_text = String::new();
    match plan.mounts {
        MountScheme::Fstab => fstab_text = fstab(&entries),
        MountScheme::None => {}
        MountScheme::Units => {
            // The root is mounted already: only its growth is asked, in fstab (see entries()).
            let (grow_root, entries): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| e.at.as_deref() == Some("/"));
            fstab_text = fstab(&grow_root);
            for d in ["/etc/systemd", units_dir, "/etc/systemd/system/multi-user.target.wants"] {
                if !root.is_dir(d)? {
                    root.put(d, Content::Dir, 0o755, 0, 0)?;
                }
            }
            for (name, text) in units(&entries) {
                root.put(&format!("{units_dir}/{name}"), Content::File(text.as_bytes()), 0o644, 0, 0)?;
                root.put(&format!("{units_dir}/multi-user.target.wants/{name}"), Content::Symlink(&format!("../{name}")), 0o777, 0, 0)?;
            }
        }
    }
    root.put("/etc/fstab", Content::File(fstab_text.as_bytes()), 0o644, 0, 0).context("writing the deployment's /etc/fstab")?;
    let efi_exists = root.exists("/efi")?;
    if has_esp && !efi_exists && !root.exists(&format!("{units_dir}/efi.automount"))? {
        for d in ["/etc/systemd", units_dir] {
            if !root.is_dir(d)? {
                root.put(d, Content::Dir, 0o755, 0, 0)?;
            }
        }
        root.put(&format!("{units_dir}/efi.automount"), Content::Symlink("/dev/null"), 0o777, 0, 0).context("masking efi.automount in the deployment's /etc")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_as_systemd_escape_makes_them() {
        assert_eq!(escape_path("/var/lib/data"), "var-lib-data");
        assert_eq!(escape_path("/boot/efi"), "boot-efi");
        assert_eq!(escape_path("/var/my-data"), "var-my\\x2ddata");
        assert_eq!(escape_path("/dev/disk/by-uuid/ab"), "dev-disk-by\\x2duuid-ab");
    }

    /// bootc's mount specs: /boot by the spec given, the root's `root=` left out when empty.
    #[test]
    fn mount_specs_name_root_and_boot() {
        let part = |role, uuid: &str, spec: Option<&str>| super::super::Partition {
            role,
            filesystem: Some("ext4".into()),
            fs_uuid: uuid.into(),
            mount_spec: spec.map(String::from),
            ..Default::default()
        };
        let mut plan = Plan { size: 0, disk_guid: String::new(), partitions: vec![part(Role::Root, "r", None), part(Role::Boot, "b", None)], mounts: MountScheme::Fstab, sector_4k: false, grow_root: false };
        assert_eq!(super::super::kargs(&plan), ["root=UUID=r", "rw", "boot=UUID=b"]);
        assert_eq!(fstab(&entries(&plan)), "UUID=b /boot ext4 defaults 0 2\n");
        plan.partitions = vec![part(Role::Root, "r", Some("")), part(Role::Boot, "b", Some("LABEL=boot"))];
        assert_eq!(super::super::kargs(&plan), ["rw", "boot=LABEL=boot"]);
        assert_eq!(fstab(&entries(&plan)), "LABEL=boot /boot ext4 defaults 0 2\n");
    }
}
