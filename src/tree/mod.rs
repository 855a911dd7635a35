//! The merged filesystem tree of an image: layers applied in order with OCI semantics.
//!
//! The tree holds metadata only. File bytes go, as each layer is read, to a [`ContentStore`]
//! (the ostree repository in a bake, a staging directory for `kiln image unpack`), which returns
//! the [`ContentKey`] the tree records. So file data is written exactly once, wherever it ends.

use std::collections::BTreeMap;
use std::io::Read;

/// Identifies stored file content. What it means belongs to the store: the ostree store uses
/// the object checksum, so equal files share one object; the unpack store numbers each tar
/// entry, so only real hardlinks share a key.
pub type ContentKey = [u8; 32];

/// Metadata of one entry as the layer's tar header and PAX records give it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky; no file-type bits.
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir(Dir),
    File(File),
    Symlink(Symlink),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Dir {
    pub meta: Meta,
    /// Entries by name (bytes, sorted bytewise as ostree sorts them).
    pub entries: BTreeMap<Vec<u8>, Node>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub meta: Meta,
    pub size: u64,
    pub content: ContentKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symlink {
    pub meta: Meta,
    pub target: Vec<u8>,
}

/// Where regular files' bytes go while layers are applied. Called from several threads at once
/// (layers are decompressed and hashed in parallel).
pub trait ContentStore: Sync {
    /// Stores `size` bytes read from `data` for a file with metadata `meta`.
    fn put(&self, meta: &Meta, size: u64, data: &mut dyn Read) -> anyhow::Result<ContentKey>;
}
