//! Boot Loader Specification entries (`/boot/loader/entries/*.conf`), as ostree writes them.

use std::cmp::Ordering;
use std::path::Path;

use anyhow::{ensure, Context, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlsEntry {
    /// The file name without `.conf`.
    pub id: String,
    pub title: Option<String>,
    pub version: Option<String>,
    /// Paths as GRUB sees them on the filesystem holding /boot's files.
    pub linux: String,
    pub initrd: Vec<String>,
    pub options: Option<String>,
    pub devicetree: Option<String>,
}

impl BlsEntry {
    pub fn parse(id: &str, text: &str) -> Result<BlsEntry> {
        let mut entry = BlsEntry { id: id.to_string(), title: None, version: None, linux: String::new(), initrd: Vec::new(), options: None, devicetree: None };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let value = value.trim().to_string();
            match key {
                "title" => entry.title = Some(value),
                "version" => entry.version = Some(value),
                "linux" => entry.linux = value,
                "initrd" => entry.initrd.extend(value.split_whitespace().map(str::to_string)),
                "options" => entry.options = Some(value),
                "devicetree" => entry.devicetree = Some(value),
                _ => {}
            }
        }
        ensure!(!entry.linux.is_empty(), "BLS entry {id}.conf has no `linux` line");
        Ok(entry)
    }

    /// Every file the entry makes GRUB read.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.linux.as_str()).chain(self.initrd.iter().map(String::as_str)).chain(self.devicetree.as_deref())
    }
}

/// The entries in `dir`, newest first, ordered as ostree orders them: by `version`, highest
/// first, entries without a version last.
pub fn read_entries(dir: &Path) -> Result<Vec<BlsEntry>> {
    let mut entries = Vec::new();
    for file in std::fs::read_dir(dir).with_context(|| format!("listing the BLS entries in {}", dir.display()))? {
        let path = file.with_context(|| format!("listing {}", dir.display()))?.path();
        let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".conf")) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        entries.push(BlsEntry::parse(id, &text)?);
    }
    entries.sort_by(|a, b| match (&a.version, &b.version) {
        (Some(x), Some(y)) => version_cmp(y, x).then_with(|| a.id.cmp(&b.id)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.id.cmp(&b.id),
    });
    Ok(entries)
}

/// Compares versions with runs of digits as numbers (like strverscmp), so `10` sorts after `9`.
fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_digits(a);
                let (nb, rb) = split_digits(b);
                let (na, nb) = (na.trim_start_matches('0'), nb.trim_start_matches('0'));
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if order != Ordering::Equal {
                    return order;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => (a, b) = (&a[1..], &b[1..]),
        }
    }
}

fn split_digits(s: &[u8]) -> (&str, &[u8]) {
    let end = s.iter().position(|c| !c.is_ascii_digit()).unwrap_or(s.len());
    (std::str::from_utf8(&s[..end]).unwrap_or(""), &s[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_ostree_entry() {
        let entry = BlsEntry::parse(
            "ostree-1",
            "title Debian 12 (ostree:0)\nversion 1\noptions root=UUID=x rw ostree=/ostree/boot.1/default/abc/0\nlinux /boot/ostree/default-abc/vmlinuz-6.1\ninitrd /boot/ostree/default-abc/initramfs-6.1.img\n",
        )
        .unwrap();
        assert_eq!(entry.title.as_deref(), Some("Debian 12 (ostree:0)"));
        assert_eq!(entry.linux, "/boot/ostree/default-abc/vmlinuz-6.1");
        assert_eq!(entry.initrd, vec!["/boot/ostree/default-abc/initramfs-6.1.img"]);
        assert!(entry.options.unwrap().ends_with("/0"));
        assert!(BlsEntry::parse("x", "title no kernel\n").is_err());
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(version_cmp("10", "9"), Ordering::Greater);
        assert_eq!(version_cmp("6.1.0-50", "6.1.0-9"), Ordering::Greater);
        assert_eq!(version_cmp("2", "2"), Ordering::Equal);
    }
}
