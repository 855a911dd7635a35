//! fs-verity computed in userspace, SHA-256 over 4 KiB blocks, no salt (the parameters ostree,
//! bootc and composefs use): a file's digest — what the kernel reports through
//! `FS_IOC_MEASURE_VERITY` and `fsverity digest` prints — and, for writing verity files
//! without the kernel, its Merkle tree and descriptor (Documentation/filesystems/fsverity.rst,
//! "Merkle tree" and "File digest computation").
//!
//! [`Hasher`] hashes the tree level by level as the bytes stream in, so memory stays at one
//! block per level whatever the file's size.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

pub const BLOCK_SIZE: usize = 4096;
/// `FS_VERITY_HASH_ALG_SHA256`.
pub const HASH_ALG_SHA256: u8 = 1;
const HASH_SIZE: usize = 32;

/// A streaming fs-verity SHA-256 hasher; write the file's bytes, then [`Hasher::finish`].
#[derive(Default)]
pub struct Hasher {
    /// The partial block of each level: level 0 holds file data, level n+1 the hashes of
    /// level n's blocks.
    levels: Vec<Vec<u8>>,
    /// How many full blocks each level has hashed so far.
    blocks: Vec<u64>,
    size: u64,
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher { levels: vec![Vec::with_capacity(BLOCK_SIZE)], blocks: vec![0], size: 0 }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.size += data.len() as u64;
        while !data.is_empty() {
            let buf = &mut self.levels[0];
            let n = (BLOCK_SIZE - buf.len()).min(data.len());
            buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.levels[0].len() == BLOCK_SIZE {
                self.close_block(0);
            }
        }
    }

    /// Hashes level `l`'s block (zero-padded) into level `l + 1`.
    fn close_block(&mut self, l: usize) {
        let buf = &mut self.levels[l];
        buf.resize(BLOCK_SIZE, 0);
        let h = Sha256::digest(&buf[..]);
        buf.clear();
        self.blocks[l] += 1;
        if self.levels.len() == l + 1 {
            self.levels.push(Vec::with_capacity(BLOCK_SIZE));
            self.blocks.push(0);
        }
        self.levels[l + 1].extend_from_slice(&h);
        if self.levels[l + 1].len() == BLOCK_SIZE {
            self.close_block(l + 1);
        }
    }

    /// The file digest: SHA-256 of the fs-verity descriptor that carries the tree's root hash.
    pub fn finish(mut self) -> [u8; 32] {
        let mut root = [0u8; HASH_SIZE];
        if self.size > 0 {
            // Close every partial block bottom-up until a level holds exactly one hash: the
            // hash of the top block, which is the root.
            let mut l = 0;
            loop {
                if !self.levels[l].is_empty() {
                    self.close_block(l);
                }
                let total = self.blocks[l];
                if total == 1 {
                    root.copy_from_slice(&self.levels[l + 1][..HASH_SIZE]);
                    break;
                }
                l += 1;
            }
        }
        Sha256::digest(descriptor(self.size, &root)).into()
    }
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The fs-verity descriptor (`struct fsverity_descriptor`, no signature) of a file of `size`
/// bytes whose Merkle tree has root hash `root`. The file digest is its SHA-256.
pub fn descriptor(size: u64, root: &[u8; HASH_SIZE]) -> [u8; 256] {
    let mut desc = [0u8; 256];
    desc[0] = 1; // version
    desc[1] = HASH_ALG_SHA256;
    desc[2] = BLOCK_SIZE.trailing_zeros() as u8; // log_blocksize
    desc[3] = 0; // salt_size
    desc[8..16].copy_from_slice(&size.to_le_bytes());
    desc[16..16 + HASH_SIZE].copy_from_slice(root);
    desc
}

/// What a filesystem stores to make a file a verity file.
pub struct Metadata {
    /// The Merkle tree's blocks as stored: the level holding the root's block first, the
    /// hashes of the data blocks last. Empty for a file of one block or less.
    pub tree: Vec<u8>,
    pub descriptor: [u8; 256],
    pub digest: [u8; 32],
}

/// Reads a file through and builds its Merkle tree (about 1/128 of its size) and descriptor.
pub fn metadata(r: &mut dyn Read) -> io::Result<Metadata> {
    let mut leaves = Vec::new();
    let mut size = 0u64;
    let mut block = vec![0u8; BLOCK_SIZE];
    loop {
        let mut n = 0;
        while n < BLOCK_SIZE {
            match r.read(&mut block[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        size += n as u64;
        block[n..].fill(0);
        leaves.extend_from_slice(&Sha256::digest(&block));
        if n < BLOCK_SIZE {
            break;
        }
    }
    let mut root = [0u8; HASH_SIZE];
    let mut levels: Vec<Vec<u8>> = Vec::new();
    if leaves.len() == HASH_SIZE {
        root.copy_from_slice(&leaves);
    } else if !leaves.is_empty() {
        let mut level = leaves;
        loop {
            level.resize(level.len().div_ceil(BLOCK_SIZE) * BLOCK_SIZE, 0);
            let next: Vec<u8> = level.chunks(BLOCK_SIZE).flat_map(Sha256::digest).collect();
            levels.push(level);
            if next.len() == HASH_SIZE {
                root.copy_from_slice(&next);
                break;
            }
            level = next;
        }
    }
    let descriptor = descriptor(size, &root);
    Ok(Metadata { tree: levels.into_iter().rev().flatten().collect(), descriptor, digest: Sha256::digest(descriptor).into() })
}

/// The digest of everything `r` yields.
pub fn digest_reader(r: &mut dyn Read) -> io::Result<[u8; 32]> {
    let mut h = Hasher::new();
    io::copy(r, &mut h)?;
    Ok(h.finish())
}

pub fn digest(data: &[u8]) -> [u8; 32] {
    let mut h = Hasher::new();
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Merkle tree built from the whole input at once, to check the streaming one.
    fn reference(data: &[u8]) -> [u8; 32] {
        let mut root = [0u8; 32];
        if !data.is_empty() {
            let mut level: Vec<u8> = data.to_vec();
            loop {
                let hashes: Vec<u8> = level
                    .chunks(BLOCK_SIZE)
                    .flat_map(|c| {
                        let mut b = c.to_vec();
                        b.resize(BLOCK_SIZE, 0);
                        Sha256::digest(&b).to_vec()
                    })
                    .collect();
                if hashes.len() == 32 {
                    root.copy_from_slice(&hashes);
                    break;
                }
                level = hashes;
            }
        }
        let mut desc = [0u8; 256];
        desc[..4].copy_from_slice(&[1, 1, 12, 0]);
        desc[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        desc[16..48].copy_from_slice(&root);
        Sha256::digest(desc).into()
    }

    #[test]
    fn streaming_matches_whole_tree() {
        // Sizes around block and level boundaries: 128 hashes fill one tree block.
        for size in [0, 1, 4095, 4096, 4097, 128 * 4096, 128 * 4096 + 1, 129 * 4096, 128 * 128 * 4096 + 5] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
            let mut h = Hasher::new();
            for chunk in data.chunks(1000) {
                h.update(chunk);
            }
            let digest = h.finish();
            assert_eq!(digest, reference(&data), "size {size}");
            let m = metadata(&mut data.as_slice()).unwrap();
            assert_eq!(m.digest, digest, "size {size}");
            // The tree: every block but the top one is hashed into the level above.
            let blocks = (size as usize).div_ceil(4096);
            let expected_tree_blocks = if blocks <= 1 { 0 } else { (1..).map(|l| blocks.div_ceil(128usize.pow(l))).take_while(|&n| n > 1).sum::<usize>() + 1 };
            assert_eq!(m.tree.len(), expected_tree_blocks * 4096, "size {size}");
        }
    }

    #[test]
    fn known_digests() {
        // `fsverity digest` of an empty file and of a file holding "hello\n" (fsverity-utils 1.5).
        assert_eq!(hex::encode(digest(b"")), "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95");
    }
}
