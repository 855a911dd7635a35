//! The names a file gets in each of the ISO's two directory trees: ISO 9660 identifiers
//! (ECMA-119 §7.5/7.6, level 2 and 3 lengths: d-characters, at most 30 for a file's name and
//! extension, 31 for a directory; `;1` version) made unique in their directory, and Joliet
//! names (UCS-2 big-endian, at most 64 characters). Rock Ridge keeps the real name (NM).

use std::collections::BTreeSet;

use anyhow::{bail, Result};

/// Joliet's limit (Microsoft's specification; xorriso's default).
const JOLIET_MAX: usize = 64;

fn d_chars(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

/// ISO 9660 identifiers for the names of one directory's entries (`is_dir` per entry), in
/// their order, unique within the directory.
pub fn iso_identifiers(names: &[(&str, bool)]) -> Vec<Vec<u8>> {
    let mut taken = BTreeSet::new();
    names
        .iter()
        .map(|&(name, is_dir)| {
            let (base, ext) = match name.rfind('.') {
                Some(i) if !is_dir && i > 0 => (d_chars(&name[..i]), d_chars(&name[i + 1..])),
                _ => (d_chars(name), String::new()),
            };
            let ext: String = ext.chars().take(if is_dir { 0 } else { 10 }).collect();
            let room = if is_dir { 31 } else { 30 - ext.len() };
            let make = |base: &str| if is_dir { base.to_string() } else { format!("{base}.{ext};1") };
            let mut id = make(&base[..base.len().min(room)]);
            let mut n = 1u32;
            while !taken.insert(id.clone()) {
                let suffix = n.to_string();
                id = make(&format!("{}{suffix}", &base[..base.len().min(room - suffix.len())]));
                n += 1;
            }
            id.into_bytes()
        })
        .collect()
}

/// The Joliet name: the name itself in UCS-2 big-endian.
pub fn joliet_identifier(name: &str, path: &str) -> Result<Vec<u8>> {
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > JOLIET_MAX {
        bail!("{path}: the name is longer than Joliet's {JOLIET_MAX} characters");
    }
    if units.iter().any(|u| matches!(u, 0xd800..=0xdfff) || *u < 0x20 || [b'*', b'/', b':', b';', b'?', b'\\'].iter().any(|c| *u == *c as u16)) {
        bail!("{path}: the name has a character Joliet cannot hold (control, surrogate, or one of * / : ; ? \\)");
    }
    Ok(units.iter().flat_map(|u| u.to_be_bytes()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_names_are_d_characters_and_unique() {
        let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let ids = iso_identifiers(&[("grub.cfg", false), ("i386-pc", true), (hex, false), (&format!("{hex}x"), false), ("x.tar.gz", false), ("vmlinuz", false)]);
        let ids: Vec<String> = ids.into_iter().map(|v| String::from_utf8(v).unwrap()).collect();
        assert_eq!(ids[0], "GRUB.CFG;1");
        assert_eq!(ids[1], "I386_PC");
        assert_eq!(ids[2], "0123456789ABCDEF0123456789ABCD.;1");
        assert_eq!(ids[3], "0123456789ABCDEF0123456789ABC1.;1");
        assert_eq!(ids[4], "X_TAR.GZ;1");
        assert_eq!(ids[5], "VMLINUZ.;1");
    }

    #[test]
    fn joliet_names_are_ucs2_within_64() {
        assert_eq!(joliet_identifier("a.b", "x").unwrap(), vec![0, b'a', 0, b'.', 0, b'b']);
        assert!(joliet_identifier(&"a".repeat(65), "x").is_err());
        assert!(joliet_identifier("a;1", "x").is_err());
    }
}
