//! A look at an image's merged tree before anything is written: its size, its kernels and
//! the content of a few small files (bootc's install configuration), for decisions that must
//! precede the disk (root filesystem type, root size). Costs one decompression of the layers,
//! so a bake only scans when the user left such a decision open.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::Result;

use super::{apply_layers, ContentKey, ContentStore, Dir, Meta, Node};
use crate::image::Image;
use crate::progress::Progress;

/// Files larger than this are never kept, whatever their path.
const MAX_KEPT: u64 = 1 << 20;

pub struct Scan {
    pub root: Dir,
    /// Bytes of file content the layers carry.
    pub content_bytes: u64,
    /// Content of the wanted files, by path (`usr/lib/…`, no leading slash).
    pub files: BTreeMap<String, Vec<u8>>,
}

struct CaptureStore<'a> {
    wanted: &'a (dyn Fn(&str) -> bool + Sync),
    next: AtomicU64,
    kept: Mutex<HashMap<ContentKey, Vec<u8>>>,
}

impl ContentStore for CaptureStore<'_> {
    fn put(&self, path: &[Vec<u8>], _meta: &Meta, size: u64, data: &mut dyn Read) -> Result<ContentKey> {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.next.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        if size <= MAX_KEPT && (self.wanted)(&join(path)) {
            let mut v = Vec::with_capacity(size as usize);
            data.read_to_end(&mut v)?;
            self.kept.lock().unwrap().insert(key, v);
        } else {
            std::io::copy(data, &mut std::io::sink())?;
        }
        Ok(key)
    }
}

pub fn scan(image: &Image, wanted: &(dyn Fn(&str) -> bool + Sync), progress: &Progress) -> Result<Scan> {
    let store = CaptureStore { wanted, next: AtomicU64::new(0), kept: Mutex::new(HashMap::new()) };
    let merged = apply_layers(image, &store, progress, "scan")?;
    let kept = store.kept.into_inner().unwrap();
    let mut files = BTreeMap::new();
    collect(&merged.root, String::new(), &kept, &mut files);
    Ok(Scan { root: merged.root, content_bytes: merged.content_bytes, files })
}

fn collect(dir: &Dir, prefix: String, kept: &HashMap<ContentKey, Vec<u8>>, out: &mut BTreeMap<String, Vec<u8>>) {
    for (name, node) in &dir.entries {
        let path = format!("{prefix}{}", String::from_utf8_lossy(name));
        match node {
            Node::Dir(d) => collect(d, format!("{path}/"), kept, out),
            Node::File(f) => {
                if let Some(v) = kept.get(&f.content) {
                    out.insert(path, v.clone());
                }
            }
            Node::Symlink(_) => {}
        }
    }
}

fn join(path: &[Vec<u8>]) -> String {
    let parts: Vec<String> = path.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    parts.join("/")
}
