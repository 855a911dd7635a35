//! GVariant serialisation in normal form, for the types ostree's objects use. Object
//! checksums are sha256 of these bytes, so they must be exactly what GLib writes.
//!
//! Rules (GVariant specification, "Serialisation"): values are aligned to their type's
//! alignment relative to the start of the outermost container; a container stores the end
//! offsets of its variable-size children in a table at its end ("framing offsets"), each offset
//! as wide as the smallest of 1, 2, 4 or 8 bytes that can address the whole container.

/// A GVariant type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ty {
    Byte,
    Bool,
    U32,
    U64,
    Str,
    Variant,
    Array(Box<Ty>),
    Tuple(Vec<Ty>),
    DictEntry(Box<Ty>, Box<Ty>),
}

impl Ty {
    pub fn bytes() -> Ty {
        Ty::Array(Box::new(Ty::Byte))
    }

    fn alignment(&self) -> usize {
        match self {
            Ty::Byte | Ty::Bool | Ty::Str => 1,
            Ty::U32 => 4,
            Ty::U64 | Ty::Variant => 8,
            Ty::Array(e) => e.alignment(),
            Ty::Tuple(items) => items.iter().map(Ty::alignment).max().unwrap_or(1),
            Ty::DictEntry(k, v) => k.alignment().max(v.alignment()),
        }
    }

    /// The size of a fixed-size type; None for variable-size ones.
    fn fixed_size(&self) -> Option<usize> {
        match self {
            Ty::Byte | Ty::Bool => Some(1),
            Ty::U32 => Some(4),
            Ty::U64 => Some(8),
            Ty::Str | Ty::Variant | Ty::Array(_) => None,
            Ty::Tuple(items) => fixed_tuple_size(items),
            Ty::DictEntry(k, v) => fixed_tuple_size(&[(**k).clone(), (**v).clone()]),
        }
    }

    pub fn signature(&self) -> String {
        match self {
            Ty::Byte => "y".into(),
            Ty::Bool => "b".into(),
            Ty::U32 => "u".into(),
            Ty::U64 => "t".into(),
            Ty::Str => "s".into(),
            Ty::Variant => "v".into(),
            Ty::Array(e) => format!("a{}", e.signature()),
            Ty::Tuple(items) => format!("({})", items.iter().map(Ty::signature).collect::<String>()),
            Ty::DictEntry(k, v) => format!("{{{}{}}}", k.signature(), v.signature()),
        }
    }
}

fn fixed_tuple_size(items: &[Ty]) -> Option<usize> {
    if items.is_empty() {
        return Some(1);
    }
    let mut size: usize = 0;
    for t in items {
        let a = t.alignment();
        size = size.div_ceil(a) * a + t.fixed_size()?;
    }
    let a = items.iter().map(Ty::alignment).max().unwrap_or(1);
    Some(size.div_ceil(a) * a)
}

/// A value with its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    Byte(u8),
    Bool(bool),
    U32(u32),
    U64(u64),
    Str(String),
    /// A boxed value of any type.
    Variant(Box<Val>),
    /// An array of `Ty` elements (the type is needed when it is empty).
    Array(Ty, Vec<Val>),
    /// A byte array (`ay`), kept as bytes.
    Bytes(Vec<u8>),
    Tuple(Vec<Val>),
    DictEntry(Box<Val>, Box<Val>),
}

impl Val {
    pub fn ty(&self) -> Ty {
        match self {
            Val::Byte(_) => Ty::Byte,
            Val::Bool(_) => Ty::Bool,
            Val::U32(_) => Ty::U32,
            Val::U64(_) => Ty::U64,
            Val::Str(_) => Ty::Str,
            Val::Variant(_) => Ty::Variant,
            Val::Array(t, _) => Ty::Array(Box::new(t.clone())),
            Val::Bytes(_) => Ty::bytes(),
            Val::Tuple(items) => Ty::Tuple(items.iter().map(Val::ty).collect()),
            Val::DictEntry(k, v) => Ty::DictEntry(Box::new(k.ty()), Box::new(v.ty())),
        }
    }

    /// The serialised bytes, in normal form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Val::Byte(b) => out.push(*b),
            Val::Bool(b) => out.push(*b as u8),
            Val::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Val::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Val::Str(s) => {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            Val::Bytes(b) => out.extend_from_slice(b),
            Val::Variant(inner) => {
                inner.write(out);
                out.push(0);
                out.extend_from_slice(inner.ty().signature().as_bytes());
            }
            Val::Array(elem, items) => {
                let start = out.len();
                let a = elem.alignment();
                match elem.fixed_size() {
                    Some(_) => {
                        for v in items {
                            pad(out, a);
                            v.write(out);
                        }
                    }
                    None => {
                        let mut ends = Vec::with_capacity(items.len());
                        for v in items {
                            pad(out, a);
                            v.write(out);
                            ends.push(out.len() - start);
                        }
                        write_offsets(out, start, &ends);
                    }
                }
            }
            Val::Tuple(items) => write_tuple(out, items.iter().collect()),
            Val::DictEntry(k, v) => write_tuple(out, vec![k, v]),
        }
    }
}

fn write_tuple(out: &mut Vec<u8>, items: Vec<&Val>) {
    let start = out.len();
    let types: Vec<Ty> = items.iter().map(|v| v.ty()).collect();
    if items.is_empty() {
        out.push(0);
        return;
    }
    let mut ends = Vec::new();
    for (i, (v, t)) in items.iter().zip(&types).enumerate() {
        pad(out, t.alignment());
        v.write(out);
        if t.fixed_size().is_none() && i + 1 < items.len() {
            ends.push(out.len() - start);
        }
    }
    match fixed_tuple_size(&types) {
        Some(size) => out.resize(start + size, 0),
        None => {
            ends.reverse();
            write_offsets(out, start, &ends);
        }
    }
}

fn pad(out: &mut Vec<u8>, alignment: usize) {
    let len = out.len().div_ceil(alignment) * alignment;
    out.resize(len, 0);
}

/// Appends framing offsets, each as wide as the container needs.
fn write_offsets(out: &mut Vec<u8>, start: usize, offsets: &[usize]) {
    if offsets.is_empty() {
        return;
    }
    let body = out.len() - start;
    let n = offsets.len();
    let width = if body + n <= 0xff {
        1
    } else if body + 2 * n <= 0xffff {
        2
    } else if body + 4 * n <= 0xffff_ffff {
        4
    } else {
        8
    };
    for &o in offsets {
        out.extend_from_slice(&(o as u64).to_le_bytes()[..width]);
    }
}

/// `a{sv}` from string keys and values, in the order given.
pub fn dict_sv(entries: Vec<(&str, Val)>) -> Val {
    Val::Array(
        Ty::DictEntry(Box::new(Ty::Str), Box::new(Ty::Variant)),
        entries
            .into_iter()
            .map(|(k, v)| Val::DictEntry(Box::new(Val::Str(k.to_string())), Box::new(Val::Variant(Box::new(v)))))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected bytes below were produced by GLib (g_variant_get_data via python3-gi).

    #[test]
    fn strings_and_fixed_tuples() {
        assert_eq!(Val::Str("ab".into()).to_bytes(), b"ab\0");
        // (uu) is fixed-size: two little-endian u32.
        assert_eq!(Val::Tuple(vec![Val::U32(1), Val::U32(2)]).to_bytes(), [1, 0, 0, 0, 2, 0, 0, 0]);
        // (yu): y, 3 padding bytes, u.
        assert_eq!(Val::Tuple(vec![Val::Byte(7), Val::U32(1)]).to_bytes(), [7, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn variable_tuples_and_arrays_frame_their_children() {
        // (ss) "a","b": a\0 b\0 then the end of the first child (2).
        assert_eq!(Val::Tuple(vec![Val::Str("a".into()), Val::Str("b".into())]).to_bytes(), b"a\0b\0\x02");
        // as ["a","bc"]: a\0 bc\0 then ends 2, 5.
        let v = Val::Array(Ty::Str, vec![Val::Str("a".into()), Val::Str("bc".into())]);
        assert_eq!(v.to_bytes(), b"a\0bc\0\x02\x05");
        // Empty arrays are empty.
        assert!(Val::Array(Ty::Str, vec![]).to_bytes().is_empty());
        // v holding u32 5: the value, a NUL, the signature.
        assert_eq!(Val::Variant(Box::new(Val::U32(5))).to_bytes(), [5, 0, 0, 0, 0, b'u']);
    }

    #[test]
    fn signatures() {
        let commit = Ty::Tuple(vec![
            Ty::Array(Box::new(Ty::DictEntry(Box::new(Ty::Str), Box::new(Ty::Variant)))),
            Ty::bytes(),
            Ty::Array(Box::new(Ty::Tuple(vec![Ty::Str, Ty::bytes()]))),
            Ty::Str,
            Ty::Str,
            Ty::U64,
            Ty::bytes(),
            Ty::bytes(),
        ]);
        assert_eq!(commit.signature(), "(a{sv}aya(say)sstayay)");
    }
}
