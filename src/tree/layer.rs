//! Reads one layer's tar stream into the changes it makes, handed one at a time, in the tar's
//! order, to a sink (the merge), file bytes stored in the content store as they stream past: no
//! list of the layer's changes is kept, so memory does not grow with the layer. Paths are
//! checked here: nothing in a layer can name a place outside the image's root.

use std::io::Read;

use anyhow::{bail, Context, Result};

use super::{ContentStore, Meta};

/// A path inside the image, as its components (never empty names, `.` or `..`).
pub type Components = Vec<Vec<u8>>;

/// One change a layer makes, in the layer's order.
#[derive(Debug)]
pub enum Change {
    Dir { path: Components, meta: Meta },
    File { path: Components, meta: Meta, size: u64, content: super::ContentKey },
    Symlink { path: Components, meta: Meta, target: Vec<u8> },
    /// A hardlink to `target`, a path in the image (this layer or a lower one).
    Hardlink { path: Components, target: Components },
    /// `.wh.NAME`: removes NAME from the lower layers.
    Whiteout { path: Components },
    /// `.wh..wh..opq`: hides everything the lower layers have in this directory.
    Opaque { dir: Components },
    /// A whiteout or opaque marker as the layer's tar holds it: an empty file, kept in the
    /// layer's own tree (ostree-ext commits each layer as it is).
    Marker { path: Components, file: super::File },
}

/// What reading one layer found besides its changes.
#[derive(Debug, Default)]
pub struct LayerSummary {
    /// Device nodes and FIFOs, which an ostree commit cannot hold (skipped as ostree-ext does).
    pub skipped: Vec<String>,
    /// Bytes of regular-file content in the layer.
    pub content_bytes: u64,
}

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Reads a layer's tar stream to its end, handing each change to `sink`. `what` names the
/// layer in errors.
pub fn read_layer(
    tar_stream: impl Read,
    store: &dyn ContentStore,
    what: &str,
    sink: &mut dyn FnMut(Change) -> Result<()>,
) -> Result<LayerSummary> {
    let mut archive = tar::Archive::new(tar_stream);
    let mut out = LayerSummary::default();
    let entries = archive.entries().with_context(|| format!("{what}: not a tar stream"))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("{what}: corrupt tar stream"))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let at = || format!("{what}: entry {shown:?}");
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions() {
            continue;
        }
        let path = components(&raw_path).with_context(at)?;

        let meta = meta_of(&mut entry).with_context(at)?;
        // Whiteouts are named files; aufs' other `.wh..wh.` metadata is ignored as podman does.
        if let Some(name) = path.last() {
            let marker = name.starts_with(WHITEOUT);
            if name.as_slice() == OPAQUE {
                sink(Change::Opaque { dir: path[..path.len() - 1].to_vec() })?;
            } else if name.starts_with(b".wh..wh.") {
                continue;
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                let mut p = path[..path.len() - 1].to_vec();
                p.push(hidden.to_vec());
                components_ok(&p).with_context(at)?;
                sink(Change::Whiteout { path: p })?;
            }
            if marker {
                let content = store.put(&path, &meta, 0, &mut std::io::empty()).with_context(at)?;
                sink(Change::Marker { path, file: super::File { meta, size: 0, content } })?;
                continue;
            }
        }

        use tar::EntryType as T;
        match kind {
            T::Directory => sink(Change::Dir { path, meta })?,
            T::Regular | T::Continuous | T::GNUSparse => {
                if path.is_empty() {
                    bail!("{}: a regular file cannot be the image root", at());
                }
                let size = entry.size();
                let content = store.put(&path, &meta, size, &mut entry).with_context(at)?;
                out.content_bytes += size;
                sink(Change::File { path, meta, size, content })?;
            }
            T::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                if target.is_empty() {
                    bail!("{}: symlink without a target", at());
                }
                sink(Change::Symlink { path, meta, target })?;
            }
            T::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let target = components(&target)
                    .with_context(|| format!("{}: hardlink target {:?}", at(), String::from_utf8_lossy(&target)))?;
                sink(Change::Hardlink { path, target })?;
            }
            T::Char | T::Block | T::Fifo => out.skipped.push(format!("/{shown}")),
            other => bail!("{}: unsupported tar entry type {:?}", at(), other.as_byte() as char),
        }
    }
    Ok(out)
}

/// Splits a tar path into components, refusing any that could leave the image root.
pub fn components(path: &[u8]) -> Result<Components> {
    if path.starts_with(b"/") {
        bail!("absolute path: layer entries must be relative to the image root");
    }
    let parts: Components = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect();
    components_ok(&parts)?;
    Ok(parts)
}

fn components_ok(parts: &[Vec<u8>]) -> Result<()> {
    for c in parts {
        if c.as_slice() == b".." {
            bail!("path contains '..': layer entries must stay inside the image root");
        }
        if c.contains(&0) {
            bail!("path contains a NUL byte");
        }
    }
    Ok(())
}

fn meta_of<R: Read>(entry: &mut tar::Entry<R>) -> Result<Meta> {
    let h = entry.header();
    let mut meta = Meta { uid: h.uid()? as u32, gid: h.gid()? as u32, mode: h.mode()? & 0o7777, mtime: h.mtime()? as i64, ..Meta::default() };
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let num = || std::str::from_utf8(value).ok().and_then(|v| v.split('.').next()?.parse::<i64>().ok());
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((name.to_vec(), value.to_vec()));
            } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                // libarchive URL-encodes the name and base64-encodes the value.
                if let Some(v) = base64_decode(value) {
                    xattrs.push((percent_decode(name), v));
                }
            } else if key == b"uid" {
                meta.uid = num().unwrap_or(meta.uid as i64) as u32;
            } else if key == b"gid" {
                meta.gid = num().unwrap_or(meta.gid as i64) as u32;
            } else if key == b"mtime" {
                meta.mtime = num().unwrap_or(meta.mtime);
            }
        }
    }
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.0 == b.0);
    meta.xattrs = xattrs.into();
    Ok(meta)
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&s[i + 1..i + 3]), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s: Vec<u8> = s.iter().copied().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_root_are_refused() {
        assert_eq!(components(b"./usr//bin/").unwrap(), vec![b"usr".to_vec(), b"bin".to_vec()]);
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"/etc/passwd").unwrap_err().to_string().contains("absolute"));
        assert!(components(b"usr/../../etc").unwrap_err().to_string().contains(".."));
    }

    #[test]
    fn libarchive_xattr_encodings() {
        assert_eq!(base64_decode(b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(percent_decode(b"user.a%3Db"), b"user.a=b");
    }
}
