//! UEFI variables, read and written through Linux's efivarfs, the way libefivar (and so
//! efibootmgr and mokutil) does it: a variable is the file `<Name>-<vendor guid>`, whose bytes
//! are its 4-byte attributes (little-endian) followed by its data, written with one `write()`.
//! The kernel makes every variable it does not know to be safe to delete (all but `Boot####`,
//! `BootOrder` and a few more of the global GUID) immutable at once, so a rewrite or a delete
//! clears `FS_IMMUTABLE_FL` first (rhboot/efivar `efivarfs_set_variable`).
//!
//! [`load_option`] builds boot entries, [`mok`] the shim MOK enrollment request, [`image`]
//! reads what an image tells about both.

pub mod image;
pub mod load_option;
pub mod mok;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use crate::disk::table::guid_bytes;

/// Where systemd mounts efivarfs.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// The UEFI specification's global variable GUID (`Boot####`, `BootOrder`).
pub const GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// shim's variable GUID (`MokNew`, `MokAuth`, `MokListRT`), also the owner mokutil puts on
/// the certificates it asks to enroll.
pub const SHIM_GUID: &str = "605dab50-e046-4300-abb6-3dd810dd8b23";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS: what efibootmgr and mokutil write.
pub const NV_BS_RT: u32 = 0x7;

const EFIVARFS_MAGIC: libc::c_long = 0xde5e_81e4;
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

/// A variable's attributes and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    pub attributes: u32,
    pub data: Vec<u8>,
}

/// The variables of a mounted efivarfs (or a directory standing in for one, in unit tests).
#[derive(Clone, Debug)]
pub struct Efivars {
    pub dir: PathBuf,
}

impl Efivars {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Efivars { dir: dir.into() }
    }

    /// Why the variables cannot be written (the system did not boot through UEFI, efivarfs is
    /// not mounted, or read-only, or empty as bootupd#972 saw), or `None` when they can.
    pub fn unwritable_reason(&self) -> Option<String> {
        let dir = self.dir.display();
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let Ok(c) = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()) else {
            return Some(format!("{dir} is not a usable path"));
        };
        if !self.dir.is_dir() || unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
            return Some(format!("this system did not boot through UEFI ({dir} is missing)"));
        }
        if stat.f_flag & libc::ST_RDONLY != 0 {
            return Some(format!("{dir} is mounted read-only"));
        }
        if std::fs::read_dir(&self.dir).map(|mut d| d.next().is_none()).unwrap_or(true) {
            return Some(format!("{dir} is empty or unreadable"));
        }
        None
    }

    fn path(&self, name: &str, guid: &str) -> PathBuf {
        self.dir.join(format!("{name}-{guid}"))
    }

    pub fn get(&self, name: &str, guid: &str) -> Result<Option<Variable>> {
        let path = self.path(name, guid);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading the UEFI variable {}", path.display())),
        };
        if bytes.len() < 4 {
            bail!("the UEFI variable {} has {} bytes, fewer than its 4 bytes of attributes", path.display(), bytes.len());
        }
        Ok(Some(Variable { attributes: u32::from_le_bytes(bytes[..4].try_into().unwrap()), data: bytes[4..].to_vec() }))
    }

    /// The names of the variables of vendor `guid`.
    pub fn names(&self, guid: &str) -> Result<Vec<String>> {
        let suffix = format!("-{guid}");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))? {
            let name = entry.with_context(|| format!("listing {}", self.dir.display()))?.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(&suffix)) {
                names.push(n.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Creates or replaces a variable with one write of attributes and data.
    pub fn set(&self, name: &str, guid: &str, attributes: u32, data: &[u8]) -> Result<()> {
        let path = self.path(name, guid);
        let shown = path.display();
        let existed = path.exists();
        let was_immutable = existed && set_immutable(&path, false).with_context(|| format!("making {shown} writable"))?;
        let mut options = OpenOptions::new();
        options.write(true).mode(0o644);
        if !existed {
            options.create_new(true);
        }
        // efivarfs replaces a variable with each write; a plain file standing in for it needs
        // emptying first (efivarfs itself refuses to be truncated).
        if existed && !is_efivarfs(&self.dir) {
            options.truncate(true);
        }
        let result = options.open(&path).with_context(|| format!("opening {shown} for writing")).and_then(|mut f| {
            let mut bytes = attributes.to_le_bytes().to_vec();
            bytes.extend_from_slice(data);
            // One write: a short one would set a truncated variable.
            let n = f.write(&bytes).with_context(|| format!("writing the UEFI variable {shown} (is the firmware's variable store full?)"))?;
            if n != bytes.len() {
                bail!("writing the UEFI variable {shown}: only {n} of {} bytes were taken", bytes.len());
            }
            Ok(())
        });
        if result.is_err() && !existed {
            let _ = std::fs::remove_file(&path);
        }
        if was_immutable && path.exists() {
            let _ = set_immutable(&path, true);
        }
        result
    }

    /// Deletes a variable; one that does not exist is not an error.
    pub fn delete(&self, name: &str, guid: &str) -> Result<()> {
        let path = self.path(name, guid);
        if !path.exists() {
            return Ok(());
        }
        set_immutable(&path, false).with_context(|| format!("making {} deletable", path.display()))?;
        std::fs::remove_file(&path).with_context(|| format!("deleting the UEFI variable {}", path.display()))
    }
}

fn is_efivarfs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as libc::c_long == EFIVARFS_MAGIC }
}

/// Sets or clears a file's immutable attribute; returns whether it was set. Filesystems
/// without attributes (a test's stand-in directory on tmpfs) have nothing to clear.
fn set_immutable(path: &Path, on: bool) -> Result<bool> {
    let f = File::open(path)?;
    let mut flags: libc::c_long = 0;
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(false),
            _ => Err(e.into()),
        };
    }
    let was = flags & FS_IMMUTABLE_FL != 0;
    if was != on {
        let new = if on { flags | FS_IMMUTABLE_FL } else { flags & !FS_IMMUTABLE_FL };
        if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS, &new) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(was)
}

/// UCS-2, little-endian, NUL-terminated, as UEFI strings are stored.
pub fn ucs2(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(2 * (s.len() + 1));
    for c in s.chars() {
        let unit = u16::try_from(c as u32).ok().filter(|_| c != '\0').with_context(|| format!("{s:?} has a character UEFI strings cannot hold ({c:?})"))?;
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out.extend_from_slice(&[0, 0]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_replace_delete() {
        let dir = std::env::temp_dir().join(format!("kiln-efivars-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vars = Efivars::new(&dir);
        vars.set("Test", SHIM_GUID, NV_BS_RT, b"first value").unwrap();
        assert_eq!(std::fs::read(dir.join(format!("Test-{SHIM_GUID}"))).unwrap(), b"\x07\0\0\0first value");
        vars.set("Test", SHIM_GUID, 0x3, b"2nd").unwrap();
        assert_eq!(vars.get("Test", SHIM_GUID).unwrap(), Some(Variable { attributes: 3, data: b"2nd".to_vec() }));
        assert_eq!(vars.names(SHIM_GUID).unwrap(), ["Test"]);
        assert!(vars.names(GLOBAL_GUID).unwrap().is_empty());
        vars.delete("Test", SHIM_GUID).unwrap();
        assert_eq!(vars.get("Test", SHIM_GUID).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guids_and_strings_in_uefi_byte_order() {
        assert_eq!(hex::encode(guid_bytes(GLOBAL_GUID).unwrap()), "61dfe48bca93d211aa0d00e098032b8c");
        assert_eq!(ucs2("A\\").unwrap(), b"A\0\\\0\0\0");
        assert!(ucs2("\u{1F600}").is_err());
    }
}
