//! composefs images: the EROFS metadata image that ostree mounts as `/` (overlayfs over it,
//! with the repository's objects as the data-only lower layer), written exactly as
//! libcomposefs 1.0.8 writes it (`lcfs_write_to` with format EROFS, version 0, max version 1:
//! ostree's and `mkcomposefs`'s defaults), plus the composefs dump file describing the same
//! tree (the text `mkcomposefs --from-file` reads and `composefs-info dump` prints) and the
//! userspace fs-verity digest that names an image.
//!
//! The input is a plain [`Node`] tree; [`erofs::Image::new`] lays it out and writes or dumps it.
//! References: containers/composefs `libcomposefs/lcfs-writer.c` (tree order, inode numbers,
//! nlink), `lcfs-writer-erofs.c` (overlay xattrs, whiteouts, shared xattrs, inode and data
//! layout), `man/composefs-dump.md` (the dump format).

pub mod dump;
pub mod erofs;

use std::collections::BTreeMap;
use std::sync::Arc;

/// One inode of the tree to encode. Entries have no hardlinks (ostree's trees have none: each
/// path is its own inode) and no inline content: regular files point at a backing file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Permission bits (with setuid, setgid, sticky); the file type comes from `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Hard link count of a non-directory (directories get 2 + their subdirectories).
    pub nlink: u32,
    pub mtime: Mtime,
    /// Extended attributes by name.
    pub xattrs: Xattrs,
    pub kind: Kind,
}

/// A node's extended attributes by name, shared between nodes: an image's thousands of files
/// with the same SELinux label hold one map, not one each ([`Xattrs::shared`]). Reads go
/// through the map (`Deref`); [`Xattrs::insert`] copies it first when it is shared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Xattrs(Option<Arc<BTreeMap<Vec<u8>, Vec<u8>>>>);

static NO_XATTRS: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();

impl Xattrs {
    /// The same xattrs as `map`, sharing its allocation.
    pub fn shared(map: &Arc<BTreeMap<Vec<u8>, Vec<u8>>>) -> Xattrs {
        Xattrs(Some(Arc::clone(map)))
    }

    /// Whether the two hold one map (not only equal ones).
    pub fn shares_with(&self, other: &Xattrs) -> bool {
        matches!((&self.0, &other.0), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
    }

    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default)).insert(key, value)
    }
}

impl std::ops::Deref for Xattrs {
    type Target = BTreeMap<Vec<u8>, Vec<u8>>;

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NO_XATTRS)
    }
}

impl From<BTreeMap<Vec<u8>, Vec<u8>>> for Xattrs {
    fn from(map: BTreeMap<Vec<u8>, Vec<u8>>) -> Xattrs {
        Xattrs((!map.is_empty()).then(|| Arc::new(map)))
    }
}

impl FromIterator<(Vec<u8>, Vec<u8>)> for Xattrs {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(iter: I) -> Xattrs {
        BTreeMap::from_iter(iter).into()
    }
}

impl<'a> IntoIterator for &'a Xattrs {
    type Item = (&'a Vec<u8>, &'a Vec<u8>);
    type IntoIter = std::collections::btree_map::Iter<'a, Vec<u8>, Vec<u8>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mtime {
    pub sec: i64,
    pub nsec: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Entries by name, sorted bytewise (as libcomposefs sorts them, with `strcmp`).
    Dir(BTreeMap<Vec<u8>, Node>),
    Regular {
        size: u64,
        /// The backing file, relative to the overlay's data-only lower directory (for ostree,
        /// `xx/yyyy….file` in `ostree/repo/objects`). Unused when `size` is 0.
        payload: Option<Vec<u8>>,
        /// The backing file's fs-verity digest, which overlayfs checks when it opens it.
        verity: Option<[u8; 32]>,
    },
    Symlink(Vec<u8>),
    /// A character device; `0` is an overlay whiteout.
    CharDevice(u64),
    BlockDevice(u64),
    Fifo,
    Socket,
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFSOCK: u32 = 0o140000;

impl Node {
    /// A directory with no entries.
    pub fn dir(mode: u32, uid: u32, gid: u32) -> Node {
        Node { mode, uid, gid, nlink: 1, mtime: Mtime::default(), xattrs: Xattrs::default(), kind: Kind::Dir(BTreeMap::new()) }
    }

    /// The file type bits of `st_mode`.
    pub fn file_type(&self) -> u32 {
        match self.kind {
            Kind::Dir(_) => S_IFDIR,
            Kind::Regular { .. } => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::CharDevice(_) => S_IFCHR,
            Kind::BlockDevice(_) => S_IFBLK,
            Kind::Fifo => S_IFIFO,
            Kind::Socket => S_IFSOCK,
        }
    }

    /// `st_mode`: type and permission bits.
    pub fn st_mode(&self) -> u32 {
        self.file_type() | (self.mode & 0o7777)
    }

    pub fn entries(&self) -> Option<&BTreeMap<Vec<u8>, Node>> {
        match &self.kind {
            Kind::Dir(e) => Some(e),
            _ => None,
        }
    }

    pub fn entries_mut(&mut self) -> Option<&mut BTreeMap<Vec<u8>, Node>> {
        match &mut self.kind {
            Kind::Dir(e) => Some(e),
            _ => None,
        }
    }
}
