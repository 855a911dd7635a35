//! Little-endian fields of the binary formats read here (ELF, PE, GRUB images), bounds-checked:
//! a truncated or hostile file is an error, never a panic.

use anyhow::{Context, Result};

fn field<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N]> {
    let bytes = at.checked_add(N).and_then(|end| buf.get(at..end));
    let bytes = bytes.with_context(|| format!("truncated: no {N}-byte field at offset {at:#x}"))?;
    Ok(bytes.try_into().expect("slice of N bytes"))
}

pub fn u16_at(buf: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(field(buf, at)?))
}

pub fn u32_at(buf: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(field(buf, at)?))
}

pub fn u64_at(buf: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(field(buf, at)?))
}
