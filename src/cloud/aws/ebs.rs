//! The EBS direct APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot): a raw disk becomes
//! a snapshot without S3. Blocks are 512 KiB as the API defines them (whatever BlockSize a
//! server answers); only blocks holding data are sent unless the snapshot is encrypted (an
//! encrypted snapshot's missing blocks would read back as garbage). Workers read the raw
//! sparsely, one block each at a time, so memory is `threads` × 512 KiB whatever the disk.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use base64::Engine;
use sha2::{Digest, Sha256};

use super::http::{Call, Client};
use crate::interrupt;
use crate::output::RawDisk;
use crate::progress::Stage;

/// The EBS direct APIs' block size.
pub const BLOCK_SIZE: u64 = 512 * 1024;

pub struct Ebs<'a> {
    pub client: &'a Client,
    pub region: &'a str,
}

/// What StartSnapshot is given.
pub struct NewSnapshot<'a> {
    pub volume_size_gib: u64,
    pub description: &'a str,
    pub tags: &'a [(String, String)],
    pub encrypted: bool,
    pub kms_key: Option<&'a str>,
    /// Makes a retried StartSnapshot return the same snapshot.
    pub client_token: &'a str,
}

/// What was sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub blocks: u64,
    /// Blocks the volume has.
    pub volume_blocks: u64,
}

impl Ebs<'_> {
    pub fn start_snapshot(&self, s: &NewSnapshot) -> Result<String> {
        let mut body = serde_json::json!({
            "VolumeSize": s.volume_size_gib,
            "Description": s.description,
            "ClientToken": s.client_token,
            "Timeout": 60,
            "Tags": s.tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
        });
        if s.encrypted {
            body["Encrypted"] = true.into();
        }
        if let Some(k) = s.kms_key {
            body["KmsKeyArn"] = k.into();
        }
        let body = body.to_string();
        let mut call = Call::new("ebs", "EBS StartSnapshot", self.region, "POST", "/snapshots");
        call.headers.push(("content-type".into(), "application/json".into()));
        call.body = body.as_bytes();
        let v = self.client.send(&call)?.json()?;
        v["SnapshotId"].as_str().map(String::from).context("StartSnapshot answered without a SnapshotId")
    }

    fn put_block(&self, snapshot: &str, index: u64, data: &[u8], sha256: &[u8; 32]) -> Result<()> {
        let path = format!("/snapshots/{snapshot}/blocks/{index}");
        let mut call = Call::new("ebs", "EBS PutSnapshotBlock", self.region, "PUT", path);
        call.headers.extend([
            ("content-type".to_string(), "application/octet-stream".to_string()),
            ("x-amz-data-length".to_string(), data.len().to_string()),
            ("x-amz-checksum".to_string(), base64::engine::general_purpose::STANDARD.encode(sha256)),
            ("x-amz-checksum-algorithm".to_string(), "SHA256".to_string()),
        ]);
        call.body = data;
        call.body_sha256 = Some(hex::encode(sha256));
        self.client.send(&call).map(drop)
    }

    pub fn complete_snapshot(&self, snapshot: &str, changed_blocks: u64, linear_checksum: &str) -> Result<()> {
        let mut call = Call::new("ebs", "EBS CompleteSnapshot", self.region, "POST", format!("/snapshots/completion/{snapshot}"));
        call.headers.extend([
            ("x-amz-changedblockscount".to_string(), changed_blocks.to_string()),
            ("x-amz-checksum".to_string(), linear_checksum.to_string()),
            ("x-amz-checksum-algorithm".to_string(), "SHA256".to_string()),
            ("x-amz-checksum-aggregation-method".to_string(), "LINEAR".to_string()),
        ]);
        self.client.send(&call).map(drop)
    }

    /// Sends the disk's blocks to `snapshot` on `threads` workers and completes it.
    pub fn upload(&self, snapshot: &str, disk: &RawDisk, send_zero_blocks: bool, threads: usize, stage: &Stage) -> Result<Sent> {
        let volume_blocks = disk.size.div_ceil(BLOCK_SIZE);
        let candidates = if send_zero_blocks { (0..volume_blocks).collect() } else { blocks_with_data(disk) };
        stage.add_total(candidates.len() as u64);
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let digests: Mutex<Vec<(u64, [u8; 32])>> = Mutex::new(Vec::new());
        let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| {
                    let mut buf = vec![0u8; BLOCK_SIZE as usize];
                    let result = (|| -> Result<()> {
                        loop {
                            interrupt::check()?;
                            if stop.load(Ordering::SeqCst) {
                                return Ok(());
                            }
                            let Some(&index) = candidates.get(next.fetch_add(1, Ordering::SeqCst)) else { return Ok(()) };
                            disk.read_at(&mut buf, index * BLOCK_SIZE)?;
                            if send_zero_blocks || buf.iter().any(|&b| b != 0) {
                                let sha: [u8; 32] = Sha256::digest(&buf).into();
                                self.put_block(snapshot, index, &buf, &sha).with_context(|| format!("sending block {index} of {}", disk.path.display()))?;
                                digests.lock().unwrap().push((index, sha));
                            }
                            stage.inc(1);
                        }
                    })();
                    if let Err(e) = result {
                        stop.store(true, Ordering::SeqCst);
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap() {
            return Err(e);
        }
        interrupt::check()?;
        let mut digests = digests.into_inner().unwrap();
        digests.sort_by_key(|(i, _)| *i);
        let checksum = linear_checksum(digests.iter().map(|(_, d)| d));
        self.complete_snapshot(snapshot, digests.len() as u64, &checksum)?;
        Ok(Sent { blocks: digests.len() as u64, volume_blocks })
    }
}

/// Indices of the blocks that overlap the disk's data extents (holes are never read).
pub fn blocks_with_data(disk: &RawDisk) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for &(off, len) in &disk.extents {
        let (first, last) = (off / BLOCK_SIZE, (off + len - 1) / BLOCK_SIZE);
        let from = match out.last() {
            Some(&l) if l >= first => l + 1,
            _ => first,
        };
        out.extend(from..=last);
    }
    out
}

/// The LINEAR aggregate: SHA-256 over the blocks' SHA-256 digests in block order, base64.
pub fn linear_checksum<'a>(digests: impl Iterator<Item = &'a [u8; 32]>) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Size of the snapshot in whole GiB (what StartSnapshot takes).
pub fn volume_size_gib(disk_bytes: u64) -> u64 {
    disk_bytes.div_ceil(1 << 30).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_checksum_is_sha256_of_digests() {
        let a: [u8; 32] = Sha256::digest(b"a").into();
        let b: [u8; 32] = Sha256::digest(b"b").into();
        let mut cat = Vec::new();
        cat.extend_from_slice(&a);
        cat.extend_from_slice(&b);
        let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&cat));
        assert_eq!(linear_checksum([a, b].iter()), expected);
        assert_ne!(linear_checksum([b, a].iter()), expected);
    }

    #[test]
    fn only_blocks_overlapping_data_are_candidates() {
        use std::os::unix::fs::FileExt;
        let path = std::env::temp_dir().join(format!("kiln-ebs-blocks-{}.raw", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(&[0x55, 0xaa], 510).unwrap();
        f.write_all_at(b"x", (1 << 20) + 100).unwrap();
        f.write_all_at(&[1u8; 8192], (3 << 20) - 4096).unwrap();
        let disk = RawDisk::open(&path).unwrap();
        // Block 5 ends at 3 MiB; the write spans into block 6.
        assert_eq!(blocks_with_data(&disk), [0, 2, 5, 6]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(volume_size_gib(1), 1);
        assert_eq!(volume_size_gib(1 << 30), 1);
        assert_eq!(volume_size_gib((1 << 30) + 512), 2);
    }
}
