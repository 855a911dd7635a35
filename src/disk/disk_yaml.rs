//! An image's `disk.yaml`: bootc-image-builder's whole partition table
//! (`mount_configuration` and `partition_table`, osbuild's `disk.PartitionTable` as YAML:
//! `osbuild/image-builder pkg/disk`), turned into a [`Layout`].
//!
//! The YAML is read by a small reader of the block style these files are written in (nested
//! mappings and sequences, plain and quoted scalars, comments, `[a, b]` lists of scalars): a
//! general YAML crate costs more to build than this whole module, and what it would add
//! (anchors, tags, block scalars) has no use in a partition table. Anything else is an error
//! naming the line.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::layout::{Layout, MountScheme, PartitionSpec, Role, SubvolumeSpec};
use crate::config::schema::Size;

const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskYaml {
    mount_configuration: Option<String>,
    partition_table: Option<Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    size: Option<Size>,
    uuid: Option<String>,
    #[serde(rename = "type")]
    table_type: Option<String>,
    partitions: Vec<Part>,
    sector_size: Option<u64>,
    grain_size: Option<Size>,
    start_offset: Option<Size>,
    extra_padding: Option<u64>,
    absolute_start_offset: Option<bool>,
    policy: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    start: Option<Size>,
    size: Option<Size>,
    #[serde(rename = "type")]
    type_guid: Option<String>,
    bootable: Option<bool>,
    uuid: Option<String>,
    label: Option<String>,
    payload_type: Option<String>,
    payload: Option<Value>,
    attrs: Option<Vec<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Filesystem {
    #[serde(rename = "type")]
    fs: String,
    uuid: Option<String>,
    label: Option<String>,
    mountpoint: Option<String>,
    fstab_options: Option<String>,
    fstab_freq: Option<u64>,
    fstab_passno: Option<u64>,
    mkfs_options: Option<Value>,
}

/// Go's encoding/json matches field names case-insensitively; osbuild's Swap has no tags.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Swap {
    #[serde(alias = "UUID", alias = "Uuid")]
    uuid: Option<String>,
    #[serde(alias = "Label")]
    label: Option<String>,
    #[serde(alias = "FSTabOptions", alias = "fstaboptions")]
    fstab_options: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Btrfs {
    uuid: Option<String>,
    label: Option<String>,
    mountpoint: Option<String>,
    subvolumes: Vec<BtrfsSubvolume>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BtrfsSubvolume {
    name: String,
    size: Option<Size>,
    mountpoint: Option<String>,
    group_id: Option<u64>,
    compress: Option<String>,
    read_only: Option<bool>,
    uuid: Option<String>,
}

fn typed<T: for<'de> Deserialize<'de>>(v: Value, what: &str) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("{what}{}{path}: {}", if path == "." { "" } else { "." }, e.into_inner())
    })
}

/// The layout of a disk.yaml and the root filesystem type it names.
pub fn parse(text: &str) -> Result<(Layout, Option<String>)> {
    let doc: DiskYaml = typed(read_yaml(text)?, "disk.yaml")?;
    let mounts = match doc.mount_configuration.as_deref() {
        None | Some("units") => MountScheme::Units,
        Some("fstab") => MountScheme::Fstab,
        Some("none") => MountScheme::None,
        Some(m) => bail!("mount_configuration: {m:?} must be units, fstab or none"),
    };
    let t = doc.partition_table.context("partition_table: the file has no partition table")?;
    if t.table_type.as_deref().is_some_and(|t| t != "gpt") {
        bail!("partition_table.type: kiln makes GPT disks only");
    }
    if t.sector_size.is_some_and(|s| s != 512) {
        bail!("partition_table.sector_size: kiln makes 512-byte-sector disk images");
    }
    let _ = (t.grain_size, t.start_offset, t.extra_padding, t.absolute_start_offset, t.policy);
    let mut parts = Vec::new();
    let mut root_fs = None;
    let mut root = None;
    for (i, p) in t.partitions.into_iter().enumerate() {
        let at = format!("partition_table.partitions[{i}]");
        let _ = (p.start, p.bootable, p.attrs);
        let mut spec = PartitionSpec {
            role: Role::Data,
            name: p.label.unwrap_or_default(),
            type_guid: p.type_guid.map(|g| g.to_uppercase()),
            uuid: p.uuid.map(|u| u.to_lowercase()),
            size: p.size.map(|s| s.0.to_string()).unwrap_or_default(),
            ..PartitionSpec::default()
        };
        let payload = p.payload.unwrap_or(Value::Null);
        match p.payload_type.as_deref() {
            None | Some("") if payload.is_null() => {
                if spec.type_guid.as_deref() == Some(BIOS_BOOT) {
                    spec.role = Role::BiosBoot;
                }
            }
            None | Some("") => bail!("{at}: a payload needs a payload_type"),
            Some("filesystem") => {
                let fs: Filesystem = typed(payload, &format!("{at}.payload"))?;
                let _ = (fs.fstab_freq, fs.fstab_passno, fs.mkfs_options);
                spec.label = fs.label;
                spec.fs_uuid = fs.uuid.map(|u| u.to_lowercase());
                match fs.mountpoint.as_deref() {
                    Some("/") => {
                        root_fs = Some(fs.fs);
                        spec.role = Role::Root;
                        // The root grows to fill the disk; its size is a minimum.
                        spec.min_size = (!spec.size.is_empty()).then(|| spec.size.clone());
                        spec.size = "rest".into();
                    }
                    Some("/boot") => {
                        spec.role = Role::Boot;
                        spec.filesystem = Some(fs.fs);
                    }
                    Some("/boot/efi") => {
                        spec.role = Role::Esp;
                        spec.filesystem = Some(fs.fs);
                    }
                    m => {
                        spec.mountpoint = m.map(String::from);
                        spec.filesystem = Some(fs.fs);
                        spec.options = fs.fstab_options;
                    }
                }
            }
            Some("swap") => {
                let s: Swap = typed(payload, &format!("{at}.payload"))?;
                spec.filesystem = Some("swap".into());
                spec.label = s.label;
                spec.fs_uuid = s.uuid;
                spec.options = s.fstab_options;
            }
            Some("btrfs") => {
                let b: Btrfs = typed(payload, &format!("{at}.payload"))?;
                if b.mountpoint.is_some() || b.subvolumes.iter().any(|s| s.mountpoint.as_deref() == Some("/")) {
                    bail!("{at}.payload: kiln cannot put the root into a btrfs volume's subvolume yet: give / a filesystem partition");
                }
                spec.filesystem = Some("btrfs".into());
                spec.label = b.label;
                spec.fs_uuid = b.uuid;
                for s in b.subvolumes {
                    let _ = (s.size, s.group_id, s.compress, s.read_only, s.uuid);
                    let mountpoint = s.mountpoint.with_context(|| format!("{at}.payload: subvolume {} has no mountpoint", s.name))?;
                    spec.subvolumes.push(SubvolumeSpec { name: s.name, mountpoint });
                }
            }
            Some("raw") => bail!("{at}: raw payloads (a file of the image written into the partition) are not supported yet"),
            Some(k @ ("lvm" | "luks")) => bail!("{at}: {k} payloads are not supported: kiln writes plain GPT partitions"),
            Some(k) => bail!("{at}: unknown payload_type {k:?}"),
        }
        if spec.size.is_empty() {
            bail!("{at}: a partition other than the root needs a size");
        }
        if spec.role == Role::Root {
            root = Some(spec);
        } else {
            parts.push(spec);
        }
    }
    // The root is laid out last, as image-builder does.
    parts.push(root.context("partition_table: no partition has a filesystem mounted at /")?);
    let layout = Layout {
        description: Some("the image's disk.yaml".into()),
        min_disk_size: t.size.map(|s| s.0.to_string()),
        disk_uuid: t.uuid.map(|u| u.to_lowercase()),
        mounts,
        partitions: parts,
    };
    layout.validate()?;
    Ok((layout, root_fs))
}

/// Reads block-style YAML into a JSON value.
fn read_yaml(text: &str) -> Result<Value> {
    // (line number, indentation, content) of the meaningful lines.
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw);
        if line.trim().is_empty() || line.trim() == "---" {
            continue;
        }
        if line.trim() == "..." {
            break;
        }
        if line.starts_with('\t') {
            bail!("disk.yaml line {}: tabs cannot indent YAML", n + 1);
        }
        let indent = line.len() - line.trim_start().len();
        lines.push((n + 1, indent, line.trim().to_string()));
    }
    let mut pos = 0;
    let v = block(&lines, &mut pos, 0)?;
    if pos < lines.len() {
        bail!("disk.yaml line {}: unexpected indentation", lines[pos].0);
    }
    Ok(v)
}

fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (c, quote) {
            ('\'' | '"', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('#', None) if i == 0 || line[..i].ends_with(' ') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The block (mapping or sequence) whose lines start at `pos` with indentation `indent`.
fn block(lines: &[(usize, usize, String)], pos: &mut usize, indent: usize) -> Result<Value> {
    let Some((_, ind, first)) = lines.get(*pos) else { return Ok(Value::Null) };
    let indent = (*ind).max(indent);
    if first.starts_with("- ") || first == "-" {
        let mut seq = Vec::new();
        while let Some((n, ind, l)) = lines.get(*pos) {
            let item = l.starts_with("- ") || l == "-";
            if *ind < indent || (*ind == indent && !item) {
                break;
            }
            if *ind > indent {
                bail!("disk.yaml line {n}: unexpected indentation");
            }
            let rest = l[1..].trim_start();
            if rest.is_empty() {
                *pos += 1;
                seq.push(block(lines, pos, indent + 1)?);
            } else {
                // "- key: value" opens a mapping whose keys sit at the item's content column.
                let col = indent + (l.len() - rest.len());
                let mut sub = lines.to_vec();
                sub[*pos] = (*n, col, rest.to_string());
                if key_value(rest).is_some() {
                    let mut p = *pos;
                    let v = mapping(&sub, &mut p, col)?;
                    *pos = p;
                    seq.push(v);
                } else {
                    seq.push(scalar(rest, *n)?);
                    *pos += 1;
                }
            }
        }
        Ok(Value::Array(seq))
    } else {
        mapping(lines, pos, indent)
    }
}

fn mapping(lines: &[(usize, usize, String)], pos: &mut usize, indent: usize) -> Result<Value> {
    let mut map = Map::new();
    while let Some((n, ind, l)) = lines.get(*pos) {
        if *ind < indent {
            break;
        }
        if *ind > indent {
            bail!("disk.yaml line {n}: unexpected indentation");
        }
        let (k, v) = key_value(l).with_context(|| format!("disk.yaml line {n}: expected `key: value`"))?;
        *pos += 1;
        let value = if v.is_empty() {
            match lines.get(*pos) {
                Some((_, ind2, l2)) if *ind2 > indent || (*ind2 == indent && l2.starts_with('-')) => block(lines, pos, *ind2)?,
                _ => Value::Null,
            }
        } else {
            scalar(v, *n)?
        };
        if map.insert(unquote(k), value).is_some() {
            bail!("disk.yaml line {n}: key {k} is given twice");
        }
    }
    Ok(Value::Object(map))
}

/// `key: value` (the value may be empty), outside quotes.
fn key_value(l: &str) -> Option<(&str, &str)> {
    let mut quote = None;
    for (i, c) in l.char_indices() {
        match (c, quote) {
            ('\'' | '"', None) if i == 0 => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            (':', None) if l[i + 1..].is_empty() || l[i + 1..].starts_with(' ') => return Some((l[..i].trim(), l[i + 1..].trim())),
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\''))) {
        s[1..s.len() - 1].replace("''", "'")
    } else {
        s.to_string()
    }
}

fn scalar(s: &str, n: usize) -> Result<Value> {
    if s.starts_with('[') && s.ends_with(']') {
        let inner = s[1..s.len() - 1].trim();
        if inner.is_empty() {
            return Ok(Value::Array(Vec::new()));
        }
        return inner.split(',').map(|x| scalar(x.trim(), n)).collect::<Result<Vec<_>>>().map(Value::Array);
    }
    if s.starts_with(['{', '&', '*', '!', '|', '>', '%', '@', '`']) {
        bail!("disk.yaml line {n}: {s:?}: kiln's YAML reader takes block mappings, lists and plain or quoted values only");
    }
    if s.starts_with(['"', '\'']) {
        return Ok(Value::String(unquote(s)));
    }
    Ok(match s {
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        "null" | "~" | "Null" | "NULL" => Value::Null,
        _ => match s.parse::<u64>() {
            Ok(u) => Value::from(u),
            Err(_) => Value::String(s.to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bootc-image-builder's test (test/test_manifest.py, test_manifest_image_disk_yaml),
    /// without its raw aboot partition, and with a data partition.
    const DISK_YAML: &str = "---
#enabled once https://github.com/osbuild/images/pull/1834 is in
mount_configuration: fstab
partition_table:
  size: '8589934592'
  partitions:
  - bootable: true
    size: 1 MiB
    type: 21686148-6449-6E6F-744E-656564454649
    uuid: fac7f1fb-3e8d-4137-a512-961de09a5549
  - bootable: false
    label: efi
    payload:
      label: ESP
      mountpoint: /boot/efi
      type: vfat
    payload_type: filesystem
    size: '104857600'
    type: c12a7328-f81f-11d2-ba4b-00a0c93ec93b
    uuid: 68b2905b-df3e-4fb3-80fa-49d1e773aa33
  - label: ukiboot_b
    size: '134217728'
    type: df331e4d-be00-463f-b4a7-8b43e18fb53a
    uuid: E4D4DA50-7050-41AE-A5F9-DEF12B94DFB5
  - label: root
    payload:
      label: root
      mountpoint: /
      type: ext4
    payload_type: filesystem
    type: b921b045-1df0-41c3-af44-4c6f280d3fae
    uuid: 6264d520-3fb9-423f-8ab8-7a0a8e3d3562
  - label: data
    payload_type: filesystem
    payload: {type: ext4}
    size: 1 GiB
";

    #[test]
    fn bibs_disk_yaml_becomes_a_layout() {
        let e = parse(DISK_YAML).unwrap_err().to_string();
        assert!(e.contains("line 35") && e.contains("{type: ext4}"), "{e}");
        let text = DISK_YAML.replace("    payload: {type: ext4}\n", "    payload:\n      type: ext4 # a comment\n      mountpoint: '/var/lib/data'\n");
        let (l, fs) = parse(&text).unwrap();
        assert_eq!(fs.as_deref(), Some("ext4"));
        assert_eq!(l.mounts, MountScheme::Fstab);
        let roles: Vec<Role> = l.partitions.iter().map(|p| p.role).collect();
        assert_eq!(roles, [Role::BiosBoot, Role::Esp, Role::Data, Role::Data, Role::Root]);
        assert_eq!(l.partitions[1].size, "104857600");
        assert_eq!(l.partitions[1].name, "efi");
        assert_eq!(l.partitions[1].label.as_deref(), Some("ESP"));
        assert_eq!(l.partitions[2].type_guid.as_deref(), Some("DF331E4D-BE00-463F-B4A7-8B43E18FB53A"));
        assert_eq!(l.partitions[2].filesystem, None);
        assert_eq!(l.partitions[3].mountpoint.as_deref(), Some("/var/lib/data"));
        assert_eq!(l.partitions[4].uuid.as_deref(), Some("6264d520-3fb9-423f-8ab8-7a0a8e3d3562"));
        assert_eq!(l.min_disk_size.as_deref(), Some("8589934592"));
        let e = parse("partition_table:\n  partitions:\n  - size: 1 MiB\n    typo: x\n").unwrap_err().to_string();
        assert!(e.contains("partitions[0]") && e.contains("typo"), "{e}");
    }
}
