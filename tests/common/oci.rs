//! Builds small OCI image layouts for tests, including deliberately broken ones (tar entries
//! no well-behaved tool writes), byte by byte.

use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A tar stream assembled from raw headers, so tests can write any path or link target.
#[derive(Default)]
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    /// Adds an entry: `kind` is the tar type flag (b'0' file, b'1' hardlink, b'2' symlink,
    /// b'5' directory, b'6' FIFO).
    pub fn entry(mut self, path: &str, kind: u8, mode: u32, link: &str, data: &[u8]) -> Self {
        self.0.extend_from_slice(&header(path, kind, mode, link, data.len() as u64));
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    pub fn file(self, path: &str, data: &str) -> Self {
        self.entry(path, b'0', 0o644, "", data.as_bytes())
    }
    pub fn dir(self, path: &str) -> Self {
        self.entry(path, b'5', 0o755, "", b"")
    }
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// A ustar header for an entry of `size` bytes.
fn header(path: &str, kind: u8, mode: u32, link: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    let octal = |h: &mut [u8; 512], off: usize, len: usize, v: u64| {
        let s = format!("{:0w$o}\0", v, w = len - 1);
        h[off..off + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, mode as u64);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

pub struct LayerBlob {
    pub tar: Vec<u8>,
    pub gzip: bool,
}

/// Writes an OCI layout with one image tagged `latest`; returns its `oci:` reference.
pub fn write_layout(dir: &Path, layers: &[LayerBlob], labels: serde_json::Value, arch: &str) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let put = |data: &[u8]| -> (String, usize) {
        let d = sha256(data);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
        (d, data.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let blob = if l.gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&l.tar).unwrap();
            e.finish().unwrap()
        } else {
            l.tar.clone()
        };
        let (d, s) = put(&blob);
        let mt = if l.gzip { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" };
        descs.push(json!({"mediaType": mt, "digest": d, "size": s}));
        diff_ids.push(sha256(&l.tar));
    }
    let config = json!({"architecture": arch, "os": "linux", "config": {"Labels": labels},
                        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs});
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    write_index(dir, &md, ms)
}

/// The blob files of a layout's layers, in manifest order.
pub fn layer_blobs(dir: &Path) -> Vec<std::path::PathBuf> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| dir.join("blobs/sha256").join(&d[7..]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap()).unwrap();
    m["layers"].as_array().unwrap().iter().map(|l| blob(l["digest"].as_str().unwrap())).collect()
}

/// Writes into `dir` the image of layout `src` (tag `latest`) with one more layer on top
/// (blobs hardlinked where they can be); returns its `oci:` reference.
pub fn append_layer(src: &Path, dir: &Path, layer: &LayerBlob) -> String {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&layer.tar).unwrap();
    append_blob(src, dir, &e.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip", &sha256(&layer.tar))
}

/// Like [`append_layer`], the layer a zstd stream (one frame without a content size, as
/// streaming encoders write it) of one file at `path` holding `size` zero bytes: much
/// content, nothing that declares how much, in a blob of a few hundred KiB.
pub fn append_zeros_zstd_layer(src: &Path, dir: &Path, path: &str, size: u64) -> String {
    let mut hash = Sha256::new();
    let mut z = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    let mut put = |b: &[u8]| {
        hash.update(b);
        z.write_all(b).unwrap();
    };
    put(&header(path, b'0', 0o644, "", size));
    let chunk = vec![0u8; 1 << 20];
    let mut left = size.div_ceil(512) * 512 + 1024;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        put(&chunk[..n]);
        left -= n as u64;
    }
    let diff_id = format!("sha256:{}", hex::encode(hash.finalize()));
    append_blob(src, dir, &z.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+zstd", &diff_id)
}

fn append_blob(src: &Path, dir: &Path, blob: &[u8], media_type: &str, diff_id: &str) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    for e in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let to = dir.join("blobs/sha256").join(e.file_name());
        if std::fs::hard_link(e.path(), &to).is_err() {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
    let put = |data: &[u8]| -> (String, usize) {
        let d = sha256(data);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
        (d, data.len())
    };
    let read = |d: &str| -> serde_json::Value { serde_json::from_slice(&std::fs::read(src.join("blobs/sha256").join(&d[7..])).unwrap()).unwrap() };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    let tagged = index["manifests"].as_array().unwrap().iter().find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest");
    let mut manifest = read(tagged.expect("a manifest tagged latest")["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    let (d, s) = put(blob);
    manifest["layers"].as_array_mut().unwrap().push(json!({"mediaType": media_type, "digest": d, "size": s}));
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(json!(diff_id));
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = json!(cd);
    manifest["config"]["size"] = json!(cs);
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    write_index(dir, &md, ms)
}

/// The layout's index (one manifest tagged `latest`) and marker; returns its `oci:` reference.
fn write_index(dir: &Path, manifest_digest: &str, manifest_size: usize) -> String {
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    format!("oci:{}:latest", dir.display())
}
