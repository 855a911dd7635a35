//! Applies layers' changes, in order, to the merged tree with OCI semantics: a layer's
//! whiteouts and opaque markers remove what lower layers have, then its entries are added in
//! tar order; an entry of another type replaces what was there; directories merge.

use anyhow::{bail, Result};

use super::layer::{Change, Components, LayerChanges};
use super::{Dir, File, Meta, Node};

/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// Directories a layer creates implicitly (its tar omits the parent's own entry).
fn implicit_dir() -> Node {
    Node::Dir(Dir { meta: Meta { mode: 0o755, ..Meta::default() }, ..Dir::default() })
}

pub struct Merger {
    pub root: Dir,
}

fn empty_root() -> Dir {
    Dir { meta: Meta { mode: 0o755, ..Meta::default() }, ..Dir::default() }
}

impl Default for Merger {
    fn default() -> Self {
        Merger { root: empty_root() }
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
        let entry = d.entries.entry(c.clone()).or_insert_with(implicit_dir);
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

impl Merger {
    /// Applies one layer; `what` names it in errors. Returns the layer's own tree (its entries
    /// and whiteout markers as its tar has them).
    pub fn apply(&mut self, layer: LayerChanges, what: &str) -> Result<Dir> {
        let mut own = empty_root();
        // Whiteouts and opaque markers act on the lower layers only, wherever they appear in
        // this layer's tar.
        for change in &layer.changes {
            match change {
                Change::Whiteout { path } => {
                    if let Some((name, parent)) = path.split_last() {
                        if let Some(Node::Dir(d)) = self.lookup_mut(parent) {
                            d.entries.remove(name);
                        }
                    }
                }
                Change::Opaque { dir } => {
                    if let Some(Node::Dir(d)) = self.lookup_mut(dir) {
                        d.entries.clear();
                    } else if dir.is_empty() {
                        self.root.entries.clear();
                    }
                }
                _ => {}
            }
        }
        for change in layer.changes {
            let at = |p: &Components| format!("{what}: entry {:?}", display(p));
            match change {
                Change::Whiteout { .. } | Change::Opaque { .. } => {}
                Change::Marker { path, file } => insert_literal(&mut own, &path, Node::File(file)),
                Change::Dir { path, meta } => {
                    insert_literal(&mut own, &path, Node::Dir(Dir { meta: meta.clone(), ..Dir::default() }));
                    if path.is_empty() {
                        self.root.meta = meta;
                        continue;
                    }
                    let (parent, name) = self.parent_of(&path, &at(&path))?;
                    match parent.entries.get_mut(&name) {
                        Some(Node::Dir(d)) => d.meta = meta,
                        _ => {
                            parent.entries.insert(name, Node::Dir(Dir { meta, ..Dir::default() }));
                        }
                    }
                }
                Change::File { path, meta, size, content } => {
                    let node = Node::File(File { meta, size, content });
                    insert_literal(&mut own, &path, node.clone());
                    self.put(&path, node, &at(&path))?
                }
                Change::Symlink { path, meta, target } => {
                    let node = Node::Symlink(super::Symlink { meta, target });
                    insert_literal(&mut own, &path, node.clone());
                    self.put(&path, node, &at(&path))?
                }
                Change::Hardlink { path, target } => {
                    let node = self.link_target(&target, &at(&path))?;
                    insert_literal(&mut own, &path, node.clone());
                    self.put(&path, node, &at(&path))?
                }
            }
        }
        Ok(own)
    }

    fn put(&mut self, path: &Components, node: Node, at: &str) -> Result<()> {
        if path.is_empty() {
            bail!("{at}: only a directory can be the image root");
        }
        let (parent, name) = self.parent_of(path, at)?;
        parent.entries.insert(name, node);
        Ok(())
    }

    /// What a hardlink entry links to: a copy of the target's node (same content key, so the
    /// stores keep one copy of the bytes).
    fn link_target(&mut self, target: &Components, at: &str) -> Result<Node> {
        let shown = display(target);
        if target.is_empty() {
            bail!("{at}: hardlink to the image root");
        }
        let (parent, name) = self.parent_of(target, at)?;
        match parent.entries.get(&name) {
            Some(Node::Dir(_)) => bail!("{at}: hardlink to directory {shown:?}"),
            Some(n) => Ok(n.clone()),
            None => bail!("{at}: hardlink target {shown:?} does not exist in this or a lower layer"),
        }
    }

    /// Resolves the directory an entry goes into, creating missing parents and following
    /// relative symlinks that stay inside the image (`bin -> usr/bin`). A symlink that is
    /// absolute or climbs out of the root would send the write outside the image: refused.
    fn parent_of(&mut self, path: &Components, at: &str) -> Result<(&mut Dir, Vec<u8>)> {
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
        for comp in &want {
            let node = dir.entries.entry(comp.clone()).or_insert_with(implicit_dir);
            dir = match node {
                Node::Dir(d) => d,
                _ => unreachable!("checked above"),
            };
        }
        Ok((dir, name.clone()))
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
    fn layer(changes: Vec<Change>) -> LayerChanges {
        LayerChanges { changes, ..Default::default() }
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
