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
    /// Stores `size` bytes read from `data` for the file at `path` with metadata `meta`.
    fn put(&self, path: &[Vec<u8>], meta: &Meta, size: u64, data: &mut dyn Read) -> anyhow::Result<ContentKey>;
}

mod layer;
mod merge;
pub mod from_dir;
pub mod scan;
pub mod unpack;

pub use layer::{components, Components};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Context;

use crate::image::Image;
use crate::progress::Progress;

/// A store that keeps nothing: for looking at an image's tree without writing it.
pub struct DiscardStore;

impl ContentStore for DiscardStore {
    fn put(&self, _path: &[Vec<u8>], _meta: &Meta, _size: u64, data: &mut dyn Read) -> anyhow::Result<ContentKey> {
        std::io::copy(data, &mut std::io::sink())?;
        Ok([0; 32])
    }
}

/// The merged tree of an image and what applying it skipped.
pub struct Merged {
    pub root: Dir,
    /// Each layer's own tree, in order (what ostree-ext commits per layer).
    pub layers: Vec<Dir>,
    /// Device nodes and FIFOs left out (an ostree commit cannot hold them).
    pub skipped: Vec<String>,
    /// Bytes of file content the layers carried (including content later layers removed).
    pub content_bytes: u64,
}

/// Applies every layer of `image` with OCI semantics, storing file bytes in `store`.
/// Layers are read (decompressed, hashed, their files stored) in parallel, up to one per core,
/// and merged strictly in order.
/// `label` names the work in progress reports.
pub fn apply_layers(image: &Image, store: &dyn ContentStore, progress: &Progress, label: &str) -> anyhow::Result<Merged> {
    let count = image.layers.len();
    let stage = progress.stage(label, Some(image.layers.iter().map(|l| l.descriptor.size).sum()));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(count.max(1));
    let next = AtomicUsize::new(0);
    // Finished layers wait here until every layer below them has been merged.
    let results: Mutex<Vec<Option<anyhow::Result<layer::LayerChanges>>>> =
        Mutex::new((0..count).map(|_| None).collect());
    let ready = std::sync::Condvar::new();
    let failed = std::sync::atomic::AtomicBool::new(false);

    let merged = std::thread::scope(|s| -> anyhow::Result<Merged> {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count || failed.load(Ordering::SeqCst) {
                    return;
                }
                let what = format!("{}: {}", image.describe(), image.layers[i].describe(count));
                let read = || {
                    image.layer_tar(i, Some(&stage)).and_then(|mut tar| {
                        let changes = layer::read_layer(&mut tar, store, &what)?;
                        // Read to the end: the digest and diff_id are checked there.
                        crate::image::blob::drain(tar).with_context(|| what.clone())?;
                        Ok(changes)
                    })
                };
                // A reader that panics must still answer, or the merge below waits forever.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("{what}: reading the layer failed (the panic above)")));
                if result.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                results.lock().unwrap()[i] = Some(result);
                ready.notify_all();
            });
        }
        // Merging in order; an error stops the readers too.
        let merge_all = || -> anyhow::Result<Merged> {
            let mut merger = merge::Merger::default();
            let mut skipped = Vec::new();
            let mut layers = Vec::new();
            let mut content_bytes = 0;
            for i in 0..count {
                let changes = {
                    let mut guard = results.lock().unwrap();
                    loop {
                        if let Some(r) = guard[i].take() {
                            break r;
                        }
                        // A later layer failing ends the wait early: its error is the answer.
                        if let Some(pos) = guard.iter().position(|r| matches!(r, Some(Err(_)))) {
                            break guard[pos].take().unwrap();
                        }
                        guard = ready.wait(guard).unwrap();
                    }
                }?;
                skipped.extend(changes.skipped.iter().cloned());
                content_bytes += changes.content_bytes;
                let what = format!("{}: {}", image.describe(), image.layers[i].describe(count));
                layers.push(merger.apply(changes, &what)?);
            }
            Ok(Merged { root: merger.root, layers, skipped, content_bytes })
        };
        let merged = merge_all();
        if merged.is_err() {
            failed.store(true, Ordering::SeqCst);
        }
        merged
    })?;
    stage.finish();
    if !merged.skipped.is_empty() {
        let shown: Vec<&str> = merged.skipped.iter().take(10).map(String::as_str).collect();
        let more = merged.skipped.len().saturating_sub(shown.len());
        progress.warn(&format!(
            "skipped {} device node(s)/FIFO(s), which an ostree system cannot hold: {}{}",
            merged.skipped.len(),
            shown.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        ));
    }
    Ok(merged)
}

impl Dir {
    /// The node at a path of components, not following symlinks.
    pub fn get(&self, path: &[&[u8]]) -> Option<&Node> {
        let (last, dirs) = path.split_last()?;
        let mut d = self;
        for c in dirs {
            match d.entries.get(*c)? {
                Node::Dir(x) => d = x,
                _ => return None,
            }
        }
        d.entries.get(*last)
    }

    pub fn get_path(&self, path: &str) -> Option<&Node> {
        let parts: Vec<&[u8]> = path.split('/').filter(|c| !c.is_empty()).map(str::as_bytes).collect();
        self.get(&parts)
    }
}

/// Kernels an image carries: `/usr/lib/modules/<kver>/vmlinuz`, sorted by version name.
pub fn kernels(root: &Dir) -> Vec<String> {
    let Some(Node::Dir(modules)) = root.get_path("usr/lib/modules") else {
        return Vec::new();
    };
    modules
        .entries
        .iter()
        .filter(|(_, n)| matches!(n, Node::Dir(d) if matches!(d.entries.get(b"vmlinuz".as_slice()), Some(Node::File(_)))))
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect()
}
