//! The ISO writer: an ISO 9660 volume (ECMA-119, level 3: files of 4 GiB and more as several
//! extents) with Rock Ridge names and modes and a Joliet tree, bootable through El Torito (a
//! BIOS no-emulation image with boot-info table and GRUB2 boot info; a UEFI entry for an ESP
//! image appended after the volume), and a hybrid system area so the same file boots when
//! written to a USB stick: GRUB's `boot_hybrid.img` as MBR code (patched with where the BIOS
//! image is, as xorriso's `--grub2-mbr` does) and a GPT listing the ISO data and the ESP (as
//! `-appended_part_as_gpt` does). `platforms.md` §5.2 has the xorriso recipe this reproduces.
//!
//! The layout is planned first (names, directory sizes, every extent), then written in one
//! pass: file contents are streamed from their files, never held in memory. The same input and
//! `Ids` seed give the same bytes.

pub mod cpio;
pub mod installer;
mod elf;
mod eltorito;
mod names;
mod records;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};

use crate::disk::table::{self, Geometry, TableEntry};
use crate::disk::Ids;
use crate::progress::Stage;
use records::{dir_record, BLOCK, FLAG_DIRECTORY, FLAG_MULTI_EXTENT};

/// Where a file's bytes come from.
pub enum Content {
    Bytes(Vec<u8>),
    /// Streamed at write time; its size must not change between planning and writing.
    File(PathBuf),
}

impl Content {
    fn size(&self) -> Result<u64> {
        match self {
            Content::Bytes(b) => Ok(b.len() as u64),
            Content::File(p) => Ok(std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?.len()),
        }
    }
}

/// A file of the volume, at `path` (`boot/grub/grub.cfg`; its directories are implied).
pub struct IsoFile {
    pub path: String,
    pub content: Content,
}

/// What the volume holds and how it boots.
pub struct IsoSpec {
    /// The primary volume id: what `search --label` and `/dev/disk/by-label` find (at most 32
    /// d-characters: A–Z, 0–9, _).
    pub volume_id: String,
    /// The volume set id: a longer id of this very medium, for the installer to find it.
    pub medium_id: String,
    pub files: Vec<IsoFile>,
    /// The path (among `files`) of the BIOS no-emulation image (GRUB's El Torito core).
    pub bios_image: Option<String>,
    /// MBR boot code for USB boot (GRUB's `boot_hybrid.img`; its first 446 bytes are used).
    pub mbr_code: Option<Vec<u8>>,
    /// The ESP image appended after the volume, the UEFI boot entry and the GPT's ESP.
    pub efi_image: Option<Content>,
    /// The time every record and descriptor carries (seconds since the epoch).
    pub unix_time: i64,
}

/// Largest extent of a multi-extent file: 4 GiB less a block.
const MAX_EXTENT: u64 = 0xffff_f800;
/// ECMA-119 §6.8.2.1: at most 8 directory levels (Rock Ridge relocation is not written).
const MAX_DEPTH: usize = 8;
/// What fits a directory record beside the identifier and the other Rock Ridge entries.
const MAX_NAME: usize = 140;
const BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The GPT's entries lie between the MBR and the volume descriptors: the ISO data partition
/// starts at block 16, as xorriso's `-partition_offset 16` puts it.
const ISO_PARTITION_START: u64 = 16 * BLOCK;

struct Dir {
    name: String,
    parent: usize,
    dirs: Vec<usize>,
    files: Vec<usize>,
    depth: usize,
}

/// One of the two directory trees (ISO 9660 with Rock Ridge, Joliet): its identifiers, the
/// order of its directories (path table order) and where each directory's extent is.
struct View {
    joliet: bool,
    dir_ids: Vec<Vec<u8>>,
    file_ids: Vec<Vec<u8>>,
    order: Vec<usize>,
    number: Vec<u16>,
    lba: Vec<u32>,
    blocks: Vec<u32>,
}

struct Plan<'a> {
    spec: &'a IsoSpec,
    dirs: Vec<Dir>,
    files: Vec<(&'a IsoFile, u64)>,
    views: [View; 2],
    file_lba: Vec<u32>,
    path_tables: [(u32, u32, u32); 2],
    catalog_lba: u32,
    boot_record_lba: u32,
    svd_lba: u32,
    terminator_lba: u32,
    bios_file: Option<usize>,
    volume_blocks: u32,
    esp: Option<(u64, u64)>,
    total: u64,
}

/// Writes the ISO described by `spec` into `out` (empty); returns its size.
pub fn write(spec: &IsoSpec, ids: &Ids, out: &File, stage: &Stage) -> Result<u64> {
    let plan = plan(spec)?;
    out.set_len(plan.total).context("cannot size the ISO")?;
    write_volume(&plan, out, stage)?;
    write_system_area(&plan, ids, out)?;
    Ok(plan.total)
}

fn valid_component(c: &str) -> bool {
    !c.is_empty() && c != "." && c != ".." && !c.contains('\0')
}

fn plan(spec: &IsoSpec) -> Result<Plan<'_>> {
    ensure!(
        !spec.volume_id.is_empty() && spec.volume_id.len() <= 32 && spec.volume_id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
        "ISO volume id {:?}: use 1 to 32 of A-Z, 0-9 and _",
        spec.volume_id
    );
    ensure!(spec.medium_id.is_ascii() && spec.medium_id.len() <= 128, "ISO medium id {:?}: at most 128 ASCII characters", spec.medium_id);
    let mut dirs = vec![Dir { name: String::new(), parent: 0, dirs: Vec::new(), files: Vec::new(), depth: 0 }];
    let mut by_path: BTreeMap<String, usize> = BTreeMap::new();
    let mut files = Vec::new();
    let mut file_paths = BTreeMap::new();
    for f in &spec.files {
        let parts: Vec<&str> = f.path.split('/').collect();
        ensure!(parts.iter().all(|c| valid_component(c)), "ISO file path {:?} is not a plain relative path", f.path);
        for p in &parts {
            ensure!(p.len() <= MAX_NAME, "{}: a name of the ISO is longer than {MAX_NAME} bytes", f.path);
        }
        let mut dir = 0;
        for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
            let key = parts[..=i].join("/");
            ensure!(!file_paths.contains_key(&key), "{key} is both a file and a directory of the ISO");
            dir = match by_path.get(&key) {
                Some(&d) => d,
                None => {
                    let depth = dirs[dir].depth + 1;
                    ensure!(depth < MAX_DEPTH, "{}: ISO 9660 allows at most {MAX_DEPTH} directory levels", f.path);
                    dirs.push(Dir { name: part.to_string(), parent: dir, dirs: Vec::new(), files: Vec::new(), depth });
                    let d = dirs.len() - 1;
                    dirs[dir].dirs.push(d);
                    by_path.insert(key, d);
                    d
                }
            };
        }
        ensure!(file_paths.insert(f.path.clone(), files.len()).is_none(), "{} is twice in the ISO", f.path);
        ensure!(!by_path.contains_key(&f.path), "{} is both a file and a directory of the ISO", f.path);
        dirs[dir].files.push(files.len());
        files.push((f, f.content.size()?));
    }
    let bios_file = match &spec.bios_image {
        Some(p) => {
            let &i = file_paths.get(p).with_context(|| format!("the BIOS boot image {p} is not among the ISO's files"))?;
            ensure!(matches!(files[i].0.content, Content::Bytes(_)), "the BIOS boot image {p} must be given as bytes (it is patched)");
            ensure!(files[i].1 >= 64 && files[i].1 < 1 << 20, "the BIOS boot image {p} is {} bytes: a GRUB El Torito core is 64 bytes to 1 MiB", files[i].1);
            Some(i)
        }
        None => None,
    };

    let mut views = [make_view(&dirs, &files, false)?, make_view(&dirs, &files, true)?];
    let el_torito = bios_file.is_some() || spec.efi_image.is_some();
    let mut lba: u32 = 16;
    let mut next = |n: u32| {
        let at = lba;
        lba += n;
        at
    };
    let _pvd = next(1);
    let boot_record_lba = if el_torito { next(1) } else { 0 };
    let svd_lba = next(1);
    let terminator_lba = next(1);
    let mut path_tables = [(0, 0, 0); 2];
    for (v, pt) in views.iter().zip(path_tables.iter_mut()) {
        let size = path_table(v, &dirs, true).len() as u32;
        let blocks = size.div_ceil(BLOCK as u32);
        *pt = (size, next(blocks), next(blocks));
    }
    let catalog_lba = if el_torito { next(1) } else { 0 };
    for v in views.iter_mut() {
        for &d in &v.order.clone() {
            let size = pack(&dir_records(v, &dirs, &files, d, &[], spec.unix_time)).len() as u32;
            v.blocks[d] = size / BLOCK as u32;
            v.lba[d] = next(v.blocks[d]);
        }
    }
    let mut file_lba = Vec::with_capacity(files.len());
    let mut planned = 0u64;
    for &(_, size) in &files {
        let blocks = size.div_ceil(BLOCK);
        planned += blocks;
        ensure!(planned < u32::MAX as u64 / 2, "the ISO's content is larger than ISO 9660's 4 TiB");
        file_lba.push(if size == 0 { 0 } else { next(blocks as u32) });
    }
    let volume_blocks = next(0);
    let mut end = volume_blocks as u64 * BLOCK;
    let esp = match &spec.efi_image {
        Some(c) => {
            let size = c.size()?.next_multiple_of(BLOCK);
            ensure!(size > 0 && size / 512 <= u16::MAX as u64, "the ESP image is {size} bytes: El Torito can load 1 byte to 32 MiB");
            let at = end;
            end += size;
            Some((at, size))
        }
        None => None,
    };
    let hybrid = spec.mbr_code.is_some() || esp.is_some();
    // Room for the backup GPT (entries and header) at the end.
    let total = if hybrid { (end + 33 * 512).next_multiple_of(BLOCK) } else { end };
    Ok(Plan {
        spec,
        dirs,
        files,
        views,
        file_lba,
        path_tables,
        catalog_lba,
        boot_record_lba,
        svd_lba,
        terminator_lba,
        bios_file,
        volume_blocks,
        esp,
        total,
    })
}

fn make_view(dirs: &[Dir], files: &[(&IsoFile, u64)], joliet: bool) -> Result<View> {
    let mut dir_ids = vec![Vec::new(); dirs.len()];
    let mut file_ids = vec![Vec::new(); files.len()];
    dir_ids[0] = vec![0];
    for d in dirs {
        let entries: Vec<(&str, bool, usize)> = d
            .dirs
            .iter()
            .map(|&c| (dirs[c].name.as_str(), true, c))
            .chain(d.files.iter().map(|&f| (files[f].0.path.rsplit('/').next().unwrap(), false, f)))
            .collect();
        let ids = if joliet {
            entries.iter().map(|(name, _, i)| names::joliet_identifier(name, &format!("{name} ({i})"))).collect::<Result<Vec<_>>>()?
        } else {
            names::iso_identifiers(&entries.iter().map(|(n, d, _)| (*n, *d)).collect::<Vec<_>>())
        };
        let mut seen = std::collections::BTreeSet::new();
        for ((name, is_dir, i), id) in entries.iter().zip(ids) {
            ensure!(seen.insert(id.clone()), "{name}: two names of one ISO directory are the same in Joliet");
            if *is_dir {
                dir_ids[*i] = id;
            } else {
                file_ids[*i] = id;
            }
        }
    }
    // Path table order: by level, then parent's number, then identifier (§9.4).
    let mut order = vec![0];
    let mut number = vec![0u16; dirs.len()];
    let mut i = 0;
    while i < order.len() {
        let d = order[i];
        number[d] = (i + 1) as u16;
        let mut kids = dirs[d].dirs.clone();
        kids.sort_by(|a, b| dir_ids[*a].cmp(&dir_ids[*b]));
        order.extend(kids);
        i += 1;
    }
    ensure!(order.len() < u16::MAX as usize, "the ISO has more than 65534 directories");
    Ok(View { joliet, dir_ids, file_ids, order, number, lba: vec![0; dirs.len()], blocks: vec![0; dirs.len()] })
}

const DIR_MODE: u32 = 0o040555;
const FILE_MODE: u32 = 0o100444;

/// The records of directory `d` in `view`: ".", "..", then its entries by identifier. With
/// `file_lba` empty (sizing), extents are left 0.
fn dir_records(view: &View, dirs: &[Dir], files: &[(&IsoFile, u64)], d: usize, file_lba: &[u32], unix: i64) -> Vec<Vec<u8>> {
    let rr = |mode: u32, links: u32, name: Option<&str>, first: bool| -> Vec<u8> {
        if view.joliet {
            return Vec::new();
        }
        let mut su = Vec::new();
        if first {
            su.extend(records::rr_sp());
            su.extend(records::rr_er());
        }
        su.extend(records::rr_px(mode, links));
        su.extend(records::rr_tf(unix));
        if let Some(n) = name {
            su.extend(records::rr_nm(n));
        }
        su
    };
    let links = |d: usize| 2 + dirs[d].dirs.len() as u32;
    let dir_size = |d: usize| view.blocks[d] * BLOCK as u32;
    let parent = dirs[d].parent;
    let mut out = vec![
        dir_record(&[0], view.lba[d], dir_size(d), FLAG_DIRECTORY, unix, &rr(DIR_MODE, links(d), None, d == 0)),
        dir_record(&[1], view.lba[parent], dir_size(parent), FLAG_DIRECTORY, unix, &rr(DIR_MODE, links(parent), None, false)),
    ];
    let mut entries: Vec<(&[u8], Vec<Vec<u8>>)> = Vec::new();
    for &c in &dirs[d].dirs {
        let r = dir_record(&view.dir_ids[c], view.lba[c], dir_size(c), FLAG_DIRECTORY, unix, &rr(DIR_MODE, links(c), Some(&dirs[c].name), false));
        entries.push((&view.dir_ids[c], vec![r]));
    }
    for &f in &dirs[d].files {
        let (file, size) = files[f];
        let name = file.path.rsplit('/').next().unwrap();
        let su = rr(FILE_MODE, 1, Some(name), false);
        let start = file_lba.get(f).copied().unwrap_or(0);
        let mut rs = Vec::new();
        let mut left = size;
        let mut lba = start;
        loop {
            let n = left.min(MAX_EXTENT);
            let last = n == left;
            let flags = if last { 0 } else { FLAG_MULTI_EXTENT };
            rs.push(dir_record(&view.file_ids[f], if size == 0 { 0 } else { lba }, n as u32, flags, unix, &su));
            if last {
                break;
            }
            left -= n;
            lba += (n / BLOCK) as u32;
        }
        entries.push((&view.file_ids[f], rs));
    }
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.extend(entries.into_iter().flat_map(|(_, rs)| rs));
    out
}

/// Records packed into blocks: none crosses a block boundary (§6.8.1.1).
fn pack(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let room = BLOCK as usize - out.len() % BLOCK as usize;
        if r.len() > room {
            out.resize(out.len() + room, 0);
        }
        out.extend_from_slice(r);
    }
    out.resize((out.len() as u64).next_multiple_of(BLOCK) as usize, 0);
    out
}

fn path_table(view: &View, dirs: &[Dir], little: bool) -> Vec<u8> {
    view.order
        .iter()
        .flat_map(|&d| records::path_record(&view.dir_ids[d], view.lba[d], view.number[dirs[d].parent], little))
        .collect()
}

fn write_volume(plan: &Plan, out: &File, stage: &Stage) -> Result<()> {
    let spec = plan.spec;
    let at = |lba: u32| lba as u64 * BLOCK;
    let put = |buf: &[u8], lba: u32| out.write_all_at(buf, at(lba)).context("writing the ISO");
    for (i, view) in plan.views.iter().enumerate() {
        let j = view.joliet;
        let root = dir_record(&[0], view.lba[0], view.blocks[0] * BLOCK as u32, FLAG_DIRECTORY, spec.unix_time, &[]);
        let (size, l, m) = plan.path_tables[i];
        let volume = records::Volume {
            kind: if j { 2 } else { 1 },
            system_id: &records::pad_id("LINUX", 32, j),
            volume_id: &records::pad_id(&spec.volume_id, 32, j),
            volume_set_id: &records::pad_id(&spec.medium_id, 128, j),
            application_id: &records::pad_id("KILN", 128, j),
            blocks: plan.volume_blocks,
            path_table_size: size,
            path_table_l: l,
            path_table_m: m,
            root_record: &root,
            unix: spec.unix_time,
            joliet: j,
        };
        put(&records::volume_descriptor(&volume), if j { plan.svd_lba } else { 16 })?;
        put(&path_table(view, &plan.dirs, true), l)?;
        put(&path_table(view, &plan.dirs, false), m)?;
        for &d in &view.order {
            put(&pack(&dir_records(view, &plan.dirs, &plan.files, d, &plan.file_lba, spec.unix_time)), view.lba[d])?;
        }
    }
    put(&records::terminator(), plan.terminator_lba)?;

    let mut entries = Vec::new();
    if let Some(i) = plan.bios_file {
        entries.push(eltorito::Entry { platform: eltorito::PLATFORM_BIOS, lba: plan.file_lba[i], load_sectors: 4 });
    }
    if let Some((offset, size)) = plan.esp {
        entries.push(eltorito::Entry { platform: eltorito::PLATFORM_EFI, lba: (offset / BLOCK) as u32, load_sectors: (size / 512) as u16 });
    }
    if !entries.is_empty() {
        put(&eltorito::boot_record(plan.catalog_lba), plan.boot_record_lba)?;
        put(&eltorito::catalog(&entries), plan.catalog_lba)?;
    }

    for (i, &(file, size)) in plan.files.iter().enumerate() {
        crate::interrupt::check()?;
        let offset = at(plan.file_lba[i]);
        match &file.content {
            Content::Bytes(b) if Some(i) == plan.bios_file => {
                let mut image = b.clone();
                eltorito::patch_bios_image(&mut image, 16, plan.file_lba[i]);
                out.write_all_at(&image, offset)?;
            }
            Content::Bytes(b) => out.write_all_at(b, offset)?,
            Content::File(p) => copy_file(p, size, out, offset, stage)?,
        }
        if !matches!(file.content, Content::File(_)) {
            stage.inc(size);
        }
    }
    if let (Some(content), Some((offset, _))) = (&spec.efi_image, plan.esp) {
        match content {
            Content::Bytes(b) => out.write_all_at(b, offset)?,
            Content::File(p) => copy_file(p, content.size()?, out, offset, stage)?,
        }
    }
    Ok(())
}

/// Streams `path` (of `size` bytes, as planned) into `out` at `offset`, in chunks (the kernel
/// copies file to file where it can).
fn copy_file(path: &std::path::Path, size: u64, out: &File, offset: u64, stage: &Stage) -> Result<()> {
    let mut src = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let now = src.metadata()?.len();
    ensure!(now == size, "{} changed while the ISO was written ({size} bytes planned, {now} now)", path.display());
    let mut dst = out.try_clone()?;
    dst.seek(SeekFrom::Start(offset))?;
    const CHUNK: u64 = 64 << 20;
    let mut left = size;
    while left > 0 {
        let n = std::io::copy(&mut (&mut src).take(left.min(CHUNK)), &mut dst).with_context(|| format!("copying {} into the ISO", path.display()))?;
        if n == 0 {
            bail!("{} ended early while the ISO was written", path.display());
        }
        left -= n;
        stage.inc(n);
        crate::interrupt::check()?;
    }
    dst.flush()?;
    Ok(())
}

/// The hybrid system area: a GPT with the ISO data and the ESP, then the MBR boot code with
/// the BIOS image's 512-byte sector + 4 at 0x1B0 (where `boot_hybrid.img` reads the core from,
/// libisofs's GRUB2 MBR patch).
fn write_system_area(plan: &Plan, ids: &Ids, out: &File) -> Result<()> {
    if plan.spec.mbr_code.is_none() && plan.esp.is_none() {
        return Ok(());
    }
    let data_end = plan.esp.map_or(plan.volume_blocks as u64 * BLOCK, |(at, _)| at);
    let (g1, g2) = (ids.uuid("iso partition"), ids.uuid("iso esp"));
    let mut entries = vec![TableEntry { number: 1, name: "ISO9660", type_guid: BASIC_DATA, guid: &g1, offset: ISO_PARTITION_START, size: data_end - ISO_PARTITION_START }];
    if let Some((offset, size)) = plan.esp {
        entries.push(TableEntry { number: 2, name: "EFI", type_guid: ESP_TYPE, guid: &g2, offset, size });
    }
    table::write_entries(out, Geometry { size: plan.total, sector: 512 }, &ids.uuid("iso disk"), &entries)?;
    if let Some(code) = &plan.spec.mbr_code {
        ensure!(code.len() >= 440, "the MBR boot code is {} bytes: GRUB's boot_hybrid.img has 512", code.len());
        let mut mbr = code[..440].to_vec();
        if let Some(i) = plan.bios_file {
            mbr[0x1b0..0x1b8].copy_from_slice(&(plan.file_lba[i] as u64 * 4 + 4).to_le_bytes());
        }
        out.write_all_at(&mbr, 0).context("writing the MBR boot code")?;
    }
    Ok(())
}
