//! The image's merged tree as an ostree commit, converted as ostree-ext converts an image at
//! import, with the metadata and refs ostree-ext and bootc look for.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use super::gvariant::{dict_sv, Ty, Val};
use super::object::{self, Checksum, Kind};
use super::refescape;
use super::repo::Repo;
use crate::image::Image;
use crate::tree::{self, Dir, Node};

/// Top-level directories whose content is never part of an image (API filesystems): their
/// children are dropped at import, the directories kept (as ostree-ext does).
const API_FILESYSTEMS: &[&str] = &["run", "tmp", "proc", "sys", "dev"];
/// Files container builds inject; dropped when empty (ostree-ext's cleanup_root).
const RUNTIME_INJECTED: &[&str] = &["hostname", "resolv.conf"];

/// What the import dropped (the children of API filesystems, by name, and how many
/// entries each held), for the commit's `ostree.tar-filtered` metadata.
pub type Filtered = std::collections::BTreeMap<String, u32>;

/// Converts an image's tree into the tree an ostree commit of it holds: `/etc` moves to
/// `/usr/etc`; API filesystems are emptied; build-injected empty files go; `/boot` must be
/// empty and a kernel present.
pub fn convert(root: Dir) -> Result<(Dir, Filtered)> {
    let (mut root, filtered) = filter(root)?;
    if let Some(Node::Dir(usr_etc)) = root.entries.get_mut(b"usr".as_slice()).and_then(|u| match u {
        Node::Dir(u) => u.entries.get_mut(b"etc".as_slice()),
        _ => None,
    }) {
        for name in RUNTIME_INJECTED {
            if matches!(usr_etc.entries.get(name.as_bytes()), Some(Node::File(f)) if f.size == 0) {
                usr_etc.entries.remove(name.as_bytes());
            }
        }
    }
    if let Some(Node::Dir(boot)) = root.get_path("boot") {
        if !boot.entries.is_empty() {
            let names: Vec<String> = boot.entries.keys().take(5).map(|k| String::from_utf8_lossy(k).into_owned()).collect();
            bail!(
                "the image's /boot is not empty (it has {}): a bootc image keeps its kernel in /usr/lib/modules/<kver>/ and /boot empty",
                names.join(", ")
            );
        }
    }
    let kernels = tree::kernels(&root);
    match kernels.len() {
        0 => bail!("the image has no kernel: expected /usr/lib/modules/<kver>/vmlinuz (is this a bootc image?)"),
        1 => {}
        _ => bail!(
            "the image has several kernels ({}) and no way to choose: a bootc image carries exactly one under /usr/lib/modules",
            kernels.join(", ")
        ),
    }
    Ok((root, filtered))
}

/// What ostree-ext's tar filter does to every layer: `/etc` becomes `/usr/etc` and the
/// content of API filesystems is dropped.
pub fn filter(mut root: Dir) -> Result<(Dir, Filtered)> {
    let mut filtered = Filtered::new();
    for name in API_FILESYSTEMS {
        if let Some(Node::Dir(d)) = root.entries.get_mut(name.as_bytes()) {
            for (child, node) in std::mem::take(&mut d.entries) {
                *filtered.entry(String::from_utf8_lossy(&child).into_owned()).or_default() += count_entries(&node);
            }
        }
    }
    if let Some(etc) = root.entries.remove(b"etc".as_slice()) {
        let usr = match root.entries.get_or_insert_with(b"usr", || {
            Node::Dir(Dir { meta: crate::tree::Meta { mode: 0o755, ..Default::default() }, ..Dir::default() })
        }) {
            Node::Dir(d) => d,
            _ => bail!("the image's /usr is not a directory"),
        };
        match (&etc, usr.entries.get(b"etc".as_slice())) {
            (Node::Dir(_), None) => {
                usr.entries.insert(b"etc".to_vec(), etc);
            }
            (Node::Dir(d), Some(_)) if d.entries.is_empty() => {}
            (Node::Dir(_), Some(_)) => bail!("the image has both /etc and /usr/etc; ostree keeps /etc in /usr/etc, so only one may exist"),
            _ => bail!("the image's /etc is not a directory"),
        }
    }
    Ok((root, filtered))
}

fn count_entries(node: &Node) -> u32 {
    match node {
        Node::Dir(d) => 1 + d.entries.values().map(count_entries).sum::<u32>(),
        _ => 1,
    }
}

/// Writes the dirtree and dirmeta objects of `dir` and below; returns the root's checksums
/// and collects every content object the tree uses into `used`.
pub fn write_tree(repo: &Repo, dir: &Dir, path: &str, used: &mut HashSet<Checksum>) -> Result<(Checksum, Checksum)> {
    let mut files: Vec<(&str, Checksum)> = Vec::new();
    let mut dirs: Vec<(&str, Checksum, Checksum)> = Vec::new();
    for (name, node) in &dir.entries {
        let name = std::str::from_utf8(name).with_context(|| {
            format!("{path}/{}: the name is not UTF-8, which ostree cannot store", String::from_utf8_lossy(name))
        })?;
        match node {
            Node::File(f) => {
                used.insert(f.content);
                files.push((name, f.content));
            }
            Node::Symlink(s) => {
                let target = std::str::from_utf8(&s.target)
                    .with_context(|| format!("{path}/{name}: the symlink target is not UTF-8, which ostree cannot store"))?;
                let c = repo.write_symlink(&s.meta, target)?;
                used.insert(c);
                files.push((name, c));
            }
            Node::Dir(d) => {
                let (t, m) = write_tree(repo, d, &format!("{path}/{name}"), used)?;
                dirs.push((name, t, m));
            }
        }
    }
    let tree = repo.write_metadata(Kind::DirTree, &object::dirtree(&files, &dirs))?;
    let meta = repo.write_metadata(Kind::DirMeta, &object::dirmeta(&dir.meta))?;
    Ok((tree, meta))
}

/// The image facts a commit records.
pub struct CommitInfo<'a> {
    pub image: &'a Image,
    /// The image reference the ref is named after (`docker://quay.io/…`).
    pub target_transport_ref: &'a str,
    pub filtered: &'a Filtered,
    pub kernel: &'a str,
}

/// Writes, as ostree-ext's import leaves an image: a commit of each layer's own tree (converted
/// with [`filter`]) under
/// `ostree/container/blob/<digest>` (bootc looks them up, and upgrades reuse them) and the
/// commit of the converted merged tree under `ostree/container/image/<ref>`. Content objects
/// no commit uses are removed. Returns the merged commit's checksum.
pub fn commit(repo: &Repo, root: &Dir, layers: Vec<Dir>, info: &CommitInfo) -> Result<Checksum> {
    let image = info.image;
    anyhow::ensure!(layers.len() == image.layers.len(), "one tree per layer is needed");
    let mut used = HashSet::new();
    let timestamp = image_timestamp(image);
    let importer = || ("ostree.importer.version", Val::Str(format!("kiln {}", env!("CARGO_PKG_VERSION"))));
    for (layer, own) in image.layers.iter().zip(layers) {
        let (tree, meta) = write_tree(repo, &own, "", &mut used)?;
        let c = repo.write_metadata(Kind::Commit, &object::commit(dict_sv(vec![importer()]), timestamp, &tree, &meta))?;
        repo.set_ref(&refescape::prefix_escape_for_ref("ostree/container/blob", &layer.descriptor.digest)?, &c)?;
    }
    let (tree, meta) = write_tree(repo, root, "", &mut used)?;
    repo.remove_unused(&used)?;

    let labels = image.labels();
    // ostree.tar-filtered (a{sa{su}}): ostree-ext keys it by layer; kiln filters the merged
    // tree, so everything is recorded under the top layer.
    let counts = Ty::DictEntry(Box::new(Ty::Str), Box::new(Ty::U32));
    let per_layer = Ty::DictEntry(Box::new(Ty::Str), Box::new(Ty::Array(Box::new(counts.clone()))));
    let filtered = match (info.filtered.is_empty(), image.layers.last()) {
        (false, Some(top)) => vec![Val::DictEntry(
            Box::new(Val::Str(top.descriptor.digest.clone())),
            Box::new(Val::Array(
                counts,
                info.filtered
                    .iter()
                    .map(|(k, n)| Val::DictEntry(Box::new(Val::Str(k.clone())), Box::new(Val::U32(*n))))
                    .collect(),
            )),
        )],
        _ => Vec::new(),
    };
    let filtered = Val::Array(per_layer, filtered);
    let mut entries: Vec<(&str, Val)> = vec![
        ("ostree.bootable", Val::Bool(true)),
        ("ostree.container.image-config", Val::Str(String::from_utf8_lossy(&image.config_bytes).into_owned())),
        importer(),
        ("ostree.linux", Val::Str(info.kernel.to_string())),
        ("ostree.manifest", Val::Str(String::from_utf8_lossy(&image.manifest_bytes).into_owned())),
        ("ostree.manifest-digest", Val::Str(image.manifest_digest.clone())),
        ("ostree.tar-filtered", filtered),
    ];
    if let Some(v) = labels.get("org.opencontainers.image.version") {
        entries.push(("version", Val::Str(v.clone())));
    }
    let bytes = object::commit(dict_sv(entries), timestamp, &tree, &meta);
    let commit = repo.write_metadata(Kind::Commit, &bytes)?;
    repo.set_ref(&refescape::prefix_escape_for_ref("ostree/container/image", info.target_transport_ref)?, &commit)?;
    Ok(commit)
}

/// The image's creation time (manifest annotation, else config), as ostree-ext dates its
/// commits; 0 when the image does not say. (ostree-ext stamps layer commits with the time of
/// the pull; kiln uses the image's time so the same image gives the same repository.)
fn image_timestamp(image: &Image) -> u64 {
    let created = serde_json::from_slice::<serde_json::Value>(&image.manifest_bytes)
        .ok()
        .and_then(|m| m["annotations"]["org.opencontainers.image.created"].as_str().map(str::to_string))
        .or_else(|| serde_json::from_slice::<serde_json::Value>(&image.config_bytes).ok()?["created"].as_str().map(str::to_string));
    created.as_deref().and_then(parse_rfc3339).unwrap_or(0)
}

/// Seconds since the epoch of an RFC 3339 time (`2023-11-14T22:13:20Z`, with optional
/// fraction and offset).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) => {
            let sign = if r.starts_with('-') { -1 } else { 1 };
            sign * (r[1..3].parse::<i64>().ok()? * 3600 + r[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + h * 3600 + mi * 60 + sec - offset).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.123456789Z"), Some(1_700_000_000));
        assert_eq!(parse_rfc3339("2023-11-15T00:13:20+02:00"), Some(1_700_000_000));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
