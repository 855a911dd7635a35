//! What the installer ISO reads and writes of ELF files (64-bit little-endian): the loader and
//! libraries a program names, to bundle them; and a copy of kiln without its debug info, which
//! is most of a release build (`debug = 1`) and has no use in the installer.
//!
//! In Rust rather than `objcopy --strip-debug`: binutils is no dependency of the baking host.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What kiln reads of an ELF file (64-bit little-endian): its loader and the libraries it
/// names (`DT_NEEDED`).
pub struct Elf {
    pub interpreter: Option<PathBuf>,
    pub needed: Vec<String>,
}

impl Elf {
    pub fn read(path: &Path) -> Result<Elf> {
        let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Elf::parse(&data).with_context(|| format!("{} is not an ELF file kiln can read (64-bit little-endian)", path.display()))
    }

    fn parse(data: &[u8]) -> Option<Elf> {
        let (u16_at, u32_at, u64_at) = (|o| le::<2>(data, o).map(u16::from_le_bytes), |o| le::<4>(data, o).map(u32::from_le_bytes), |o| le::<8>(data, o).map(u64::from_le_bytes));
        let c_str = |o: usize| data.get(o..).map(|b| String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or_default()).into_owned());
        if data.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let (phoff, phentsize, phnum) = (u64_at(0x20)? as usize, u16_at(0x36)? as usize, u16_at(0x38)? as usize);
        // (type, file offset, virtual address, size in the file)
        let headers: Vec<(u32, u64, u64, u64)> =
            (0..phnum).map(|i| phoff + i * phentsize).map(|ph| Some((u32_at(ph)?, u64_at(ph + 8)?, u64_at(ph + 16)?, u64_at(ph + 32)?))).collect::<Option<_>>()?;
        let interpreter = headers.iter().find(|h| h.0 == 3).and_then(|h| c_str(h.1 as usize)).map(PathBuf::from);
        let mut needed = Vec::new();
        if let Some(&(_, offset, _, size)) = headers.iter().find(|h| h.0 == 2) {
            let entries: Vec<(u64, u64)> = (0..size as usize / 16).map(|i| Some((u64_at(offset as usize + i * 16)?, u64_at(offset as usize + i * 16 + 8)?))).collect::<Option<_>>()?;
            let strtab = entries.iter().find(|e| e.0 == 5)?.1;
            // The string table's address, as a file offset through the segment loading it.
            let load = headers.iter().find(|h| h.0 == 1 && h.2 <= strtab && strtab < h.2 + h.3)?;
            let strtab = (strtab - load.2 + load.1) as usize;
            for &(tag, value) in entries.iter().take_while(|e| e.0 != 0) {
                if tag == 1 {
                    needed.push(c_str(strtab + value as usize)?);
                }
            }
        }
        Some(Elf { interpreter, needed })
    }
}

/// The `N` bytes at `offset` of `data`, if it has them.
fn le<const N: usize>(data: &[u8], offset: usize) -> Option<[u8; N]> {
    data.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u64 = 2;
const SECTION_HEADER_SIZE: usize = 64;

/// `data` (an ELF file) without the contents of its `.debug_*` sections. The bytes the loader
/// maps (every segment, every allocated section) stay where they are; the other sections that
/// follow them (symbols, their names, `.comment`) are packed after them, and the debug ones
/// keep their header, empty: no section index changes, so the symbol table needs no rewrite.
/// `None` when `data` is not an ELF file this reads.
pub fn without_debug_info(data: &[u8]) -> Option<Vec<u8>> {
    let (u16_at, u64_at) = (|o| le::<2>(data, o).map(u16::from_le_bytes), |o| le::<8>(data, o).map(u64::from_le_bytes));
    if data.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)? as usize, u16_at(0x36)? as usize, u16_at(0x38)? as usize);
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28)? as usize, u16_at(0x3a)? as usize, u16_at(0x3c)? as usize, u16_at(0x3e)? as usize);
    if shentsize != SECTION_HEADER_SIZE || shoff == 0 {
        return None;
    }
    let mut headers: Vec<Vec<u8>> = (0..shnum).map(|i| data.get(shoff + i * shentsize..shoff + (i + 1) * shentsize).map(<[u8]>::to_vec)).collect::<Option<_>>()?;
    let field = |h: &[u8], o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    let (sh_type, sh_flags, sh_offset, sh_size) = (|h: &[u8]| u32::from_le_bytes(h[4..8].try_into().unwrap()), |h: &[u8]| field(h, 8), |h: &[u8]| field(h, 24) as usize, |h: &[u8]| field(h, 32) as usize);
    let in_file = |h: &[u8]| sh_type(h) != SHT_NOBITS && sh_size(h) > 0;

    // The end of what the loader needs: the program headers, segments and allocated sections.
    let mut kept_end = phoff + phnum * phentsize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        kept_end = kept_end.max((u64_at(ph + 8)? + u64_at(ph + 32)?) as usize);
    }
    for h in headers.iter().filter(|h| in_file(h) && sh_flags(h) & SHF_ALLOC != 0) {
        kept_end = kept_end.max(sh_offset(h) + sh_size(h));
    }
    let names = headers.get(shstrndx)?;
    let names = data.get(sh_offset(names)..sh_offset(names) + sh_size(names))?;
    let name = |h: &[u8]| names.get(u32::from_le_bytes(h[..4].try_into().unwrap()) as usize..).map(|n| n.split(|&c| c == 0).next().unwrap_or_default());

    let mut out = data.get(..kept_end)?.to_vec();
    // The sections after that, in file order.
    let mut after: Vec<usize> = (0..shnum).filter(|&i| in_file(&headers[i]) && sh_offset(&headers[i]) >= kept_end).collect();
    after.sort_by_key(|&i| sh_offset(&headers[i]));
    for i in after {
        let h = &mut headers[i];
        let (offset, size) = (sh_offset(h), sh_size(h));
        if name(h)?.starts_with(b".debug_") {
            h[24..32].copy_from_slice(&(out.len() as u64).to_le_bytes());
            h[32..40].copy_from_slice(&0u64.to_le_bytes());
            continue;
        }
        let align = field(h, 48).max(1) as usize;
        out.resize(out.len().next_multiple_of(align), 0);
        h[24..32].copy_from_slice(&(out.len() as u64).to_le_bytes());
        out.extend_from_slice(data.get(offset..offset + size)?);
    }
    out.resize(out.len().next_multiple_of(8), 0);
    let new_shoff = out.len() as u64;
    out[0x28..0x30].copy_from_slice(&new_shoff.to_le_bytes());
    headers.iter().for_each(|h| out.extend_from_slice(h));
    Some(out)
}

/// Writes `path` without its debug info to `dest`.
pub fn copy_without_debug_info(path: &Path, dest: &Path) -> Result<()> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let stripped = without_debug_info(&data).with_context(|| format!("{} is not an ELF file kiln can read (64-bit little-endian)", path.display()))?;
    std::fs::write(dest, stripped).with_context(|| format!("cannot write {}", dest.display()))?;
    std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o755)).with_context(|| format!("cannot make {} executable", dest.display()))
}
