//! qcow2 version 3 with compressed clusters, written in one pass.
//!
//! Layout: header (cluster 0), L1 table, then the data clusters in guest order (compressed
//! clusters packed byte by byte, as qemu packs them; a cluster that does not shrink is stored
//! plainly, cluster-aligned), then the L2 tables, then the refcount blocks and table. Zero
//! clusters stay unallocated. The header and L1 are written last, in the space kept for them.
//! Compression is raw deflate with a 4 KiB window: what qemu writes and all qemu versions read.
//! (The `qcow2-rs` crate reads and writes qcow2 but cannot write compressed clusters.)

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};

use anyhow::Result;

use super::parallel::map_ordered;
use super::rawdisk::RawDisk;
use crate::progress::Stage;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const L2_ENTRIES: u64 = CLUSTER / 8;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
/// Where the compressed-sector count starts in a compressed L2 entry (62 - (bits - 8)).
const CSECTORS_SHIFT: u32 = 62 - (CLUSTER_BITS - 8);
const HEADER_LEN: u32 = 104;
/// 16-bit refcounts.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;

enum Block {
    Zero,
    Compressed(Vec<u8>),
    Plain(Vec<u8>),
}

fn compress(data: &[u8]) -> Result<Block> {
    if data.iter().all(|&b| b == 0) {
        return Ok(Block::Zero);
    }
    let mut c = flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12);
    let mut out = Vec::with_capacity(data.len());
    match c.compress_vec(data, &mut out, flate2::FlushCompress::Finish)? {
        flate2::Status::StreamEnd if out.len() < data.len() => Ok(Block::Compressed(out)),
        _ => Ok(Block::Plain(data.to_vec())),
    }
}

pub fn write(raw: &RawDisk, file: File, stage: &Stage) -> Result<()> {
    let clusters = raw.size.div_ceil(CLUSTER);
    let l1_size = clusters.div_ceil(L2_ENTRIES);
    let l1_offset = CLUSTER;
    let data_start = l1_offset + (l1_size * 8).div_ceil(CLUSTER).max(1) * CLUSTER;

    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.seek(SeekFrom::Start(data_start))?;
    let mut pos = data_start;
    // Guest cluster -> L2 entry; host cluster -> references (compressed clusters can share).
    let mut l2: Vec<u64> = vec![0; clusters as usize];
    let mut refs: Vec<u16> = vec![0; (data_start / CLUSTER) as usize];
    let touch = |refs: &mut Vec<u16>, from: u64, to: u64| {
        for c in from / CLUSTER..=(to - 1) / CLUSTER {
            if refs.len() <= c as usize {
                refs.resize(c as usize + 1, 0);
            }
            refs[c as usize] += 1;
        }
    };
    for r in refs.iter_mut() {
        *r = 1;
    }

    let items = (0..clusters).filter(|&c| raw.has_data(c * CLUSTER, CLUSTER)).map(|c| -> Result<(u64, Vec<u8>)> {
        let mut buf = vec![0u8; CLUSTER as usize];
        raw.read_at(&mut buf, c * CLUSTER)?;
        Ok((c, buf))
    });
    map_ordered(items, 64, |(c, data)| Ok((c, compress(&data)?)), |(c, block)| {
        crate::interrupt::check()?;
        stage.inc(CLUSTER);
        match block {
            Block::Zero => {}
            Block::Compressed(bytes) => {
                let sectors = (pos + bytes.len() as u64 - 1) / 512 - pos / 512;
                l2[c as usize] = COMPRESSED | (sectors << CSECTORS_SHIFT) | pos;
                out.write_all(&bytes)?;
                touch(&mut refs, pos, pos + bytes.len() as u64);
                pos += bytes.len() as u64;
            }
            Block::Plain(bytes) => {
                let aligned = pos.div_ceil(CLUSTER) * CLUSTER;
                out.write_all(&vec![0u8; (aligned - pos) as usize])?;
                l2[c as usize] = COPIED | aligned;
                out.write_all(&bytes)?;
                touch(&mut refs, aligned, aligned + CLUSTER);
                pos = aligned + CLUSTER;
            }
        }
        Ok(())
    })?;

    // L2 tables for the regions that hold data.
    pos = pos.div_ceil(CLUSTER) * CLUSTER;
    out.seek(SeekFrom::Start(pos))?;
    let mut l1 = vec![0u64; l1_size as usize];
    for (i, table) in l2.chunks(L2_ENTRIES as usize).enumerate() {
        if table.iter().all(|&e| e == 0) {
            continue;
        }
        l1[i] = COPIED | pos;
        let mut bytes = vec![0u8; CLUSTER as usize];
        for (j, e) in table.iter().enumerate() {
            bytes[j * 8..j * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        out.write_all(&bytes)?;
        touch(&mut refs, pos, pos + CLUSTER);
        pos += CLUSTER;
    }

    // Refcount blocks, then the table; they count themselves too.
    let used = pos / CLUSTER;
    let (mut blocks, mut table) = (1u64, 1u64);
    loop {
        let need_blocks = (used + blocks + table).div_ceil(REFCOUNTS_PER_BLOCK);
        let need_table = (need_blocks * 8).div_ceil(CLUSTER);
        if (need_blocks, need_table) == (blocks, table) {
            break;
        }
        (blocks, table) = (need_blocks, need_table);
    }
    let blocks_at = pos;
    let table_at = blocks_at + blocks * CLUSTER;
    refs.resize((used + blocks + table) as usize, 0);
    for c in used..used + blocks + table {
        refs[c as usize] = 1;
    }
    for chunk in refs.chunks(REFCOUNTS_PER_BLOCK as usize) {
        let mut bytes = vec![0u8; CLUSTER as usize];
        for (i, r) in chunk.iter().enumerate() {
            bytes[i * 2..i * 2 + 2].copy_from_slice(&r.to_be_bytes());
        }
        out.write_all(&bytes)?;
    }
    let mut rt = vec![0u8; (table * CLUSTER) as usize];
    for b in 0..blocks {
        rt[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&(blocks_at + b * CLUSTER).to_be_bytes());
    }
    out.write_all(&rt)?;

    // The header and L1 table, in the room kept for them.
    out.seek(SeekFrom::Start(l1_offset))?;
    for e in &l1 {
        out.write_all(&e.to_be_bytes())?;
    }
    let mut h = vec![0u8; 112];
    h[0..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
    h[24..32].copy_from_slice(&raw.size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    h[48..56].copy_from_slice(&table_at.to_be_bytes());
    h[56..60].copy_from_slice(&(table as u32).to_be_bytes());
    h[96..100].copy_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    h[100..104].copy_from_slice(&HEADER_LEN.to_be_bytes());
    // 104..112: the end of header extensions (type 0, length 0).
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&h)?;
    out.flush()?;
    Ok(())
}
