//! Boot entries: the `EFI_LOAD_OPTION` a `Boot####` variable holds (UEFI 2.10 §3.1.3) and the
//! `BootOrder` list. The device path is the short form efibootmgr and shim's fallback write:
//! the ESP's hard-drive node, the loader's file path, the end node (UEFI §10.3.5.1, §10.3.5.4);
//! firmware finds the disk by the partition's GUID, start and size.

use anyhow::{ensure, Result};

use super::ucs2;

/// `LOAD_OPTION_ACTIVE`.
const ACTIVE: u32 = 0x1;
const MEDIA_DEVICE_PATH: u8 = 0x04;
const HARD_DRIVE: u8 = 0x01;
const FILE_PATH: u8 = 0x04;
const HARD_DRIVE_NODE_LEN: u16 = 42;
const MBR_TYPE_GPT: u8 = 0x02;
const SIGNATURE_TYPE_GUID: u8 = 0x02;
const END_NODE: [u8; 4] = [0x7f, 0xff, 0x04, 0x00];

/// A GPT partition as the hard-drive device path node names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HardDrive {
    /// 1-based.
    pub number: u32,
    /// In the disk's logical blocks.
    pub start: u64,
    /// In the disk's logical blocks.
    pub size: u64,
    /// The partition's unique GUID, in GPT's byte order.
    pub guid: [u8; 16],
}

/// An `EFI_LOAD_OPTION`: active, `description`, and the device path `hd` + `loader` (a path
/// on the partition with backslashes, `\EFI\fedora\shimx64.efi`), no optional data.
pub fn load_option(description: &str, hd: &HardDrive, loader: &str) -> Result<Vec<u8>> {
    ensure!(loader.starts_with('\\') && !loader.contains('/'), "{loader:?} is not an EFI path (\\EFI\\…)");
    let mut path = Vec::new();
    path.extend_from_slice(&[MEDIA_DEVICE_PATH, HARD_DRIVE]);
    path.extend_from_slice(&HARD_DRIVE_NODE_LEN.to_le_bytes());
    path.extend_from_slice(&hd.number.to_le_bytes());
    path.extend_from_slice(&hd.start.to_le_bytes());
    path.extend_from_slice(&hd.size.to_le_bytes());
    path.extend_from_slice(&hd.guid);
    path.extend_from_slice(&[MBR_TYPE_GPT, SIGNATURE_TYPE_GUID]);
    let file = ucs2(loader)?;
    path.extend_from_slice(&[MEDIA_DEVICE_PATH, FILE_PATH]);
    path.extend_from_slice(&(4 + file.len() as u16).to_le_bytes());
    path.extend_from_slice(&file);
    path.extend_from_slice(&END_NODE);

    let mut option = ACTIVE.to_le_bytes().to_vec();
    option.extend_from_slice(&(path.len() as u16).to_le_bytes());
    option.extend_from_slice(&ucs2(description)?);
    option.extend_from_slice(&path);
    Ok(option)
}

/// The description of a load option, `None` when it is malformed.
pub fn description(option: &[u8]) -> Option<String> {
    let units: Vec<u16> = option.get(6..)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|u| *u != 0).collect();
    String::from_utf16(&units).ok()
}

/// `Boot####`'s name for entry `n`.
pub fn boot_variable(n: u16) -> String {
    format!("Boot{n:04X}")
}

/// The entry number of a `Boot####` variable name (four uppercase hex digits).
pub fn boot_number(name: &str) -> Option<u16> {
    let hex = name.strip_prefix("Boot")?;
    (hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))).then(|| u16::from_str_radix(hex, 16).ok())?
}

pub fn parse_boot_order(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
}

pub fn boot_order_bytes(order: &[u16]) -> Vec<u8> {
    order.iter().flat_map(|n| n.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bootupd#652's entry as `efibootmgr -v` showed it:
    /// `Fedora HD(1,GPT,0d31c6ab-…,0x800,0x32000)/\EFI\fedora\shimx64.efi`, byte for byte as
    /// the UEFI specification lays it out.
    #[test]
    fn entry_bytes() {
        let hd = HardDrive { number: 2, start: 0x800, size: 0x32000, guid: crate::efi::guid_bytes("0d31c6ab-1234-4abc-8def-0123456789ab").unwrap() };
        let option = load_option("Fedora", &hd, "\\EFI\\fedora\\shimx64.efi").unwrap();
        // Attributes, the device path's length, the description.
        assert_eq!(&option[..4], &[1, 0, 0, 0]);
        let path_len = u16::from_le_bytes([option[4], option[5]]) as usize;
        assert_eq!(&option[6..20], "Fedora\0".encode_utf16().flat_map(|u| u.to_le_bytes()).collect::<Vec<u8>>().as_slice());
        let path = &option[20..];
        assert_eq!(path.len(), path_len);
        // HD(2,GPT,guid,0x800,0x32000).
        assert_eq!(hex::encode(&path[..42]), "04012a000200000000080000000000000020030000000000abc6310d3412bc4a8def0123456789ab0202");
        // File path node: type, subtype, length = 4 + UCS-2 with its NUL.
        let file: Vec<u8> = "\\EFI\\fedora\\shimx64.efi\0".encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        assert_eq!(&path[42..44], &[4, 4]);
        assert_eq!(u16::from_le_bytes([path[44], path[45]]) as usize, 4 + file.len());
        assert_eq!(&path[46..46 + file.len()], file.as_slice());
        assert_eq!(&path[46 + file.len()..], &END_NODE);
        assert_eq!(description(&option).as_deref(), Some("Fedora"));
        assert!(load_option("x", &hd, "/EFI/fedora/shimx64.efi").is_err());
    }

    #[test]
    fn names_and_order() {
        assert_eq!(boot_variable(0x1a), "Boot001A");
        assert_eq!(boot_number("Boot001A"), Some(0x1a));
        assert_eq!(boot_number("Boot001a"), None);
        assert_eq!(boot_number("BootOrder"), None);
        assert_eq!(boot_number("BootCurrent"), None);
        assert_eq!(parse_boot_order(&boot_order_bytes(&[3, 0x10, 1])), [3, 0x10, 1]);
    }
}
