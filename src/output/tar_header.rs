//! The one tar header each of our archive outputs needs: a regular file owned by root.

/// Which tar dialect a consumer expects: GCE wants GNU's old format, OVA wants POSIX ustar.
#[derive(Clone, Copy)]
pub enum TarFormat {
    Ustar,
    OldGnu,
}

/// A header for a regular file, mode 0644, uid/gid 0 ("root"). Sizes of 8 GiB and more do not
/// fit the octal field and go in GNU base-256, which tar readers (vSphere's too) accept.
pub fn file_header(name: &str, size: u64, format: TarFormat) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 1 << 33 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..265].copy_from_slice(match format {
        TarFormat::Ustar => b"ustar\x0000",
        TarFormat::OldGnu => b"ustar  \0",
    });
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}
