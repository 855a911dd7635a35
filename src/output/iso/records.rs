//! The byte structures of ISO 9660 (ECMA-119 4th ed.): directory records (§9.1), path table
//! records (§9.4), volume descriptors (§8.4 primary, §8.5 supplementary for Joliet), their
//! dates (§8.4.26.1, §9.1.5), and the Rock Ridge entries (SUSP 1.10 SP/ER, RRIP 1.10
//! PX/TF/NM) a directory record carries in its system use area.

pub const BLOCK: u64 = 2048;

/// Both-byte-order fields (ECMA-119 §7.2.3, §7.3.3).
pub fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

pub fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

/// A UTC time as (year, month, day, hour, minute, second).
fn civil(unix: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (y, m, d) = crate::cloud::aws::sigv4::civil_from_days(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    (y, m, d, s / 3600, s / 60 % 60, s % 60)
}

/// The 7-byte recording date of directory records and Rock Ridge TF (UTC).
pub fn short_date(unix: i64) -> [u8; 7] {
    let (y, m, d, h, mi, s) = civil(unix);
    [(y - 1900).clamp(0, 255) as u8, m as u8, d as u8, h as u8, mi as u8, s as u8, 0]
}

/// The 17-byte date of volume descriptors (digits, hundredths, UTC offset 0); `None` is the
/// "not specified" value.
pub fn long_date(unix: Option<i64>) -> [u8; 17] {
    let mut out = [b'0'; 17];
    out[16] = 0;
    if let Some(t) = unix {
        let (y, m, d, h, mi, s) = civil(t);
        out[..16].copy_from_slice(format!("{y:04}{m:02}{d:02}{h:02}{mi:02}{s:02}00").as_bytes());
    }
    out
}

pub const FLAG_DIRECTORY: u8 = 0x02;
pub const FLAG_MULTI_EXTENT: u8 = 0x80;

/// A directory record; `system_use` is padded to an even length.
pub fn dir_record(identifier: &[u8], lba: u32, size: u32, flags: u8, unix: i64, system_use: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(&short_date(unix));
    r[25] = flags;
    r[28..32].copy_from_slice(&both16(1));
    r[32] = identifier.len() as u8;
    r.extend_from_slice(identifier);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r.extend_from_slice(system_use);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

fn susp(sig: &[u8; 2], body: &[u8]) -> Vec<u8> {
    let mut e = vec![sig[0], sig[1], (body.len() + 4) as u8, 1];
    e.extend_from_slice(body);
    e
}

/// SP: the first entry of the root's "." record, telling readers SUSP is in use.
pub fn rr_sp() -> Vec<u8> {
    susp(b"SP", &[0xbe, 0xef, 0])
}

/// ER: names the Rock Ridge extension (RRIP 1.10's identifier and description).
pub fn rr_er() -> Vec<u8> {
    let (id, des, src): (&[u8], &[u8], &[u8]) =
        (b"RRIP_1991A", b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS", b"KILN");
    let mut body = vec![id.len() as u8, des.len() as u8, src.len() as u8, 1];
    body.extend_from_slice(id);
    body.extend_from_slice(des);
    body.extend_from_slice(src);
    susp(b"ER", &body)
}

/// PX: POSIX mode, links, owner root (RRIP 1.10: no inode number).
pub fn rr_px(mode: u32, links: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    for v in [mode, links, 0, 0] {
        body.extend_from_slice(&both32(v));
    }
    susp(b"PX", &body)
}

/// TF: the modification time.
pub fn rr_tf(unix: i64) -> Vec<u8> {
    let mut body = vec![0x02];
    body.extend_from_slice(&short_date(unix));
    susp(b"TF", &body)
}

/// NM: the real name.
pub fn rr_nm(name: &str) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(name.as_bytes());
    susp(b"NM", &body)
}

/// The fields a primary or supplementary volume descriptor is made of.
pub struct Volume<'a> {
    /// 1 primary, 2 supplementary (Joliet).
    pub kind: u8,
    /// Already encoded (a-characters or UCS-2) and padded by [`pad_id`].
    pub system_id: &'a [u8],
    pub volume_id: &'a [u8],
    pub volume_set_id: &'a [u8],
    pub application_id: &'a [u8],
    pub blocks: u32,
    pub path_table_size: u32,
    pub path_table_l: u32,
    pub path_table_m: u32,
    pub root_record: &'a [u8],
    pub unix: i64,
    pub joliet: bool,
}

/// A field of `len` bytes: the text in ASCII, or in UCS-2 big-endian for Joliet, padded with
/// spaces.
pub fn pad_id(text: &str, len: usize, joliet: bool) -> Vec<u8> {
    let mut out: Vec<u8> = if joliet { text.encode_utf16().flat_map(|u| u.to_be_bytes()).collect() } else { text.as_bytes().to_vec() };
    out.truncate(len - len % if joliet { 2 } else { 1 });
    while out.len() < len {
        out.extend_from_slice(if joliet && out.len() + 1 < len { &[0, b' '] } else { b" " });
    }
    out
}

pub fn volume_descriptor(v: &Volume) -> Vec<u8> {
    let mut d = vec![0u8; BLOCK as usize];
    d[0] = v.kind;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d[8..40].copy_from_slice(v.system_id);
    d[40..72].copy_from_slice(v.volume_id);
    d[80..88].copy_from_slice(&both32(v.blocks));
    if v.joliet {
        // UCS-2 level 3.
        d[88..91].copy_from_slice(b"%/E");
    }
    d[120..124].copy_from_slice(&both16(1));
    d[124..128].copy_from_slice(&both16(1));
    d[128..132].copy_from_slice(&both16(BLOCK as u16));
    d[132..140].copy_from_slice(&both32(v.path_table_size));
    d[140..144].copy_from_slice(&v.path_table_l.to_le_bytes());
    d[148..152].copy_from_slice(&v.path_table_m.to_be_bytes());
    d[156..190].copy_from_slice(v.root_record);
    d[190..318].copy_from_slice(v.volume_set_id);
    let blank = pad_id("", 128, v.joliet);
    d[318..446].copy_from_slice(&blank);
    d[446..574].copy_from_slice(&blank);
    d[574..702].copy_from_slice(v.application_id);
    let blank37 = pad_id("", 37, v.joliet);
    for at in [702, 739, 776] {
        d[at..at + 37].copy_from_slice(&blank37);
    }
    d[813..830].copy_from_slice(&long_date(Some(v.unix)));
    d[830..847].copy_from_slice(&long_date(Some(v.unix)));
    d[847..864].copy_from_slice(&long_date(None));
    d[864..881].copy_from_slice(&long_date(Some(v.unix)));
    d[881] = 1;
    d
}

/// The set terminator (§8.3).
pub fn terminator() -> Vec<u8> {
    let mut d = vec![0u8; BLOCK as usize];
    d[0] = 255;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d
}

/// One path table record, in little- (type L) or big-endian (type M) order.
pub fn path_record(identifier: &[u8], lba: u32, parent: u16, little: bool) -> Vec<u8> {
    let mut r = vec![identifier.len() as u8, 0];
    r.extend_from_slice(&if little { lba.to_le_bytes() } else { lba.to_be_bytes() });
    r.extend_from_slice(&if little { parent.to_le_bytes() } else { parent.to_be_bytes() });
    r.extend_from_slice(identifier);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(short_date(1_709_210_096), [124, 2, 29, 12, 34, 56, 0]);
        assert_eq!(&long_date(Some(0))[..16], b"1970010100000000");
        assert_eq!(&long_date(None)[..], b"0000000000000000\0");
    }

    #[test]
    fn records_are_even_and_sized() {
        let r = dir_record(b"A.;1", 20, 5, 0, 0, &rr_nm("a"));
        assert_eq!(r[0] as usize, r.len());
        assert_eq!(r.len() % 2, 0);
        assert_eq!(&r[2..6], &20u32.to_le_bytes());
        assert_eq!(&r[6..10], &20u32.to_be_bytes());
    }
}
