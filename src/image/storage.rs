//! `containers-storage:`: podman's local image store, read on disk with no podman process.
//!
//! The store keeps each layer applied to a directory (`overlay/<id>/diff`, or
//! `vfs/dir/<id>` with the vfs driver) plus a tar-split file: the layer tar's headers and
//! padding with the file payloads left out. Putting the payloads back from the directory gives
//! the original tar byte for byte, so the layer is verified against the config's diff_id like
//! any other. A store holds layers uncompressed, so the image is presented with a synthesised
//! manifest of uncompressed layers, as skopeo presents it when copying out of the store.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Deserialize;

use super::manifest::{Descriptor, ImageConfig, OCI_MANIFEST};
use super::Transport;

const DEFAULT_ROOT: &str = "/var/lib/containers/storage";

pub(crate) struct Storage {
    what: String,
    root: PathBuf,
    driver: String,
    manifest: Vec<u8>,
    config: (String, PathBuf),
    /// Layer diff digest → layer id.
    layers: HashMap<String, String>,
}

#[derive(Deserialize)]
struct StoredImage {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    layer: Option<String>,
}

#[derive(Deserialize)]
struct StoredLayer {
    id: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(rename = "diff-digest", default)]
    diff_digest: Option<String>,
    #[serde(rename = "diff-size", default)]
    diff_size: Option<u64>,
}

impl Storage {
    pub fn open(root: Option<&Path>, driver: Option<&str>, name: &str) -> Result<Storage> {
        let root = root.map(Path::to_path_buf).unwrap_or_else(configured_root);
        let what = format!("containers-storage {} ({})", name, root.display());
        let driver = match driver {
            Some(d) => d.to_string(),
            None if root.join("overlay-images/images.json").exists() => "overlay".to_string(),
            None if root.join("vfs-images/images.json").exists() => "vfs".to_string(),
            None => bail!("{what}: no image store found (no overlay-images/images.json or vfs-images/images.json); is the image pulled as this user?"),
        };
        if driver != "overlay" && driver != "vfs" {
            bail!("{what}: storage driver {driver:?} is not supported (overlay and vfs are)");
        }
        let images: Vec<StoredImage> = read_json(&root.join(format!("{driver}-images/images.json")))?;
        let image = find_image(&images, name).with_context(|| {
            let names: Vec<&str> = images.iter().flat_map(|i| i.names.iter().map(String::as_str)).collect();
            format!("{what}: no such image (the store has: {})", names.join(", "))
        })?;
        let image_dir = root.join(format!("{driver}-images")).join(&image.id);

        // The config is the big-data item named by its digest; the image id is that digest.
        let config_digest = format!("sha256:{}", image.id);
        let config_path = image_dir.join(big_data_name(&config_digest));
        let config_bytes = std::fs::read(&config_path).with_context(|| format!("{what}: cannot read the image config {}", config_path.display()))?;
        if super::sha256_digest(&config_bytes) != config_digest {
            bail!("{what}: the stored config does not match the image id (a damaged store)");
        }
        let config: ImageConfig = serde_json::from_slice(&config_bytes).with_context(|| format!("{what}: malformed config"))?;

        // Layers from the top one down through parents, then bottom-up.
        let stored: Vec<StoredLayer> = read_json(&root.join(format!("{driver}-layers/layers.json")))?;
        let by_id: HashMap<&str, &StoredLayer> = stored.iter().map(|l| (l.id.as_str(), l)).collect();
        let mut chain = Vec::new();
        let mut next = image.layer.clone();
        while let Some(id) = next {
            let Some(l) = by_id.get(id.as_str()) else { bail!("{what}: layer {id} is missing from the store") };
            chain.push(*l);
            next = l.parent.clone();
        }
        chain.reverse();
        if chain.len() != config.rootfs.diff_ids.len() {
            bail!("{what}: the store has {} layers for this image, its config {}", chain.len(), config.rootfs.diff_ids.len());
        }
        let mut layers = HashMap::new();
        let mut descs = Vec::new();
        for (l, diff_id) in chain.iter().zip(&config.rootfs.diff_ids) {
            if l.diff_digest.as_deref() != Some(diff_id.as_str()) {
                bail!("{what}: layer {} holds {:?}, the config expects {diff_id}", l.id, l.diff_digest);
            }
            let Some(size) = l.diff_size else { bail!("{what}: layer {} has no recorded size", l.id) };
            layers.insert(diff_id.clone(), l.id.clone());
            descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": diff_id, "size": size}));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": descs,
        }))?;
        Ok(Storage { what, root, driver, manifest, config: (config_digest, config_path), layers })
    }

    fn layer_dir(&self, id: &str) -> PathBuf {
        match self.driver.as_str() {
            "vfs" => self.root.join("vfs/dir").join(id),
            _ => self.root.join("overlay").join(id).join("diff"),
        }
    }
}

impl Transport for Storage {
    fn root_manifest(&self) -> Result<(Vec<u8>, Option<String>)> {
        Ok((self.manifest.clone(), Some(OCI_MANIFEST.to_string())))
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>> {
        if desc.digest == self.config.0 {
            return Ok(Box::new(File::open(&self.config.1)?));
        }
        let Some(id) = self.layers.get(&desc.digest) else { bail!("{}: no layer {}", self.what, desc.digest) };
        let split = self.root.join(format!("{}-layers/{id}.tar-split.gz", self.driver));
        let f = File::open(&split).with_context(|| format!("{}: cannot open {}", self.what, split.display()))?;
        Ok(Box::new(TarSplit {
            lines: BufReader::new(flate2::read::GzDecoder::new(f)),
            dir: self.layer_dir(id),
            current: Piece::None,
        }))
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// The store's location from storage.conf (`graphroot`), else the default.
fn configured_root() -> PathBuf {
    for conf in ["/etc/containers/storage.conf", "/usr/share/containers/storage.conf"] {
        if let Ok(text) = std::fs::read_to_string(conf) {
            if let Ok(v) = text.parse::<toml::Table>() {
                if let Some(r) = v.get("storage").and_then(|s| s.get("graphroot")).and_then(|r| r.as_str()) {
                    return PathBuf::from(r);
                }
            }
        }
    }
    PathBuf::from(DEFAULT_ROOT)
}

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<T> {
    let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is malformed", p.display()))
}

/// Matches a name as podman resolves short names: exact, `localhost/NAME`, `docker.io/…`,
/// with `:latest` added when untagged; or an image id (prefix of at least 12).
fn find_image<'a>(images: &'a [StoredImage], name: &str) -> Option<&'a StoredImage> {
    let last = name.rsplit('/').next().unwrap_or(name);
    let tagged = if last.contains(':') || name.contains('@') { name.to_string() } else { format!("{name}:latest") };
    let mut candidates = vec![tagged.clone(), format!("localhost/{tagged}"), format!("docker.io/{tagged}"), format!("docker.io/library/{tagged}")];
    candidates.push(name.to_string());
    for c in &candidates {
        if let Some(i) = images.iter().find(|i| i.names.iter().any(|n| n == c)) {
            return Some(i);
        }
    }
    let id = name.trim_start_matches("sha256:");
    if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return images.iter().find(|i| i.id.starts_with(id));
    }
    None
}

/// containers/storage's file name for a big-data item: the key itself when it is only
/// `[.0-9a-z]`, else `=` and its base64.
fn big_data_name(key: &str) -> String {
    if !key.is_empty() && key.bytes().all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase()) {
        key.to_string()
    } else {
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    }
}

/// Reassembles a layer tar from its tar-split record and the layer's directory.
struct TarSplit<R> {
    lines: R,
    dir: PathBuf,
    current: Piece,
}

enum Piece {
    None,
    Bytes(Vec<u8>, usize),
    File(io::Take<File>),
}

#[derive(Deserialize)]
struct SplitEntry {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    payload: Option<String>,
}

impl<R: BufRead> TarSplit<R> {
    fn next_piece(&mut self) -> io::Result<bool> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut line = String::new();
        if self.lines.read_line(&mut line)? == 0 {
            return Ok(false);
        }
        let e: SplitEntry = serde_json::from_str(&line).map_err(|e| bad(format!("tar-split record: {e}")))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        self.current = match e.kind {
            2 => Piece::Bytes(b64.decode(e.payload.unwrap_or_default()).map_err(|e| bad(format!("tar-split segment: {e}")))?, 0),
            1 if e.size == 0 => Piece::None,
            1 => {
                let name = match (e.name, e.name_raw) {
                    (Some(n), _) => n.into_bytes(),
                    (None, Some(raw)) => b64.decode(raw).map_err(|e| bad(format!("tar-split name: {e}")))?,
                    _ => return Err(bad("tar-split file entry without a name".into())),
                };
                let rel = crate::tree::components(&name).map_err(|e| bad(format!("tar-split entry: {e}")))?;
                let mut path = self.dir.clone();
                for c in rel {
                    path.push(std::ffi::OsStr::new(&*String::from_utf8_lossy(&c)));
                }
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| io::Error::new(e.kind(), format!("layer file {}: {e}", path.display())))?;
                Piece::File(f.take(e.size))
            }
            k => return Err(bad(format!("tar-split record of unknown type {k}"))),
        };
        Ok(true)
    }
}

impl<R: BufRead> Read for TarSplit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = match &mut self.current {
                Piece::None => 0,
                Piece::Bytes(b, pos) => {
                    let n = buf.len().min(b.len() - *pos);
                    buf[..n].copy_from_slice(&b[*pos..*pos + n]);
                    *pos += n;
                    n
                }
                Piece::File(f) => f.read(buf)?,
            };
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            if !self.next_piece()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_data_names_match_containers_storage() {
        assert_eq!(big_data_name("manifest"), "manifest");
        assert_eq!(
            big_data_name("sha256:6b03"),
            format!("={}", base64::engine::general_purpose::STANDARD.encode("sha256:6b03"))
        );
    }
}
