//! Lookups as libselinux 3.11's file backend does them (`label_file.c` `lookup_all`,
//! `lookup_check_node`, `label_file.h` `insert_spec`), with its data structure, because the
//! structure is part of the result.
//!
//! Specs hang in a tree of up to three levels keyed by their leading path components that are
//! free of regex syntax (`/usr/share/…` hangs under `usr` → `share`). A spec with no regex
//! syntax at all (after removing the escapes `\. \^ \$ \? \* \+ \| \[ \( \{ \] \) \} \- \_ \,`)
//! is a *literal*, compared with `strcmp`; the others are regexes.
//!
//! A lookup normalises the key (runs of `/` collapsed, one trailing `/` dropped), applies the
//! first matching `.subs` alias and then the first matching `.subs_dist` alias, descends the
//! tree along the key's directory components as far as nodes exist, and then:
//! 1. literals of that deepest node equal to the key, ordered by input (`.local` >
//!    `.homedirs` > `file_contexts`), then line: the first whose file kind fits wins;
//! 2. else regexes of that node, latest (input, line) first, the first that fits and matches is
//!    the candidate; each ancestor node is then searched the same way, but only among specs
//!    later than the candidate. The latest match wins.
//!
//! A `<<none>>` winner means no label; so does a `<<none>>` regex met during the search,
//! even if an ancestor holds a later match (libselinux stops there), and a regex that gives up
//! at PCRE2's match limit.

use super::file_contexts::{Kind, Spec, Sub};
use super::pattern::{MatchLimit, Pattern};

/// libselinux's `SPEC_NODE_MAX_DEPTH`.
const MAX_DEPTH: usize = 3;

/// One input file of a labeler: `file_contexts` is input 0, `.homedirs` 1, `.local` 2.
pub struct Input<'a> {
    /// How errors refer to the file.
    pub name: &'a str,
    pub number: u8,
    pub specs: Vec<Spec>,
}

/// Looks up the label of a path; built once from a policy's files, shared by threads.
pub struct Labeler {
    nodes: Vec<Node>,
    subs: Vec<Sub>,
    dist_subs: Vec<Sub>,
    specs: usize,
}

// The bake labels from several threads at once.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Labeler>();
};

#[derive(Default)]
struct Node {
    parent: Option<u32>,
    /// Children by stem, sorted.
    children: Vec<(Box<[u8]>, u32)>,
    /// Sorted by path, then input descending, then line.
    literals: Vec<Literal>,
    /// In input order.
    regexes: Vec<RegexSpec>,
}

struct Literal {
    path: Box<[u8]>,
    input: u8,
    kind: Kind,
    context: Option<Box<str>>,
}

struct RegexSpec {
    pattern: Pattern,
    input: u8,
    line: u32,
    kind: Kind,
    context: Option<Box<str>>,
}

/// libselinux's `regex_simplify`: the literal text of a regex that has no syntax, or None.
fn simplify(regex: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(regex.len());
    let mut i = 0;
    while i < regex.len() {
        match regex[i] {
            b'.' | b'^' | b'$' | b'?' | b'*' | b'+' | b'|' | b'[' | b'(' | b'{' | b']' | b')' | b'}' => return None,
            b'\\' => {
                i += 1;
                match regex.get(i)? {
                    c @ (b'.' | b'^' | b'$' | b'?' | b'*' | b'+' | b'|' | b'[' | b'(' | b'{' | b']' | b')' | b'}' | b'-'
                    | b'_' | b',') => out.push(*c),
                    _ => return None,
                }
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

impl Labeler {
    /// Builds the labeler from its inputs (in input order) and substitutions. A regex that
    /// does not compile is an error naming its file and line.
    pub fn new(inputs: Vec<Input>, subs: Vec<Sub>, dist_subs: Vec<Sub>) -> anyhow::Result<Labeler> {
        let mut l = Labeler { nodes: vec![Node::default()], subs, dist_subs, specs: 0 };
        for input in inputs {
            for spec in input.specs {
                l.insert(input.name, input.number, spec)?;
            }
        }
        for node in &mut l.nodes {
            // Stable, like glibc's qsort (a merge sort) that libselinux relies on.
            node.literals.sort_by(|a, b| a.path.cmp(&b.path).then(b.input.cmp(&a.input)));
        }
        Ok(l)
    }

    /// Number of specs in all inputs.
    pub fn spec_count(&self) -> usize {
        self.specs
    }

    fn child(&mut self, node: u32, stem: &[u8]) -> u32 {
        let children = &self.nodes[node as usize].children;
        match children.binary_search_by(|(s, _)| (**s).cmp(stem)) {
            Ok(i) => children[i].1,
            Err(i) => {
                let id = self.nodes.len() as u32;
                self.nodes.push(Node { parent: Some(node), ..Node::default() });
                self.nodes[node as usize].children.insert(i, (stem.into(), id));
                id
            }
        }
    }

    fn insert(&mut self, file: &str, input: u8, spec: Spec) -> anyhow::Result<()> {
        let context = spec.context.map(String::into_boxed_str);
        let regex = &spec.regex;
        let mut node = 0u32;
        if let Some(literal) = simplify(regex) {
            let mut p = 0;
            let mut depth = 0;
            while depth < MAX_DEPTH && literal.get(p) == Some(&b'/') {
                let Some(q) = literal[p + 1..].iter().position(|&b| b == b'/').map(|q| p + 1 + q) else { break };
                if q > p + 1 {
                    node = self.child(node, &literal[p + 1..q]);
                    depth += 1;
                }
                p = q;
            }
            self.nodes[node as usize].literals.push(Literal { path: literal.into(), input, kind: spec.kind, context });
        } else {
            // Stems are read from the second byte on, whatever the first is (as libselinux does).
            let mut p = 0;
            let mut depth = 0;
            while depth < MAX_DEPTH {
                let Some(q) = regex.get(p + 1..).and_then(|r| r.iter().position(|&b| b == b'/')).map(|q| p + 1 + q) else { break };
                if q == p + 1 {
                    p = q;
                    continue;
                }
                let Some(stem) = simplify(&regex[p + 1..q]) else { break };
                node = self.child(node, &stem);
                p = q;
                depth += 1;
            }
            let pattern = Pattern::new(regex).map_err(|e| {
                let re = String::from_utf8_lossy(regex);
                if e.0.starts_with("unsupported") {
                    anyhow::anyhow!(
                        "{file}: line {}: regex {re:?} uses a PCRE2 feature kiln does not implement ({e}); libselinux would accept it, kiln cannot label this image yet",
                        spec.line
                    )
                } else {
                    anyhow::anyhow!(
                        "{file}: line {}: regex {re:?} does not compile ({e}); libselinux cannot use it either: fix the line in the image's policy",
                        spec.line
                    )
                }
            })?;
            self.nodes[node as usize].regexes.push(RegexSpec { pattern, input, line: spec.line, kind: spec.kind, context });
        }
        self.specs += 1;
        Ok(())
    }

    /// The context libselinux's `selabel_lookup_raw` gives `path` (absolute, bytes) for a file
    /// of mode `mode` (only its `S_IFMT` bits count; 0 = any kind); None when the policy says
    /// `<<none>>` or has no match.
    pub fn lookup(&self, path: &[u8], mode: u32) -> Option<&str> {
        let mut key = normalize(path);
        if key.is_empty() {
            return None;
        }
        if let Some(k) = self.substitute(&key) {
            key = k;
        }
        self.lookup_key(&key, Kind::of_mode(mode))
    }

    /// libselinux's `selabel_sub_key`: the first `.subs` alias, then the first `.subs_dist`
    /// alias on the result (or on the key when no `.subs` alias applied).
    fn substitute(&self, key: &[u8]) -> Option<Vec<u8>> {
        match apply_subs(&self.subs, key) {
            Some(k) => Some(apply_subs(&self.dist_subs, &k).unwrap_or(k)),
            None => apply_subs(&self.dist_subs, key),
        }
    }

    fn deepest_node(&self, key: &[u8]) -> u32 {
        let mut node = 0u32;
        let mut p = 0;
        while key.get(p) == Some(&b'/') {
            let Some(q) = key[p + 1..].iter().position(|&b| b == b'/').map(|q| p + 1 + q) else { break };
            if q > p + 1 {
                let children = &self.nodes[node as usize].children;
                match children.binary_search_by(|(s, _)| (**s).cmp(&key[p + 1..q])) {
                    Ok(i) => node = children[i].1,
                    Err(_) => break,
                }
            }
            p = q;
        }
        node
    }

    fn lookup_key(&self, key: &[u8], kind: Kind) -> Option<&str> {
        let deepest = self.deepest_node(key);
        let literals = &self.nodes[deepest as usize].literals;
        let first = literals.partition_point(|l| &*l.path < key);
        if let Some(l) = literals[first..].iter().take_while(|l| &*l.path == key).find(|l| l.kind.admits(kind)) {
            return l.context.as_deref();
        }
        let mut candidate: Option<&RegexSpec> = None;
        let mut node = Some(deepest);
        while let Some(n) = node {
            let n = &self.nodes[n as usize];
            for r in n.regexes.iter().rev() {
                if candidate.is_some_and(|c| (r.input, r.line) < (c.input, c.line)) {
                    break;
                }
                if !r.kind.admits(kind) {
                    continue;
                }
                match r.pattern.is_match(key) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    // libselinux fails the lookup when PCRE2 gives up.
                    Err(MatchLimit) => return None,
                }
                r.context.as_ref()?;
                candidate = Some(r);
                break;
            }
            node = n.parent;
        }
        candidate.and_then(|c| c.context.as_deref())
    }
}

/// Collapses runs of `/` and drops one trailing `/` (libselinux's key cleaning).
fn normalize(path: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(path.len());
    for &b in path {
        if !(b == b'/' && key.last() == Some(&b'/')) {
            key.push(b);
        }
    }
    if key.len() > 1 && key.last() == Some(&b'/') {
        key.pop();
    }
    key
}

/// libselinux's `selabel_apply_subs`.
fn apply_subs(subs: &[Sub], key: &[u8]) -> Option<Vec<u8>> {
    subs.iter().find_map(|s| {
        let rest = key.strip_prefix(&s.src[..])?;
        if !(rest.is_empty() || rest[0] == b'/') {
            return None;
        }
        let rest = if !rest.is_empty() && s.dst == b"/" { &rest[1..] } else { rest };
        Some([&s.dst[..], rest].concat())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selinux::file_contexts::{parse, parse_subs};

    fn labeler(fc: &str, homedirs: &str, local: &str, subs: &str, dist: &str) -> Labeler {
        let inputs = [fc, homedirs, local]
            .iter()
            .enumerate()
            .map(|(i, t)| Input { name: "fc", number: i as u8, specs: parse("fc", t.as_bytes()).unwrap() })
            .collect();
        Labeler::new(inputs, parse_subs(subs.as_bytes()), parse_subs(dist.as_bytes())).unwrap()
    }

    const DIR: u32 = libc::S_IFDIR;
    const REG: u32 = libc::S_IFREG;

    #[test]
    fn literal_before_regex_and_last_regex_wins() {
        let l = labeler("/.* a\n/usr/bin/x b\n/usr/bin/.* c\n/usr(/.*)? d\n", "", "", "", "");
        assert_eq!(l.lookup(b"/usr/bin/x", REG), Some("b"));
        assert_eq!(l.lookup(b"/usr/bin/y", REG), Some("d"));
        assert_eq!(l.lookup(b"//usr///bin/x/", REG), Some("b"));
        assert_eq!(l.lookup(b"/etc", REG), Some("a"));
    }

    #[test]
    fn kinds_none_and_inputs() {
        let l = labeler("/ root\n/x -d dir\n/x -- file\n/y(/.*)? y\n/y/z <<none>>\n", "/x -- home\n", "/y/w local\n", "", "");
        assert_eq!(l.lookup(b"/x", DIR), Some("dir"));
        assert_eq!(l.lookup(b"/x", REG), Some("home"));
        assert_eq!(l.lookup(b"/y/z", REG), None);
        assert_eq!(l.lookup(b"/y/w", REG), Some("local"));
        assert_eq!(l.lookup(b"/y/v", REG), Some("y"));
    }

    #[test]
    fn substitutions_apply_once_each() {
        let l = labeler("/usr/lib(/.*)? lib\n/opt(/.*)? opt\n", "", "", "/x /lib64\n", "/lib64 /usr/lib\n/lib /usr/lib\n");
        assert_eq!(l.lookup(b"/lib/a", REG), Some("lib"));
        assert_eq!(l.lookup(b"/x/a", REG), Some("lib"));
        assert_eq!(l.lookup(b"/libx", REG), None);
    }

    #[test]
    fn simplify_is_libselinux_s() {
        assert_eq!(simplify(b"/a\\.b\\-c"), Some(b"/a.b-c".to_vec()));
        assert_eq!(simplify(b"/a\\d"), None);
        assert_eq!(simplify(b"/a\\"), None);
        assert_eq!(simplify(b"/a.b"), None);
    }
}
