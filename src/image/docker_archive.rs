//! `docker-archive:`: the tar `docker save` (and `skopeo copy docker-archive:`) writes. It has
//! no registry manifest, so one is synthesised (Docker schema 2) as skopeo does when it reads
//! such an archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::blob::Compression;
use super::manifest::{Descriptor, ImageConfig, DOCKER_MANIFEST};
use super::Transport;

pub(crate) struct DockerArchive {
    what: String,
    file: PathBuf,
    manifest: Vec<u8>,
    /// Blob digest → (offset, size) of the member holding it.
    blobs: HashMap<String, (u64, u64)>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

impl DockerArchive {
    pub fn open(file: &Path, reference: Option<&str>) -> Result<DockerArchive> {
        let what = format!("docker archive {}", file.display());
        let mut f = File::open(file).with_context(|| format!("{what}: cannot open"))?;
        let mut members = HashMap::new();
        for entry in tar::Archive::new(&mut f).entries_with_seek().with_context(|| format!("{what}: not a tar archive"))? {
            let entry = entry.with_context(|| format!("{what}: corrupt tar archive"))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).trim_start_matches("./").to_string();
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        let read = |f: &mut File, name: &str| -> Result<Vec<u8>> {
            let Some(&(off, size)) = members.get(name) else {
                bail!("{what}: member {name} is missing");
            };
            f.seek(SeekFrom::Start(off))?;
            let mut v = Vec::new();
            f.take(size).read_to_end(&mut v)?;
            Ok(v)
        };
        if !members.contains_key("manifest.json") {
            bail!("{what}: not a docker archive (no manifest.json); for OCI archives use oci-archive:");
        }
        let entries: Vec<Entry> = serde_json::from_slice(&read(&mut f, "manifest.json")?)
            .with_context(|| format!("{what}: manifest.json is malformed"))?;
        let tags = |e: &Entry| e.repo_tags.clone().unwrap_or_default();
        let entry = match reference {
            Some(r) => entries.iter().find(|e| tags(e).iter().any(|t| t == r || t.ends_with(&format!("/{r}")))),
            None if entries.len() == 1 => entries.first(),
            None => None,
        };
        let Some(entry) = entry else {
            let all: Vec<String> = entries.iter().flat_map(tags).collect();
            bail!("{what}: name one of its images with docker-archive:FILE:NAME (it has: {})", all.join(", "));
        };

        let config_bytes = read(&mut f, &entry.config)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .with_context(|| format!("{what}: config {} is malformed", entry.config))?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            bail!("{what}: manifest.json lists {} layers, the config {}", entry.layers.len(), config.rootfs.diff_ids.len());
        }
        let mut blobs = HashMap::new();
        let config_digest = super::sha256_digest(&config_bytes);
        blobs.insert(config_digest.clone(), members[&entry.config]);
        let mut layers = Vec::new();
        for (name, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            let Some(&(off, size)) = members.get(name) else {
                bail!("{what}: layer {name} is missing from the archive");
            };
            // docker save writes uncompressed layers, whose digest is the diff_id; a
            // compressed one is hashed here to learn its digest.
            f.seek(SeekFrom::Start(off))?;
            let mut head = [0u8; 4];
            let n = (&mut f).take(4).read(&mut head)?;
            let digest = if Compression::detect("", &head[..n]) == Compression::None {
                diff_id.clone()
            } else {
                f.seek(SeekFrom::Start(off))?;
                let mut h = Sha256::new();
                std::io::copy(&mut (&mut f).take(size), &mut h)?;
                format!("sha256:{}", hex::encode(h.finalize()))
            };
            blobs.insert(digest.clone(), (off, size));
            layers.push(serde_json::json!({
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                "digest": digest,
                "size": size,
            }));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": layers,
        }))?;
        Ok(DockerArchive { what, file: file.to_path_buf(), manifest, blobs })
    }
}

impl Transport for DockerArchive {
    fn root_manifest(&self) -> Result<(Vec<u8>, Option<String>)> {
        Ok((self.manifest.clone(), Some(DOCKER_MANIFEST.to_string())))
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>> {
        let Some(&(off, size)) = self.blobs.get(&desc.digest) else {
            bail!("{}: no blob {}", self.what, desc.digest);
        };
        let mut f = File::open(&self.file)?;
        f.seek(SeekFrom::Start(off))?;
        Ok(Box::new(f.take(size)))
    }

    fn blob_location(&self, desc: &Descriptor) -> Option<(PathBuf, u64)> {
        self.blobs.get(&desc.digest).map(|(off, _)| (self.file.clone(), *off))
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}
