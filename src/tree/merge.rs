//! Applies layers' changes, in order, to the merged tree with OCI semantics: a layer's
//! whiteouts and opaque markers remove what lower layers have, then its entries are added in
//! tar order; an entry of another type replaces what was there; directories merge.
//!
//! Changes are applied as the layer's tar streams past ([`LayerMerge::change`]). Whiteouts
//! and opaque markers act on the lower layers only, wherever they come in the tar, so the
//! merge remembers which places in the merged tree the current layer has written ([`Put`]):
//! a whiteout that comes after the layer's own entries leaves those and removes the rest.


use anyhow::{bail, Result};

use super::layer::{Change, Components};
use super::{Dir, Entries, File, Meta, Node};

/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// Directories a layer creates implicitly (its tar omits the parent's own entry).
fn implicit_dir() -> Node {
    Node::Dir(Dir { meta: implicit_meta(), ..Dir::default() })
}

fn implicit_meta() -> Meta {
    Meta { mode: 0o755, ..Meta::default() }
}

pub struct Merger {
    pub root: Dir,
    /// Changes since the trees were last compacted.
    applied: usize,
}

fn empty_root() -> Dir {
    Dir { meta: Meta { mode: 0o755, ..Meta::default() }, ..Dir::default() }
}

impl Default for Merger {
    fn default() -> Self {
        Merger { root: empty_root(), applied: 0 }
    }
}

/// Puts `node` at `path` in a layer's own tree: paths taken literally, missing directories
/// made, no layer semantics.
fn insert_literal(dir: &mut Dir, path: &[Vec<u8>], node: Node) {
    let Some((name, parents)) = path.split_last() else {
        if let Node::Dir(d) = node {
            dir.meta = d.meta;
        }
        return;
    };
    let mut d = dir;
    for c in parents {
        let entry = d.entries.get_or_insert_with(c, implicit_dir);
        if !matches!(entry, Node::Dir(_)) {
            *entry = implicit_dir();
        }
        d = match entry {
            Node::Dir(x) => x,
            _ => unreachable!(),
        };
    }
    match (d.entries.get_mut(name), node) {
        (Some(Node::Dir(existing)), Node::Dir(new)) => existing.meta = new.meta,
        (_, node) => {
            d.entries.insert(name.clone(), node);
        }
    }
}

/// The places of the merged tree (paths as resolved there) the current layer has written.
/// Only what leads to the layer's nodes is kept: below a node the layer made, all is its own.
#[derive(Default)]
struct Put {
    /// The node here is the layer's (made or replaced by it): nothing below it is lower.
    new: bool,
    /// A lower directory the layer gave its own metadata (its tar has the directory's entry).
    explicit: bool,
    children: Entries<Put>,
}

/// What a path of the merged tree is to the current layer.
enum Owner<'a> {
    /// The layer's own node (or inside one).
    Layer,
    /// A lower directory holding some of the layer's nodes.
    Mixed(&'a Put),
    /// Lower layers' only.
    Lower,
}

impl Put {
    /// Records that the layer wrote `path`; the components from `new_from` on are its own
    /// nodes (`explicit`: the last is a lower directory the layer set the metadata of).
    fn record(&mut self, path: &[Vec<u8>], new_from: usize, explicit: bool) {
        let mut at = self;
        for (i, c) in path.iter().enumerate() {
            if at.new {
                return;
            }
            at = at.children.get_or_insert_with(c, Put::default);
            if i >= new_from {
                at.new = true;
                at.children = Entries::new();
                return;
            }
        }
        at.explicit |= explicit;
    }

    fn owner(&self, path: &[Vec<u8>]) -> Owner<'_> {
        let mut at = self;
        for c in path {
            if at.new {
                return Owner::Layer;
            }
            match at.children.get(c) {
                Some(p) => at = p,
                None => return Owner::Lower,
            }
        }
        if at.new {
            Owner::Layer
        } else {
            Owner::Mixed(at)
        }
    }
}

/// Removes from `dir` what lower layers put there, keeping the layer's own nodes (`put`): what
/// the tree holds had the lower entries been removed before the layer's were added. Directories
/// that stay only because the layer wrote inside them get the metadata the layer gave them, or
/// an implicit directory's.
fn keep_only_layer(dir: &mut Dir, put: &Put) {
    dir.entries.retain(|name, node| match put.children.get(name) {
        None => false,
        Some(p) if p.new => true,
        Some(p) => {
            if let Node::Dir(d) = node {
                if !p.explicit {
                    d.meta = implicit_meta();
                }
                keep_only_layer(d, p);
            }
            true
        }
    });
}

impl Put {
    fn compact(&mut self) {
        self.children.compact(&mut Put::compact);
    }
}

/// Changes applied between two compactions of the trees ([`Dir::compact`]): a walk of the trees
/// every this many changes keeps what growing leaves over to a few MiB, at a small linear cost.
const COMPACT_EVERY: usize = 64 * 1024;

/// One layer being applied: its changes are handed over one at a time, in tar order.
#[derive(Default)]
pub struct LayerMerge {
    /// The layer's own tree (its entries and whiteout markers as its tar has them).
    own: Dir,
    put: Put,
}

impl LayerMerge {
    pub fn new() -> LayerMerge {
        LayerMerge { own: empty_root(), put: Put::default() }
    }

    /// Applies changes kept back while a lower layer was merging, in their order.
    pub fn changes(&mut self, merger: &mut Merger, changes: impl IntoIterator<Item = Change>, what: &str) -> Result<()> {
        changes.into_iter().try_for_each(|c| self.change(merger, c, what))
    }

    /// Applies one change to `merger`'s tree; `what` names the layer in errors.
    pub fn change(&mut self, merger: &mut Merger, change: Change, what: &str) -> Result<()> {
        merger.applied += 1;
        if merger.applied == COMPACT_EVERY {
            merger.applied = 0;
            merger.root.compact();
            self.own.compact();
            self.put.compact();
        }
        let at = |p: &Components| format!("{what}: entry {:?}", display(p));
        match change {
            Change::Whiteout { path } => match self.put.owner(&path) {
                Owner::Layer => {}
                Owner::Lower => {
                    if let Some((name, parent)) = path.split_last() {
                        if let Some(d) = merger.dir_mut(parent) {
                            d.entries.remove(name);
                        }
                    }
                }
                Owner::Mixed(put) => {
                    if let Some(Node::Dir(d)) = merger.lookup_mut(&path) {
                        if !put.explicit {
                            d.meta = implicit_meta();
                        }
                        keep_only_layer(d, put);
                    }
                }
            },
            Change::Opaque { dir } => {
                match (self.put.owner(&dir), merger.dir_mut(&dir)) {
                    (Owner::Layer, _) | (_, None) => {}
                    (Owner::Lower, Some(d)) => d.entries.clear(),
                    (Owner::Mixed(put), Some(d)) => keep_only_layer(d, put),
                }
            }
            Change::Marker { path, file } => insert_literal(&mut self.own, &path, Node::File(file)),
            Change::Dir { path, meta } => {
                insert_literal(&mut self.own, &path, Node::Dir(Dir { meta: meta.clone(), ..Dir::default() }));
                if path.is_empty() {
                    merger.root.meta = meta;
                    return Ok(());
                }
                let (parent, name, dirs, created) = merger.parent_of(&path, &at(&path))?;
                let merged_into_lower = match parent.entries.get_mut(&name) {
                    Some(Node::Dir(d)) => {
                        d.meta = meta;
                        true
                    }
                    _ => {
                        parent.entries.insert(name.clone(), Node::Dir(Dir { meta, ..Dir::default() }));
                        false
                    }
                };
                let mut resolved = dirs;
                resolved.push(name);
                // `created == dirs.len()`: no parent made, which puts it at the name itself.
                let new_from = if merged_into_lower && created == resolved.len() - 1 { usize::MAX } else { created };
                self.put.record(&resolved, new_from, merged_into_lower);
            }
            Change::File { path, meta, size, content } => {
                let node = Node::File(File { meta, size, content });
                insert_literal(&mut self.own, &path, node.clone());
                self.put(merger, &path, node, &at(&path))?
            }
            Change::Symlink { path, meta, target } => {
                let node = Node::Symlink(super::Symlink { meta, target });
                insert_literal(&mut self.own, &path, node.clone());
                self.put(merger, &path, node, &at(&path))?
            }
            Change::Hardlink { path, target } => {
                let node = merger.link_target(&target, &at(&path))?;
                insert_literal(&mut self.own, &path, node.clone());
                self.put(merger, &path, node, &at(&path))?
            }
        }
        Ok(())
    }

    /// Places a non-directory node at `path` of the merged tree.
    fn put(&mut self, merger: &mut Merger, path: &Components, node: Node, at: &str) -> Result<()> {
        if path.is_empty() {
            bail!("{at}: only a directory can be the image root");
        }
        let (parent, name, dirs, created) = merger.parent_of(path, at)?;
        parent.entries.insert(name.clone(), node);
        let mut resolved = dirs;
        resolved.push(name);
        self.put.record(&resolved, created.min(resolved.len() - 1), false);
        Ok(())
    }

    /// The layer's own tree, once all its changes are applied.
    pub fn finish(mut self) -> Dir {
        self.own.compact();
        self.own
    }
}

impl Merger {
    /// Applies one layer's changes; `what` names it in errors. Returns the layer's own tree
    /// (its entries and whiteout markers as its tar has them).
    #[cfg(test)]
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>, what: &str) -> Result<Dir> {
        let mut layer = LayerMerge::new();
        for change in changes {
            layer.change(self, change, what)?;
        }
        Ok(layer.finish())
    }

    /// What a hardlink entry links to: a copy of the target's node (same content key, so the
    /// stores keep one copy of the bytes).
    fn link_target(&mut self, target: &Components, at: &str) -> Result<Node> {
        let shown = display(target);
        if target.is_empty() {
            bail!("{at}: hardlink to the image root");
        }
        let (parent, name, _, _) = self.parent_of(target, at)?;
        match parent.entries.get(&name) {
            Some(Node::Dir(_)) => bail!("{at}: hardlink to directory {shown:?}"),
            Some(n) => Ok(n.clone()),
            None => bail!("{at}: hardlink target {shown:?} does not exist in this or a lower layer"),
        }
    }

    /// Resolves the directory an entry goes into, creating missing parents and following
    /// relative symlinks that stay inside the image (`bin -> usr/bin`). A symlink that is
    /// absolute or climbs out of the root would send the write outside the image: refused.
    /// Returns the directory, the entry's name, the directory's resolved path and the index in
    /// it of the first directory this call made (its length when none).
    fn parent_of(&mut self, path: &Components, at: &str) -> Result<(&mut Dir, Vec<u8>, Components, usize)> {
        let (name, dirs) = path.split_last().expect("non-empty path");
        let mut want: Components = dirs.to_vec();
        let mut followed = 0;
        // Walk, restarting from the root each time a symlink rewrites the path.
        'restart: loop {
            let mut dir = &self.root;
            for (i, comp) in want.iter().enumerate() {
                match dir.entries.get(comp) {
                    Some(Node::Dir(d)) => dir = d,
                    Some(Node::Symlink(s)) => {
                        followed += 1;
                        if followed > MAX_SYMLINKS {
                            bail!("{at}: too many levels of symbolic links");
                        }
                        let link = display(&want[..=i]);
                        let target = String::from_utf8_lossy(&s.target).into_owned();
                        if s.target.starts_with(b"/") {
                            bail!("{at}: would be written through symlink {link:?} -> {target:?}, which points outside the image root");
                        }
                        let mut resolved: Components = want[..i].to_vec();
                        for c in s.target.split(|&b| b == b'/') {
                            match c {
                                b"" | b"." => {}
                                b".." => {
                                    if resolved.pop().is_none() {
                                        bail!("{at}: would be written through symlink {link:?} -> {target:?}, which climbs out of the image root");
                                    }
                                }
                                c => resolved.push(c.to_vec()),
                            }
                        }
                        resolved.extend_from_slice(&want[i + 1..]);
                        want = resolved;
                        continue 'restart;
                    }
                    Some(Node::File(_)) => {
                        bail!("{at}: parent {:?} is a file in a lower layer, not a directory", display(&want[..=i]))
                    }
                    None => break,
                }
            }
            break;
        }
        // Now walk mutably along the resolved path, creating what is missing.
        let mut dir = &mut self.root;
        let mut created = want.len();
        for (i, comp) in want.iter().enumerate() {
            let node = dir.entries.get_or_insert_with(comp, || {
                created = created.min(i);
                implicit_dir()
            });
            dir = match node {
                Node::Dir(d) => d,
                _ => unreachable!("checked above"),
            };
        }
        Ok((dir, name.clone(), want, created))
    }

    /// The directory at `path` (the root for an empty one), not following symlinks.
    fn dir_mut(&mut self, path: &[Vec<u8>]) -> Option<&mut Dir> {
        if path.is_empty() {
            return Some(&mut self.root);
        }
        match self.lookup_mut(path) {
            Some(Node::Dir(d)) => Some(d),
            _ => None,
        }
    }

    /// The node at `path`, not following symlinks (whiteouts name entries literally).
    fn lookup_mut(&mut self, path: &[Vec<u8>]) -> Option<&mut Node> {
        let (last, dirs) = path.split_last()?;
        let mut dir = &mut self.root;
        for c in dirs {
            match dir.entries.get_mut(c) {
                Some(Node::Dir(d)) => dir = d,
                _ => return None,
            }
        }
        dir.entries.get_mut(last)
    }
}

fn display(path: &[Vec<u8>]) -> String {
    let parts: Vec<String> = path.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::layer::components;

    fn p(s: &str) -> Components {
        components(s.as_bytes()).unwrap()
    }
    fn file(s: &str, key: u8) -> Change {
        Change::File { path: p(s), meta: Meta::default(), size: 1, content: [key; 32] }
    }
    fn layer(changes: Vec<Change>) -> Vec<Change> {
        changes
    }
    fn get<'a>(m: &'a Merger, s: &str) -> Option<&'a Node> {
        let path = p(s);
        let (last, dirs) = path.split_last()?;
        let mut d = &m.root;
        for c in dirs {
            match d.entries.get(c)? {
                Node::Dir(x) => d = x,
                _ => return None,
            }
        }
        d.entries.get(last)
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_layers_only() {
        let mut m = Merger::default();
        m.apply(layer(vec![file("a/x", 1), file("a/y", 2), file("b/z", 3)]), "l1").unwrap();
        m.apply(
            layer(vec![
                file("a/new", 4),
                Change::Opaque { dir: p("a") },
                Change::Whiteout { path: p("b/z") },
            ]),
            "l2",
        )
        .unwrap();
        let Some(Node::Dir(a)) = get(&m, "a") else { panic!() };
        assert_eq!(a.entries.keys().collect::<Vec<_>>(), vec![&b"new".to_vec()]);
        assert!(get(&m, "b/z").is_none());
        assert!(get(&m, "b").is_some());
    }

    #[test]
    fn whiteouts_after_the_layers_own_entries_leave_those() {
        let mut m = Merger::default();
        let dir = |s: &str, mode| Change::Dir { path: p(s), meta: Meta { mode, ..Meta::default() } };
        m.apply(
            layer(vec![dir("a", 0o700), file("a/x", 1), dir("a/sub", 0o700), file("a/sub/old", 2), file("b/old", 3), file("top", 4)]),
            "l1",
        )
        .unwrap();
        // The same layer's entries come first in its tar, its whiteouts after.
        m.apply(
            layer(vec![
                file("a/new", 5),
                file("a/sub/new", 6),
                dir("b", 0o750),
                file("b/new", 7),
                file("c/new", 8),
                Change::Opaque { dir: p("a") },
                Change::Whiteout { path: p("b") },
                Change::Whiteout { path: p("c") },
                Change::Whiteout { path: p("top") },
            ]),
            "l2",
        )
        .unwrap();
        let names = |s: &str| match get(&m, s) {
            Some(Node::Dir(d)) => (d.meta.mode, d.entries.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>()),
            other => panic!("{s}: {other:?}"),
        };
        // Lower entries hidden, the layer's own kept; directories the layer only wrote into
        // are implicit ones now, those it has entries for keep its metadata.
        assert_eq!(names("a"), (0o700, vec!["new".into(), "sub".into()]));
        assert_eq!(names("a/sub"), (0o755, vec!["new".into()]));
        assert_eq!(names("b"), (0o750, vec!["new".into()]));
        assert_eq!(names("c"), (0o755, vec!["new".into()]));
        assert!(get(&m, "top").is_none(), "a whiteout at the top level removes the lower entry");
        // The same whiteouts before the entries give the same tree.
        let mut before = Merger::default();
        before
            .apply(
                layer(vec![dir("a", 0o700), file("a/x", 1), dir("a/sub", 0o700), file("a/sub/old", 2), file("b/old", 3), file("top", 4)]),
                "l1",
            )
            .unwrap();
        before
            .apply(
                layer(vec![
                    Change::Opaque { dir: p("a") },
                    Change::Whiteout { path: p("b") },
                    Change::Whiteout { path: p("c") },
                    Change::Whiteout { path: p("top") },
                    file("a/new", 5),
                    file("a/sub/new", 6),
                    dir("b", 0o750),
                    file("b/new", 7),
                    file("c/new", 8),
                ]),
                "l2",
            )
            .unwrap();
        assert_eq!(before.root, m.root);
    }

    #[test]
    fn types_replace_each_other_and_dirs_merge() {
        let mut m = Merger::default();
        m.apply(layer(vec![file("f", 1), file("d/inner", 2), file("keep/one", 3)]), "l1").unwrap();
        m.apply(
            layer(vec![
                Change::Dir { path: p("f"), meta: Meta::default() },
                file("d", 5),
                Change::Dir { path: p("keep"), meta: Meta { mode: 0o700, ..Meta::default() } },
                file("keep/two", 6),
            ]),
            "l2",
        )
        .unwrap();
        assert!(matches!(get(&m, "f"), Some(Node::Dir(_))));
        assert!(matches!(get(&m, "d"), Some(Node::File(_))));
        let Some(Node::Dir(keep)) = get(&m, "keep") else { panic!() };
        assert_eq!((keep.meta.mode, keep.entries.len()), (0o700, 2));
    }

    #[test]
    fn hardlinks_share_content_across_layers() {
        let mut m = Merger::default();
        m.apply(layer(vec![file("lower", 7)]), "l1").unwrap();
        m.apply(layer(vec![Change::Hardlink { path: p("upper"), target: p("lower") }]), "l2").unwrap();
        let Some(Node::File(f)) = get(&m, "upper") else { panic!() };
        assert_eq!(f.content, [7; 32]);
        let err = m
            .apply(layer(vec![Change::Hardlink { path: p("x"), target: p("missing") }]), "l3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("l3") && err.contains("does not exist"), "{err}");
    }

    #[test]
    fn symlinks_in_parents_are_followed_inside_and_refused_outside() {
        let mut m = Merger::default();
        let link = |path: &str, t: &str| Change::Symlink { path: p(path), meta: Meta::default(), target: t.into() };
        m.apply(layer(vec![Change::Dir { path: p("usr/bin"), meta: Meta::default() }, link("bin", "usr/bin")]), "l1")
            .unwrap();
        m.apply(layer(vec![file("bin/tool", 1)]), "l2").unwrap();
        assert!(get(&m, "usr/bin/tool").is_some());

        m.apply(layer(vec![link("etc", "/")]), "l3").unwrap();
        let err = m.apply(layer(vec![file("etc/passwd", 2)]), "l4").unwrap_err().to_string();
        assert!(err.contains("etc/passwd") && err.contains("outside the image root"), "{err}");
        m.apply(layer(vec![link("up", "../..")]), "l5").unwrap();
        let err = m.apply(layer(vec![file("up/x", 2)]), "l6").unwrap_err().to_string();
        assert!(err.contains("climbs out"), "{err}");
        assert!(get(&m, "passwd").is_none());
    }
}
