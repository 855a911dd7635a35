//! A request to enroll Machine Owner Keys, as `mokutil --import CERT.der` writes it
//! (lcp/mokutil `import_moks`, `update_request`), for shim's MokManager to carry out on the
//! next boot once the machine's owner types the password:
//!
//! - `MokNew`: one `EFI_SIGNATURE_LIST` per certificate (type X509, no header, one entry:
//!   owner GUID = shim's, then the DER), the new ones first, then an earlier pending request.
//!   Certificates already enrolled (`MokListRT*`) or already requested are left out.
//! - `MokAuth`: mokutil's `pw_crypt_t` (packed, 172 bytes): method 4 (SHA-512 crypt), 5000
//!   rounds, a 16-character salt, and the raw 64-byte digest (before crypt's base-64), which
//!   shim's `PasswordCrypt.c` recomputes from the typed password.
//! - `MokTimeout` = -1: MokManager waits for the owner instead of dropping the request after
//!   10 seconds (`mokutil --timeout -1`, as Universal Blue's enrollment instructions do).

use anyhow::{bail, ensure, Context, Result};

use super::{guid_bytes, Efivars, NV_BS_RT, SHIM_GUID};
use crate::customize::crypt;

const X509_GUID: &str = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
/// `EFI_SIGNATURE_LIST`'s header: type GUID, list size, header size, signature size.
const LIST_HEADER: usize = 16 + 4 + 4 + 4;
const OWNER: usize = 16;
const SHA512_BASED: u16 = 4;
const SALT_LEN: usize = 16;
const PW_CRYPT_SIZE: usize = 2 + 8 + 2 + 32 + 128;
/// mokutil's limits on the password.
const PASSWORD_MAX: usize = 256;
/// Universal Blue's documented enrollment password (`ujust enroll-secure-boot-key` in
/// ublue-os/packages, which also sets `mokutil --timeout -1`).
pub const DEFAULT_PASSWORD: &str = "universalblue";

/// `certificate`'s `EFI_SIGNATURE_LIST`, owned by shim's GUID.
pub fn signature_list(certificate: &[u8]) -> Vec<u8> {
    let mut list = guid_bytes(X509_GUID).expect("constant GUID").to_vec();
    list.extend_from_slice(&((LIST_HEADER + OWNER + certificate.len()) as u32).to_le_bytes());
    list.extend_from_slice(&0u32.to_le_bytes());
    list.extend_from_slice(&((OWNER + certificate.len()) as u32).to_le_bytes());
    list.extend_from_slice(&guid_bytes(SHIM_GUID).expect("constant GUID"));
    list.extend_from_slice(certificate);
    list
}

/// The X509 certificates held by a list of `EFI_SIGNATURE_LIST`s (`MokNew`, `MokListRT`).
pub fn certificates(mut lists: &[u8]) -> Vec<&[u8]> {
    let x509 = guid_bytes(X509_GUID).expect("constant GUID");
    let mut found = Vec::new();
    while lists.len() >= LIST_HEADER {
        let u32_at = |at: usize| u32::from_le_bytes(lists[at..at + 4].try_into().unwrap()) as usize;
        let (size, header, sig_size) = (u32_at(16), u32_at(20), u32_at(24));
        if size < LIST_HEADER || size > lists.len() || sig_size <= OWNER {
            break;
        }
        if lists[..16] == x509 {
            let mut sigs = lists.get(LIST_HEADER + header..size).unwrap_or_default();
            while sigs.len() >= sig_size {
                found.push(&sigs[OWNER..sig_size]);
                sigs = &sigs[sig_size..];
            }
        }
        lists = &lists[size..];
    }
    found
}

/// mokutil's `pw_crypt_t` for `password` with `salt` (16 characters of crypt's alphabet).
pub fn auth(password: &str, salt: &str) -> Vec<u8> {
    let digest = crypt::sha512_crypt_raw(password.as_bytes(), salt.as_bytes(), crypt::ROUNDS_DEFAULT);
    let mut a = Vec::with_capacity(PW_CRYPT_SIZE);
    a.extend_from_slice(&SHA512_BASED.to_le_bytes());
    a.extend_from_slice(&u64::from(crypt::ROUNDS_DEFAULT).to_le_bytes());
    a.extend_from_slice(&(salt.len() as u16).to_le_bytes());
    let mut salt_field = [0u8; 32];
    salt_field[..salt.len()].copy_from_slice(salt.as_bytes());
    a.extend_from_slice(&salt_field);
    let mut hash_field = [0u8; 128];
    hash_field[..64].copy_from_slice(&digest);
    a.extend_from_slice(&hash_field);
    a
}

/// What MokManager can take as a password: it reads typed characters as ASCII.
pub fn check_password(password: &str) -> Result<()> {
    ensure!(!password.is_empty() && password.len() <= PASSWORD_MAX, "the MOK password must have 1 to {PASSWORD_MAX} characters");
    ensure!(password.chars().all(|c| c.is_ascii_graphic() || c == ' '), "the MOK password must be printable ASCII: MokManager reads what is typed as ASCII");
    Ok(())
}

/// Refuses what is not one DER-encoded structure (an X.509 certificate is a DER SEQUENCE):
/// a PEM file, say, which shim would not take.
pub fn check_certificate(der: &[u8], what: &str) -> Result<()> {
    if der.starts_with(b"-----BEGIN") {
        bail!("{what} is PEM; MOK enrollment takes DER: convert it with `openssl x509 -in {what} -outform DER -out cert.der`");
    }
    let len = match der {
        [0x30, n, ..] if *n < 0x80 => Some(2 + *n as usize),
        [0x30, 0x81, n, ..] => Some(3 + *n as usize),
        [0x30, 0x82, a, b, ..] => Some(4 + u16::from_be_bytes([*a, *b]) as usize),
        _ => None,
    };
    ensure!(len == Some(der.len()), "{what} is not an X.509 certificate in DER form (expected one DER SEQUENCE of its size)");
    Ok(())
}

/// Which of the certificates were requested.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub new: Vec<String>,
    /// Already enrolled or already pending.
    pub skipped: Vec<String>,
}

/// Writes the enrollment request for `certs` (name, DER) with `password` into `vars`.
pub fn request_enrollment(vars: &Efivars, certs: &[(String, Vec<u8>)], password: &str) -> Result<Requested> {
    check_password(password)?;
    let pending = vars.get("MokNew", SHIM_GUID)?.map(|v| v.data).unwrap_or_default();
    let mut enrolled = Vec::new();
    for name in vars.names(SHIM_GUID)?.iter().filter(|n| n.starts_with("MokListRT")) {
        enrolled.extend(vars.get(name, SHIM_GUID)?.map(|v| v.data).unwrap_or_default());
    }
    let known: Vec<&[u8]> = certificates(&pending).into_iter().chain(certificates(&enrolled)).collect();
    let mut requested = Requested::default();
    let mut request = Vec::new();
    for (name, der) in certs {
        check_certificate(der, name)?;
        if known.contains(&der.as_slice()) || certificates(&request).contains(&der.as_slice()) {
            requested.skipped.push(name.clone());
        } else {
            request.extend(signature_list(der));
            requested.new.push(name.clone());
        }
    }
    if request.is_empty() {
        return Ok(requested);
    }
    request.extend_from_slice(&pending);
    let salt = crypt::salt_from_bytes(&random_bytes::<SALT_LEN>()?);
    vars.set("MokNew", SHIM_GUID, NV_BS_RT, &request).context("writing the MOK request (MokNew)")?;
    if let Err(e) = vars.set("MokAuth", SHIM_GUID, NV_BS_RT, &auth(password, &salt)) {
        // mokutil's order: a request without its password would stop MokManager.
        let _ = vars.delete("MokNew", SHIM_GUID);
        return Err(e.context("writing the MOK request's password (MokAuth)"));
    }
    vars.set("MokTimeout", SHIM_GUID, NV_BS_RT, &(-1i32).to_le_bytes()).context("writing MokTimeout")?;
    Ok(requested)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).context("reading /dev/urandom for the password's salt")?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed certificate made by openssl, the independent source of DER.
    fn test_certificate(dir: &std::path::Path) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kiln MOK test/", "-outform", "DER"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.der"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(dir.join("cert.der")).unwrap()
    }

    #[test]
    fn request_as_mokutil_writes_it() {
        let dir = std::env::temp_dir().join(format!("kiln-mok-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("vars")).unwrap();
        let der = test_certificate(&dir);
        check_certificate(&der, "cert.der").unwrap();
        let vars = Efivars::new(dir.join("vars"));
        let certs = [("cert.der".to_string(), der.clone())];
        let r = request_enrollment(&vars, &certs, DEFAULT_PASSWORD).unwrap();
        assert_eq!(r.new, ["cert.der"]);

        // MokNew: one signature list, 28 + 16 + DER bytes (a 789-byte certificate gives 833,
        // as the research measured mokutil's).
        let new = vars.get("MokNew", SHIM_GUID).unwrap().unwrap();
        assert_eq!(new.attributes, 7);
        assert_eq!(new.data.len(), 44 + der.len());
        assert_eq!(hex::encode(&new.data[..16]), "a159c0a5e494a74a87b5ab155c2bf072");
        assert_eq!(new.data[16..28], [(44 + der.len()) as u32, 0, (16 + der.len()) as u32].iter().flat_map(|n| n.to_le_bytes()).collect::<Vec<u8>>()[..]);
        assert_eq!(hex::encode(&new.data[28..44]), "50ab5d6046e00043abb63dd810dd8b23");
        assert_eq!(&new.data[44..], der.as_slice());

        // MokAuth: method, rounds, salt, and the digest openssl computes for that salt.
        let auth = vars.get("MokAuth", SHIM_GUID).unwrap().unwrap().data;
        assert_eq!(auth.len(), 172);
        assert_eq!(auth[..12], [4, 0, 0x88, 0x13, 0, 0, 0, 0, 0, 0, 16, 0]);
        let salt = std::str::from_utf8(&auth[12..28]).unwrap();
        assert!(auth[28..44].iter().all(|b| *b == 0) && auth[108..].iter().all(|b| *b == 0));
        let openssl = Command::new("openssl").args(["passwd", "-6", "-salt", salt, DEFAULT_PASSWORD]).output().unwrap();
        let expected = String::from_utf8(openssl.stdout).unwrap();
        assert_eq!(crypt::sha512_crypt(DEFAULT_PASSWORD.as_bytes(), salt), expected.trim());
        assert_eq!(auth[44..108], crypt::sha512_crypt_raw(DEFAULT_PASSWORD.as_bytes(), salt.as_bytes(), 5000));
        assert_eq!(vars.get("MokTimeout", SHIM_GUID).unwrap().unwrap().data, [0xff; 4]);

        // A second request for the same certificate changes nothing; another one goes first.
        assert_eq!(request_enrollment(&vars, &certs, "x").unwrap().skipped, ["cert.der"]);
        assert_eq!(vars.get("MokNew", SHIM_GUID).unwrap().unwrap(), new);
        let other = test_certificate(&dir);
        request_enrollment(&vars, &[("other.der".into(), other.clone())], "x").unwrap();
        let both = vars.get("MokNew", SHIM_GUID).unwrap().unwrap().data;
        assert_eq!(certificates(&both), [other.as_slice(), der.as_slice()]);
        // Enrolled already (MokListRT): skipped.
        vars.delete("MokNew", SHIM_GUID).unwrap();
        vars.set("MokListRT", SHIM_GUID, 6, &signature_list(&der)).unwrap();
        assert_eq!(request_enrollment(&vars, &certs, "x").unwrap().skipped, ["cert.der"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refusals() {
        assert!(check_certificate(b"-----BEGIN CERTIFICATE-----", "c.pem").unwrap_err().to_string().contains("PEM"));
        assert!(check_certificate(&[0x30, 0x82, 0x01, 0x00, 0], "c.der").is_err());
        assert!(check_password("").is_err());
        assert!(check_password("pässword").is_err());
        check_password(DEFAULT_PASSWORD).unwrap();
    }
}
