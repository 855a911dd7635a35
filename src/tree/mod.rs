//! The merged filesystem tree of an image: layers applied in order with OCI semantics.
//!
//! The tree holds metadata only. File bytes go, as each layer is read, to a [`ContentStore`]
//! (the ostree repository in a bake, a staging directory for `kiln image unpack`), which returns
//! the [`ContentKey`] the tree records. So file data is written exactly once, wherever it ends.

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
    /// Extended attributes sorted by name, shared with the other nodes that have the same.
    pub xattrs: Xattrs,
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
    pub entries: Entries<Node>,
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

mod entries;
mod layer;
mod merge;
mod xattrs;
pub mod from_dir;
pub mod scan;
pub mod unpack;

pub use layer::{components, Components};
pub use entries::Entries;
pub use xattrs::{Xattr, Xattrs};

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

/// A layer reader stopped because another failed.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "stopped: another layer failed")
    }
}

impl std::error::Error for Stopped {}

/// Changes a layer reader keeps while a lower layer is still being merged; past this many
/// it waits for its turn, so memory stays bounded however large the layers are.
const READ_AHEAD: usize = 64 * 1024;

/// A layer read to its end before its turn to merge: the reader moves on to the next layer,
/// and whoever merges the layer below merges this one too.
struct Parked {
    layer: merge::LayerMerge,
    changes: Vec<layer::Change>,
    summary: layer::LayerSummary,
    what: String,
}

/// Applies every layer of `image` with OCI semantics, storing file bytes in `store`.
/// Layers are read (decompressed, hashed, their files stored) in parallel, up to one per core,
/// and merged strictly in order: the reader of the lowest layer not yet merged applies its
/// changes as they stream past; the others keep up to [`READ_AHEAD`] changes until their
/// turn (a layer read whole by then is left for the merge to finish, [`Parked`]). `label` names the work in progress reports.
pub fn apply_layers(image: &Image, store: &dyn ContentStore, progress: &Progress, label: &str) -> anyhow::Result<Merged> {
    let count = image.layers.len();
    let stage = progress.stage(label, Some(image.layers.iter().map(|l| l.descriptor.size).sum()));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(count.max(1));
    let next = AtomicUsize::new(0);
    let merger = Mutex::new(merge::Merger::default());
    // The layer whose turn it is to merge; `count` when all are.
    let turn = Mutex::new(0usize);
    let turn_changed = std::sync::Condvar::new();
    let failed = std::sync::atomic::AtomicBool::new(false);
    // Each layer's own tree, and the first error by layer order.
    let layers: Mutex<Vec<Option<Dir>>> = Mutex::new((0..count).map(|_| None).collect());
    let errors: Mutex<Vec<(usize, anyhow::Error)>> = Mutex::new(Vec::new());
    let parked: Mutex<Vec<Option<Parked>>> = Mutex::new((0..count).map(|_| None).collect());
    let skipped = Mutex::new(Vec::new());
    let content_bytes = std::sync::atomic::AtomicU64::new(0);

    // Waits until layer `i` may merge; false when the bake failed meanwhile.
    let wait_turn = |i: usize| -> bool {
        let mut t = turn.lock().unwrap_or_else(|e| e.into_inner());
        while *t != i {
            if failed.load(Ordering::SeqCst) {
                return false;
            }
            t = turn_changed.wait(t).unwrap_or_else(|e| e.into_inner());
        }
        !failed.load(Ordering::SeqCst)
    };
    let stopped = || anyhow::Error::new(Stopped);
    // Layer `i` is merged: its own tree and summary are kept.
    let merged_layer = |i: usize, layer: merge::LayerMerge, summary: layer::LayerSummary| {
        layers.lock().unwrap()[i] = Some(layer.finish());
        skipped.lock().unwrap().extend(summary.skipped);
        content_bytes.fetch_add(summary.content_bytes, Ordering::SeqCst);
    };

    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count || failed.load(Ordering::SeqCst) {
                    return;
                }
                let what = format!("{}: {}", image.describe(), image.layers[i].describe(count));
                // Ok(false): parked, not merged yet.
                let read = || -> anyhow::Result<bool> {
                    let mut tar = image.layer_tar(i, Some(&stage))?;
                    let mut layer = merge::LayerMerge::new();
                    let mut waiting: Vec<layer::Change> = Vec::new();
                    let mut merging: Option<std::sync::MutexGuard<merge::Merger>> = None;
                    let mut sink = |change: layer::Change| -> anyhow::Result<()> {
                        if failed.load(Ordering::SeqCst) {
                            return Err(stopped());
                        }
                        if merging.is_none() {
                            let my_turn = *turn.lock().unwrap_or_else(|e| e.into_inner()) == i;
                            if !my_turn && waiting.len() < READ_AHEAD {
                                waiting.push(change);
                                return Ok(());
                            }
                            if !wait_turn(i) {
                                return Err(stopped());
                            }
                            let m = merging.insert(merger.lock().unwrap_or_else(|e| e.into_inner()));
                            // Taken whole: its capacity goes with it.
                            layer.changes(m, std::mem::take(&mut waiting), &what)?;
                        }
                        layer.change(merging.as_mut().unwrap(), change, &what)
                    };
                    let summary = layer::read_layer(&mut tar, store, &what, &mut sink)?;
                    // Read to the end: the digest and diff_id are checked there.
                    crate::image::blob::drain(tar).with_context(|| what.clone())?;
                    if merging.is_none() {
                        let t = turn.lock().unwrap_or_else(|e| e.into_inner());
                        if *t != i {
                            // Checked and parked under the turn's lock: the merge below
                            // cannot pass this layer unseen.
                            parked.lock().unwrap()[i] = Some(Parked { layer, changes: waiting, summary, what: what.clone() });
                            return Ok(false);
                        }
                        drop(t);
                        if !wait_turn(i) {
                            return Err(stopped());
                        }
                        let m = merging.insert(merger.lock().unwrap_or_else(|e| e.into_inner()));
                        layer.changes(m, std::mem::take(&mut waiting), &what)?;
                    }
                    drop(merging);
                    merged_layer(i, layer, summary);
                    Ok(true)
                };
                // A reader that panics must still answer, or the readers above wait forever.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("{what}: reading the layer failed (the panic above)")));
                let mut t = turn.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(false) => {}
                    Ok(true) => {
                        *t = i + 1;
                        // The layers above that were read whole meanwhile.
                        while *t < count && !failed.load(Ordering::SeqCst) {
                            let Some(p) = parked.lock().unwrap()[*t].take() else { break };
                            let mut layer = p.layer;
                            let applied = layer.changes(&mut merger.lock().unwrap_or_else(|e| e.into_inner()), p.changes, &p.what);
                            if let Err(e) = applied {
                                failed.store(true, Ordering::SeqCst);
                                errors.lock().unwrap().push((*t, e));
                                break;
                            }
                            merged_layer(*t, layer, p.summary);
                            *t += 1;
                        }
                    }
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        errors.lock().unwrap().push((i, e));
                    }
                }
                drop(t);
                turn_changed.notify_all();
            });
        }
    });
    // The lowest layer's error; one that only stopped because another failed says less.
    let mut errors = errors.into_inner().unwrap();
    errors.sort_by_key(|(i, e)| (e.is::<Stopped>(), *i));
    if let Some((_, e)) = errors.into_iter().next() {
        return Err(e);
    }
    let mut root = merger.into_inner().unwrap_or_else(|e| e.into_inner()).root;
    root.compact();
    let merged = Merged {
        root,
        layers: layers.into_inner().unwrap().into_iter().map(|l| l.expect("every layer merged")).collect(),
        skipped: skipped.into_inner().unwrap(),
        content_bytes: content_bytes.into_inner(),
    };
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
    /// Gives back the memory growing left over in this directory and below.
    pub fn compact(&mut self) {
        self.entries.compact(&mut |node| {
            if let Node::Dir(d) = node {
                d.compact();
            }
        });
    }

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
