//! The text formats of a policy's `contexts/files/`, parsed as libselinux 3.11 parses them
//! (`label_support.c` `read_spec_entries`, `label_file.h` `process_line`, `label_file.c`
//! `selabel_subs_init`).
//!
//! `file_contexts` (and `.homedirs`, `.local`): one spec per line, `REGEX [TYPE] CONTEXT`,
//! fields separated by C-locale white space; blank lines and lines whose first non-blank is
//! `#` are skipped; only the first three fields are read (a fourth is ignored, as libselinux
//! does); a non-ASCII byte inside them is an error; TYPE is one of `-- -d -c -b -p -l -s`;
//! CONTEXT `<<none>>` means "leave unlabelled".
//!
//! `.subs` and `.subs_dist`: `ALIAS ORIGINAL` per line, read in 1023-byte `fgets` pieces;
//! lines with fewer than two fields are skipped; kept last line first (libselinux's LIFO order).

use anyhow::{bail, Result};

/// The file kind a spec applies to (libselinux's `LABEL_FILE_KIND_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Any,
    Dir,
    Chr,
    Blk,
    Sock,
    Fifo,
    Lnk,
    Reg,
}

impl Kind {
    /// The kind of a file with mode `mode` (its `S_IFMT` bits; 0 or unknown → any).
    pub fn of_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFBLK => Kind::Blk,
            libc::S_IFCHR => Kind::Chr,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFLNK => Kind::Lnk,
            libc::S_IFSOCK => Kind::Sock,
            libc::S_IFREG => Kind::Reg,
            _ => Kind::Any,
        }
    }

    fn from_field(f: &[u8]) -> Option<Kind> {
        Some(match f {
            b"--" => Kind::Reg,
            b"-d" => Kind::Dir,
            b"-c" => Kind::Chr,
            b"-b" => Kind::Blk,
            b"-p" => Kind::Fifo,
            b"-l" => Kind::Lnk,
            b"-s" => Kind::Sock,
            _ => return None,
        })
    }

    /// Whether a spec of kind `self` applies to a file of kind `file`.
    pub fn admits(self, file: Kind) -> bool {
        self == Kind::Any || file == Kind::Any || self == file
    }
}

/// One line of a `file_contexts` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub regex: Vec<u8>,
    pub kind: Kind,
    /// None for `<<none>>`.
    pub context: Option<String>,
    /// 1-based line number in its file.
    pub line: u32,
}

/// C's `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Parses a `file_contexts` file; `name` is how errors refer to it.
pub fn parse(name: &str, text: &[u8]) -> Result<Vec<Spec>> {
    let mut specs = Vec::new();
    let mut lines = text.split(|&b| b == b'\n').peekable();
    let mut lineno: u32 = 0;
    while let Some(line) = lines.next() {
        if line.is_empty() && lines.peek().is_none() {
            break; // the text ended with a newline
        }
        lineno += 1;
        // getline keeps a NUL byte, but C string handling stops at it.
        let line = line.split(|&b| b == 0).next().unwrap_or_default();
        let mut rest = line;
        let mut fields: Vec<&[u8]> = Vec::with_capacity(3);
        while fields.len() < 3 {
            let start = rest.iter().position(|&b| !is_space(b)).unwrap_or(rest.len());
            rest = &rest[start..];
            if rest.is_empty() || (fields.is_empty() && rest[0] == b'#') {
                break;
            }
            let end = rest.iter().position(|&b| is_space(b)).unwrap_or(rest.len());
            let field = &rest[..end];
            if !field.is_ascii() {
                bail!("{name}: line {lineno}: non-ASCII characters, which libselinux refuses: fix or remove the line in the image's policy");
            }
            if field.len() >= u16::MAX as usize {
                bail!("{name}: line {lineno}: a field of {} bytes is longer than libselinux allows", field.len());
            }
            fields.push(field);
            rest = &rest[end..];
        }
        let (regex, kind, context) = match fields[..] {
            [] => continue,
            [_] => bail!("{name}: line {lineno}: missing fields (expected REGEX [TYPE] CONTEXT)"),
            [r, c] => (r, Kind::Any, c),
            [r, t, c] => match Kind::from_field(t) {
                Some(k) => (r, k, c),
                None => bail!(
                    "{name}: line {lineno}: invalid file type {:?} (expected one of -- -d -c -b -p -l -s)",
                    String::from_utf8_lossy(t)
                ),
            },
            _ => unreachable!("at most three fields are read"),
        };
        let context = (context != b"<<none>>").then(|| String::from_utf8(context.to_vec()).expect("checked ASCII"));
        specs.push(Spec { regex: regex.to_vec(), kind, context, line: lineno });
    }
    Ok(specs)
}

/// A path alias from `.subs` or `.subs_dist`: a key starting with `src` (followed by `/` or
/// nothing) is looked up with `dst` in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub {
    pub src: Vec<u8>,
    pub dst: Vec<u8>,
}

/// Parses a substitution file, returning its entries last line first.
pub fn parse_subs(text: &[u8]) -> Vec<Sub> {
    let mut subs = Vec::new();
    for piece in fgets_pieces(text) {
        let piece = piece.split(|&b| b == 0).next().unwrap_or_default();
        let mut fields = piece.split(|&b| is_space(b)).filter(|f| !f.is_empty());
        let Some(src) = fields.next() else { continue };
        if src.starts_with(b"#") {
            continue;
        }
        let Some(dst) = fields.next() else { continue };
        subs.push(Sub { src: src.to_vec(), dst: dst.to_vec() });
    }
    subs.reverse();
    subs
}

/// The pieces `fgets(buf, 1024, f)` returns: up to and including a newline, at most 1023 bytes.
fn fgets_pieces(mut text: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if text.is_empty() {
            return None;
        }
        let mut end = text.iter().position(|&b| b == b'\n').map_or(text.len(), |p| p + 1);
        end = end.min(1023);
        let (piece, rest) = text.split_at(end);
        text = rest;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_as_libselinux_reads_them() {
        let text = b"# comment\n\n   \n/a\tsystem_u:object_r:a_t:s0\n  /b  -d  <<none>>  extra  \n/c -- ctx";
        let specs = parse("fc", text).unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0], Spec { regex: b"/a".to_vec(), kind: Kind::Any, context: Some("system_u:object_r:a_t:s0".into()), line: 4 });
        assert_eq!(specs[1], Spec { regex: b"/b".to_vec(), kind: Kind::Dir, context: None, line: 5 });
        assert_eq!((specs[2].kind, specs[2].line), (Kind::Reg, 6));
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let e = parse("x/file_contexts", b"/a ctx\n/b\n").unwrap_err().to_string();
        assert!(e.starts_with("x/file_contexts: line 2: missing fields"), "{e}");
        let e = parse("fc", b"/a -x ctx\n").unwrap_err().to_string();
        assert!(e.contains("line 1: invalid file type \"-x\""), "{e}");
        let e = parse("fc", "/a ctx\n/caf\u{e9} ctx\n".as_bytes()).unwrap_err().to_string();
        assert!(e.contains("line 2: non-ASCII"), "{e}");
        // A fourth field is never read, so it may be anything.
        assert!(parse("fc", "/a -- ctx caf\u{e9}\n".as_bytes()).is_ok());
    }

    #[test]
    fn subs_are_kept_last_line_first() {
        let subs = parse_subs(b"# c\n/bin /usr/bin\n\n/lib /usr/lib trailing\nonlyone\n");
        assert_eq!(subs, vec![Sub { src: b"/lib".to_vec(), dst: b"/usr/lib".to_vec() }, Sub { src: b"/bin".to_vec(), dst: b"/usr/bin".to_vec() }]);
    }
}
