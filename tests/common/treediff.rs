//! Compares two directory trees entry for entry, as the filesystem shows them (lstat,
//! readlink, llistxattr, file content hashes), and their hardlink groups. Independent of kiln's
//! own tree code: tests compare kiln's output with an oracle's (umoci, ostree checkout).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size of files and symlinks (directories' sizes are filesystem artefacts).
    pub size: u64,
    pub content: Option<String>,
    pub link: Option<PathBuf>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

pub struct Snapshot {
    pub entries: BTreeMap<PathBuf, Entry>,
    /// Sets of paths sharing an inode (only groups of two or more).
    pub hardlinks: BTreeSet<Vec<PathBuf>>,
}

/// Reads every entry under `root` (the root itself as "."). `skip` names top-level entries to
/// leave out.
pub fn snapshot(root: &Path, skip: &[&str]) -> Snapshot {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::from(".")];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        let content = ft.is_file().then(|| {
            let mut h = Sha256::new();
            let mut f = fs::File::open(&p).unwrap();
            let mut buf = vec![0; 1 << 20];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            inodes.entry((md.dev(), md.ino())).or_default().push(rel.clone());
            hex::encode(h.finalize())
        });
        entries.insert(
            rel.clone(),
            Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: if ft.is_dir() { 0 } else { md.len() },
                content,
                link: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                xattrs: xattrs(&p),
            },
        );
        if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                let name = e.unwrap().file_name();
                if rel == Path::new(".") && skip.iter().any(|s| name.as_bytes() == s.as_bytes()) {
                    continue;
                }
                stack.push(rel.join(name));
            }
        }
    }
    let hardlinks = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    Snapshot { entries, hardlinks }
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if m >= 0 {
            val.truncate(m as usize);
            out.push((String::from_utf8_lossy(name).into_owned(), val));
        }
    }
    out.sort();
    out
}

/// Panics with a readable list of differences (at most 40) if the trees differ.
pub fn assert_same(ours: &Snapshot, oracle: &Snapshot, what: &str) {
    let mut diffs = Vec::new();
    let keys: BTreeSet<&PathBuf> = ours.entries.keys().chain(oracle.entries.keys()).collect();
    for k in keys {
        match (ours.entries.get(k), oracle.entries.get(k)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => diffs.push(format!("{}:\n    kiln:   {a:?}\n    oracle: {b:?}", k.display())),
        }
    }
    if ours.hardlinks != oracle.hardlinks {
        let a: BTreeSet<_> = ours.hardlinks.difference(&oracle.hardlinks).collect();
        let b: BTreeSet<_> = oracle.hardlinks.difference(&ours.hardlinks).collect();
        diffs.push(format!("hardlink groups differ:\n    only kiln: {a:?}\n    only oracle: {b:?}"));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} difference(s) ({} vs {} entries):\n{}",
        diffs.len(),
        ours.entries.len(),
        oracle.entries.len(),
        diffs.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}
