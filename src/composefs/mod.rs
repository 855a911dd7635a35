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
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub kind: Kind,
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
        Node { mode, uid, gid, nlink: 1, mtime: Mtime::default(), xattrs: BTreeMap::new(), kind: Kind::Dir(BTreeMap::new()) }
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
