//! What a GRUB EFI binary carries inside: the names of its built-in modules and its prefix.
//!
//! grub-mkimage puts them in the PE section `mods`: a module-info header, then objects
//! `{type, size}` (ELF modules, memdisk, embedded config, prefix). Reading them tells whether
//! this GRUB has `blscfg` and in which ESP directory it looks for its grub.cfg, without
//! running it.

use anyhow::{ensure, Context, Result};

use super::le::{u16_at, u32_at, u64_at};

const MODULE_MAGIC: u32 = 0x676d_696d;
const OBJ_TYPE_ELF: u32 = 0;
const OBJ_TYPE_PREFIX: u32 = 3;
const PE32_MAGIC: u16 = 0x10b;
const PE32_PLUS_MAGIC: u16 = 0x20b;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrubEfi {
    /// Built-in module names (from each module's `.modname` section).
    pub modules: Vec<String>,
    /// The built-in `$prefix`, e.g. `/EFI/debian`.
    pub prefix: Option<String>,
}

impl GrubEfi {
    pub fn has_module(&self, name: &str) -> bool {
        self.modules.iter().any(|m| m == name)
    }

    /// The ESP directory below `EFI/` that the prefix names, when it is one (`/EFI/<dir>`).
    pub fn prefix_vendor(&self) -> Option<&str> {
        let rest = self.prefix.as_deref()?.strip_prefix('/')?;
        let (efi, dir) = rest.split_once('/')?;
        (efi.eq_ignore_ascii_case("EFI") && !dir.is_empty() && !dir.contains('/')).then_some(dir)
    }
}

/// Reads the `mods` section of a GRUB PE image. A PE without one (not made by grub-mkimage)
/// gives an empty [`GrubEfi`].
pub fn inspect(pe: &[u8]) -> Result<GrubEfi> {
    let Some((mods, wide)) = mods_section(pe)? else {
        return Ok(GrubEfi::default());
    };
    ensure!(u32_at(mods, 0)? == MODULE_MAGIC, "the mods section does not start with GRUB's module magic");
    let (offset, size) = if wide {
        (u64_at(mods, 8)? as usize, u64_at(mods, 16)? as usize)
    } else {
        (u32_at(mods, 4)? as usize, u32_at(mods, 8)? as usize)
    };
    let end = size.min(mods.len());
    let mut info = GrubEfi::default();
    let mut at = offset;
    while at + 8 <= end {
        let kind = u32_at(mods, at)?;
        let len = u32_at(mods, at + 4)? as usize;
        ensure!(len >= 8 && at + len <= end, "a module entry at {at:#x} has a bad size {len}");
        let body = &mods[at + 8..at + len];
        match kind {
            OBJ_TYPE_ELF => info.modules.extend(module_name(body)?),
            OBJ_TYPE_PREFIX => info.prefix = Some(c_string(body)),
            _ => {}
        }
        at += len;
    }
    Ok(info)
}

/// The `mods` section's bytes and whether the image is 64-bit.
fn mods_section(pe: &[u8]) -> Result<Option<(&[u8], bool)>> {
    ensure!(pe.get(..2) == Some(b"MZ"), "not a PE image");
    let header = u32_at(pe, 0x3c)? as usize;
    ensure!(pe.get(header..header + 4) == Some(b"PE\0\0"), "not a PE image");
    let coff = header + 4;
    let sections = u16_at(pe, coff + 2)? as usize;
    let optional_size = u16_at(pe, coff + 16)? as usize;
    let wide = match u16_at(pe, coff + 20)? {
        PE32_PLUS_MAGIC => true,
        PE32_MAGIC => false,
        other => anyhow::bail!("unknown PE optional header magic {other:#x}"),
    };
    let table = coff + 20 + optional_size;
    for i in 0..sections {
        let at = table + i * 40;
        let name = pe.get(at..at + 8).context("truncated PE section table")?;
        if name != b"mods\0\0\0\0" {
            continue;
        }
        let virtual_size = u32_at(pe, at + 8)? as usize;
        let raw_size = u32_at(pe, at + 16)? as usize;
        let raw_at = u32_at(pe, at + 20)? as usize;
        let data = pe.get(raw_at..raw_at + raw_size.min(virtual_size)).context("the mods section lies past the end of the file")?;
        return Ok(Some((data, wide)));
    }
    Ok(None)
}

/// The `.modname` section of a GRUB module (ELF32 or ELF64, little-endian).
fn module_name(elf: &[u8]) -> Result<Option<String>> {
    ensure!(elf.get(..4) == Some(b"\x7fELF"), "a built-in module is not ELF");
    let wide = elf.get(4) == Some(&2);
    let (shoff, entsize, count, names_index) = if wide {
        (u64_at(elf, 0x28)? as usize, u16_at(elf, 0x3a)? as usize, u16_at(elf, 0x3c)? as usize, u16_at(elf, 0x3e)? as usize)
    } else {
        (u32_at(elf, 0x20)? as usize, u16_at(elf, 0x2e)? as usize, u16_at(elf, 0x30)? as usize, u16_at(elf, 0x32)? as usize)
    };
    let section = |i: usize| -> Result<(usize, usize, usize)> {
        let at = shoff + i * entsize;
        Ok(if wide {
            (u32_at(elf, at)? as usize, u64_at(elf, at + 24)? as usize, u64_at(elf, at + 32)? as usize)
        } else {
            (u32_at(elf, at)? as usize, u32_at(elf, at + 16)? as usize, u32_at(elf, at + 20)? as usize)
        })
    };
    let (_, names_at, _) = section(names_index)?;
    for i in 0..count {
        let (name, offset, size) = section(i)?;
        if elf.get(names_at + name..).is_some_and(|n| n.starts_with(b".modname\0")) {
            let bytes = elf.get(offset..offset + size).context("a module's .modname lies past its end")?;
            return Ok(Some(c_string(bytes)));
        }
    }
    Ok(None)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_names_the_vendor_directory() {
        let grub = GrubEfi { modules: vec![], prefix: Some("/EFI/debian".into()) };
        assert_eq!(grub.prefix_vendor(), Some("debian"));
        let grub = GrubEfi { modules: vec![], prefix: Some("(hd0,gpt2)/grub".into()) };
        assert_eq!(grub.prefix_vendor(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(inspect(b"MZ").is_err());
        assert!(inspect(&[0u8; 10]).is_err());
    }
}
