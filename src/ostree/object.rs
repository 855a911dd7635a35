//! ostree's object formats: what each object's bytes are and how its checksum is computed
//! (libostree's ostree-core.c). Checksums are sha256 of the serialised GVariant, except for
//! content objects, whose checksum covers a length-prefixed header and then the file's bytes.

use super::gvariant::{Ty, Val};
use crate::tree::Meta;

pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFDIR: u32 = 0o040000;

pub type Checksum = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    DirTree,
    DirMeta,
    Commit,
}

impl Kind {
    pub fn suffix(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::DirTree => "dirtree",
            Kind::DirMeta => "dirmeta",
            Kind::Commit => "commit",
        }
    }
}

fn xattrs(meta: &Meta) -> Val {
    // Sorted by name, as libostree canonicalises them (the tree keeps them sorted).
    Val::Array(
        Ty::Tuple(vec![Ty::bytes(), Ty::bytes()]),
        meta.xattrs
            .iter()
            .map(|(k, v)| {
                // `ay` names carry their NUL, as GLib's bytestrings do.
                let mut name = k.clone();
                name.push(0);
                Val::Tuple(vec![Val::Bytes(name), Val::Bytes(v.clone())])
            })
            .collect(),
    )
}

/// The content object header `(uuuusa(ayay))`: uid, gid, mode (with file type bits), rdev,
/// symlink target, xattrs; integers big-endian, the whole prefixed by its length and 4 NULs.
pub fn file_header(meta: &Meta, file_type: u32, symlink_target: &str) -> Vec<u8> {
    let body = Val::Tuple(vec![
        Val::U32(meta.uid.to_be()),
        Val::U32(meta.gid.to_be()),
        Val::U32((file_type | meta.mode).to_be()),
        Val::U32(0),
        Val::Str(symlink_target.to_string()),
        xattrs(meta),
    ])
    .to_bytes();
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&body);
    out
}

/// A dirmeta object `(uuua(ayay))`.
pub fn dirmeta(meta: &Meta) -> Vec<u8> {
    Val::Tuple(vec![
        Val::U32(meta.uid.to_be()),
        Val::U32(meta.gid.to_be()),
        Val::U32((S_IFDIR | meta.mode).to_be()),
        xattrs(meta),
    ])
    .to_bytes()
}

/// A dirtree object `(a(say)a(sayay))`: files (name → content checksum) and directories
/// (name → dirtree and dirmeta checksums), each sorted by name.
/// Names are UTF-8 (GVariant strings; ostree refuses others).
pub fn dirtree(files: &[(&str, Checksum)], dirs: &[(&str, Checksum, Checksum)]) -> Vec<u8> {
    let name = |n: &str| Val::Str(n.to_string());
    Val::Tuple(vec![
        Val::Array(
            Ty::Tuple(vec![Ty::Str, Ty::bytes()]),
            files.iter().map(|(n, c)| Val::Tuple(vec![name(n), Val::Bytes(c.to_vec())])).collect(),
        ),
        Val::Array(
            Ty::Tuple(vec![Ty::Str, Ty::bytes(), Ty::bytes()]),
            dirs.iter()
                .map(|(n, t, m)| Val::Tuple(vec![name(n), Val::Bytes(t.to_vec()), Val::Bytes(m.to_vec())]))
                .collect(),
        ),
    ])
    .to_bytes()
}

/// A commit object `(a{sv}aya(say)sstayay)`: metadata, parent, related objects, subject,
/// body, timestamp (big-endian), root dirtree and dirmeta checksums.
pub fn commit(metadata: Val, timestamp: u64, root_tree: &Checksum, root_meta: &Checksum) -> Vec<u8> {
    Val::Tuple(vec![
        metadata,
        Val::Bytes(Vec::new()),
        Val::Array(Ty::Tuple(vec![Ty::Str, Ty::bytes()]), Vec::new()),
        Val::Str(String::new()),
        Val::Str(String::new()),
        Val::U64(timestamp.to_be()),
        Val::Bytes(root_tree.to_vec()),
        Val::Bytes(root_meta.to_vec()),
    ])
    .to_bytes()
}

pub fn hex(c: &Checksum) -> String {
    hex::encode(c)
}
