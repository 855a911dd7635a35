//! The EROFS image libcomposefs writes (`lcfs_write_erofs_to`, containers/composefs 1.0.8
//! `libcomposefs/lcfs-writer-erofs.c`), byte for byte.
//!
//! ```text
//! 0     composefs header {magic, version 1, flags (HAS_ACL), composefs_version}, zeros to 1024
//! 1024  EROFS superblock (4 KiB blocks, compat MTIME|XATTR_FILTER, meta_blkaddr 0)
//! 1152  inodes in breadth-first order, each on a 32-byte slot: inode (compact 32 or extended
//!       64 bytes), xattr body, inline tail (last directory block, symlink target, chunk map)
//!       shared xattr table; zeros to the next block
//!       data blocks: full directory blocks, long symlink targets, in inode order
//! ```
//! Before the layout the tree is rewritten as libcomposefs does for overlayfs: existing
//! `trusted.overlay.*` xattrs are escaped to `trusted.overlay.overlay.*`; regular files with
//! data get `trusted.overlay.metacopy` (empty, or the fs-verity digest) and
//! `trusted.overlay.redirect` (`/` + payload); character devices 0:0 become escaped
//! whiteouts (composefs version 1); the root is opaque and gets whiteouts `00`…`ff` hiding
//! the object store's directories.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};

use anyhow::{bail, Result};

use crate::fsverity;
use super::{Kind, Mtime, Node, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

const BLOCK: u64 = 4096;
const SLOT: u64 = 32;
const SUPER_OFFSET: u64 = 1024;
const SUPER_SIZE: u64 = 128;
const COMPACT_SIZE: u64 = 32;
const EXTENDED_SIZE: u64 = 64;
const XATTR_HEADER_SIZE: u64 = 12;
const DIRENT_SIZE: u64 = 12;

const LCFS_MAGIC: u32 = 0xd078_629a;
const LCFS_EROFS_VERSION: u32 = 1;
const LCFS_FLAG_HAS_ACL: u32 = 1;
const EROFS_MAGIC: u32 = 0xe0f5_e1e2;
const FEATURE_COMPAT_MTIME: u32 = 0x2;
const FEATURE_COMPAT_XATTR_FILTER: u32 = 0x4;

const LAYOUT_FLAT_PLAIN: u16 = 0;
const LAYOUT_FLAT_INLINE: u16 = 2;
const LAYOUT_CHUNK_BASED: u16 = 4;
const CHUNK_BLKBITS_MASK: u32 = 0x1f;
/// libcomposefs keeps a file's chunk map within one block.
const MAX_CHUNKS: u64 = 1024;
const NULL_ADDR: u32 = 0xffff_ffff;

/// At most this many shared xattr references per inode (`EROFS_XATTR_LONG_PREFIX`).
const MAX_SHARED_REFS: usize = 0x80;
const XATTR_FILTER_SEED: u32 = 0x25BB_E08F;
/// libcomposefs' budget for one node's xattrs read from outside (`LCFS_INODE_EXTERNAL_XATTR_MAX`),
/// counted as it counts them.
const XATTR_BUDGET: usize = u16::MAX as usize / 2;
const PATH_MAX: usize = 4096;

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";
const METACOPY: &[u8] = b"trusted.overlay.metacopy";
const REDIRECT: &[u8] = b"trusted.overlay.redirect";
const OPAQUE: &[u8] = b"trusted.overlay.opaque";
const ESCAPED_WHITEOUT: &[u8] = b"trusted.overlay.overlay.whiteout";
const ESCAPED_WHITEOUTS: &[u8] = b"trusted.overlay.overlay.whiteouts";
const ESCAPED_OPAQUE: &[u8] = b"trusted.overlay.overlay.opaque";
const USER_WHITEOUT: &[u8] = b"user.overlay.whiteout";
const USER_WHITEOUTS: &[u8] = b"user.overlay.whiteouts";
const USER_OPAQUE: &[u8] = b"user.overlay.opaque";

/// A tree laid out as an EROFS composefs image, ready to be written (or dumped).
pub struct Image<'a> {
    inodes: Vec<Inode<'a>>,
    /// Every directory's entries (with `.` and `..`), sorted by name, each directory's in one
    /// run ([`Inode::dirents`]): (name, inode index). One vector, not one per directory.
    dirents: Vec<(&'a [u8], u32)>,
    /// The shared xattr table, in its on-disk order: (name as stored, value).
    shared: Vec<(Vec<u8>, Vec<u8>)>,
    /// Each shared xattr's offset in that table, by [`pair_key`].
    shared_offsets: HashMap<Vec<u8>, u64>,
    shared_size: u64,
    inodes_end: u64,
    data_blocks: u64,
    min_mtime: Mtime,
    has_acl: bool,
    /// 1 when the tree holds whiteouts (character devices 0:0), else 0.
    composefs_version: u32,
}

/// One inode of the image. Its xattrs are not stored: they are the node's, rewritten for
/// overlayfs, and derived again where needed ([`Image::xattrs`]), which keeps the per-file
/// record small (a desktop image has a few hundred thousand of them).
struct Inode<'a> {
    /// Where it came from: `None` for the root's `00`…`ff` whiteouts.
    node: Option<&'a Node>,
    parent: u32,
    name: &'a [u8],
    st_mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: Mtime,
    size: u64,
    rdev: u64,
    /// Directories: their run in [`Image::dirents`] (start, length).
    dirents: (u32, u32),
    /// A directory holding whiteouts (character devices 0:0): overlayfs is told so by xattrs.
    whiteout_parent: bool,
    // Layout, as compute_erofs_inodes leaves it.
    n_blocks: u64,
    tail: u64,
    compact: bool,
    ipad: u64,
    xattr_size: u64,
    nid: u64,
}

/// An xattr of an inode as the image stores it (derived by [`Image::xattrs`], not kept).
struct Xattr<'a> {
    /// The name as stored (escaped when it was a `trusted.overlay.` one).
    key: Cow<'a, [u8]>,
    value: Cow<'a, [u8]>,
    /// Added by the rewrite for overlayfs (not part of the tree's own xattrs).
    added: bool,
    /// Offset in the shared table, when shared.
    shared: Option<u64>,
}

static WHITEOUT_NAMES: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut names = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        names[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    names
};

impl Inode<'_> {
    fn is_dir(&self) -> bool {
        self.st_mode & S_IFMT == S_IFDIR
    }
}

/// Adds (or replaces) an xattr of the overlay rewrite in `xattrs` (sorted by name).
fn set_xattr<'a>(xattrs: &mut Vec<Xattr<'a>>, key: &'static [u8], value: impl Into<Cow<'a, [u8]>>) {
    let x = Xattr { key: Cow::Borrowed(key), value: value.into(), added: true, shared: None };
    match xattrs.binary_search_by(|e| e.key.as_ref().cmp(key)) {
        Ok(i) => xattrs[i] = x,
        Err(i) => xattrs.insert(i, x),
    }
}

/// An xattr's (name, value) as one key: names hold no NUL byte, so the pair is unambiguous.
fn pair_key(into: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    into.clear();
    into.extend_from_slice(key);
    into.push(0);
    into.extend_from_slice(value);
}

impl<'a> Image<'a> {
    /// Rewrites and lays out `root` as libcomposefs does. Errors name the path of an entry
    /// libcomposefs would refuse.
    pub fn new(root: &'a Node) -> Result<Image<'a>> {
        if !matches!(root.kind, Kind::Dir(_)) {
            bail!("the root of a composefs image must be a directory");
        }
        let mut image = Image {
            inodes: Vec::new(),
            dirents: Vec::new(),
            shared: Vec::new(),
            shared_offsets: HashMap::new(),
            shared_size: 0,
            inodes_end: 0,
            data_blocks: 0,
            min_mtime: root.mtime,
            has_acl: false,
            composefs_version: 0,
        };
        image.build(root)?;
        image.share_xattrs();
        image.layout()?;
        Ok(image)
    }

    /// The inodes in breadth-first order, children sorted by name, the overlay rewrite applied.
    fn build(&mut self, root: &'a Node) -> Result<()> {
        self.inodes.push(self.inode_of(root, 0, b"")?);
        let mut i = 0;
        while i < self.inodes.len() {
            let Some(Kind::Dir(entries)) = self.inodes[i].node.map(|n| &n.kind) else {
                i += 1;
                continue;
            };
            enum Entry<'a> {
                Node(&'a Node),
                Dot,
                DotDot,
                Whiteout,
            }
            let mut children: Vec<(&'a [u8], Entry<'a>)> = Vec::with_capacity(entries.len() + 2);
            children.push((b".", Entry::Dot));
            children.push((b"..", Entry::DotDot));
            children.extend(entries.iter().map(|(k, v)| (k.as_slice(), Entry::Node(v))));
            if i == 0 {
                children.extend(WHITEOUT_NAMES.iter().filter(|n| !entries.contains_key(n.as_slice())).map(|n| (n.as_slice(), Entry::Whiteout)));
            }
            children.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let start = self.dirents.len();
            let mut subdirs = 0;
            for (name, entry) in children {
                let target = match entry {
                    Entry::Dot => i,
                    Entry::DotDot => self.inodes[i].parent as usize,
                    Entry::Node(n) => {
                        check_name(name).map_err(|e| anyhow::anyhow!("{}: {e}", self.path_of(i, Some(name))))?;
                        let child = self.inode_of(n, i, name)?;
                        if child.is_dir() {
                            subdirs += 1;
                        }
                        if matches!(n.kind, Kind::CharDevice(0)) {
                            self.mark_whiteout_parent(i);
                        }
                        self.inodes.push(child);
                        self.inodes.len() - 1
                    }
                    Entry::Whiteout => {
                        let root = &self.inodes[0];
                        // Its xattrs (the root's SELinux label) are derived by `xattrs`.
                        let w = Inode {
                            node: None,
                            parent: 0,
                            name,
                            st_mode: S_IFCHR | 0o644,
                            uid: root.uid,
                            gid: root.gid,
                            nlink: 1,
                            mtime: root.mtime,
                            size: 0,
                            rdev: 0,
                            ..Inode::layout_default()
                        };
                        self.inodes.push(w);
                        self.inodes.len() - 1
                    }
                };
                self.dirents.push((name, target as u32));
            }
            let dir = &mut self.inodes[i];
            dir.dirents = (start as u32, (self.dirents.len() - start) as u32);
            dir.nlink = 2 + subdirs;
            i += 1;
        }
        let is_acl = |k: &Vec<u8>| matches!(k.as_slice(), b"system.posix_acl_access" | b"system.posix_acl_default");
        for inode in &self.inodes {
            self.min_mtime = self.min_mtime.min(inode.mtime);
            // The overlay rewrite adds no ACL: the nodes' own xattrs tell.
            if inode.node.is_some_and(|n| n.xattrs.keys().any(is_acl)) {
                self.has_acl = true;
            }
        }
        Ok(())
    }

    /// A directory holding whiteouts is marked for overlayfs (`xattrs` adds the marks).
    fn mark_whiteout_parent(&mut self, parent: usize) {
        self.composefs_version = 1;
        self.inodes[parent].whiteout_parent = true;
    }

    /// The xattrs of inode `i` as the image stores them, sorted by name: the node's own
    /// (`trusted.overlay.*` escaped) and those the overlay rewrite adds: METACOPY and REDIRECT
    /// on regular files with data, the escaped whiteout marks on whiteouts and their parents,
    /// opaque on the root, the root's SELinux label on its `00`…`ff` whiteouts. Shared ones
    /// are not placed yet ([`Image::placed_xattrs`]).
    fn xattrs(&self, i: usize) -> Vec<Xattr<'a>> {
        let inode = &self.inodes[i];
        let Some(node) = inode.node else {
            let label = self.inodes[0].node.and_then(|n| n.xattrs.get(b"security.selinux".as_slice()));
            return label.map(|l| Xattr { key: Cow::Borrowed(b"security.selinux"), value: Cow::Borrowed(l.as_slice()), added: true, shared: None }).into_iter().collect();
        };
        let mut xattrs: Vec<Xattr<'a>> = Vec::with_capacity(node.xattrs.len() + 2);
        for (k, v) in &node.xattrs {
            let key = match k.strip_prefix(OVERLAY_PREFIX) {
                Some(rest) => Cow::Owned([ESCAPED_PREFIX, rest].concat()),
                None => Cow::Borrowed(k.as_slice()),
            };
            xattrs.push(Xattr { key, value: Cow::Borrowed(v), added: false, shared: None });
        }
        xattrs.sort_by(|a, b| a.key.cmp(&b.key));
        match &node.kind {
            Kind::Regular { size, payload, verity } if *size > 0 => {
                let metacopy: Cow<'a, [u8]> = match verity {
                    Some(d) => Cow::Owned([&[0, 36, 0, fsverity::HASH_ALG_SHA256][..], d.as_slice()].concat()),
                    None => Cow::Borrowed(b""),
                };
                set_xattr(&mut xattrs, METACOPY, metacopy);
                if let Some(p) = payload.as_ref().filter(|p| !p.is_empty()) {
                    // An absolute payload is the redirect itself: borrowed, not copied.
                    let redirect: Cow<'a, [u8]> = if p.starts_with(b"/") { Cow::Borrowed(p) } else { Cow::Owned([b"/".as_slice(), p].concat()) };
                    set_xattr(&mut xattrs, REDIRECT, redirect);
                }
            }
            Kind::CharDevice(0) => {
                set_xattr(&mut xattrs, ESCAPED_WHITEOUT, &b""[..]);
                set_xattr(&mut xattrs, USER_WHITEOUT, &b""[..]);
            }
            _ => {}
        }
        if inode.whiteout_parent {
            // And, in composefs version 1, opaque "x".
            set_xattr(&mut xattrs, ESCAPED_WHITEOUTS, &b""[..]);
            set_xattr(&mut xattrs, USER_WHITEOUTS, &b""[..]);
            set_xattr(&mut xattrs, ESCAPED_OPAQUE, &b"x"[..]);
            set_xattr(&mut xattrs, USER_OPAQUE, &b"x"[..]);
        }
        if i == 0 {
            set_xattr(&mut xattrs, OPAQUE, &b"y"[..]);
        }
        xattrs
    }

    /// [`Image::xattrs`] with the shared ones given their offset in the shared table (at most
    /// [`MAX_SHARED_REFS`] per inode; the rest stay inline).
    fn placed_xattrs(&self, i: usize) -> Vec<Xattr<'a>> {
        let mut xattrs = self.xattrs(i);
        let mut refs = 0;
        let mut key = Vec::new();
        for x in &mut xattrs {
            if refs == MAX_SHARED_REFS {
                break;
            }
            pair_key(&mut key, &x.key, &x.value);
            if let Some(&o) = self.shared_offsets.get(&key) {
                x.shared = Some(o);
                refs += 1;
            }
        }
        xattrs
    }

    /// Checks what libcomposefs checks of a node (xattr names and sizes, its xattr budget with
    /// the overlay xattrs it gets, backing path, symlink target) and makes its inode.
    fn inode_of(&self, node: &'a Node, parent: usize, name: &'a [u8]) -> Result<Inode<'a>> {
        let path = || self.path_of(parent, if name.is_empty() { None } else { Some(name) });
        let mut budget = 0;
        for (k, v) in &node.xattrs {
            if k.is_empty() || k.len() > 255 || k.contains(&0) {
                bail!("{}: the xattr name {:?} is empty, too long or holds a NUL byte", path(), String::from_utf8_lossy(k));
            }
            if v.len() > u16::MAX as usize {
                bail!("{}: the xattr {} is {} bytes, more than composefs stores ({})", path(), String::from_utf8_lossy(k), v.len(), u16::MAX);
            }
            budget += xattr_cost(k.len(), v.len(), budget == 0);
        }
        let mut inode = Inode {
            node: Some(node),
            parent: parent as u32,
            name,
            st_mode: node.st_mode(),
            uid: node.uid,
            gid: node.gid,
            nlink: node.nlink,
            mtime: node.mtime,
            size: 0,
            rdev: 0,
            ..Inode::layout_default()
        };
        match &node.kind {
            Kind::Regular { size, payload, verity } => {
                inode.size = *size;
                if *size > 0 {
                    let (_, chunks) = chunking(*size);
                    if chunks > MAX_CHUNKS {
                        bail!("{}: {} bytes is too large for a composefs image", path(), size);
                    }
                    let metacopy_len = if verity.is_some() { 36 } else { 0 };
                    budget += xattr_cost(METACOPY.len(), metacopy_len, budget == 0);
                    if let Some(p) = payload.as_ref().filter(|p| !p.is_empty()) {
                        if p.len() >= PATH_MAX || p.contains(&0) {
                            bail!("{}: the backing path is too long or holds a NUL byte", path());
                        }
                        let redirect_len = p.len() + usize::from(!p.starts_with(b"/"));
                        budget += xattr_cost(REDIRECT.len(), redirect_len, budget == 0);
                    }
                }
            }
            Kind::Symlink(target) => {
                if target.is_empty() || target.len() >= PATH_MAX || target.contains(&0) {
                    bail!("{}: the symlink target is empty, longer than {} bytes or holds a NUL byte", path(), PATH_MAX - 1);
                }
                inode.size = target.len() as u64;
            }
            Kind::CharDevice(0) => {
                // A whiteout in the tree is stored as a regular file overlayfs will not
                // mistake for its own whiteout.
                inode.st_mode = S_IFREG | (node.mode & 0o7777);
            }
            Kind::CharDevice(rdev) | Kind::BlockDevice(rdev) => inode.rdev = *rdev,
            Kind::Dir(_) | Kind::Fifo | Kind::Socket => {}
        }
        if budget > XATTR_BUDGET {
            bail!("{}: the xattrs take more room than a composefs inode allows", path());
        }
        Ok(inode)
    }

    /// The path of inode `i` (and of `child` below it), for messages.
    fn path_of(&self, i: usize, child: Option<&[u8]>) -> String {
        let mut parts: Vec<&[u8]> = child.into_iter().collect();
        let mut at = i;
        while at != 0 {
            parts.push(self.inodes[at].name);
            at = self.inodes[at].parent as usize;
        }
        let mut s = String::new();
        for p in parts.iter().rev() {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(p));
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }

    /// Xattrs used by more than one inode go to the shared table, in libcomposefs' canonical
    /// order (name, then value length, then value, all descending). Counted by hash first, so
    /// that only the candidates (shared, or sharing a hash) are held as copies.
    fn share_xattrs(&mut self) {
        let hash = |x: &Xattr| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            x.key.hash(&mut h);
            x.value.hash(&mut h);
            h.finish()
        };
        // Seen more than once (true) or once (false), by hash.
        let mut by_hash: HashMap<u64, bool> = HashMap::new();
        for i in 0..self.inodes.len() {
            for x in self.xattrs(i) {
                by_hash.entry(hash(&x)).and_modify(|again| *again = true).or_insert(false);
            }
        }
        // The candidates, counted exactly: pair key -> (name length, uses).
        let mut uses: HashMap<Vec<u8>, (usize, u32)> = HashMap::new();
        let mut key = Vec::new();
        for i in 0..self.inodes.len() {
            for x in self.xattrs(i) {
                if by_hash.get(&hash(&x)) == Some(&true) {
                    pair_key(&mut key, &x.key, &x.value);
                    match uses.get_mut(&key) {
                        Some((_, n)) => *n += 1,
                        None => {
                            uses.insert(key.clone(), (x.key.len(), 1));
                        }
                    }
                }
            }
        }
        drop(by_hash);
        let mut shared: Vec<(Vec<u8>, Vec<u8>)> =
            uses.into_iter().filter(|(_, (_, n))| *n > 1).map(|(mut k, (len, _))| (k.drain(..len).collect(), k.split_off(1))).collect();
        shared.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.len().cmp(&a.1.len())).then(b.1.cmp(&a.1)));
        let mut offset = 0;
        for (k, v) in &shared {
            pair_key(&mut key, k, v);
            self.shared_offsets.insert(key.clone(), offset);
            offset += xattr_entry_size(k, v.len());
        }
        self.shared_size = offset;
        self.shared = shared;
    }

    /// compute_erofs_inodes: sizes, inline tails, padding, nids.
    fn layout(&mut self) -> Result<()> {
        let mut pos = SUPER_OFFSET + SUPER_SIZE;
        let min_mtime = self.min_mtime;
        for i in 0..self.inodes.len() {
            let xattrs = self.placed_xattrs(i);
            let kind = self.inodes[i].st_mode & S_IFMT;
            let dir = (kind == S_IFDIR).then(|| dir_size(self.dirents_of(&self.inodes[i])));
            let inode = &mut self.inodes[i];
            (inode.n_blocks, inode.tail) = match kind {
                S_IFDIR => dir.expect("sized above"),
                S_IFLNK => (0, inode.size),
                S_IFREG if inode.size > 0 => (0, chunking(inode.size).1 * 4),
                _ => (0, 0),
            };
            let size = if kind == S_IFDIR { inode.n_blocks * BLOCK + inode.tail } else { inode.size };
            inode.compact = inode.mtime == min_mtime
                && inode.nlink <= u16::MAX as u32
                && inode.uid <= u16::MAX as u32
                && inode.gid <= u16::MAX as u32
                && size <= u32::MAX as u64;
            let inode_size = if inode.compact { COMPACT_SIZE } else { EXTENDED_SIZE };
            let n_shared = xattrs.iter().filter(|x| x.shared.is_some()).count() as u64;
            let unshared: u64 = xattrs.iter().filter(|x| x.shared.is_none()).map(|x| xattr_entry_size(&x.key, x.value.len())).sum();
            inode.xattr_size = if n_shared == 0 && unshared == 0 { 0 } else { round_up(XATTR_HEADER_SIZE + n_shared * 4 + unshared, 4) };
            if inode.xattr_size > 0 && (inode.xattr_size - XATTR_HEADER_SIZE) / 4 + 1 > u16::MAX as u64 {
                bail!("{}: too many xattrs for a composefs inode", self.path_of(i, None));
            }
            let aligned = round_up(pos, SLOT);
            let inode = &mut self.inodes[i];
            inode.ipad = aligned - pos;
            pos = aligned;
            let extra = tail_padding(inode, pos, inode_size);
            inode.ipad += extra;
            pos += extra;
            self.data_blocks += inode.n_blocks;
            inode.nid = pos / SLOT;
            pos += inode_size + inode.xattr_size + inode.tail;
        }
        self.inodes_end = round_up(pos, SLOT);
        if self.inodes[0].nid >= u16::MAX as u64 {
            bail!("the composefs root inode does not fit in the superblock");
        }
        Ok(())
    }

    /// A directory's entries.
    fn dirents_of(&self, dir: &Inode) -> &[(&'a [u8], u32)] {
        let (start, len) = dir.dirents;
        &self.dirents[start as usize..(start + len) as usize]
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.data_start() + self.data_blocks * BLOCK
    }

    fn data_start(&self) -> u64 {
        round_up(self.inodes_end + self.shared_size, BLOCK)
    }

    /// Writes the image to `w`; returns its fs-verity digest.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<[u8; 32]> {
        let mut out = Out { w, pos: 0, verity: fsverity::Hasher::new() };
        let mut header = [0u8; 32];
        header[0..4].copy_from_slice(&LCFS_MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&LCFS_EROFS_VERSION.to_le_bytes());
        header[8..12].copy_from_slice(&(if self.has_acl { LCFS_FLAG_HAS_ACL } else { 0 }).to_le_bytes());
        header[12..16].copy_from_slice(&self.composefs_version.to_le_bytes());
        out.put(&header)?;
        out.pad(SUPER_OFFSET - 32)?;

        let data_start = self.data_start();
        let mut sb = [0u8; SUPER_SIZE as usize];
        sb[0..4].copy_from_slice(&EROFS_MAGIC.to_le_bytes());
        sb[8..12].copy_from_slice(&(FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER).to_le_bytes());
        sb[12] = BLOCK.trailing_zeros() as u8;
        sb[14..16].copy_from_slice(&(self.inodes[0].nid as u16).to_le_bytes());
        sb[16..24].copy_from_slice(&(self.inodes.len() as u64).to_le_bytes());
        sb[24..32].copy_from_slice(&(self.min_mtime.sec as u64).to_le_bytes());
        sb[32..36].copy_from_slice(&self.min_mtime.nsec.to_le_bytes());
        sb[36..40].copy_from_slice(&((data_start / BLOCK + self.data_blocks) as u32).to_le_bytes());
        sb[40..44].copy_from_slice(&(((SUPER_OFFSET + SUPER_SIZE) / BLOCK) as u32).to_le_bytes());
        sb[44..48].copy_from_slice(&((self.inodes_end / BLOCK) as u32).to_le_bytes());
        out.put(&sb)?;

        let mut data_end = data_start;
        for (i, inode) in self.inodes.iter().enumerate() {
            self.write_inode(&mut out, i, inode, &mut data_end)?;
        }
        out.align(SLOT)?;
        debug_assert_eq!(out.pos, self.inodes_end);
        for (key, value) in &self.shared {
            write_xattr(&mut out, key, value)?;
        }
        out.align(BLOCK)?;
        debug_assert_eq!(out.pos, data_start);
        for inode in &self.inodes {
            self.write_data(&mut out, inode)?;
        }
        debug_assert_eq!(out.pos, data_end);
        debug_assert_eq!(out.pos, self.size());
        Ok(out.verity.finish())
    }

    fn write_inode(&self, out: &mut Out, i: usize, inode: &Inode, data_end: &mut u64) -> io::Result<()> {
        out.pad(inode.ipad)?;
        debug_assert_eq!(out.pos % SLOT, 0);
        debug_assert_eq!(out.pos / SLOT, inode.nid);
        let kind = inode.st_mode & S_IFMT;
        let icount = if inode.xattr_size == 0 { 0 } else { (inode.xattr_size - XATTR_HEADER_SIZE) / 4 + 1 };
        let mut layout = if inode.tail > 0 { LAYOUT_FLAT_INLINE } else { LAYOUT_FLAT_PLAIN };
        let mut i_u: u32 = 0;
        let size = match kind {
            S_IFDIR => inode.n_blocks * BLOCK + inode.tail,
            S_IFREG => inode.size,
            S_IFLNK if inode.n_blocks == 0 => inode.tail,
            S_IFLNK => inode.size,
            _ => 0,
        };
        match kind {
            S_IFCHR | super::S_IFBLK => i_u = inode.rdev as u32,
            S_IFDIR | S_IFREG | S_IFLNK if inode.n_blocks > 0 => {
                i_u = (*data_end / BLOCK) as u32;
                *data_end += inode.n_blocks * BLOCK;
            }
            _ => {}
        }
        if kind == S_IFREG && inode.size > 0 {
            layout = LAYOUT_CHUNK_BASED;
            let (bits, _) = chunking(inode.size);
            i_u = (i_u & 0xffff_0000) | (bits - 12);
        }
        let format = (layout << 1) | if inode.compact { 0 } else { 1 };
        if inode.compact {
            let mut b = [0u8; COMPACT_SIZE as usize];
            b[0..2].copy_from_slice(&format.to_le_bytes());
            b[2..4].copy_from_slice(&(icount as u16).to_le_bytes());
            b[4..6].copy_from_slice(&(inode.st_mode as u16).to_le_bytes());
            b[6..8].copy_from_slice(&(inode.nlink as u16).to_le_bytes());
            b[8..12].copy_from_slice(&(size as u32).to_le_bytes());
            b[16..20].copy_from_slice(&i_u.to_le_bytes());
            b[20..24].copy_from_slice(&(i as u32).to_le_bytes());
            b[24..26].copy_from_slice(&(inode.uid as u16).to_le_bytes());
            b[26..28].copy_from_slice(&(inode.gid as u16).to_le_bytes());
            out.put(&b)?;
        } else {
            let mut b = [0u8; EXTENDED_SIZE as usize];
            b[0..2].copy_from_slice(&format.to_le_bytes());
            b[2..4].copy_from_slice(&(icount as u16).to_le_bytes());
            b[4..6].copy_from_slice(&(inode.st_mode as u16).to_le_bytes());
            b[8..16].copy_from_slice(&size.to_le_bytes());
            b[16..20].copy_from_slice(&i_u.to_le_bytes());
            b[20..24].copy_from_slice(&(i as u32).to_le_bytes());
            b[24..28].copy_from_slice(&inode.uid.to_le_bytes());
            b[28..32].copy_from_slice(&inode.gid.to_le_bytes());
            b[32..40].copy_from_slice(&(inode.mtime.sec as u64).to_le_bytes());
            b[40..44].copy_from_slice(&inode.mtime.nsec.to_le_bytes());
            b[44..48].copy_from_slice(&inode.nlink.to_le_bytes());
            out.put(&b)?;
        }

        if inode.xattr_size > 0 {
            let xattrs = self.placed_xattrs(i);
            let start = out.pos;
            let mut h = [0u8; XATTR_HEADER_SIZE as usize];
            h[0..4].copy_from_slice(&name_filter(&xattrs).to_le_bytes());
            h[4] = xattrs.iter().filter(|x| x.shared.is_some()).count() as u8;
            out.put(&h)?;
            for x in &xattrs {
                if let Some(o) = x.shared {
                    out.put(&(((self.inodes_end % BLOCK + o) / 4) as u32).to_le_bytes())?;
                }
            }
            for x in xattrs.iter().filter(|x| x.shared.is_none()) {
                write_xattr(out, &x.key, &x.value)?;
            }
            debug_assert_eq!(out.pos - start, inode.xattr_size);
        }

        match kind {
            S_IFDIR => write_dirents(out, self, inode, false)?,
            S_IFLNK if inode.n_blocks == 0 => out.put(symlink_target(inode))?,
            S_IFREG if inode.tail > 0 => {
                for _ in 0..inode.tail / 4 {
                    out.put(&NULL_ADDR.to_le_bytes())?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The blocks that are not inline: full directory blocks, long symlink targets.
    fn write_data(&self, out: &mut Out, inode: &Inode) -> io::Result<()> {
        match inode.st_mode & S_IFMT {
            S_IFDIR => write_dirents(out, self, inode, true),
            S_IFLNK if inode.n_blocks > 0 => {
                let t = symlink_target(inode);
                out.put(&t[..t.len().min(BLOCK as usize)])?;
                out.align(BLOCK)
            }
            S_IFREG if inode.n_blocks > 0 => {
                for _ in 0..MAX_CHUNKS {
                    out.put(&NULL_ADDR.to_le_bytes())?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The dump lines of the tree, as `composefs-info dump` prints this image: depth-first,
    /// fields as in composefs-dump(5), the tree's own xattrs (inline ones first, then shared,
    /// as the image lists them), the root's `00`…`ff` whiteouts left out.
    pub fn dump_to(&self, w: &mut dyn Write) -> io::Result<()> {
        self.dump_inode(w, 0, b"/")
    }

    fn dump_inode(&self, w: &mut dyn Write, i: usize, path: &[u8]) -> io::Result<()> {
        let inode = &self.inodes[i];
        let Some(node) = inode.node else { return Ok(()) };
        let kind = inode.st_mode & S_IFMT;
        let size = match kind {
            S_IFDIR => inode.n_blocks * BLOCK + inode.tail,
            _ => inode.size,
        };
        let mut line = Vec::with_capacity(256);
        super::dump::escape(&mut line, path, super::dump::Escape::Standard);
        let (payload, digest): (Option<&[u8]>, Option<&[u8; 32]>) = match &node.kind {
            Kind::Regular { size, payload, verity } if *size > 0 => (payload.as_deref().filter(|p| !p.is_empty()), verity.as_ref()),
            Kind::Symlink(t) => (Some(t), None),
            _ => (None, None),
        };
        write!(
            line,
            " {} {:o} {} {} {} {} {}.{} ",
            size,
            node.st_mode(),
            inode.nlink,
            inode.uid,
            inode.gid,
            inode.rdev,
            inode.mtime.sec,
            inode.mtime.nsec
        )?;
        match payload {
            Some(p) => super::dump::escape(&mut line, p, super::dump::Escape::LoneDash),
            None => line.push(b'-'),
        }
        line.extend_from_slice(b" -");
        match digest {
            Some(d) => write!(line, " {}", hex::encode(d))?,
            None => line.extend_from_slice(b" -"),
        }
        let xattrs = self.placed_xattrs(i);
        let own = xattrs.iter().filter(|x| !x.added);
        for x in own.clone().filter(|x| x.shared.is_none()).chain(own.filter(|x| x.shared.is_some())) {
            let key = match x.key.strip_prefix(ESCAPED_PREFIX) {
                Some(rest) => Cow::Owned([OVERLAY_PREFIX, rest].concat()),
                None => Cow::Borrowed(x.key.as_ref()),
            };
            line.push(b' ');
            super::dump::escape(&mut line, &key, super::dump::Escape::Equal);
            line.push(b'=');
            super::dump::escape(&mut line, &x.value, super::dump::Escape::Equal);
        }
        line.push(b'\n');
        w.write_all(&line)?;
        for (name, target) in self.dirents_of(inode) {
            if *name == b"." || *name == b".." {
                continue;
            }
            let mut child = path.to_vec();
            if child != b"/" {
                child.push(b'/');
            }
            child.extend_from_slice(name);
            self.dump_inode(w, *target as usize, &child)?;
        }
        Ok(())
    }
}

impl Inode<'_> {
    fn layout_default() -> Inode<'static> {
        Inode {
            node: None,
            parent: 0,
            name: b"",
            st_mode: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: Mtime::default(),
            size: 0,
            rdev: 0,
            dirents: (0, 0),
            whiteout_parent: false,
            n_blocks: 0,
            tail: 0,
            compact: true,
            ipad: 0,
            xattr_size: 0,
            nid: 0,
        }
    }
}

fn symlink_target<'a>(inode: &Inode<'a>) -> &'a [u8] {
    match inode.node.map(|n| &n.kind) {
        Some(Kind::Symlink(t)) => t,
        _ => b"",
    }
}

/// What libcomposefs charges a node's xattr budget for one xattr (with the header for the first).
fn xattr_cost(name_len: usize, value_len: usize, first: bool) -> usize {
    2 * 4 - 1 + name_len + value_len + if first { XATTR_HEADER_SIZE as usize } else { 0 }
}

fn check_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    match name {
        b"" => Err("an empty name"),
        b"." | b".." => Err("a name that is . or .."),
        n if n.len() > 255 => Err("a name longer than 255 bytes"),
        n if n.contains(&b'/') || n.contains(&0) => Err("a name holding / or a NUL byte"),
        _ => Ok(()),
    }
}

/// A directory's full blocks and inline tail (compute_erofs_dir_size): dirents fill 4 KiB
/// blocks in order; a last partial block over half a block is not inlined.
fn dir_size(dirents: &[(&[u8], u32)]) -> (u64, u64) {
    let mut blocks = 0;
    let mut used = 0;
    for (name, _) in dirents {
        let len = DIRENT_SIZE + name.len() as u64;
        if used + len > BLOCK {
            blocks += 1;
            used = 0;
        }
        used += len;
    }
    if used > BLOCK / 2 {
        (blocks + 1, 0)
    } else {
        (blocks, used)
    }
}

/// (chunk bits, chunk count) of an external file: one chunk covering the whole file, at
/// least a block, at most 2^31 blocks.
fn chunking(size: u64) -> (u32, u64) {
    let ilog2 = |n: u64| if n == 0 { 0 } else { 63 - n.leading_zeros() };
    let mut bits = ilog2(size - 1) + 1;
    bits = bits.max(12);
    if bits - 12 > CHUNK_BLKBITS_MASK {
        bits = CHUNK_BLKBITS_MASK + 12;
    }
    (bits, size.div_ceil(1 << bits))
}

/// Padding in front of an inode so that its inline tail does not cross a block
/// (compute_erofs_inode_padding_for_tail); may move the tail out to a block instead.
fn tail_padding(inode: &mut Inode, pos: u64, inode_size: u64) -> u64 {
    let non_tail = inode_size + inode.xattr_size;
    let total = non_tail + inode.tail;
    if inode.st_mode & S_IFMT == S_IFLNK {
        // The symlink's inode and target stay in one block, unless together they fill one:
        // then the target gets a block of its own (yet the padding is reckoned with it inline).
        if total / BLOCK > 0 {
            inode.n_blocks += 1;
            inode.tail = 0;
        }
        if pos / BLOCK != (pos + total - 1) / BLOCK {
            return round_up(pos, BLOCK) - pos;
        }
        return 0;
    }
    let remainder = BLOCK - (pos + non_tail) % BLOCK;
    if remainder < inode.tail {
        let extra = round_up(remainder, SLOT);
        let remainder = BLOCK - (pos + non_tail + extra) % BLOCK;
        if inode.tail <= remainder {
            return extra;
        }
        inode.n_blocks += 1;
        inode.tail = 0;
        return round_up(pos, BLOCK) - pos;
    }
    0
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// The erofs name index of an xattr and the rest of its name.
fn xattr_index(key: &[u8]) -> (u8, &[u8]) {
    const PREFIXES: [(&[u8], u8); 5] = [
        (b"user.", 1),
        (b"system.posix_acl_access", 2),
        (b"system.posix_acl_default", 3),
        (b"trusted.", 4),
        (b"security.", 6),
    ];
    for (p, i) in PREFIXES {
        if let Some(rest) = key.strip_prefix(p) {
            return (i, rest);
        }
    }
    (0, key)
}

fn xattr_entry_size(key: &[u8], value_len: usize) -> u64 {
    round_up(4 + xattr_index(key).1.len() as u64 + value_len as u64, 4)
}

/// The inode's xattr name bloom filter: a clear bit for each name present.
fn name_filter(xattrs: &[Xattr]) -> u32 {
    let mut bits = 0u32;
    for x in xattrs {
        let (index, suffix) = xattr_index(&x.key);
        bits |= 1 << (xxh32(suffix, XATTR_FILTER_SEED.wrapping_add(index as u32)) & 31);
    }
    !bits
}

fn write_xattr(out: &mut Out, key: &[u8], value: &[u8]) -> io::Result<()> {
    let (index, suffix) = xattr_index(key);
    out.put(&[suffix.len() as u8, index])?;
    out.put(&(value.len() as u16).to_le_bytes())?;
    out.put(suffix)?;
    out.put(value)?;
    out.align(4)
}

/// Writes a directory's full blocks (`blocks`) or its inline tail (write_erofs_dentries).
fn write_dirents(out: &mut Out, image: &Image, dir: &Inode, blocks: bool) -> io::Result<()> {
    let entries = image.dirents_of(dir);
    let mut used = 0;
    let mut written = 0;
    let mut first = 0;
    for (i, (name, _)) in entries.iter().enumerate() {
        let len = DIRENT_SIZE + name.len() as u64;
        if used + len > BLOCK {
            if blocks {
                write_dirent_chunk(out, image, &entries[first..i], BLOCK)?;
            }
            written += 1;
            used = 0;
            first = i;
        }
        used += len;
    }
    if written < dir.n_blocks {
        if blocks {
            write_dirent_chunk(out, image, &entries[first..], BLOCK)?;
        }
        used = 0;
        first = entries.len();
    }
    if !blocks && used > 0 {
        write_dirent_chunk(out, image, &entries[first..], 1)?;
    }
    Ok(())
}

fn write_dirent_chunk(out: &mut Out, image: &Image, entries: &[(&[u8], u32)], align: u64) -> io::Result<()> {
    let mut nameoff = (entries.len() as u64 * DIRENT_SIZE) as u16;
    for (name, target) in entries {
        let t = &image.inodes[*target as usize];
        let mut d = [0u8; DIRENT_SIZE as usize];
        d[0..8].copy_from_slice(&t.nid.to_le_bytes());
        d[8..10].copy_from_slice(&nameoff.to_le_bytes());
        d[10] = file_type(t.st_mode);
        out.put(&d)?;
        nameoff += name.len() as u16;
    }
    for (name, _) in entries {
        out.put(name)?;
    }
    out.align(align)
}

/// EROFS_FT_* of a mode.
fn file_type(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFREG => 1,
        S_IFDIR => 2,
        S_IFCHR => 3,
        super::S_IFBLK => 4,
        super::S_IFIFO => 5,
        super::S_IFSOCK => 6,
        S_IFLNK => 7,
        _ => 0,
    }
}

/// The image's bytes as they go out, with their position and running fs-verity digest.
struct Out<'w> {
    w: &'w mut dyn Write,
    pos: u64,
    verity: fsverity::Hasher,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.verity.update(b);
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self, mut n: u64) -> io::Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            self.put(&ZEROS[..k as usize])?;
            n -= k;
        }
        Ok(())
    }

    fn align(&mut self, to: u64) -> io::Result<()> {
        self.pad(round_up(self.pos, to) - self.pos)
    }
}

/// xxHash32 (the erofs xattr name filter's hash).
fn xxh32(input: &[u8], seed: u32) -> u32 {
    const P1: u32 = 2_654_435_761;
    const P2: u32 = 2_246_822_519;
    const P3: u32 = 3_266_489_917;
    const P4: u32 = 668_265_263;
    const P5: u32 = 374_761_393;
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let round = |acc: u32, v: u32| acc.wrapping_add(v.wrapping_mul(P2)).rotate_left(13).wrapping_mul(P1);
    let mut p = input;
    let mut h = if input.len() >= 16 {
        let mut v = [seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2), seed, seed.wrapping_sub(P1)];
        while p.len() >= 16 {
            for (j, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, le32(&p[j * 4..]));
            }
            p = &p[16..];
        }
        v[0].rotate_left(1).wrapping_add(v[1].rotate_left(7)).wrapping_add(v[2].rotate_left(12)).wrapping_add(v[3].rotate_left(18))
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(input.len() as u32);
    while p.len() >= 4 {
        h = h.wrapping_add(le32(p).wrapping_mul(P3)).rotate_left(17).wrapping_mul(P4);
        p = &p[4..];
    }
    for &b in p {
        h = h.wrapping_add((b as u32).wrapping_mul(P5)).rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh32_vectors() {
        // Reference values of xxHash32 (Cyan4973/xxHash sanity checks).
        assert_eq!(xxh32(b"", 0), 0x02CC_5D05);
        assert_eq!(xxh32(b"a", 0), 0x550D_7456);
        assert_eq!(xxh32(b"abc", 0), 0x32D1_53FF);
        assert_eq!(xxh32(b"Nobody inspects the spammish repetition", 0), 0xE229_3B2F);
    }

    #[test]
    fn chunk_bits() {
        assert_eq!(chunking(1), (12, 1));
        assert_eq!(chunking(4096), (12, 1));
        assert_eq!(chunking(4097), (13, 1));
        assert_eq!(chunking(1 << 40), (40, 1));
        assert_eq!(chunking((1 << 43) + 1), (43, 2));
    }
}

#[cfg(test)]
mod golden {
    use sha2::{Digest, Sha256};

    /// libcomposefs' own checksum vectors (tests/assets in containers/composefs), when a copy
    /// is at $COMPOSEFS_ASSETS (not part of this repository): the dumps kiln's writer can
    /// express must give images with the recorded SHA-256.
    #[test]
    #[ignore]
    fn libcomposefs_assets() {
        let dir = std::path::PathBuf::from(std::env::var("COMPOSEFS_ASSETS").expect("COMPOSEFS_ASSETS"));
        let mut checked = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.ends_with(".dump") || name.ends_with(".dump.gz")) || dir.join(format!("{name}.version")).exists() {
                continue;
            }
            let Ok(expected) = std::fs::read_to_string(dir.join(format!("{name}.sha256"))) else { continue };
            let mut text = Vec::new();
            let f = std::fs::File::open(&p).unwrap();
            if name.ends_with(".gz") {
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(f), &mut text).unwrap();
            } else {
                std::io::Read::read_to_end(&mut { f }, &mut text).unwrap();
            }
            let tree = match super::super::dump::parse(&text) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("skip {name}: {e:#}");
                    continue;
                }
            };
            let image = match super::Image::new(&tree) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("skip {name}: {e:#}");
                    continue;
                }
            };
            let mut bytes = Vec::new();
            image.write_to(&mut bytes).unwrap();
            assert_eq!(hex::encode(Sha256::digest(&bytes)), expected.trim(), "{name}");
            eprintln!("ok {name}");
            checked += 1;
        }
        assert!(checked > 0);
    }
}
