//! GRUB's BIOS `core.img`, built from the image's `i386-pc` files the way
//! `grub-mkimage -O i386-pc` builds it (util/mkimage.c, GRUB 2.06), without running anything.
//!
//! Layout, first sector first:
//!
//! ```text
//! diskboot.img         512 bytes; its blocklist says where the rest lies on disk
//! lzma_decompress.img  size fields patched: compressed and uncompressed payload size
//! LZMA payload         kernel.img's loaded sections, then the module area:
//!                        module info {magic, offset, size}
//!                        per module {type ELF, size} + the .mod file, 4-byte aligned
//!                        {type CONFIG, size} + embedded config + NUL, aligned
//!                        {type PREFIX, size} + prefix + NUL, aligned
//! ```

use anyhow::{bail, ensure, Context, Result};
use xz2::stream::{Action, LzmaOptions, Status, Stream};

use super::image_files::{join, ImageRoot};
use super::le::{u16_at, u32_at};
use super::moddep::ModDeps;

pub const SECTOR: usize = 512;

/// Where GRUB's i386-pc kernel is linked and loaded (GRUB_KERNEL_I386_PC_LINK_ADDR).
const LINK_ADDR: u32 = 0x9000;
/// The kernel and its bss must end below this address (mkimage's check).
const KERNEL_END_LIMIT: u32 = 0x68000;
/// The whole core.img, loaded at LINK_ADDR, must end below this address.
const CORE_END_LIMIT: usize = 0x78000;
/// The decompressor runs at 0x8200 and must end before the kernel.
const DECOMPRESSOR_LIMIT: usize = (LINK_ADDR - 0x8200) as usize;

/// Fields of lzma_decompress.img (include/grub/offsets.h).
const COMPRESSED_SIZE_AT: usize = 0x08;
const UNCOMPRESSED_SIZE_AT: usize = 0x0c;
/// diskboot.img ends with its first blocklist entry: start sector (u64), sector count (u16),
/// load segment (u16).
const BLOCKLIST_START_AT: usize = SECTOR - 12;
const BLOCKLIST_LEN_AT: usize = SECTOR - 4;

/// "gmim": the module area starts with this (include/grub/kernel.h).
const MODULE_MAGIC: u32 = 0x676d_696d;
const MODULE_INFO_SIZE: usize = 12;
const MODULE_HEADER_SIZE: usize = 8;
const OBJ_TYPE_ELF: u32 = 0;
const OBJ_TYPE_CONFIG: u32 = 2;
const OBJ_TYPE_PREFIX: u32 = 3;

/// The LZMA parameters grub-mkimage uses and lzma_decompress.img is assembled for
/// (FIXED_PROPS: lc=3, lp=0, pb=2; 64 KiB dictionary). The decompressor stops after the
/// uncompressed size, so the end marker liblzma adds is never read.
const LZMA_DICT_SIZE: u32 = 1 << 16;
const LZMA_LC: u32 = 3;
const LZMA_LP: u32 = 0;
const LZMA_PB: u32 = 2;
/// The `.lzma` header liblzma reads and writes: props byte, dictionary size, payload size.
const LZMA_ALONE_HEADER: usize = 13;

/// What to put into a core.img.
pub struct CoreSpec<'a> {
    /// Modules asked for; their dependencies from moddep.lst are added.
    pub modules: &'a [String],
    /// A config the kernel runs (with its rescue parser: plain commands only) before normal mode.
    pub config: &'a str,
    /// GRUB's initial `$prefix`.
    pub prefix: &'a str,
}

/// A built core.img, to be written from the first sector of the BIOS boot partition.
pub struct CoreImage {
    pub bytes: Vec<u8>,
}

impl CoreImage {
    pub fn sectors(&self) -> u64 {
        self.bytes.len().div_ceil(SECTOR) as u64
    }

    /// Points diskboot.img's blocklist at the sectors after it, for a core.img written from
    /// disk sector `first_lba` on (grub-install's setup does this; the partition is contiguous,
    /// so one blocklist entry covers everything).
    pub fn locate_at(&mut self, first_lba: u64) {
        self.bytes[BLOCKLIST_START_AT..BLOCKLIST_START_AT + 8].copy_from_slice(&(first_lba + 1).to_le_bytes());
    }
}

/// Builds core.img from the GRUB `i386-pc` directory `dir` inside the image.
pub fn build(image: &ImageRoot, dir: &str, spec: &CoreSpec) -> Result<CoreImage> {
    let (payload, kernel) = payload_with_kernel(image, dir, spec)?;
    let compressed = lzma_compress(&payload)?;

    let mut decompressor = read_grub_file(image, dir, "lzma_decompress.img")?;
    ensure!(
        decompressor.len() <= DECOMPRESSOR_LIMIT && decompressor.len() >= UNCOMPRESSED_SIZE_AT + 4,
        "/{} is {} bytes; GRUB's decompressor must fit in {DECOMPRESSOR_LIMIT}",
        join(dir, "lzma_decompress.img"),
        decompressor.len()
    );
    put_u32(&mut decompressor, COMPRESSED_SIZE_AT, len_u32(compressed.len())?);
    put_u32(&mut decompressor, UNCOMPRESSED_SIZE_AT, len_u32(payload.len())?);

    let body_len = decompressor.len() + compressed.len();
    if LINK_ADDR as usize + body_len > CORE_END_LIMIT || body_len > 0xffff * SECTOR {
        bail!(
            "core.img is too big: {body_len} bytes, GRUB's BIOS loader takes at most {}; embed fewer modules",
            CORE_END_LIMIT - LINK_ADDR as usize
        );
    }
    ensure!(kernel.end() <= KERNEL_END_LIMIT, "/{} is too big for i386-pc ({:#x} > {KERNEL_END_LIMIT:#x})", join(dir, "kernel.img"), kernel.end());

    let mut diskboot = read_grub_file(image, dir, "diskboot.img")?;
    ensure!(diskboot.len() == SECTOR, "/{} must be {SECTOR} bytes, found {}", join(dir, "diskboot.img"), diskboot.len());
    let body_sectors = body_len.div_ceil(SECTOR) as u16;
    diskboot[BLOCKLIST_LEN_AT..BLOCKLIST_LEN_AT + 2].copy_from_slice(&body_sectors.to_le_bytes());

    let mut bytes = diskboot;
    bytes.extend_from_slice(&decompressor);
    bytes.extend_from_slice(&compressed);
    Ok(CoreImage { bytes })
}

/// GRUB's El Torito core (`grub-mkimage -O i386-pc-eltorito`, mkimage.c): `cdboot.img`, one
/// CD sector that loads the rest through the boot-info table, then the same core as
/// [`build`]. Booted from a disk (an ISO written to a USB stick, through `boot_hybrid.img`),
/// `diskboot.img` is the sector after `cdboot.img` and its blocklist start is what the ISO
/// writer's GRUB2 boot info patch sets (byte 2548 = 2048 + [`BLOCKLIST_START_AT`]).
pub fn build_eltorito(image: &ImageRoot, dir: &str, spec: &CoreSpec) -> Result<Vec<u8>> {
    let mut bytes = read_grub_file(image, dir, "cdboot.img")?;
    ensure!(bytes.len() == 2048, "/{} must be 2048 bytes, found {}", join(dir, "cdboot.img"), bytes.len());
    bytes.extend_from_slice(&build(image, dir, spec)?.bytes);
    Ok(bytes)
}

/// The uncompressed payload: kernel.img's sections as loaded, then the module area. Tests
/// compare it with the one inside grub-mkimage's core.img.
pub fn payload(image: &ImageRoot, dir: &str, spec: &CoreSpec) -> Result<Vec<u8>> {
    Ok(payload_with_kernel(image, dir, spec)?.0)
}

/// Decompresses the payload of a core.img whose decompressor is `decompressor_len` bytes.
pub fn unpack_payload(core_img: &[u8], decompressor_len: usize) -> Result<Vec<u8>> {
    let start = SECTOR + decompressor_len;
    ensure!(core_img.len() > start, "core.img is shorter ({}) than its loader ({start})", core_img.len());
    let size = u32_at(core_img, SECTOR + UNCOMPRESSED_SIZE_AT)? as usize;
    let compressed = u32_at(core_img, SECTOR + COMPRESSED_SIZE_AT)? as usize;
    let data = core_img.get(start..start + compressed).context("core.img is shorter than its compressed size field")?;
    let mut stream = lzma_alone_header(Some(size as u64));
    stream.extend_from_slice(data);
    let mut decoder = Stream::new_lzma_decoder(u64::MAX).context("starting an LZMA decoder")?;
    let mut out = Vec::with_capacity(size);
    decoder.process_vec(&stream, &mut out, Action::Finish).context("decompressing the core.img payload")?;
    ensure!(out.len() == size, "core.img payload decompressed to {} bytes, its header says {size}", out.len());
    Ok(out)
}

fn payload_with_kernel(image: &ImageRoot, dir: &str, spec: &CoreSpec) -> Result<(Vec<u8>, LoadedKernel)> {
    let moddep = String::from_utf8_lossy(&read_grub_file(image, dir, "moddep.lst")?).into_owned();
    let modules = ModDeps::parse(&moddep)?.closure(spec.modules)?;
    let kernel = load_kernel(&read_grub_file(image, dir, "kernel.img")?).with_context(|| format!("loading /{}", join(dir, "kernel.img")))?;

    let mut area = vec![0u8; MODULE_INFO_SIZE];
    for name in &modules {
        let module = read_grub_file(image, dir, &format!("{name}.mod"))?;
        push_object(&mut area, OBJ_TYPE_ELF, &module, 0);
    }
    // The config and the prefix are read as C strings: at least one NUL after them.
    push_object(&mut area, OBJ_TYPE_CONFIG, spec.config.as_bytes(), 1);
    push_object(&mut area, OBJ_TYPE_PREFIX, spec.prefix.as_bytes(), 1);
    put_u32(&mut area, 0, MODULE_MAGIC);
    put_u32(&mut area, 4, MODULE_INFO_SIZE as u32);
    let area_len = len_u32(area.len())?;
    put_u32(&mut area, 8, area_len);

    let mut payload = kernel.image.clone();
    payload.extend_from_slice(&area);
    Ok((payload, kernel))
}

/// Appends `{type, size}` and `data` padded with at least `nul` zero bytes to 4 bytes.
fn push_object(area: &mut Vec<u8>, kind: u32, data: &[u8], nul: usize) {
    let padded = (data.len() + nul).next_multiple_of(4);
    area.extend_from_slice(&kind.to_le_bytes());
    area.extend_from_slice(&((padded + MODULE_HEADER_SIZE) as u32).to_le_bytes());
    area.extend_from_slice(data);
    area.resize(area.len() + padded - data.len(), 0);
}

/// kernel.img is an ELF32 executable linked at LINK_ADDR; mkimage copies its PROGBITS
/// sections (code, then data) to their link offsets and keeps NOBITS (bss) out of the file.
struct LoadedKernel {
    image: Vec<u8>,
    bss_size: u32,
}

impl LoadedKernel {
    fn end(&self) -> u32 {
        LINK_ADDR.saturating_add(self.image.len() as u32).saturating_add(self.bss_size)
    }
}

const SHT_PROGBITS: u32 = 1;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u32 = 2;
const SHF_EXECINSTR: u32 = 4;

struct Section {
    kind: u32,
    flags: u32,
    addr: u32,
    offset: u32,
    size: u32,
}

fn load_kernel(elf: &[u8]) -> Result<LoadedKernel> {
    ensure!(elf.len() >= 52 && elf[..4] == *b"\x7fELF", "not an ELF file");
    ensure!(elf[4] == 1 && elf[5] == 1 && elf[6] == 1, "not a little-endian 32-bit ELF version 1 file (GRUB 2.06+ ships kernel.img as one)");
    let shoff = u32_at(elf, 0x20)? as usize;
    let shentsize = u16_at(elf, 0x2e)? as usize;
    let shnum = u16_at(elf, 0x30)? as usize;
    ensure!(shentsize >= 40, "section headers of {shentsize} bytes are too small");
    let sections = (0..shnum)
        .map(|i| {
            let at = shoff + i * shentsize;
            Ok(Section {
                kind: u32_at(elf, at + 4)?,
                flags: u32_at(elf, at + 8)?,
                addr: u32_at(elf, at + 12)?,
                offset: u32_at(elf, at + 16)?,
                size: u32_at(elf, at + 20)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let alloc = |s: &Section| s.kind == SHT_PROGBITS && s.flags & SHF_ALLOC != 0;
    let is_text = |s: &Section| alloc(s) && s.flags & SHF_EXECINSTR != 0;
    let is_data = |s: &Section| alloc(s) && s.flags & SHF_EXECINSTR == 0;
    let kept: Vec<&Section> = sections.iter().filter(|s| is_text(s)).chain(sections.iter().filter(|s| is_data(s))).collect();
    ensure!(kept.first().is_some_and(|s| is_text(s)), "no code section");

    // mkimage's size is where the last placed section ends, code sections placed first.
    let mut size = 0u32;
    for s in &kept {
        ensure!(s.addr >= LINK_ADDR, "section at {:#x} lies below the link address {LINK_ADDR:#x}", s.addr);
        if is_text(s) {
            ensure!(s.addr == LINK_ADDR, "code section at {:#x}, expected the link address {LINK_ADDR:#x}", s.addr);
        }
        size = (s.addr - LINK_ADDR).checked_add(s.size).context("section size overflows")?;
    }
    let mut image = vec![0u8; size as usize];
    for s in &kept {
        let at = (s.addr - LINK_ADDR) as usize;
        let data = elf.get(s.offset as usize..(s.offset as usize).saturating_add(s.size as usize)).context("a section lies past the end of the file")?;
        image.get_mut(at..at + data.len()).context("sections overlap past the kernel's end")?.copy_from_slice(data);
    }
    let bss_end = sections
        .iter()
        .filter(|s| s.kind == SHT_NOBITS)
        .try_fold(size, |_, s| s.addr.checked_sub(LINK_ADDR).and_then(|a| a.checked_add(s.size)))
        .context("bss lies below the link address")?;
    Ok(LoadedKernel { image, bss_size: bss_end.saturating_sub(size) })
}

fn lzma_compress(data: &[u8]) -> Result<Vec<u8>> {
    let mut options = LzmaOptions::new_preset(6).context("LZMA options")?;
    options.dict_size(LZMA_DICT_SIZE).literal_context_bits(LZMA_LC).literal_position_bits(LZMA_LP).position_bits(LZMA_PB);
    // The `.lzma` (alone) encoder writes a 13-byte header, then the raw LZMA1 stream GRUB wants.
    let mut encoder = Stream::new_lzma_encoder(&options).context("starting the LZMA encoder")?;
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        match encoder.process_vec(&data[encoder.total_in() as usize..], &mut out, Action::Finish).context("LZMA compression")? {
            Status::StreamEnd => break,
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
    ensure!(out.len() > LZMA_ALONE_HEADER, "the LZMA encoder wrote no data");
    Ok(out.split_off(LZMA_ALONE_HEADER))
}

fn lzma_alone_header(size: Option<u64>) -> Vec<u8> {
    let mut header = vec![((LZMA_PB * 5 + LZMA_LP) * 9 + LZMA_LC) as u8];
    header.extend_from_slice(&LZMA_DICT_SIZE.to_le_bytes());
    header.extend_from_slice(&size.unwrap_or(u64::MAX).to_le_bytes());
    header
}

fn read_grub_file(image: &ImageRoot, dir: &str, name: &str) -> Result<Vec<u8>> {
    let path = join(dir, name);
    if !image.exists(&path)? {
        bail!("the image has no /{path}: BIOS boot needs the image's GRUB i386-pc files (Debian: grub-pc-bin; Fedora: grub2-pc-modules)");
    }
    image.read(&path)
}

fn len_u32(len: usize) -> Result<u32> {
    u32::try_from(len).context("core.img part larger than 4 GiB")
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}
