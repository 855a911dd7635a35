//! Identifiers of a disk (GUIDs, filesystem UUIDs, FAT volume ids, hash seeds): derived from
//! `--seed` and what they are for, so one seed always gives the same ones; without a seed,
//! from a random one.

use std::io::Read;

use sha2::{Digest, Sha256};

pub struct Ids {
    seed: Vec<u8>,
    seeded: bool,
}

impl Ids {
    pub fn from_seed(seed: Option<&str>) -> Ids {
        match seed {
            Some(s) => Ids { seed: s.as_bytes().to_vec(), seeded: true },
            None => {
                let mut r = vec![0u8; 32];
                if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut r)).is_err() {
                    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    r = Sha256::digest(format!("{t:?}{}", std::process::id())).to_vec();
                }
                Ids { seed: r, seeded: false }
            }
        }
    }

    pub fn is_seeded(&self) -> bool {
        self.seeded
    }

    pub fn bytes(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(&self.seed);
        h.update([0]);
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// A version 4 (random) UUID for `purpose`.
    pub fn uuid(&self, purpose: &str) -> String {
        let mut b = self.bytes(purpose);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        uuid::Uuid::from_slice(&b[..16]).expect("16 bytes").hyphenated().to_string()
    }

    pub fn u32(&self, purpose: &str) -> u32 {
        let b = self.bytes(purpose);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// A FAT volume id, written as blkid and fstab spell it (`ABCD-1234`).
    pub fn fat_volume_id(&self, purpose: &str) -> String {
        let v = self.u32(purpose);
        format!("{:04X}-{:04X}", v >> 16, v & 0xffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_and_differ_by_purpose() {
        let a = Ids::from_seed(Some("x"));
        let b = Ids::from_seed(Some("x"));
        assert_eq!(a.uuid("root"), b.uuid("root"));
        assert_ne!(a.uuid("root"), a.uuid("boot"));
        assert_ne!(a.uuid("root"), Ids::from_seed(Some("y")).uuid("root"));
        assert_ne!(Ids::from_seed(None).uuid("root"), Ids::from_seed(None).uuid("root"));
        assert_eq!(&a.uuid("root")[14..15], "4");
        assert_eq!(a.fat_volume_id("esp").len(), 9);
    }
}
