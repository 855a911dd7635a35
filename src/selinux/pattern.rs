//! The regular expressions of `file_contexts`, compiled and matched as libselinux 3.11 does it
//! with PCRE2: the pattern is `^` + regex + `$` (not grouped: a top-level `|` leaves the later
//! branches unanchored at the start), compiled with `PCRE2_DOTALL` in byte mode (no UTF: `.`
//! and negated classes match any byte, newline included; `\d \s \w` and POSIX classes are
//! ASCII, as in PCRE2's built-in C-locale tables), and `pcre2_match` searches the path from
//! each start position; PCRE2's `$` also matches before a final newline.
//!
//! Our own small backtracking matcher, not a crate: real policies use only a handful of
//! features (classes, groups, alternation, `? * +`), but third-party ones use PCRE-only
//! lookahead (Bazzite's `/var/run/waydroid-(?!lxc).*`), which the `regex` crates reject; a
//! dependency that compiles PCRE2's C sources would cost more to build than this file.
//! Supported: literals and escapes, `.`, classes (ranges, negation, `\d`-style and POSIX
//! classes), `^ $ \A \z \Z \b \B`, groups (capturing, named, `(?:`), alternation, greedy,
//! lazy and possessive `* + ? {n} {n,} {n,m} {,m}`, atomic groups, lookahead and bounded
//! lookbehind, `\Q…\E`, comments `(?#…)`. Anything else PCRE2 knows (back-references, inline
//! options, recursion, verbs, `\p`…) is refused at compile time with the reason, so a policy
//! using it fails loudly instead of being mislabelled; what PCRE2 itself rejects is an error too.
//!
//! Matching is a backtracking VM over a compiled program, exploring alternatives in PCRE2's
//! priority order (which decides what atomic groups and possessive quantifiers keep) and,
//! like PCRE2, leaving an unbounded loop when an iteration matched the empty string. Like
//! PCRE2 it gives up after 10,000,000 backtracking points ([`MatchLimit`]; libselinux 3.11
//! then fails the lookup). Only exponential patterns such as `(a|a)+` get there; PCRE2 counts
//! slightly differently (it optimises some backtracking away), so near that limit the two may
//! disagree on which lookups give up. Before running, a pattern's literal prefix, suffix and
//! inner runs are looked for in the path, which rejects most non-matching specs cheaply.

use std::cell::RefCell;
use std::fmt;

/// A compiled `file_contexts` regex.
#[derive(Clone)]
pub struct Pattern {
    prog: Vec<Inst>,
    sets: Vec<ByteSet>,
    /// Every top-level branch starts with `^`: only start position 0 can match.
    anchored: bool,
    /// What every matching subject contains, checked before running the program.
    filter: Filter,
    /// Registers for the start positions of loop iterations (see `Inst::Mark`).
    slots: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, PatternError> {
    Err(PatternError(msg.into()))
}

/// libselinux refuses longer regexes ("regex of length N too long").
pub const MAX_REGEX_LEN: usize = 4096;
/// PCRE2's limit on `{n,m}` counts.
const MAX_REPEAT: u32 = 65535;
/// A compiled program larger than this is refused (counted repeats of large groups).
const MAX_PROGRAM: usize = 200_000;
/// PCRE2's default match limit: backtracking points one `pcre2_match` may set.
const MATCH_LIMIT: u32 = 10_000_000;

/// A match gave up at PCRE2's match limit (libselinux 3.11 then fails the whole lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchLimit;

impl Pattern {
    /// Compiles `regex` as libselinux does: `^` + regex + `$`.
    pub fn new(regex: &[u8]) -> Result<Pattern, PatternError> {
        if regex.len() >= MAX_REGEX_LEN {
            return err(format!("regex of length {} too long (libselinux's limit is {})", regex.len(), MAX_REGEX_LEN - 1));
        }
        let mut full = Vec::with_capacity(regex.len() + 2);
        full.push(b'^');
        full.extend_from_slice(regex);
        full.push(b'$');
        let ast = Parser { s: &full, i: 0, depth: 0 }.parse()?;
        let branches: &[Ast] = match &ast {
            Ast::Alt(b) => b,
            other => std::slice::from_ref(other),
        };
        let anchored = branches.iter().all(starts_anchored);
        let filter = match branches {
            [only] => Filter::of(only),
            _ => Filter::default(),
        };
        let mut c = Compiler { prog: Vec::new(), sets: Vec::new(), slots: 0 };
        let start = c.program(&ast)?;
        debug_assert_eq!(start, 0);
        Ok(Pattern { prog: c.prog, sets: c.sets, anchored, filter, slots: c.slots })
    }

    /// Whether `pcre2_match` finds a match in `subject`.
    pub fn is_match(&self, subject: &[u8]) -> Result<bool, MatchLimit> {
        if !self.filter.admits(subject) {
            return Ok(false);
        }
        SCRATCH.with(|s| {
            let Scratch { stack, slots } = &mut *s.borrow_mut();
            slots.clear();
            slots.resize(self.slots, 0);
            let mut vm = Vm { p: self, s: subject, stack, slots, backtracks: 0 };
            vm.search()
        })
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { stack: Vec::new(), slots: Vec::new() }) };
}

struct Scratch {
    stack: Vec<Frame>,
    slots: Vec<u32>,
}

/// A backtracking point: resume at (pc, pos), or undo a `Mark`.
#[derive(Clone, Copy)]
enum Frame {
    Resume(u32, u32),
    Restore(u32, u32),
}

// ---------------------------------------------------------------------------------------------
// Syntax

#[derive(Clone, Copy, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);
    const ALL: ByteSet = ByteSet([!0; 4]);
    fn has(&self, b: u8) -> bool {
        self.0[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }
    fn add(&mut self, b: u8) {
        self.0[(b >> 6) as usize] |= 1 << (b & 63);
    }
    fn add_range(&mut self, lo: u8, hi: u8) {
        for b in lo..=hi {
            self.add(b);
        }
    }
    fn union(&mut self, o: &ByteSet) {
        for i in 0..4 {
            self.0[i] |= o.0[i];
        }
    }
    fn not(&self) -> ByteSet {
        ByteSet([!self.0[0], !self.0[1], !self.0[2], !self.0[3]])
    }
    fn of(f: impl Fn(u8) -> bool) -> ByteSet {
        let mut s = ByteSet::EMPTY;
        for b in 0..=255u8 {
            if f(b) {
                s.add(b);
            }
        }
        s
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Anchor {
    /// `^`, `\A`: start of the subject (no multiline mode).
    Start,
    /// `$`, `\Z`: end of the subject or before a newline that ends it.
    Dollar,
    /// `\z`: end of the subject.
    End,
    WordBoundary,
    NotWordBoundary,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Greed {
    Greedy,
    Lazy,
    Possessive,
}

#[derive(Clone)]
enum Ast {
    Empty,
    Byte(u8),
    Set(ByteSet),
    Assert(Anchor),
    Concat(Vec<Ast>),
    Alt(Vec<Ast>),
    Repeat { ast: Box<Ast>, min: u32, max: Option<u32>, greed: Greed },
    Look { ast: Box<Ast>, ahead: bool, negate: bool },
    Atomic(Box<Ast>),
}

fn starts_anchored(ast: &Ast) -> bool {
    match ast {
        Ast::Assert(Anchor::Start) => true,
        Ast::Concat(items) => items.first().is_some_and(starts_anchored),
        Ast::Alt(b) => !b.is_empty() && b.iter().all(starts_anchored),
        Ast::Atomic(a) => starts_anchored(a),
        _ => false,
    }
}

/// Literal runs every match of a single-branch pattern `^…$` holds: the run it starts with,
/// the run it ends with (before `$`), and runs in between.
#[derive(Clone, Default)]
struct Filter {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    inner: Vec<Vec<u8>>,
}

impl Filter {
    fn of(branch: &Ast) -> Filter {
        fn flatten<'a>(ast: &'a Ast, out: &mut Vec<&'a Ast>) {
            match ast {
                Ast::Concat(items) => items.iter().for_each(|i| flatten(i, out)),
                Ast::Atomic(a) => flatten(a, out),
                Ast::Empty => {}
                a => out.push(a),
            }
        }
        let mut items = Vec::new();
        flatten(branch, &mut items);
        let mut f = Filter::default();
        if items.first().is_none_or(|a| !matches!(a, Ast::Assert(Anchor::Start))) {
            return f;
        }
        let ends_with_dollar = matches!(items.last(), Some(Ast::Assert(Anchor::Dollar)));
        let mut i = 1;
        while i < items.len() {
            let mut run = Vec::new();
            let start = i;
            while let Some(Ast::Byte(b)) = items.get(i) {
                run.push(*b);
                i += 1;
            }
            if run.is_empty() {
                i += 1;
                continue;
            }
            if start == 1 {
                f.prefix = run.clone();
            }
            if ends_with_dollar && i == items.len() - 1 {
                f.suffix = run;
            } else if start != 1 {
                f.inner.push(run);
            }
        }
        f
    }

    fn admits(&self, s: &[u8]) -> bool {
        if !s.starts_with(&self.prefix) {
            return false;
        }
        // `$` also matches before a final newline.
        if !self.suffix.is_empty() && !s.ends_with(&self.suffix) && !s.strip_suffix(b"\n").is_some_and(|t| t.ends_with(&self.suffix)) {
            return false;
        }
        let rest = &s[self.prefix.len()..];
        self.inner.iter().all(|lit| contains(rest, lit))
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, tail)) = needle.split_first() else { return true };
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()].iter().position(|&b| b == first) {
            None => return false,
            Some(p) => {
                i += p;
                if &hay[i + 1..i + needle.len()] == tail {
                    return true;
                }
                i += 1;
            }
        }
    }
    false
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn class_escape(c: u8) -> Option<ByteSet> {
    // PCRE2's default tables: C locale; \s includes VT; \h and \v include the Latin-1
    // characters NBSP and NEL in 8-bit non-UTF mode.
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let h = |b: u8| matches!(b, b' ' | b'\t' | 0xa0);
    let v = |b: u8| matches!(b, 0x0a..=0x0d | 0x85);
    Some(match c {
        b'd' => ByteSet::of(|b| b.is_ascii_digit()),
        b'D' => ByteSet::of(|b| !b.is_ascii_digit()),
        b's' => ByteSet::of(space),
        b'S' => ByteSet::of(|b| !space(b)),
        b'w' => ByteSet::of(is_word),
        b'W' => ByteSet::of(|b| !is_word(b)),
        b'h' => ByteSet::of(h),
        b'H' => ByteSet::of(|b| !h(b)),
        b'v' => ByteSet::of(v),
        b'V' => ByteSet::of(|b| !v(b)),
        _ => return None,
    })
}

fn posix_class(name: &[u8]) -> Option<ByteSet> {
    let f: fn(u8) -> bool = match name {
        b"alpha" => |b| b.is_ascii_alphabetic(),
        b"digit" => |b| b.is_ascii_digit(),
        b"alnum" => |b| b.is_ascii_alphanumeric(),
        b"upper" => |b| b.is_ascii_uppercase(),
        b"lower" => |b| b.is_ascii_lowercase(),
        b"space" => |b| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b"blank" => |b| b == b' ' || b == b'\t',
        b"punct" => |b| b.is_ascii_punctuation(),
        b"xdigit" => |b| b.is_ascii_hexdigit(),
        b"word" => is_word,
        b"cntrl" => |b| b < 0x20 || b == 0x7f,
        b"graph" => |b| b.is_ascii_graphic(),
        b"print" => |b| (0x20..0x7f).contains(&b),
        b"ascii" => |b| b < 0x80,
        _ => return None,
    };
    Some(ByteSet::of(f))
}

/// PCRE2's `check_posix_syntax`: `s` starts at the `:`, `.` or `=` after a `[`; returns the
/// offset of the matching terminator (followed by `]`) if the text is POSIX class syntax.
fn posix_syntax(s: &[u8]) -> Option<usize> {
    let term = s[0];
    let mut i = 1;
    while s.len() - i >= 2 {
        if s[i] == b'\\' && (s[i + 1] == b']' || s[i + 1] == b'\\') {
            i += 1;
        } else if (s[i] == b'[' && s[i + 1] == term) || s[i] == b']' {
            return None;
        } else if s[i] == term && s[i + 1] == b']' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// One item of a character class or escape: a byte, a set of them, or `\Q…\E` bytes (members
/// of a class; only the last may start a range).
enum ClassItem {
    Byte(u8),
    Set(ByteSet),
    Quoted(Vec<u8>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: u32,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn peek_at(&self, n: usize) -> Option<u8> {
        self.s.get(self.i + n).copied()
    }
    fn fail<T>(&self, msg: &str) -> Result<T, PatternError> {
        // Offsets are reported in the regex as written (without the added `^`).
        err(format!("{msg} at offset {}", self.i.saturating_sub(1)))
    }

    fn parse(mut self) -> Result<Ast, PatternError> {
        let ast = self.alternation()?;
        if self.i < self.s.len() {
            // Only an unmatched `)` stops the top level early.
            return self.fail("unmatched closing parenthesis");
        }
        Ok(ast)
    }

    fn alternation(&mut self) -> Result<Ast, PatternError> {
        let mut branches = vec![self.concat()?];
        while self.peek() == Some(b'|') {
            self.i += 1;
            branches.push(self.concat()?);
        }
        Ok(if branches.len() == 1 { branches.pop().unwrap() } else { Ast::Alt(branches) })
    }

    fn concat(&mut self) -> Result<Ast, PatternError> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            let atom = match c {
                b'|' | b')' => break,
                b'(' => {
                    self.i += 1;
                    match self.group()? {
                        Some(a) => a,
                        None => continue, // a comment
                    }
                }
                b'[' => {
                    self.i += 1;
                    // Like Perl, PCRE2 refuses POSIX class syntax outside a class.
                    if matches!(self.peek(), Some(b':' | b'.' | b'=')) && posix_syntax(&self.s[self.i..]).is_some() {
                        return self.fail(if self.peek() == Some(b':') {
                            "POSIX named classes are supported only within a class"
                        } else {
                            "POSIX collating elements are not supported"
                        });
                    }
                    Ast::Set(self.class()?)
                }
                b'.' => {
                    self.i += 1;
                    Ast::Set(ByteSet::ALL)
                }
                b'^' => {
                    self.i += 1;
                    Ast::Assert(Anchor::Start)
                }
                b'$' => {
                    self.i += 1;
                    Ast::Assert(Anchor::Dollar)
                }
                b'*' | b'+' | b'?' => {
                    self.i += 1;
                    return self.fail("quantifier does not follow a repeatable item");
                }
                b'{' if self.quantifier_braces().is_some() => {
                    self.i += 1;
                    return self.fail("quantifier does not follow a repeatable item");
                }
                b'\\' => {
                    self.i += 1;
                    match self.escape()? {
                        Escaped::Item(ClassItem::Byte(b)) => Ast::Byte(b),
                        Escaped::Item(ClassItem::Set(s)) => Ast::Set(s),
                        Escaped::Item(ClassItem::Quoted(_)) => unreachable!("escapes give no quoted item"),
                        Escaped::Assert(a) => Ast::Assert(a),
                        Escaped::Quoted(bytes) => {
                            // A quantifier after \Q…\E applies to its last byte.
                            let Some((&last, rest)) = bytes.split_last() else { continue };
                            items.extend(rest.iter().map(|&b| Ast::Byte(b)));
                            Ast::Byte(last)
                        }
                        Escaped::Nothing => continue,
                    }
                }
                _ => {
                    self.i += 1;
                    Ast::Byte(c)
                }
            };
            let atom = self.quantified(atom)?;
            items.push(atom);
        }
        Ok(match items.len() {
            0 => Ast::Empty,
            1 => items.pop().unwrap(),
            _ => Ast::Concat(items),
        })
    }

    /// Parses `{…}` at the current position if it is a quantifier as PCRE2 10.43+ reads one
    /// (`{n}`, `{n,}`, `{n,m}`, `{,m}`; PCRE2 also allows spaces inside, which a
    /// `file_contexts` field cannot hold); returns the bounds and the length of the text.
    /// Anything else is a literal `{`.
    fn quantifier_braces(&self) -> Option<(Option<u64>, Option<Option<u64>>, usize)> {
        let s = &self.s[self.i..];
        if s.first() != Some(&b'{') {
            return None;
        }
        let mut j = 1;
        let number = |j: &mut usize| -> Option<u64> {
            let start = *j;
            let mut v: u64 = 0;
            while let Some(d) = s.get(*j).filter(|d| d.is_ascii_digit()) {
                v = v.saturating_mul(10).saturating_add((d - b'0') as u64);
                *j += 1;
            }
            (*j > start).then_some(v)
        };
        let min = number(&mut j);
        let max = if s.get(j) == Some(&b',') {
            j += 1;
            Some(number(&mut j))
        } else {
            None
        };
        if s.get(j) != Some(&b'}') {
            return None;
        }
        match (min, max) {
            (None, None) | (None, Some(None)) => None,
            _ => Some((min, max, j + 1)),
        }
    }

    fn quantified(&mut self, atom: Ast) -> Result<Ast, PatternError> {
        let (min, max) = match self.peek() {
            Some(b'*') => {
                self.i += 1;
                (0, None)
            }
            Some(b'+') => {
                self.i += 1;
                (1, None)
            }
            Some(b'?') => {
                self.i += 1;
                (0, Some(1))
            }
            Some(b'{') => match self.quantifier_braces() {
                Some((min, max, len)) => {
                    self.i += len;
                    let min = min.unwrap_or(0);
                    let max = match max {
                        None => Some(min),
                        Some(None) => None,
                        Some(Some(m)) => Some(m),
                    };
                    if min > MAX_REPEAT as u64 || max.is_some_and(|m| m > MAX_REPEAT as u64) {
                        return self.fail("number too big in {} quantifier");
                    }
                    if max.is_some_and(|m| m < min) {
                        return self.fail("numbers out of order in {} quantifier");
                    }
                    (min as u32, max.map(|m| m as u32))
                }
                None => return Ok(atom),
            },
            _ => return Ok(atom),
        };
        match atom {
            Ast::Assert(_) => return self.fail("quantifier does not follow a repeatable item"),
            Ast::Look { .. } => return self.fail("unsupported: a quantified lookaround assertion"),
            _ => {}
        }
        let greed = match self.peek() {
            Some(b'?') => {
                self.i += 1;
                Greed::Lazy
            }
            Some(b'+') => {
                self.i += 1;
                Greed::Possessive
            }
            _ => Greed::Greedy,
        };
        if matches!(self.peek(), Some(b'*' | b'+' | b'?')) || (self.peek() == Some(b'{') && self.quantifier_braces().is_some()) {
            self.i += 1;
            return self.fail("unsupported: a quantifier following a quantifier");
        }
        Ok(Ast::Repeat { ast: Box::new(atom), min, max, greed })
    }

    /// After `(`: the group, or None for a `(?#…)` comment.
    fn group(&mut self) -> Result<Option<Ast>, PatternError> {
        self.depth += 1;
        if self.depth > 250 {
            return self.fail("parentheses are too deeply nested");
        }
        enum Kind {
            Plain,
            Look(bool, bool),
            Behind(bool),
            Atomic,
        }
        let kind = if self.peek() == Some(b'*') {
            return self.fail("unsupported: (*VERB) and other (* constructs");
        } else if self.peek() != Some(b'?') {
            Kind::Plain
        } else {
            self.i += 1;
            match self.peek() {
                Some(b':') => {
                    self.i += 1;
                    Kind::Plain
                }
                Some(b'=') => {
                    self.i += 1;
                    Kind::Look(true, false)
                }
                Some(b'!') => {
                    self.i += 1;
                    Kind::Look(true, true)
                }
                Some(b'>') => {
                    self.i += 1;
                    Kind::Atomic
                }
                Some(b'<') if matches!(self.peek_at(1), Some(b'=' | b'!')) => {
                    let negate = self.peek_at(1) == Some(b'!');
                    self.i += 2;
                    Kind::Behind(negate)
                }
                Some(b'#') => {
                    while let Some(c) = self.peek() {
                        self.i += 1;
                        if c == b')' {
                            self.depth -= 1;
                            return Ok(None);
                        }
                    }
                    return self.fail("missing ) at end of (?# comment");
                }
                Some(b'<') | Some(b'\'') | Some(b'P') => {
                    // Named capturing groups: (?<name>…), (?'name'…), (?P<name>…).
                    let close = match self.peek() {
                        Some(b'P') if self.peek_at(1) == Some(b'<') => {
                            self.i += 1;
                            b'>'
                        }
                        Some(b'P') => return self.fail("unsupported: (?P= and (?P> (back-references and recursion)"),
                        Some(b'<') => b'>',
                        _ => b'\'',
                    };
                    self.i += 1;
                    let start = self.i;
                    while self.peek().is_some_and(is_word) {
                        self.i += 1;
                    }
                    if self.i == start || self.s[start].is_ascii_digit() || self.peek() != Some(close) {
                        return self.fail("syntax error in subpattern name");
                    }
                    self.i += 1;
                    Kind::Plain
                }
                _ => return self.fail("unsupported: (? construct (inline options, recursion, conditionals, branch reset)"),
            }
        };
        let inner = self.alternation()?;
        if self.peek() != Some(b')') {
            return self.fail("missing closing parenthesis");
        }
        self.i += 1;
        self.depth -= 1;
        Ok(Some(match kind {
            // A group around an assertion is repeatable, unlike the bare assertion.
            Kind::Plain => match inner {
                a @ (Ast::Assert(_) | Ast::Look { .. }) => Ast::Concat(vec![a]),
                a => a,
            },
            Kind::Atomic => Ast::Atomic(Box::new(inner)),
            Kind::Look(ahead, negate) => Ast::Look { ast: Box::new(inner), ahead, negate },
            Kind::Behind(negate) => {
                if width(&inner).1.is_none_or(|max| max > 255) {
                    return self.fail("lookbehind assertion is not fixed length (or longer than 255)");
                }
                Ast::Look { ast: Box::new(inner), ahead: false, negate }
            }
        }))
    }

    /// After `[`: a class up to its `]`.
    fn class(&mut self) -> Result<ByteSet, PatternError> {
        let negate = self.peek() == Some(b'^');
        if negate {
            self.i += 1;
        }
        let mut set = ByteSet::EMPTY;
        let mut first = true;
        loop {
            let Some(c) = self.peek() else {
                return self.fail("missing terminating ] for character class");
            };
            if c == b']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            let item = match self.class_item()? {
                None => continue,
                Some(ClassItem::Quoted(mut bytes)) => {
                    let last = bytes.pop().unwrap();
                    bytes.iter().for_each(|&b| set.add(b));
                    ClassItem::Byte(last)
                }
                Some(item) => item,
            };
            match item {
                ClassItem::Set(s) => {
                    if self.peek() == Some(b'-') && self.peek_at(1).is_some_and(|c| c != b']') {
                        self.i += 1;
                        return self.fail("invalid range in character class");
                    }
                    set.union(&s);
                }
                ClassItem::Quoted(_) => unreachable!("resolved above"),
                ClassItem::Byte(lo) => {
                    if self.peek() == Some(b'-') && self.peek_at(1).is_some_and(|c| c != b']') {
                        self.i += 1;
                        let hi = match self.class_item()? {
                            Some(ClassItem::Byte(hi)) => hi,
                            Some(ClassItem::Quoted(q)) if q.len() == 1 => q[0],
                            _ => return self.fail("invalid range in character class"),
                        };
                        if hi < lo {
                            return self.fail("range out of order in character class");
                        }
                        set.add_range(lo, hi);
                    } else {
                        set.add(lo);
                    }
                }
            }
        }
        Ok(if negate { set.not() } else { set })
    }

    /// One member of a class: a byte, an escape, a POSIX class; None for `\E` or an empty `\Q\E`.
    fn class_item(&mut self) -> Result<Option<ClassItem>, PatternError> {
        let c = self.peek().unwrap();
        self.i += 1;
        match c {
            b'[' if self.s.len() - self.i >= 3 && matches!(self.peek(), Some(b':' | b'.' | b'=')) => {
                match posix_syntax(&self.s[self.i..]) {
                    Some(end) => {
                        if self.peek() != Some(b':') {
                            return self.fail("POSIX collating elements are not supported");
                        }
                        let mut name = &self.s[self.i + 1..self.i + end];
                        let neg = name.first() == Some(&b'^');
                        if neg {
                            name = &name[1..];
                        }
                        let Some(set) = posix_class(name) else {
                            return self.fail("unknown POSIX class name");
                        };
                        self.i += end + 2;
                        if self.peek() == Some(b'-') && self.peek_at(1).is_some_and(|c| c != b']') {
                            return self.fail("invalid range in character class");
                        }
                        Ok(Some(ClassItem::Set(if neg { set.not() } else { set })))
                    }
                    None => Ok(Some(ClassItem::Byte(b'['))),
                }
            }
            b'\\' => {
                let Some(e) = self.peek() else {
                    return self.fail("\\ at end of pattern");
                };
                match e {
                    b'b' => {
                        self.i += 1;
                        Ok(Some(ClassItem::Byte(0x08)))
                    }
                    b'B' | b'R' | b'X' | b'N' => {
                        self.i += 1;
                        self.fail("escape sequence is invalid in character class")
                    }
                    _ => match self.escape()? {
                        Escaped::Item(item) => Ok(Some(item)),
                        Escaped::Assert(_) => self.fail("escape sequence is invalid in character class"),
                        Escaped::Quoted(bytes) if bytes.is_empty() => Ok(None),
                        Escaped::Quoted(bytes) => Ok(Some(ClassItem::Quoted(bytes))),
                        Escaped::Nothing => Ok(None),
                    },
                }
            }
            _ => Ok(Some(ClassItem::Byte(c))),
        }
    }

    /// After `\` (outside a class or inside, for the shared cases).
    fn escape(&mut self) -> Result<Escaped, PatternError> {
        let Some(c) = self.peek() else {
            return self.fail("\\ at end of pattern");
        };
        self.i += 1;
        if let Some(set) = class_escape(c) {
            return Ok(Escaped::Item(ClassItem::Set(set)));
        }
        let byte = |b: u8| Ok(Escaped::Item(ClassItem::Byte(b)));
        match c {
            b'a' => byte(0x07),
            b'e' => byte(0x1b),
            b'f' => byte(0x0c),
            b'n' => byte(b'\n'),
            b'r' => byte(b'\r'),
            b't' => byte(b'\t'),
            b'0' => {
                let mut v: u32 = 0;
                for _ in 0..2 {
                    match self.peek() {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            self.i += 1;
                        }
                        _ => break,
                    }
                }
                byte(v as u8)
            }
            b'x' => {
                if self.peek() == Some(b'{') {
                    let start = self.i + 1;
                    let mut j = start;
                    while self.s.get(j).is_some_and(|d| d.is_ascii_hexdigit()) {
                        j += 1;
                    }
                    if j == start || self.s.get(j) != Some(&b'}') {
                        self.i = j;
                        return self.fail("\\x{ is not followed by hexadecimal digits and }");
                    }
                    let digits = std::str::from_utf8(&self.s[start..j]).unwrap();
                    self.i = j + 1;
                    match u32::from_str_radix(digits.trim_start_matches('0'), 16) {
                        Ok(v) if v <= 0xff => byte(v as u8),
                        _ if digits.trim_start_matches('0').is_empty() => byte(0),
                        _ => self.fail("character code point value in \\x{} is too large"),
                    }
                } else {
                    let mut v: u32 = 0;
                    for _ in 0..2 {
                        match self.peek().and_then(|d| (d as char).to_digit(16)) {
                            Some(d) => {
                                v = v * 16 + d;
                                self.i += 1;
                            }
                            None => break,
                        }
                    }
                    byte(v as u8)
                }
            }
            b'A' => Ok(Escaped::Assert(Anchor::Start)),
            b'Z' => Ok(Escaped::Assert(Anchor::Dollar)),
            b'z' => Ok(Escaped::Assert(Anchor::End)),
            b'b' => Ok(Escaped::Assert(Anchor::WordBoundary)),
            b'B' => Ok(Escaped::Assert(Anchor::NotWordBoundary)),
            b'Q' => {
                let start = self.i;
                let end = self.s[start..].windows(2).position(|w| w == b"\\E").map(|p| start + p);
                let bytes = self.s[start..end.unwrap_or(self.s.len())].to_vec();
                self.i = end.map_or(self.s.len(), |e| e + 2);
                Ok(Escaped::Quoted(bytes))
            }
            b'E' => Ok(Escaped::Nothing),
            b'1'..=b'9' | b'g' | b'k' => self.fail("unsupported: back-references (or octal escapes other than \\0)"),
            b'o' | b'c' | b'p' | b'P' | b'N' | b'R' | b'X' | b'C' | b'G' | b'K' => {
                self.fail(&format!("unsupported escape \\{}", c as char))
            }
            c if c.is_ascii_alphanumeric() => self.fail("unrecognized character follows \\"),
            c => byte(c),
        }
    }
}

enum Escaped {
    Item(ClassItem),
    Assert(Anchor),
    Quoted(Vec<u8>),
    Nothing,
}

/// Minimum and maximum length of the subjects `ast` can consume (max None = unbounded).
fn width(ast: &Ast) -> (u64, Option<u64>) {
    match ast {
        Ast::Empty | Ast::Assert(_) | Ast::Look { .. } => (0, Some(0)),
        Ast::Byte(_) | Ast::Set(_) => (1, Some(1)),
        Ast::Concat(items) => items.iter().map(width).fold((0, Some(0)), |(a, b), (c, d)| {
            (a + c, b.zip(d).map(|(b, d)| b + d))
        }),
        Ast::Alt(b) => {
            let w: Vec<_> = b.iter().map(width).collect();
            let min = w.iter().map(|x| x.0).min().unwrap_or(0);
            let max = w.iter().try_fold(0, |m, x| x.1.map(|v| m.max(v)));
            (min, max)
        }
        Ast::Repeat { ast, min, max, .. } => {
            let (a, b) = width(ast);
            (a * *min as u64, match (b, max) {
                (Some(0), _) => Some(0),
                (Some(b), Some(m)) => Some(b * *m as u64),
                _ => None,
            })
        }
        Ast::Atomic(a) => width(a),
    }
}

// ---------------------------------------------------------------------------------------------
// Program

#[derive(Clone, Copy, Debug)]
enum Inst {
    Byte(u8),
    Set(u32),
    /// Try the first target, then the second.
    Split(u32, u32),
    Jmp(u32),
    Assert(Anchor),
    /// A lookaround whose body is the sub-program at `sub` (ending in `Match`).
    Look { sub: u32, ahead: bool, negate: bool, min: u32, max: u32 },
    /// Runs the sub-program and continues from its first match's end, never backtracking into it.
    Atomic(u32),
    /// Saves the position in a slot: the start of an iteration of a loop that can match empty.
    Mark(u32),
    /// End of such an iteration: as PCRE2 does, an iteration that matched the empty string
    /// leaves the loop (continue at pc + 1); otherwise jump back to the loop's `Split`.
    Loop { slot: u32, back: u32 },
    Match,
}

struct Compiler {
    prog: Vec<Inst>,
    sets: Vec<ByteSet>,
    slots: usize,
}

impl Compiler {
    /// Compiles `ast` followed by `Match` as a program starting at the returned pc; the
    /// sub-programs it needs are compiled after it.
    fn program(&mut self, ast: &Ast) -> Result<u32, PatternError> {
        let mut pending = Vec::new();
        let start = self.prog.len() as u32;
        self.emit(ast, &mut pending)?;
        self.push(Inst::Match)?;
        for (at, sub) in pending {
            let pc = self.program(&sub)?;
            match &mut self.prog[at] {
                Inst::Look { sub, .. } | Inst::Atomic(sub) => *sub = pc,
                _ => unreachable!(),
            }
        }
        Ok(start)
    }

    fn push(&mut self, i: Inst) -> Result<usize, PatternError> {
        if self.prog.len() >= MAX_PROGRAM {
            return err("regex too large (its counted repeats expand beyond kiln's limit)");
        }
        self.prog.push(i);
        Ok(self.prog.len() - 1)
    }

    fn pc(&self) -> u32 {
        self.prog.len() as u32
    }

    fn emit(&mut self, ast: &Ast, pending: &mut Vec<(usize, Ast)>) -> Result<(), PatternError> {
        match ast {
            Ast::Empty => {}
            Ast::Byte(b) => {
                self.push(Inst::Byte(*b))?;
            }
            Ast::Set(s) => {
                let idx = match self.sets.iter().position(|x| x == s) {
                    Some(i) => i,
                    None => {
                        self.sets.push(*s);
                        self.sets.len() - 1
                    }
                };
                self.push(Inst::Set(idx as u32))?;
            }
            Ast::Assert(a) => {
                self.push(Inst::Assert(*a))?;
            }
            Ast::Concat(items) => {
                for i in items {
                    self.emit(i, pending)?;
                }
            }
            Ast::Alt(branches) => {
                let mut jumps = Vec::new();
                for (n, b) in branches.iter().enumerate() {
                    if n + 1 < branches.len() {
                        let split = self.push(Inst::Split(0, 0))?;
                        self.emit(b, pending)?;
                        jumps.push(self.push(Inst::Jmp(0))?);
                        let next = self.pc();
                        self.prog[split] = Inst::Split(split as u32 + 1, next);
                    } else {
                        self.emit(b, pending)?;
                    }
                }
                let end = self.pc();
                for j in jumps {
                    self.prog[j] = Inst::Jmp(end);
                }
            }
            Ast::Repeat { ast: inner, min, max, greed } => {
                if *greed == Greed::Possessive {
                    let greedy = Ast::Repeat { ast: inner.clone(), min: *min, max: *max, greed: Greed::Greedy };
                    let at = self.push(Inst::Atomic(0))?;
                    pending.push((at, greedy));
                    return Ok(());
                }
                let lazy = *greed == Greed::Lazy;
                for _ in 0..*min {
                    self.emit(inner, pending)?;
                }
                match max {
                    None => {
                        let split = self.push(Inst::Split(0, 0))?;
                        if width(inner).0 == 0 {
                            let slot = self.slots as u32;
                            self.slots += 1;
                            self.push(Inst::Mark(slot))?;
                            self.emit(inner, pending)?;
                            self.push(Inst::Loop { slot, back: split as u32 })?;
                        } else {
                            self.emit(inner, pending)?;
                            self.push(Inst::Jmp(split as u32))?;
                        }
                        let out = self.pc();
                        let body = split as u32 + 1;
                        self.prog[split] = if lazy { Inst::Split(out, body) } else { Inst::Split(body, out) };
                    }
                    Some(max) => {
                        let mut splits = Vec::new();
                        for _ in *min..*max {
                            splits.push(self.push(Inst::Split(0, 0))?);
                            self.emit(inner, pending)?;
                        }
                        let out = self.pc();
                        for s in splits {
                            let body = s as u32 + 1;
                            self.prog[s] = if lazy { Inst::Split(out, body) } else { Inst::Split(body, out) };
                        }
                    }
                }
            }
            Ast::Look { ast: inner, ahead, negate } => {
                let (min, max) = width(inner);
                let (min, max) = if *ahead { (0, 0) } else { (min as u32, max.unwrap_or(0) as u32) };
                let at = self.push(Inst::Look { sub: 0, ahead: *ahead, negate: *negate, min, max })?;
                pending.push((at, (**inner).clone()));
            }
            Ast::Atomic(inner) => {
                let at = self.push(Inst::Atomic(0))?;
                pending.push((at, (**inner).clone()));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Matching

struct Vm<'a> {
    p: &'a Pattern,
    s: &'a [u8],
    stack: &'a mut Vec<Frame>,
    slots: &'a mut Vec<u32>,
    /// Backtracking points set so far, against PCRE2's match limit.
    backtracks: u32,
}

impl Vm<'_> {
    fn search(&mut self) -> Result<bool, MatchLimit> {
        let last = if self.p.anchored { 0 } else { self.s.len() as u32 };
        for start in 0..=last {
            if self.run(0, start, None)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Runs the program at `pc` from `pos`; returns the end of the first match found in
    /// PCRE's priority order (that ends at `target` when given).
    fn run(&mut self, pc: u32, pos: u32, target: Option<u32>) -> Result<Option<u32>, MatchLimit> {
        let base = self.stack.len();
        let result = self.run_inner(pc, pos, target);
        self.stack.truncate(base);
        result
    }

    fn backtrack_point(&mut self) -> Result<(), MatchLimit> {
        self.backtracks += 1;
        if self.backtracks > MATCH_LIMIT {
            return Err(MatchLimit);
        }
        Ok(())
    }

    fn run_inner(&mut self, pc: u32, pos: u32, target: Option<u32>) -> Result<Option<u32>, MatchLimit> {
        let base = self.stack.len();
        let s = self.s;
        let n = s.len() as u32;
        self.stack.push(Frame::Resume(pc, pos));
        while self.stack.len() > base {
            let (mut pc, mut pos) = match self.stack.pop().unwrap() {
                Frame::Resume(pc, pos) => (pc, pos),
                Frame::Restore(slot, old) => {
                    self.slots[slot as usize] = old;
                    continue;
                }
            };
            loop {
                match self.p.prog[pc as usize] {
                    Inst::Byte(b) => {
                        if pos < n && s[pos as usize] == b {
                            pc += 1;
                            pos += 1;
                        } else {
                            break;
                        }
                    }
                    Inst::Set(i) => {
                        if pos < n && self.p.sets[i as usize].has(s[pos as usize]) {
                            pc += 1;
                            pos += 1;
                        } else {
                            break;
                        }
                    }
                    Inst::Split(a, b) => {
                        self.backtrack_point()?;
                        self.stack.push(Frame::Resume(b, pos));
                        pc = a;
                    }
                    Inst::Jmp(a) => pc = a,
                    Inst::Assert(a) => {
                        if self.assert(a, pos) {
                            pc += 1;
                        } else {
                            break;
                        }
                    }
                    Inst::Look { sub, ahead, negate, min, max } => {
                        self.backtrack_point()?;
                        let mut found = false;
                        if ahead {
                            found = self.run(sub, pos, None)?.is_some();
                        } else {
                            for len in min..=max.min(pos) {
                                if self.run(sub, pos - len, Some(pos))?.is_some() {
                                    found = true;
                                    break;
                                }
                            }
                        }
                        if found != negate {
                            pc += 1;
                        } else {
                            break;
                        }
                    }
                    Inst::Atomic(sub) => {
                        self.backtrack_point()?;
                        match self.run(sub, pos, None)? {
                            Some(end) => {
                                pc += 1;
                                pos = end;
                            }
                            None => break,
                        }
                    }
                    Inst::Mark(slot) => {
                        self.stack.push(Frame::Restore(slot, self.slots[slot as usize]));
                        self.slots[slot as usize] = pos;
                        pc += 1;
                    }
                    Inst::Loop { slot, back } => {
                        pc = if self.slots[slot as usize] == pos { pc + 1 } else { back };
                    }
                    Inst::Match => {
                        if target.is_none_or(|t| t == pos) {
                            return Ok(Some(pos));
                        }
                        break;
                    }
                }
            }
        }
        Ok(None)
    }

    fn assert(&self, a: Anchor, pos: u32) -> bool {
        let s = self.s;
        let n = s.len() as u32;
        match a {
            Anchor::Start => pos == 0,
            Anchor::End => pos == n,
            Anchor::Dollar => pos == n || (pos + 1 == n && s[pos as usize] == b'\n'),
            Anchor::WordBoundary | Anchor::NotWordBoundary => {
                let before = pos > 0 && is_word(s[pos as usize - 1]);
                let after = pos < n && is_word(s[pos as usize]);
                (before != after) == (a == Anchor::WordBoundary)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(re: &str, s: &str) -> bool {
        Pattern::new(re.as_bytes()).unwrap_or_else(|e| panic!("{re}: {e}")).is_match(s.as_bytes()).unwrap()
    }

    #[test]
    fn anchoring_is_libselinux_s() {
        assert!(m("/usr(/.*)?", "/usr"));
        assert!(m("/usr(/.*)?", "/usr/bin/x"));
        assert!(!m("/usr(/.*)?", "/usrx"));
        assert!(!m("/usr", "/usr/x"));
        // `$` matches before a final newline; DOTALL lets `.` match it.
        assert!(m("/etc/passwd", "/etc/passwd\n"));
        assert!(!m("/etc/passwd", "/etc/passwd\n\n"));
        assert!(m("/a.b", "/a\nb"));
        // A top-level `|` leaves the later branch unanchored at the start and the first at the end.
        assert!(m("/a|/b", "/a/whatever"));
        assert!(m("/a|/b", "/x/y/b"));
        assert!(!m("/a|/b", "/x/b/y"));
    }

    #[test]
    fn classes_and_quantifiers() {
        assert!(m("/dev/[shmxv]d[^/]*", "/dev/sda1"));
        assert!(!m("/dev/[shmxv]d[^/]*", "/dev/sda/1"));
        assert!(m("/x[]a]", "/x]"));
        assert!(m("/x[a-]", "/x-"));
        assert!(m("/x[[:digit:]]+", "/x42"));
        assert!(!m("/x[[:digit:]]+", "/x4a"));
        assert!(m("/x\\d{2,3}", "/x123"));
        assert!(!m("/x\\d{2,3}", "/x1234"));
        assert!(m("/x{,2}", "/"));
        assert!(m("/x{2}", "/xx"));
        assert!(m("/x{a}", "/x{a}"));
        assert!(m("/a\\.b", "/a.b"));
        assert!(!m("/a\\.b", "/axb"));
        assert!(m("/a\\_b\\-c", "/a_b-c"));
        assert!(m("/\\Qa.b\\E", "/a.b"));
        assert!(m("/a.*?b", "/aXXb"));
        // A final backslash escapes the appended `$`.
        assert!(m("/a\\", "/a$"));
        assert!(!m("/a\\", "/a"));
        assert!(m("/x[\\Qab\\E-d]", "/xc"));
        assert!(!m("/a.*+b", "/aXXb"));
        assert!(m("/(?:ab)+", "/abab"));
        assert!(m("/(?<n>ab)+", "/abab"));
    }

    #[test]
    fn lookarounds() {
        assert!(m("/var/run/waydroid-(?!lxc).*", "/var/run/waydroid-x"));
        assert!(!m("/var/run/waydroid-(?!lxc).*", "/var/run/waydroid-lxc"));
        assert!(!m("/var/run/waydroid-(?!lxc).*", "/var/run/waydroid-lxc/x"));
        assert!(m("/a(?=b)b", "/ab"));
        assert!(m("/.*(?<=\\.so)", "/lib.so"));
        assert!(!m("/.*(?<!\\.so)", "/lib.so"));
        assert!(m("/.*(?<=a|bc)", "/xbc"));
    }

    #[test]
    fn exponential_patterns_give_up_at_pcre2_s_match_limit() {
        let path = format!("/{}!", "a".repeat(40));
        assert_eq!(Pattern::new(b"/(a|a)+").unwrap().is_match(path.as_bytes()), Err(MatchLimit));
        // Quadratic ones finish.
        let path = format!("/{}", "a/".repeat(1000));
        assert_eq!(Pattern::new(b"/(.*/)?b(/.*)?").unwrap().is_match(path.as_bytes()), Ok(false));
        // An iteration matching nothing ends the loop instead of repeating forever.
        assert!(m("/(a*)*b", "/aab"));
        assert!(!m("/(a?)+?c", "/b"));
    }

    #[test]
    fn pcre_errors_and_unsupported_features_are_refused() {
        for re in ["/a(", "/a)", "/[a", "/a|*x", "/a{3,2}", "/[z-a]", "/\\i", "/(?i)a", "/(a)\\1", "/(?<=a+)b", "/[[:foo:]]", "/\\x{100}"] {
            assert!(Pattern::new(re.as_bytes()).is_err(), "{re} should not compile");
        }
    }
}
