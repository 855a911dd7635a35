//! The composefs dump file (composefs-dump(5)): one line per inode, `PATH SIZE MODE NLINK UID
//! GID RDEV MTIME PAYLOAD CONTENT DIGEST XATTR…`, escaped as `composefs-info dump` escapes
//! (tools/composefs-info.c `print_escaped`). `mkcomposefs --from-file` builds the same image
//! from it, which is how the tests hand libcomposefs the tree kiln encoded.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context, Result};

use super::erofs::Image;
use super::{Kind, Mtime, Node, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK};

/// How a field is escaped.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Backslash and non-graphic bytes (space included).
    Standard,
    /// As standard, and a field that is exactly `-` (which means "none") is written `\x2d`.
    LoneDash,
    /// As standard, and `=` (xattr names and values).
    Equal,
}

/// Appends `bytes` to `out`, escaped.
pub fn escape(out: &mut Vec<u8>, bytes: &[u8], how: Escape) {
    if how == Escape::LoneDash && bytes == b"-" {
        out.extend_from_slice(b"\\x2d");
        return;
    }
    for &c in bytes {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'=' if how == Escape::Equal => out.extend_from_slice(b"\\x3d"),
            0x21..=0x7e => out.push(c),
            _ => {
                let _ = write!(out, "\\x{c:02x}");
            }
        }
    }
}

/// Writes the dump of `root` (laid out as its image would be, so that directory sizes and
/// link counts are the image's).
pub fn write(root: &Node, out: &mut dyn Write) -> Result<()> {
    Image::new(root)?.dump_to(out)?;
    Ok(())
}

pub fn to_string(root: &Node) -> Result<String> {
    let mut v = Vec::new();
    write(root, &mut v)?;
    Ok(String::from_utf8(v).expect("the dump is ASCII"))
}

/// The bytes an escaped field stands for.
pub fn unescape(field: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let c = field[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match field.get(i) {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'x') => {
                let hex = field.get(i + 1..i + 3).context("a \\x escape without two hex digits")?;
                let v = u8::from_str_radix(std::str::from_utf8(hex)?, 16).context("a \\x escape without two hex digits")?;
                out.push(v);
                i += 2;
            }
            _ => bail!("an unknown escape"),
        }
        i += 1;
    }
    Ok(out)
}

/// Reads a dump back into a tree (the subset kiln writes: no hardlinks, no inline content).
/// Directory sizes and link counts are recomputed when the tree is encoded, as libcomposefs
/// recomputes them.
pub fn parse(text: &[u8]) -> Result<Node> {
    let mut root: Option<Node> = None;
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        parse_line(line, &mut root).with_context(|| format!("line {} of the dump", n + 1))?;
    }
    root.context("the dump has no root (\"/\") line")
}

fn parse_line(line: &[u8], root: &mut Option<Node>) -> Result<()> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if fields.len() < 11 {
        bail!("{} fields, expected at least 11", fields.len());
    }
    let num = |f: &[u8], radix: u32| -> Result<u64> {
        u64::from_str_radix(std::str::from_utf8(f)?, radix).with_context(|| format!("{:?} is not a number", String::from_utf8_lossy(f)))
    };
    let optional = |f: &[u8]| -> Result<Option<Vec<u8>>> { if f == b"-" { Ok(None) } else { unescape(f).map(Some) } };
    let path = unescape(fields[0])?;
    if fields[2].starts_with(b"@") {
        bail!("hardlinks are not supported");
    }
    let mode = num(fields[2], 8)? as u32;
    let size = num(fields[1], 10)?;
    let rdev = num(fields[6], 10)?;
    let (sec, nsec) = match fields[7].iter().position(|&b| b == b'.') {
        Some(p) => (num(&fields[7][..p], 10)? as i64, num(&fields[7][p + 1..], 10)? as u32),
        None => bail!("the mtime has no '.'"),
    };
    let payload = optional(fields[8])?;
    if optional(fields[9])?.is_some_and(|c| !c.is_empty()) {
        bail!("inline content is not supported");
    }
    let verity = match optional(fields[10])? {
        Some(d) => Some(<[u8; 32]>::try_from(hex::decode(&d).context("the digest is not hex")?.as_slice()).context("the digest is not 32 bytes")?),
        None => None,
    };
    let kind = match mode & S_IFMT {
        S_IFDIR => Kind::Dir(BTreeMap::new()),
        S_IFREG => Kind::Regular { size, payload, verity },
        S_IFLNK => Kind::Symlink(payload.context("a symlink without a target")?),
        S_IFCHR => Kind::CharDevice(rdev),
        S_IFBLK => Kind::BlockDevice(rdev),
        S_IFIFO => Kind::Fifo,
        S_IFSOCK => Kind::Socket,
        _ => bail!("mode {mode:o} has no file type"),
    };
    let mut xattrs = BTreeMap::new();
    for x in &fields[11..] {
        let eq = x.iter().position(|&b| b == b'=').context("an xattr without '='")?;
        xattrs.insert(unescape(&x[..eq])?, unescape(&x[eq + 1..])?);
    }
    let node = Node {
        mode: mode & 0o7777,
        uid: num(fields[4], 10)? as u32,
        gid: num(fields[5], 10)? as u32,
        nlink: num(fields[3], 10)? as u32,
        mtime: Mtime { sec, nsec },
        xattrs: xattrs.into(),
        kind,
    };
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|p| !p.is_empty()).collect();
    let Some((name, dirs)) = parts.split_last() else {
        if root.is_some() {
            bail!("a second root");
        }
        if !matches!(node.kind, Kind::Dir(_)) {
            bail!("the root is not a directory");
        }
        *root = Some(node);
        return Ok(());
    };
    let mut dir = root.as_mut().context("an entry before the root")?;
    for d in dirs {
        dir = dir
            .entries_mut()
            .and_then(|e| e.get_mut(*d))
            .with_context(|| format!("{}: the parent directory is missing", String::from_utf8_lossy(&path)))?;
    }
    let entries = dir.entries_mut().with_context(|| format!("{}: the parent is not a directory", String::from_utf8_lossy(&path)))?;
    if entries.insert(name.to_vec(), node).is_some() {
        bail!("{} appears twice", String::from_utf8_lossy(&path));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut v = Vec::new();
        escape(&mut v, b"a b\\c\n=\xff", Escape::Standard);
        assert_eq!(v, b"a\\x20b\\\\c\\n=\\xff");
        v.clear();
        escape(&mut v, b"k=v", Escape::Equal);
        assert_eq!(v, b"k\\x3dv");
        v.clear();
        escape(&mut v, b"-", Escape::LoneDash);
        assert_eq!(v, b"\\x2d");
    }
}
