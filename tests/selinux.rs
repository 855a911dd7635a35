//! kiln's SELinux labeller against libselinux 3.11 itself (`matchpathcon` and `selabel_lookup`
//! from Debian sid, run in the sid test image's base root): every path of that root with
//! Debian's refpolicy, synthetic `file_contexts` exercising each lookup rule, and generated
//! regexes for the PCRE2 semantics. Expected labels always come from libselinux, never from
//! this file.

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{sid, sid_image, Scratch};
use kiln::selinux::{Labeler, Policy};

/// A file kind as matchpathcon's `-m` names it; None = any kind (mode 0).
type KindLetter = Option<char>;

/// matchpathcon's kind letters and the file modes they stand for.
const KIND_MODES: &[(char, u32)] = &[
    ('f', libc::S_IFREG),
    ('d', libc::S_IFDIR),
    ('l', libc::S_IFLNK),
    ('c', libc::S_IFCHR),
    ('b', libc::S_IFBLK),
    ('p', libc::S_IFIFO),
    ('s', libc::S_IFSOCK),
];

const KINDS: &[KindLetter] = &[None, Some('f'), Some('d'), Some('l'), Some('c'), Some('b'), Some('p'), Some('s')];

fn mode_of(kind: KindLetter) -> u32 {
    kind.map_or(0, |k| KIND_MODES.iter().find(|(c, _)| *c == k).unwrap().1)
}

/// The labels libselinux gives `queries` with the `file_contexts` at `fc` (and its
/// `.homedirs`, `.local`, `.subs`, `.subs_dist` beside it); `fc` None = the sid root's own
/// installed policy (text and `.bin` files as installed). None = no label.
fn libselinux(scratch: &Path, fc: Option<&Path>, queries: &[(Vec<u8>, KindLetter)]) -> Vec<Option<String>> {
    let dir = scratch.join("oracle");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut by_kind: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (_, k)) in queries.iter().enumerate() {
        by_kind.entry(k.map_or("any".to_string(), |c| c.to_string())).or_default().push(i);
    }
    let fc_arg = fc.map(|f| format!("-f {}", sid::host(f))).unwrap_or_default();
    let mut script = String::from("set -e; ");
    for (kind, idx) in &by_kind {
        let list = dir.join(format!("{kind}.list"));
        let mut bytes = Vec::new();
        for &i in idx {
            bytes.extend_from_slice(&queries[i].0);
            bytes.push(0);
        }
        std::fs::write(&list, bytes).unwrap();
        let (list, out) = (sid::host(&list), format!("{}/{kind}.out", sid::host(&dir)));
        if kind == "any" {
            // matchpathcon takes the mode from lstat when not given -m; selabel_lookup takes it as is.
            script += &format!(
                "xargs -0 -n1 -a {list} sh -c 'selabel_lookup -r -b file {fc_arg} -k \"$1\" -t 0 2>/dev/null || echo \"Default context: <<none>>\"' sh > {out}; "
            );
        } else {
            script += &format!("xargs -0 -a {list} matchpathcon -N -n -m {kind} {fc_arg} > {out}; ");
        }
    }
    let mut binds: Vec<&Path> = vec![&dir];
    if let Some(f) = fc {
        binds.push(f.parent().unwrap());
    }
    sid::run_ok(&script, &binds);
    let mut result = vec![None; queries.len()];
    for (kind, idx) in &by_kind {
        let out = std::fs::read_to_string(dir.join(format!("{kind}.out"))).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), idx.len(), "libselinux answered {} of {} {kind} queries:\n{out}", lines.len(), idx.len());
        for (&i, line) in idx.iter().zip(lines) {
            let ctx = line.strip_prefix("Default context: ").unwrap_or(line);
            result[i] = (ctx != "<<none>>").then(|| ctx.to_string());
        }
    }
    result
}

/// Compares kiln with libselinux over `queries`; returns the disagreements, described.
fn disagreements(labeler: &Labeler, oracle: &[Option<String>], queries: &[(Vec<u8>, KindLetter)]) -> Vec<String> {
    queries
        .iter()
        .zip(oracle)
        .filter_map(|((path, kind), want)| {
            let got = labeler.lookup(path, mode_of(*kind));
            (got != want.as_deref()).then(|| {
                format!("{:?} ({}): kiln {got:?}, libselinux {want:?}", String::from_utf8_lossy(path), kind.unwrap_or('*'))
            })
        })
        .collect()
}

fn assert_agree(labeler: &Labeler, oracle: &[Option<String>], queries: &[(Vec<u8>, KindLetter)]) {
    let bad = disagreements(labeler, oracle, queries);
    assert!(
        bad.is_empty(),
        "kiln and libselinux disagree on {} of {} lookups:\n{}",
        bad.len(),
        queries.len(),
        bad.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Every path under `root` with its kind, as absolute paths of that root.
fn walk(root: &Path) -> Vec<(Vec<u8>, KindLetter)> {
    fn rec(root: &Path, dir: &Path, out: &mut Vec<(Vec<u8>, KindLetter)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let ft = e.file_type().unwrap();
            let mode = e.metadata().unwrap().mode() & libc::S_IFMT;
            let kind = KIND_MODES.iter().find(|(_, m)| *m == mode).unwrap().0;
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap();
            let mut abs = b"/".to_vec();
            abs.extend_from_slice(rel.as_os_str().as_bytes());
            out.push((abs, Some(kind)));
            if ft.is_dir() {
                rec(root, &path, out);
            }
        }
    }
    let mut out = vec![(b"/".to_vec(), Some('d'))];
    rec(root, root, &mut out);
    out
}

/// The sid root's paths as runtime paths, plus its `/etc` as an ostree commit has it
/// (`/usr/etc/...`), each with its kind.
fn sid_queries(base: &Path) -> Vec<(Vec<u8>, KindLetter)> {
    let mut queries = walk(base);
    let commit: Vec<_> = queries
        .iter()
        .filter(|(p, _)| p == b"/etc" || p.starts_with(b"/etc/"))
        .map(|(p, k)| ([b"/usr", &p[..]].concat(), *k))
        .collect();
    queries.extend(commit);
    queries
}

/// Copies the policy's text `file_contexts*` (not the `.bin`s) to `dir`, returning the copy
/// of `file_contexts`.
fn copy_text_policy(base: &Path, policy: &Policy, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = base.join(policy.dir()).join("contexts/files");
    for suffix in ["", ".homedirs", ".local", ".subs", ".subs_dist"] {
        let name = format!("file_contexts{suffix}");
        if src.join(&name).exists() {
            std::fs::copy(src.join(&name), dir.join(&name)).unwrap();
        }
    }
    dir.join("file_contexts")
}

#[test]
fn every_sid_path_is_labelled_as_libselinux_labels_it() {
    let base = sid_image().join("base");
    let base = base.canonicalize().unwrap();
    let policy = Policy::from_dir(&base).unwrap().expect("the sid image has an enabled policy");
    assert_eq!((policy.name(), policy.mode()), ("default", "permissive"));
    let scratch = Scratch::new("selinux-sid-paths");
    let fc = copy_text_policy(&base, &policy, &scratch.path().join("policy"));
    let queries = sid_queries(&base);
    let oracle = libselinux(scratch.path(), Some(&fc), &queries);
    assert_agree(policy.labeler(), &oracle, &queries);
    let labelled = oracle.iter().filter(|o| o.is_some()).count();
    let distinct: std::collections::BTreeSet<_> = oracle.iter().flatten().collect();
    eprintln!("{} sid paths agree with libselinux ({labelled} labelled, {} distinct contexts)", queries.len(), distinct.len());
    assert!(distinct.len() > 50, "too few distinct labels for a meaningful comparison: {distinct:?}");

    // The policy as installed (libselinux picks the compiled .bin files there) gives the same.
    let installed = libselinux(scratch.path(), None, &queries);
    assert_agree(policy.labeler(), &installed, &queries);
}

/// One synthetic policy exercising each lookup rule; the queries cover every kind.
const SYNTHETIC_FC: &str = r#"
# comments and blank lines are skipped
/                   system_u:object_r:root_t:s0
/.*                 system_u:object_r:default_t:s0
# literal specs beat regexes, whatever their order
/lit/a              system_u:object_r:lit_a_t:s0
/lit/.*             system_u:object_r:lit_any_t:s0
/lit/b\.c           system_u:object_r:lit_escaped_t:s0
/lit/dup            system_u:object_r:dup_first_t:s0
/lit/dup            system_u:object_r:dup_second_t:s0
/lit/kind   -d      system_u:object_r:lit_dir_t:s0
/lit/kind   --      system_u:object_r:lit_file_t:s0
/lit/none           <<none>>
/lit/deep/er/still/a system_u:object_r:lit_deep_t:s0
# the last matching regex wins, across tree levels
/re(/.*)?           system_u:object_r:re_t:s0
/re/x.*             system_u:object_r:re_x_t:s0
/re/xy.*    -d      system_u:object_r:re_xy_dir_t:s0
/(re|other)/xyz.*   system_u:object_r:re_root_t:s0
/re/x/y(/.*)?       system_u:object_r:re_xy_deep_t:s0
/re/none(/.*)?      <<none>>
/re/none/keep.*     system_u:object_r:re_none_keep_t:s0
/re/n2/a.*          <<none>>
/(re)/n2/ab.*       system_u:object_r:re_n2_root_t:s0
# file kinds
/kinds/.*   -l      system_u:object_r:k_lnk_t:s0
/kinds/.*   -c      system_u:object_r:k_chr_t:s0
/kinds/.*   -b      system_u:object_r:k_blk_t:s0
/kinds/.*   -p      system_u:object_r:k_fifo_t:s0
/kinds/.*   -s      system_u:object_r:k_sock_t:s0
/kinds/f.*  --      system_u:object_r:k_reg_t:s0
/kinds/d.*  -d      system_u:object_r:k_dir_t:s0
# substitutions
/real(/.*)?         system_u:object_r:real_t:s0
/realer(/.*)?       system_u:object_r:realer_t:s0
/usr/lib(/.*)?      system_u:object_r:lib_t:s0
/rooted(/.*)?       system_u:object_r:rooted_t:s0
# PCRE2 features
/var/run/waydroid-(?!lxc).*     system_u:object_r:waydroid_t:s0
/pcre/.*(?<=\.so)   --          system_u:object_r:pcre_so_t:s0
/pcre/a{2,3}        system_u:object_r:pcre_count_t:s0
/pcre/[[:digit:]]+\d    system_u:object_r:pcre_posix_t:s0
/pcre/n[^/]*        system_u:object_r:pcre_class_t:s0
/pcre/alt/a|/pcre/alt/b         system_u:object_r:pcre_alt_t:s0
/pcre/dollar        system_u:object_r:pcre_dollar_t:s0
/pcre/dot.end       system_u:object_r:pcre_dot_t:s0
/pcre/lazy.*?z      system_u:object_r:pcre_lazy_t:s0
/pcre/\x41\Q+\E     system_u:object_r:pcre_hex_t:s0
/home/[^/]+/x(/.*)? system_u:object_r:home_x_t:s0
"#;

const SYNTHETIC_HOMEDIRS: &str = "/lit/a  system_u:object_r:homedirs_a_t:s0\n/home/[^/]+/x(/.*)?  system_u:object_r:homedirs_x_t:s0\n/home/[^/]+/y(/.*)?  system_u:object_r:homedirs_y_t:s0\n/lit/h  system_u:object_r:homedirs_h_t:s0\n";
const SYNTHETIC_LOCAL: &str = "/lit/a  system_u:object_r:local_a_t:s0\n/home/[^/]+/x(/.*)?  system_u:object_r:local_x_t:s0\n/re/x/yy.*  system_u:object_r:local_re_t:s0\n";
const SYNTHETIC_SUBS: &str = "/alias /real\n/alias2 /real\n/rootalias /\n";
const SYNTHETIC_SUBS_DIST: &str = "/real /realer\n/lib /usr/lib\n/lib64 /usr/lib\n/real /rooted\n";

const SYNTHETIC_PATHS: &[&str] = &[
    "/", "//", "/x", "/lit", "/lit/", "/lit/a", "/lit//a", "/lit/a/", "/lit/ab", "/lit/b.c", "/lit/bxc", "/lit/dup", "/lit/kind",
    "/lit/none", "/lit/none/x", "/lit/h", "/lit/deep/er/still/a", "/lit/deep/er/still/b", "/re", "/re/", "/re/a", "/re/x",
    "/re/xa", "/re/xy", "/re/xyz", "/re/xyz/q", "/re/x/y", "/re/x/y/z", "/re/x/yy", "/other/xyz", "/re/none", "/re/none/a",
    "/re/none/keep", "/re/n2/a", "/re/n2/ab", "/re/n2/abc", "/kinds/f", "/kinds/d", "/kinds/q", "/real", "/real/a", "/alias",
    "/alias/a", "/alias2/b", "/aliasx", "/realer/z", "/rootalias", "/rootalias/a", "/lib", "/lib/x", "/lib64/y", "/lib32/z",
    "/usr/lib/q", "/var/run/waydroid-x", "/var/run/waydroid-lxc", "/var/run/waydroid-lxc/q", "/var/run/waydroid-", "/pcre/lib.so",
    "/pcre/lib.sox", "/pcre/aa", "/pcre/aaa", "/pcre/aaaa", "/pcre/a", "/pcre/12", "/pcre/1", "/pcre/n", "/pcre/nx/y",
    "/pcre/alt/a", "/pcre/alt/a/more", "/pcre/alt/bx", "/x/pcre/alt/b", "/pcre/dollar\n", "/pcre/dollar\n\n", "/pcre/dot\nend",
    "/pcre/lazyz", "/pcre/lazy/q/z", "/pcre/A+", "/pcre/A", "/home/u/x", "/home/u/x/y", "/home/u/y", "/home/u", "/pcre/n\u{e9}",
    "/pcre/n\u{e9}/x",
];

#[test]
fn each_lookup_rule_matches_libselinux() {
    let scratch = Scratch::new("selinux-rules");
    let dir = scratch.path().join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    for (suffix, text) in [
        ("", SYNTHETIC_FC),
        (".homedirs", SYNTHETIC_HOMEDIRS),
        (".local", SYNTHETIC_LOCAL),
        (".subs", SYNTHETIC_SUBS),
        (".subs_dist", SYNTHETIC_SUBS_DIST),
    ] {
        std::fs::write(dir.join(format!("file_contexts{suffix}")), text).unwrap();
    }
    let labeler = labeler_at(&dir);
    let queries: Vec<(Vec<u8>, KindLetter)> =
        SYNTHETIC_PATHS.iter().flat_map(|p| KINDS.iter().map(move |k| (p.as_bytes().to_vec(), *k))).collect();
    let oracle = libselinux(scratch.path(), Some(&dir.join("file_contexts")), &queries);
    assert_agree(&labeler, &oracle, &queries);
    // The rules were exercised: these differ from what a naive "last line wins" would give.
    let distinct: std::collections::BTreeSet<_> = oracle.iter().flatten().collect();
    assert!(distinct.len() > 35, "{distinct:?}");
}

/// Many literals in one tree node, some repeated within a file with other contexts and kinds,
/// some again in `.local`: libselinux sorts them (glibc's qsort) and takes the first that fits.
#[test]
fn repeated_literals_resolve_as_in_libselinux() {
    let mut rng = Rng(0x51ed);
    let (mut fc, mut local) = (String::from("/ system_u:object_r:root_t:s0\n"), String::new());
    for line in 0..900 {
        let k = rng.below(300);
        let kind = ["", "-d ", "-- "][rng.below(3)];
        let text = format!("/dups/k{k:03} {kind}system_u:object_r:d{line}_t:s0\n");
        if rng.chance(10) { local += &text } else { fc += &text }
    }
    let scratch = Scratch::new("selinux-dups");
    let dir = scratch.path().join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("file_contexts"), fc).unwrap();
    std::fs::write(dir.join("file_contexts.local"), local).unwrap();
    let queries: Vec<(Vec<u8>, KindLetter)> =
        (0..300).flat_map(|k| [None, Some('f'), Some('d')].map(|kind| (format!("/dups/k{k:03}").into_bytes(), kind))).collect();
    let oracle = libselinux(scratch.path(), Some(&dir.join("file_contexts")), &queries);
    assert_agree(&labeler_at(&dir), &oracle, &queries);
}

/// A labeller over `dir/file_contexts*`.
fn labeler_at(dir: &Path) -> Labeler {
    let fc = dir.join("file_contexts");
    Labeler::load(fc.to_str().unwrap(), &|p| std::fs::read(p).ok()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Generated regexes: PCRE2 semantics, checked through libselinux with one regex per tree node.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const ALPHABET: &[u8] = b"ab/.-_\n1 \xe9";

#[derive(Clone)]
enum Re {
    Byte(u8),
    Any,
    Class { negated: bool, members: Vec<(u8, u8)> },
    Seq(Vec<Re>),
    Alt(Vec<Re>),
    Repeat { re: Box<Re>, min: u32, max: Option<u32>, suffix: &'static str, braces: bool },
    Group { re: Box<Re>, open: &'static str },
    Look { re: Box<Re>, open: &'static str },
    Dollar,
    WordBoundary,
    Caret,
    /// `\d`, `\w`, `\s`, `[[:alpha:]]` and the like, with a byte it matches.
    Escape(&'static str, u8),
}

fn gen(rng: &mut Rng, depth: u32, fixed: bool) -> Re {
    let leaf = depth == 0 || rng.chance(35);
    if leaf || fixed && rng.chance(50) {
        return match rng.below(if fixed { 3 } else { 7 }) {
            0 => Re::Byte(ALPHABET[rng.below(ALPHABET.len())]),
            1 => Re::Any,
            2 => {
                let members = (0..1 + rng.below(3))
                    .map(|_| {
                        let a = ALPHABET[rng.below(ALPHABET.len())];
                        if rng.chance(30) { (b'a', b'z') } else { (a, a) }
                    })
                    .collect();
                Re::Class { negated: rng.chance(40), members }
            }
            3 => Re::Dollar,
            4 => Re::WordBoundary,
            5 => Re::Caret,
            _ => {
                let (e, b) = [("\\d", b'1'), ("\\w", b'a'), ("\\s", b' '), ("\\S", b'b'), ("[[:alpha:]]", b'b'), ("[^[:punct:]]", b'a'), ("\\W", b'/')]
                    [rng.below(7)];
                Re::Escape(e, b)
            }
        };
    }
    match rng.below(if fixed { 2 } else { 5 }) {
        0 => Re::Seq((0..2 + rng.below(3)).map(|_| gen(rng, depth - 1, fixed)).collect()),
        1 => {
            if fixed {
                // Lookbehind bodies: branches of one length.
                let len = 1 + rng.below(3);
                let branch = |rng: &mut Rng| Re::Seq((0..len).map(|_| Re::Byte(ALPHABET[rng.below(4)])).collect());
                Re::Alt((0..2).map(|_| branch(rng)).collect())
            } else {
                Re::Alt((0..2 + rng.below(2)).map(|_| gen(rng, depth - 1, fixed)).collect())
            }
        }
        2 => {
            let (min, max, braces) = match rng.below(6) {
                0 => (0, None, false),
                1 => (1, None, false),
                2 => (0, Some(1), false),
                3 => {
                    let n = rng.below(3) as u32;
                    (n, Some(n + rng.below(3) as u32), true)
                }
                4 => (rng.below(3) as u32, None, true),
                _ => (0, Some(1 + rng.below(3) as u32), true),
            };
            let suffix = ["", "", "?", "+"][rng.below(4)];
            Re::Repeat { re: Box::new(gen(rng, depth - 1, false)), min, max, suffix, braces }
        }
        3 => Re::Group { re: Box::new(gen(rng, depth - 1, false)), open: ["(", "(?:", "(?>"][rng.below(3)] },
        _ => {
            let open = ["(?=", "(?!", "(?<=", "(?<!"][rng.below(4)];
            let behind = open.starts_with("(?<");
            Re::Look { re: Box::new(gen(rng, depth - 1, behind)), open }
        }
    }
}

fn render(re: &Re, out: &mut String) {
    let byte = |b: u8, out: &mut String| match b {
        b'\n' => out.push_str("\\n"),
        b'.' => out.push_str("\\."),
        b' ' | 0x80.. => out.push_str(&format!("\\x{b:02x}")),
        b => out.push(b as char),
    };
    match re {
        Re::Byte(b) => byte(*b, out),
        Re::Any => out.push('.'),
        Re::Class { negated, members } => {
            out.push('[');
            if *negated {
                out.push('^');
            }
            for (a, b) in members {
                match (*a, *b) {
                    (b'-', b'-') => out.push_str("\\-"),
                    (b'\n', _) => out.push_str("\\n"),
                    (b' ', _) => out.push_str("\\x20"),
                    (0x80.., _) => out.push_str("\\xe9"),
                    // `[.` would open a POSIX collating element.
                    (b'.', b'.') => out.push_str("\\."),
                    (a, b) if a == b => out.push(a as char),
                    (a, b) => out.push_str(&format!("{}-{}", a as char, b as char)),
                }
            }
            out.push(']');
        }
        Re::Seq(items) => items.iter().for_each(|i| render_atom(i, out)),
        Re::Alt(branches) => {
            out.push_str("(?:");
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                render(b, out);
            }
            out.push(')');
        }
        Re::Repeat { re, min, max, suffix, braces } => {
            render_atom(re, out);
            match (min, max, braces) {
                (0, None, false) => out.push('*'),
                (1, None, false) => out.push('+'),
                (0, Some(1), false) => out.push('?'),
                (n, None, _) => out.push_str(&format!("{{{n},}}")),
                (0, Some(m), _) if m > &1 => out.push_str(&format!("{{,{m}}}")),
                (n, Some(m), _) => out.push_str(&format!("{{{n},{m}}}")),
            }
            out.push_str(suffix);
        }
        Re::Group { re, open } | Re::Look { re, open } => {
            out.push_str(open);
            render(re, out);
            out.push(')');
        }
        Re::Dollar => out.push('$'),
        Re::WordBoundary => out.push_str("\\b"),
        Re::Caret => out.push('^'),
        Re::Escape(e, _) => out.push_str(e),
    }
}

/// Renders `re` so that a quantifier after it applies to all of it.
fn render_atom(re: &Re, out: &mut String) {
    match re {
        Re::Seq(_) | Re::Repeat { .. } => {
            out.push_str("(?:");
            render(re, out);
            out.push(')');
        }
        Re::Dollar | Re::WordBoundary | Re::Caret | Re::Look { .. } => {
            // Not quantifiable: wrap so the generated regex stays valid.
            out.push_str("(?:");
            render(re, out);
            out.push(')');
        }
        _ => render(re, out),
    }
}

/// A subject `re` probably matches.
fn sample(re: &Re, rng: &mut Rng, out: &mut Vec<u8>) {
    match re {
        Re::Byte(b) => out.push(*b),
        Re::Any => out.push(ALPHABET[rng.below(ALPHABET.len())]),
        Re::Class { negated, members } => {
            let inside = |c: u8| members.iter().any(|(a, b)| (*a..=*b).contains(&c));
            let pool: Vec<u8> = ALPHABET.iter().copied().chain(b'c'..=b'e').filter(|&c| inside(c) != *negated).collect();
            if !pool.is_empty() {
                out.push(pool[rng.below(pool.len())]);
            }
        }
        Re::Seq(items) => items.iter().for_each(|i| sample(i, rng, out)),
        Re::Alt(b) => sample(&b[rng.below(b.len())], rng, out),
        Re::Repeat { re, min, max, .. } => {
            let n = *min + rng.below(1 + (max.unwrap_or(min + 3) - min).min(3) as usize) as u32;
            (0..n).for_each(|_| sample(re, rng, out));
        }
        Re::Group { re, .. } => sample(re, rng, out),
        Re::Escape(_, b) => out.push(*b),
        Re::Look { .. } | Re::Dollar | Re::WordBoundary | Re::Caret => {}
    }
}

#[test]
fn generated_regexes_match_as_pcre2_matches_them() {
    // KILN_REGEX_CASES=count[,seed] explores further than CI's fixed sample.
    let (count, seed) = match std::env::var("KILN_REGEX_CASES") {
        Ok(v) => {
            let (c, s) = v.split_once(',').unwrap_or((&v, "1"));
            (c.parse().unwrap(), s.parse::<u64>().unwrap())
        }
        Err(_) => (600, 0),
    };
    let mut rng = Rng(0x9e3779b97f4a7c15 ^ seed.wrapping_mul(0x2545f4914f6cdd1d));
    let mut fc = String::from("/ system_u:object_r:root_t:s0\n");
    let mut queries = Vec::new();
    for n in 0..count {
        let re = gen(&mut rng, 4, false);
        let mut body = String::new();
        // Sometimes a top-level alternation (left ungrouped, as file_contexts may write it).
        if let (Re::Alt(branches), true) = (&re, rng.chance(30)) {
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    body.push('|');
                }
                render(b, &mut body);
            }
        } else {
            render(&re, &mut body);
        }
        fc += &format!("/r{n}/{body}\tsystem_u:object_r:r{n}_t:s0\n");
        for s in 0..6 {
            let mut subject = Vec::new();
            sample(&re, &mut rng, &mut subject);
            match s {
                3 if !subject.is_empty() => {
                    let i = rng.below(subject.len());
                    subject[i] = ALPHABET[rng.below(ALPHABET.len())];
                }
                4 => subject.insert(rng.below(subject.len() + 1), ALPHABET[rng.below(ALPHABET.len())]),
                5 => subject = (0..rng.below(6)).map(|_| ALPHABET[rng.below(ALPHABET.len())]).collect(),
                _ => {}
            }
            queries.push(([format!("/r{n}/").as_bytes(), &subject[..]].concat(), Some('f')));
        }
    }
    let scratch = Scratch::new("selinux-generated");
    let dir = scratch.path().join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("file_contexts"), &fc).unwrap();
    let labeler = labeler_at(&dir);
    let oracle = libselinux(scratch.path(), Some(&dir.join("file_contexts")), &queries);
    assert_agree(&labeler, &oracle, &queries);
    let matched = oracle.iter().filter(|o| o.as_deref().is_some_and(|c| c != "system_u:object_r:root_t:s0")).count();
    eprintln!("{} generated lookups agree with PCRE2 ({matched} matched)", queries.len());
    assert!(matched > queries.len() / 5 && matched < queries.len() * 4 / 5, "{matched} of {} matched: the subjects test little", queries.len());
}

// ---------------------------------------------------------------------------------------------
// Regex syntax: what kiln refuses as not compiling, PCRE2 refuses too; what kiln refuses as
// unsupported, PCRE2 accepts.

#[test]
fn regex_syntax_errors_agree_with_pcre2() {
    let regexes = [
        "/a(", "/a)", "/[a", "/a|*x", "/a{3,2}", "/[z-a]", "/\\i", "/[[:foo:]]", "/\\x{100}", "/a{70000}", "/(?<=a+)b", "/[\\d-z]",
        "/(?i)a", "/(a)\\1", "/\\p{L}", "/(?|a)", "/a(?R)?", "/(*ACCEPT)", "/\\N", "/a\\", "/[]a]", "/x{a}", "/x{,2}", "/\\Q(\\E",
        "/(?#c)a", "/(?<n>a)", "/(?'n'a)", "/(?P<n>a)", "/[[:^digit:]]", "/[:alpha:]", "/[..]", "/[.a]", "/[a[:digit:]-z]", "/[a[:digit:]-]", "/[[.a.]]", "/(?:$)*", "/(?=a)*", "/\\x41\\x{42}\\0", "/(?>a+)",
        "/a++", "/a*?", "/[a-]", "/[-a]", "/[\\Qa-\\E]", "/\\b\\B\\A\\z\\Z",
    ];
    let scratch = Scratch::new("selinux-syntax");
    let dir = scratch.path().join("fc");
    std::fs::create_dir_all(&dir).unwrap();
    let mut script = String::new();
    for (i, re) in regexes.iter().enumerate() {
        std::fs::write(dir.join(format!("{i}")), format!("{re} <<none>>\n")).unwrap();
        // -v compiles every regex while loading: a bad one fails the open.
        script += &format!(
            "if selabel_lookup -v -r -b file -f {}/{i} -k /x -t 0 2>&1 | grep -q 'Could not obtain handle'; then echo bad; else echo ok; fi; ",
            sid::host(&dir)
        );
    }
    let out = sid::run_ok(&script, &[&dir]);
    let pcre2: Vec<&str> = out.lines().collect();
    assert_eq!(pcre2.len(), regexes.len(), "{out}");
    let mut wrong = Vec::new();
    for (re, pcre2) in regexes.iter().zip(pcre2) {
        let kiln = match kiln::selinux::pattern::Pattern::new(re.as_bytes()) {
            Ok(_) => "ok",
            Err(e) if e.0.starts_with("unsupported") => "unsupported",
            Err(_) => "bad",
        };
        let agree = match kiln {
            "unsupported" => pcre2 == "ok",
            k => k == pcre2,
        };
        if !agree {
            wrong.push(format!("{re}: kiln {kiln}, PCRE2 {pcre2}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Bad input

fn policy_tree(scratch: &Path, config: &str, files: &[(&str, &str)]) -> anyhow::Result<Option<Policy>> {
    let root = scratch.join("root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("etc/selinux")).unwrap();
    std::fs::write(root.join("etc/selinux/config"), config).unwrap();
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    Policy::from_dir(&root)
}

#[test]
fn bad_policies_are_clear_errors() {
    let scratch = Scratch::new("selinux-bad");
    let s = scratch.path();
    let fc = "etc/selinux/targeted/contexts/files/file_contexts";
    let config = "SELINUX=enforcing\nSELINUXTYPE=targeted\n";
    let ok = "/ system_u:object_r:root_t:s0\n";

    let e = policy_tree(s, config, &[(fc, &format!("{ok}# fine\n/usr/bin/x -q system_u:object_r:bin_t:s0\n"))]).err().unwrap();
    assert_eq!(e.to_string(), format!("{fc}: line 3: invalid file type \"-q\" (expected one of -- -d -c -b -p -l -s)"));

    let local = format!("{fc}.local");
    let e = policy_tree(s, config, &[(fc, ok), (&local, "/opt/x\n")]).err().unwrap();
    assert!(e.to_string().starts_with(&format!("{local}: line 1: missing fields")), "{e}");

    let e = policy_tree(s, config, &[(fc, &format!("{ok}/usr/(lib|bin/x system_u:object_r:bin_t:s0\n"))]).err().unwrap();
    let e = e.to_string();
    assert!(e.starts_with(&format!("{fc}: line 2: regex \"/usr/(lib|bin/x\" does not compile (missing closing parenthesis")), "{e}");

    let e = policy_tree(s, config, &[(fc, &format!("{ok}/usr/(a)\\1 system_u:object_r:bin_t:s0\n"))]).err().unwrap();
    assert!(e.to_string().contains("line 2: regex \"/usr/(a)\\\\1\" uses a PCRE2 feature kiln does not implement"), "{e}");

    let e = policy_tree(s, "SELINUX=permissive\nSELINUXTYPE=mls\n", &[(fc, ok), ("etc/selinux/minimum/contexts/files/file_contexts", ok)])
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "etc/selinux/config: SELINUXTYPE=mls but the image has no etc/selinux/mls/contexts/files/file_contexts; it has policies minimum, targeted: fix SELINUXTYPE or install that policy in the image"
    );

    // Disabled, or no config at all: no policy, no error.
    assert!(policy_tree(s, "SELINUX=disabled\nSELINUXTYPE=mls\n", &[]).unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// Speed (run by hand: cargo test --release --test selinux -- --ignored --nocapture)

#[test]
#[ignore]
fn bench_labelling_the_sid_tree() {
    let base = sid_image().join("base").canonicalize().unwrap();
    let t = std::time::Instant::now();
    let policy = Policy::from_dir(&base).unwrap().unwrap();
    let load = t.elapsed();
    let queries = sid_queries(&base);
    let labeler = policy.labeler();
    let rounds = 5;
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        for (p, k) in &queries {
            std::hint::black_box(labeler.lookup(p, mode_of(*k)));
        }
    }
    let one = (rounds * queries.len()) as f64 / t.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for chunk in queries.chunks(queries.len().div_ceil(threads)) {
            s.spawn(move || {
                for _ in 0..rounds {
                    for (p, k) in chunk {
                        std::hint::black_box(labeler.lookup(p, mode_of(*k)));
                    }
                }
            });
        }
    });
    let all = (rounds * queries.len()) as f64 / t.elapsed().as_secs_f64();
    // libselinux over the same lookups: matchpathcon, one process per xargs batch.
    let scratch = Scratch::new("selinux-bench");
    let fc = copy_text_policy(&base, &policy, &scratch.path().join("policy"));
    let kinded: Vec<_> = queries.iter().filter(|(_, k)| k.is_some()).cloned().collect();
    let t = std::time::Instant::now();
    libselinux(scratch.path(), Some(&fc), &kinded);
    let peer = kinded.len() as f64 / t.elapsed().as_secs_f64();
    eprintln!(
        "policy {} ({} specs) loaded in {:.1} ms; {} paths: {one:.0} paths/s on one thread, {all:.0} paths/s on {threads}; \
         libselinux (matchpathcon, process and load included) {peer:.0} paths/s",
        policy.name(),
        labeler.spec_count(),
        load.as_secs_f64() * 1e3,
        queries.len()
    );
}

// ---------------------------------------------------------------------------------------------
// kiln image inspect

fn inspect(image: &Path) -> serde_json::Value {
    let reference = format!("oci:{}:latest", image.join("oci").display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["image", "inspect", "--json", "--progress", "quiet", &reference])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn inspect_reports_the_policy() {
    let v = inspect(sid_image());
    // The spec count as grep counts the lines that are neither blank nor comments.
    let files = sid_image().join("base/etc/selinux/default/contexts/files");
    let specs: usize = ["file_contexts", "file_contexts.homedirs", "file_contexts.local"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(files.join(f)).ok())
        .map(|t| t.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).count())
        .sum();
    assert_eq!(v["selinux"], serde_json::json!({"policy": "default", "mode": "permissive", "specs": specs, "dir": "etc/selinux/default"}));
    assert!(inspect(common::test_image())["selinux"].is_null());
}
