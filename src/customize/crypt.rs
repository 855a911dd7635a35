//! SHA-512 crypt (`$6$`), the password hash glibc, libxcrypt and shadow's useradd write and
//! every Linux `/etc/shadow` reader accepts. Written from Ulrich Drepper's specification
//! ("Unix crypt using SHA-256 and SHA-512", 2007/2008).

use sha2::{Digest, Sha512};

const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub(crate) const ROUNDS_DEFAULT: u32 = 5000;

/// The alphabet salts are written in.
pub fn salt_from_bytes(bytes: &[u8]) -> String {
    bytes.iter().take(16).map(|b| ITOA64[(*b & 63) as usize] as char).collect()
}

/// `$6$<salt>$<hash>` of `password` with the default 5000 rounds; the salt is cut to 16 bytes
/// as the specification says.
pub fn sha512_crypt(password: &[u8], salt: &str) -> String {
    let salt = &salt.as_bytes()[..salt.len().min(16)];
    let hash = sha512_crypt_raw(password, salt, ROUNDS_DEFAULT);
    format!("$6${}${}", String::from_utf8_lossy(salt), encode(&hash))
}

fn repeat_to(digest: &[u8], len: usize) -> Vec<u8> {
    digest.iter().copied().cycle().take(len).collect()
}

pub(crate) fn sha512_crypt_raw(p: &[u8], s: &[u8], rounds: u32) -> [u8; 64] {
    // Digest B: password, salt, password.
    let b: [u8; 64] = Sha512::new().chain_update(p).chain_update(s).chain_update(p).finalize().into();
    // Digest A: password, salt, B for each full 64 bytes of the password and the remainder,
    // then, for each bit of the password's length from the lowest, B for a 1 and the password
    // for a 0.
    let mut a = Sha512::new().chain_update(p).chain_update(s);
    a.update(repeat_to(&b, p.len()));
    let mut n = p.len();
    while n > 0 {
        if n & 1 == 1 {
            a.update(b);
        } else {
            a.update(p);
        }
        n >>= 1;
    }
    let a: [u8; 64] = a.finalize().into();
    // The P and S sequences.
    let mut dp = Sha512::new();
    for _ in 0..p.len() {
        dp.update(p);
    }
    let p_seq = repeat_to(&dp.finalize(), p.len());
    let mut ds = Sha512::new();
    for _ in 0..16 + a[0] as usize {
        ds.update(s);
    }
    let s_seq = repeat_to(&ds.finalize(), s.len());
    // The rounds.
    let mut c = a;
    for i in 0..rounds {
        let mut h = Sha512::new();
        if i % 2 == 1 {
            h.update(&p_seq);
        } else {
            h.update(c);
        }
        if i % 3 != 0 {
            h.update(&s_seq);
        }
        if i % 7 != 0 {
            h.update(&p_seq);
        }
        if i % 2 == 1 {
            h.update(c);
        } else {
            h.update(&p_seq);
        }
        c = h.finalize().into();
    }
    c
}

/// The specification's base-64 of the 64-byte result: bytes taken in this order, three at a
/// time, least significant six bits first.
fn encode(h: &[u8; 64]) -> String {
    const ORDER: [(usize, usize, usize); 21] = [
        (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
        (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
        (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
    ];
    let mut out = String::with_capacity(86);
    let mut put = |w: u32, n: usize| {
        let mut w = w;
        for _ in 0..n {
            out.push(ITOA64[(w & 63) as usize] as char);
            w >>= 6;
        }
    };
    for (x, y, z) in ORDER {
        put((h[x] as u32) << 16 | (h[y] as u32) << 8 | h[z] as u32, 4);
    }
    put(h[63] as u32, 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's own test vector (default rounds); a longer salt is cut to 16.
    #[test]
    fn specification_vectors() {
        assert!(sha512_crypt(b"x", "saltstringsaltstring").starts_with("$6$saltstringsaltst$"));
        assert_eq!(
            sha512_crypt(b"Hello world!", "saltstring"),
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        );
    }

    /// Against the host's independent implementations: `openssl passwd -6` and Python's crypt
    /// (libxcrypt), for passwords around the 64-byte block boundaries.
    #[test]
    fn matches_openssl_and_libxcrypt() {
        let long = "x".repeat(200);
        for (pw, salt) in [("bob", "abcdefgh"), ("", "s"), ("pässwörd with spaces", "0123456789abcdef"), (&long[..64], "q"), (&long[..65], "q"), (&long[..], "ZZ")] {
            let ours = sha512_crypt(pw.as_bytes(), salt);
            let out = std::process::Command::new("openssl").args(["passwd", "-6", "-salt", salt, pw]).output().expect("openssl");
            // openssl reads no empty password from its arguments.
            if !pw.is_empty() {
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ours, "openssl, {pw:?}");
            }
            let py = std::process::Command::new("python3")
                .args(["-W", "ignore", "-c", "import crypt,sys; print(crypt.crypt(sys.argv[1], sys.argv[2]))", pw, &ours])
                .output()
                .expect("python3");
            assert!(py.status.success(), "python3's crypt module: {}", String::from_utf8_lossy(&py.stderr));
            assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), ours, "python crypt, {pw:?}");
        }
    }
}
