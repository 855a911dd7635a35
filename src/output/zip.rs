//! A ZIP writer (PKWARE's APPNOTE 6.3), for the Asahi package: directories and small files
//! stored, large members deflated on all cores, ZIP64 records where a size or an offset passes
//! 4 GiB. What it writes is what Python's zipfile (the Asahi installer's reader) and Info-ZIP's
//! unzip read.
//!
//! A large member is deflated in blocks, each compressed on its own and ended with a sync
//! flush, so that the blocks simply follow each other in the stream (pigz's way); a final empty
//! block ends it. Its CRC-32 is the blocks' CRCs combined.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};

use anyhow::{ensure, Context, Result};

use super::parallel::map_ordered;

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const ZIP64_END: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EXTRA: u16 = 0x0001;
const STORED: u16 = 0;
const DEFLATED: u16 = 8;
/// Names are UTF-8.
const FLAG_UTF8: u16 = 1 << 11;
/// "Made by" Unix (external attributes hold the mode), version 4.5 (ZIP64).
const MADE_BY: u16 = (3 << 8) | 45;
/// 1980-01-01 00:00, the earliest DOS date: members carry no build time, so the same input
/// gives the same archive.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = (1 << 5) | 1;
/// The empty final block (fixed Huffman, end of block) that closes a block-wise deflate stream.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];
/// Sizes from which a member is given ZIP64 fields: 16 MiB short of 4 GiB, room for what
/// deflate can add to incompressible data (5 bytes a 64 KiB stored block, a sync flush a block).
const ZIP64_FROM: u64 = 0xff00_0000;

struct Member {
    name: String,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    offset: u64,
    mode: u32,
    zip64: bool,
}

pub struct ZipWriter {
    out: BufWriter<File>,
    at: u64,
    members: Vec<Member>,
}

impl ZipWriter {
    /// A zip written into `file` (empty), from its start.
    pub fn new(file: File) -> Result<ZipWriter> {
        Ok(ZipWriter { out: BufWriter::with_capacity(1 << 20, file), at: 0, members: Vec::new() })
    }

    /// A directory member (`name` ends with `/`).
    pub fn add_dir(&mut self, name: &str) -> Result<()> {
        let name = format!("{}/", name.trim_end_matches('/'));
        self.add_stored(&name, &[], 0o40755)
    }

    /// A file member, stored as it is.
    pub fn add_file(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.add_stored(name, data, 0o100644)
    }

    fn add_stored(&mut self, name: &str, data: &[u8], mode: u32) -> Result<()> {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let size = data.len() as u64;
        let zip64 = size >= ZIP64_FROM;
        let offset = self.at;
        self.write_local_header(name, STORED, crc.sum(), size, size, zip64)?;
        self.put(data)?;
        self.members.push(Member { name: name.to_string(), method: STORED, crc: crc.sum(), compressed: size, size, offset, mode, zip64 });
        Ok(())
    }

    /// A file member of `size` bytes, deflated block by block on all cores. `blocks` yields the
    /// content in order; `None` stands for a block of zeros of the given length (read from
    /// nowhere). `done` is told each block's length as it is written.
    pub fn add_deflated(
        &mut self,
        name: &str,
        size: u64,
        blocks: impl Iterator<Item = Result<(usize, Option<Vec<u8>>)>> + Send,
        mut done: impl FnMut(u64) -> Result<()>,
    ) -> Result<()> {
        let zip64 = size >= ZIP64_FROM;
        let offset = self.at;
        self.write_local_header(name, DEFLATED, 0, 0, size, zip64)?;
        let start = self.at;
        let zeros = BlockCache::default();
        let mut crc = 0u32;
        let mut total = 0u64;
        map_ordered(
            blocks,
            16,
            |(len, data): (usize, Option<Vec<u8>>)| match data {
                Some(d) => deflate_block(&d),
                None => zeros.get(len),
            },
            |block: Block| {
                crate::interrupt::check()?;
                crc = crc32_combine(crc, block.crc, block.len);
                total += block.len;
                self.put(&block.deflated)?;
                done(block.len)
            },
        )?;
        self.put(&FINAL_BLOCK)?;
        ensure!(total == size, "{name}: {total} bytes were compressed, but the member was to hold {size}");
        let compressed = self.at - start;
        // Back to the local header for the CRC and the sizes, now known.
        self.out.flush()?;
        let file = self.out.get_mut();
        file.seek(SeekFrom::Start(offset + 14))?;
        let mut fields = Vec::new();
        fields.extend(crc.to_le_bytes());
        fields.extend(small(compressed, zip64).to_le_bytes());
        fields.extend(small(size, zip64).to_le_bytes());
        file.write_all(&fields)?;
        if zip64 {
            file.seek(SeekFrom::Start(offset + 30 + name.len() as u64 + 4))?;
            file.write_all(&[size.to_le_bytes(), compressed.to_le_bytes()].concat())?;
        }
        file.seek(SeekFrom::End(0))?;
        self.members.push(Member { name: name.to_string(), method: DEFLATED, crc, compressed, size, offset, mode: 0o100644, zip64 });
        Ok(())
    }

    /// Writes the central directory and the end records, and closes the file.
    pub fn finish(mut self) -> Result<()> {
        let directory_at = self.at;
        let members = std::mem::take(&mut self.members);
        for m in &members {
            let offset_large = m.offset >= 0xffff_ffff;
            let mut extra = Vec::new();
            if m.zip64 || offset_large {
                let mut fields = Vec::new();
                if m.zip64 {
                    fields.extend(m.size.to_le_bytes());
                    fields.extend(m.compressed.to_le_bytes());
                }
                if offset_large {
                    fields.extend(m.offset.to_le_bytes());
                }
                extra.extend(ZIP64_EXTRA.to_le_bytes());
                extra.extend((fields.len() as u16).to_le_bytes());
                extra.extend(fields);
            }
            let mut h = Vec::with_capacity(46 + m.name.len() + extra.len());
            h.extend(CENTRAL_HEADER.to_le_bytes());
            h.extend(MADE_BY.to_le_bytes());
            h.extend(version_needed(m.method, m.zip64 || offset_large).to_le_bytes());
            h.extend(FLAG_UTF8.to_le_bytes());
            h.extend(m.method.to_le_bytes());
            h.extend(DOS_TIME.to_le_bytes());
            h.extend(DOS_DATE.to_le_bytes());
            h.extend(m.crc.to_le_bytes());
            h.extend(small(m.compressed, m.zip64).to_le_bytes());
            h.extend(small(m.size, m.zip64).to_le_bytes());
            h.extend((m.name.len() as u16).to_le_bytes());
            h.extend((extra.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // comment
            h.extend(0u16.to_le_bytes()); // disk
            h.extend(0u16.to_le_bytes()); // internal attributes
            let dos_dir = if m.name.ends_with('/') { 0x10 } else { 0 };
            h.extend(((m.mode << 16) | dos_dir).to_le_bytes());
            h.extend(small(m.offset, offset_large).to_le_bytes());
            h.extend(m.name.as_bytes());
            h.extend(extra);
            self.put(&h)?;
        }
        let directory_size = self.at - directory_at;
        let count = members.len() as u64;
        if count >= 0xffff || directory_at >= 0xffff_ffff || directory_size >= 0xffff_ffff {
            let end64_at = self.at;
            let mut e = Vec::new();
            e.extend(ZIP64_END.to_le_bytes());
            e.extend(44u64.to_le_bytes());
            e.extend(MADE_BY.to_le_bytes());
            e.extend(45u16.to_le_bytes());
            e.extend([0u8; 8]); // this disk, the directory's disk
            e.extend(count.to_le_bytes());
            e.extend(count.to_le_bytes());
            e.extend(directory_size.to_le_bytes());
            e.extend(directory_at.to_le_bytes());
            e.extend(ZIP64_LOCATOR.to_le_bytes());
            e.extend(0u32.to_le_bytes());
            e.extend(end64_at.to_le_bytes());
            e.extend(1u32.to_le_bytes());
            self.put(&e)?;
        }
        let mut e = Vec::new();
        e.extend(END.to_le_bytes());
        e.extend([0u8; 4]); // this disk, the directory's disk
        e.extend((count.min(0xffff) as u16).to_le_bytes());
        e.extend((count.min(0xffff) as u16).to_le_bytes());
        e.extend((directory_size.min(0xffff_ffff) as u32).to_le_bytes());
        e.extend((directory_at.min(0xffff_ffff) as u32).to_le_bytes());
        e.extend(0u16.to_le_bytes());
        self.put(&e)?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(())
    }

    fn write_local_header(&mut self, name: &str, method: u16, crc: u32, compressed: u64, size: u64, zip64: bool) -> Result<()> {
        let mut h = Vec::with_capacity(30 + name.len() + 20);
        h.extend(LOCAL_HEADER.to_le_bytes());
        h.extend(version_needed(method, zip64).to_le_bytes());
        h.extend(FLAG_UTF8.to_le_bytes());
        h.extend(method.to_le_bytes());
        h.extend(DOS_TIME.to_le_bytes());
        h.extend(DOS_DATE.to_le_bytes());
        h.extend(crc.to_le_bytes());
        h.extend(small(compressed, zip64).to_le_bytes());
        h.extend(small(size, zip64).to_le_bytes());
        h.extend((name.len() as u16).to_le_bytes());
        h.extend((if zip64 { 20u16 } else { 0 }).to_le_bytes());
        h.extend(name.as_bytes());
        if zip64 {
            h.extend(ZIP64_EXTRA.to_le_bytes());
            h.extend(16u16.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend(compressed.to_le_bytes());
        }
        self.put(&h)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.at += bytes.len() as u64;
        Ok(())
    }
}

/// A 32-bit field: the value, or all ones when ZIP64 fields hold it.
fn small(v: u64, zip64: bool) -> u32 {
    if zip64 {
        0xffff_ffff
    } else {
        v as u32
    }
}

fn version_needed(method: u16, zip64: bool) -> u16 {
    match (zip64, method) {
        (true, _) => 45,
        (false, DEFLATED) => 20,
        _ => 10,
    }
}

/// One block's deflate output (sync-flushed, not final), and its input's CRC and length.
#[derive(Clone)]
struct Block {
    deflated: Vec<u8>,
    crc: u32,
    len: u64,
}

fn deflate_block(data: &[u8]) -> Result<Block> {
    let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 << 10));
        }
        let before = c.total_in();
        c.compress_vec(input, &mut out, flate2::FlushCompress::Sync).context("deflate")?;
        input = &input[(c.total_in() - before) as usize..];
        // Done when all input is in and the flush left room to spare (nothing pending).
        if input.is_empty() && out.capacity() > out.len() {
            break;
        }
    }
    let mut crc = flate2::Crc::new();
    crc.update(data);
    Ok(Block { deflated: out, crc: crc.sum(), len: data.len() as u64 })
}

/// The CRC-32 of A followed by B from the CRCs of A and B and B's length: appending B's
/// length in zero bits to A's CRC is a linear map over GF(2), applied here as repeated
/// squarings of the one-zero-bit operator (the method of zlib's crc32_combine).
fn crc32_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    fn times(matrix: &[u32; 32], mut vector: u32) -> u32 {
        let mut sum = 0;
        let mut row = 0;
        while vector != 0 {
            if vector & 1 != 0 {
                sum ^= matrix[row];
            }
            vector >>= 1;
            row += 1;
        }
        sum
    }
    fn square(matrix: &[u32; 32]) -> [u32; 32] {
        std::array::from_fn(|n| times(matrix, matrix[n]))
    }
    if len_b == 0 {
        return crc_a;
    }
    // The operator for one zero bit (the reflected polynomial), then for a zero byte.
    let mut op: [u32; 32] = std::array::from_fn(|n| if n == 0 { 0xedb8_8320 } else { 1 << (n - 1) });
    for _ in 0..3 {
        op = square(&op);
    }
    let mut crc = crc_a;
    let mut len = len_b;
    loop {
        if len & 1 != 0 {
            crc = times(&op, crc);
        }
        len >>= 1;
        if len == 0 {
            break;
        }
        op = square(&op);
    }
    crc ^ crc_b
}

/// Compressed blocks of zeros, made once per length.
#[derive(Default)]
struct BlockCache(std::sync::Mutex<Vec<(usize, Block)>>);

impl BlockCache {
    fn get(&self, len: usize) -> Result<Block> {
        if let Some((_, b)) = self.0.lock().unwrap().iter().find(|(l, _)| *l == len) {
            return Ok(b.clone());
        }
        let b = deflate_block(&vec![0u8; len])?;
        self.0.lock().unwrap().push((len, b.clone()));
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crcs_combine() {
        let crc = |d: &[u8]| {
            let mut c = flate2::Crc::new();
            c.update(d);
            c.sum()
        };
        let (a, b) = (b"hello, ".as_slice(), vec![0u8; 100_000]);
        assert_eq!(crc32_combine(crc(a), crc(&b), b.len() as u64), crc(&[a, &b].concat()));
        assert_eq!(crc32_combine(crc(a), crc(b""), 0), crc(a));
        assert_eq!(crc32_combine(0, crc(a), a.len() as u64), crc(a));
    }

    /// Python's zipfile (the Asahi installer's reader) reads back every member, deflated ones
    /// block by block included, with their CRCs checked.
    #[test]
    fn python_zipfile_reads_it() {
        let dir = std::env::temp_dir().join(format!("kiln-zip-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.zip");
        let mut z = ZipWriter::new(File::create(&path).unwrap()).unwrap();
        z.add_dir("esp").unwrap();
        z.add_file("esp/a.txt", b"hello").unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let blocks: Vec<Result<(usize, Option<Vec<u8>>)>> =
            vec![Ok((1 << 20, Some(data[..1 << 20].to_vec()))), Ok((1 << 20, None)), Ok((data.len() - (1 << 20), Some(data[1 << 20..].to_vec())))];
        let total = (data.len() + (1 << 20)) as u64;
        let mut seen = 0;
        z.add_deflated("root.img", total, blocks.into_iter(), |n| {
            seen += n;
            Ok(())
        })
        .unwrap();
        z.finish().unwrap();
        assert_eq!(seen, total);
        let script = "import sys, zipfile, hashlib\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nprint([(i.filename, i.file_size, i.is_dir()) for i in z.infolist()])\nprint(hashlib.sha256(z.read('root.img')).hexdigest())\n";
        let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("[('esp/', 0, True), ('esp/a.txt', 5, False), ('root.img', {total}, False)]")), "{text}");
        let mut expected = data[..1 << 20].to_vec();
        expected.extend(vec![0u8; 1 << 20]);
        expected.extend(&data[1 << 20..]);
        use sha2::Digest;
        assert!(text.contains(&hex::encode(sha2::Sha256::digest(&expected))), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A member past 4 GiB (a real image's root.img) gets ZIP64 sizes that Python's zipfile
    /// and Info-ZIP's unzip read, CRC included; a member after it is found at its offset.
    #[test]
    fn zip64_members_read_back() {
        let dir = std::env::temp_dir().join(format!("kiln-zip64-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.zip");
        let mut z = ZipWriter::new(File::create(&path).unwrap()).unwrap();
        let block = 4usize << 20;
        let total = (4u64 << 30) + 3 * block as u64;
        let mut data = vec![0u8; block];
        data[..5].copy_from_slice(b"kiln!");
        let blocks = (0..total / block as u64).map(|i| Ok((block, if i == 700 { Some(data.clone()) } else { None })));
        z.add_deflated("root.img", total, blocks, |_| Ok(())).unwrap();
        z.add_file("after.txt", b"after").unwrap();
        z.finish().unwrap();
        // Both readers find the members through the ZIP64 records and read them from their
        // local headers (inflating 4 GiB to check a CRC costs more than it proves here: the
        // combined CRCs have their own test).
        let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nhead = z.open('root.img').read(8)\nprint([(i.filename, i.file_size) for i in z.infolist()], z.read('after.txt'), head)\n";
        let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("[('root.img', {total}), ('after.txt', 5)] b'after' b'\\x00")), "{text}");
        let out = std::process::Command::new("unzip").arg("-t").arg(&path).arg("after.txt").output().unwrap();
        assert!(out.status.success(), "unzip -t: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
