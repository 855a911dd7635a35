//! The first stage: read the user's image exactly as podman and bootc would, without podman.
//! Parses the reference, fetches and verifies the manifest, config and layer blobs, picks the
//! platform, and hands out verified, decompressed layer streams.

pub mod blob;
mod auth;
mod cache;
mod docker_archive;
pub mod manifest;
mod oci_layout;
pub mod reference;
mod registry;
mod storage;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub use manifest::{Descriptor, ImageConfig, Manifest};
pub use reference::Source;

use crate::progress::{Progress, Stage};

/// Where an image's manifests and blobs are read from.
pub(crate) trait Transport: Send + Sync {
    /// The manifest or index the reference names, with its media type when the transport
    /// knows it.
    fn root_manifest(&self) -> Result<(Vec<u8>, Option<String>)>;
    /// A manifest an index points at.
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.blob(desc)?.read_to_end(&mut v).with_context(|| format!("reading manifest {}", desc.digest))?;
        Ok(v)
    }
    /// A blob's bytes, not yet verified (the caller verifies).
    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>>;
    /// Where a blob's bytes lie in a local file (path, offset), for reading parts of it;
    /// None when the transport cannot say.
    fn blob_location(&self, _desc: &Descriptor) -> Option<(PathBuf, u64)> {
        None
    }
    /// Makes blobs local ahead of use (registries download them, in parallel, into the cache).
    fn prefetch(&self, _descs: &[Descriptor], _progress: &Progress) -> Result<()> {
        Ok(())
    }
    /// Names the source in messages.
    fn describe(&self) -> String;
}

#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Architecture to pick from an index, OCI naming (`amd64`, `arm64`): the host's unless
    /// the user named one.
    pub arch: String,
    /// The user named the architecture (`--target-arch`): a single image of another one is
    /// refused. Otherwise a single image is taken for its own architecture.
    pub arch_given: bool,
    pub tls_verify: bool,
    /// The content-addressed blob cache for registry pulls.
    pub cache_dir: PathBuf,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            arch: manifest::oci_arch(std::env::consts::ARCH).to_string(),
            arch_given: false,
            tls_verify: true,
            cache_dir: cache::default_dir(),
        }
    }
}

impl OpenOptions {
    pub fn with_arch(mut self, arch: Option<&str>) -> Self {
        if let Some(a) = arch {
            self.arch = manifest::oci_arch(a).to_string();
            self.arch_given = true;
        }
        self
    }
}

/// One layer: its blob descriptor and the digest of its uncompressed tar (from the config).
#[derive(Debug, Clone)]
pub struct Layer {
    pub index: usize,
    pub descriptor: Descriptor,
    pub diff_id: String,
}

impl Layer {
    /// "layer 2/4 (sha256:…)" for messages.
    pub fn describe(&self, count: usize) -> String {
        format!("layer {}/{count} ({})", self.index + 1, self.descriptor.digest)
    }
}

/// An opened image: manifest and config read and checked, layers ready to be streamed.
pub struct Image {
    pub source: Source,
    pub manifest_digest: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
    transport: Box<dyn Transport>,
    /// Per layer: its tar already matched its diff_id (in the sizing pass, which decompresses
    /// it anyway, hashing on another core); reading it again then checks only the blob's
    /// digest, which proves the same bytes, and the decompressing thread does not hash.
    diff_id_checked: Vec<AtomicBool>,
}

impl Image {
    /// Opens `reference` and resolves it to one image manifest for `opts.arch`.
    pub fn open(reference: &str, opts: &OpenOptions) -> Result<Image> {
        let source = Source::parse(reference)?;
        let transport: Box<dyn Transport> = match &source {
            Source::OciDir { dir, tag } => Box::new(oci_layout::Layout::open_dir(dir, tag.as_deref())?),
            Source::OciArchive { file, tag } => Box::new(oci_layout::Layout::open_archive(file, tag.as_deref())?),
            Source::DockerArchive { file, reference } => {
                Box::new(docker_archive::DockerArchive::open(file, reference.as_deref())?)
            }
            Source::Registry(r) => Box::new(registry::Registry::new(r.clone(), opts)?),
            Source::ContainersStorage { root, driver, name } => {
                Box::new(storage::Storage::open(root.as_deref(), driver.as_deref(), name)?)
            }
        };
        let what = transport.describe();
        let (mut bytes, mut media_type) = transport.root_manifest()?;
        let manifest = loop {
            match manifest::parse(&bytes, media_type.as_deref(), &what)? {
                manifest::Parsed::Manifest(m) => break m,
                manifest::Parsed::Index(list) => {
                    let desc = manifest::select_platform(&list, &opts.arch, &what)?.clone();
                    manifest::check_digest(&desc.digest, &what)?;
                    bytes = transport.manifest(&desc)?;
                    let got = sha256_digest(&bytes);
                    if got != desc.digest {
                        bail!("{what}: manifest {} does not match its digest (got {got})", desc.digest);
                    }
                    media_type = Some(desc.media_type.clone());
                }
            }
        };
        let manifest_digest = sha256_digest(&bytes);
        manifest::check_digest(&manifest.config.digest, &what)?;
        let mut config_bytes = Vec::new();
        blob::Verified::new(
            transport.blob(&manifest.config)?,
            &manifest.config.digest,
            Some(manifest.config.size),
            format!("{what}: config {}", manifest.config.digest),
        )
        .read_to_end(&mut config_bytes)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .with_context(|| format!("{what}: config {} is not a valid image config", manifest.config.digest))?;
        if opts.arch_given && !config.architecture.is_empty() && config.architecture != opts.arch {
            bail!(
                "{what} is an image for {}/{}, not {} (--target-arch): pass --target-arch {} or leave it out to take the image for its own architecture",
                config.os,
                config.architecture,
                opts.arch,
                config.architecture
            );
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            bail!(
                "{what}: the manifest lists {} layers but the config {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            );
        }
        let mut layers = Vec::new();
        for (index, (descriptor, diff_id)) in manifest.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
            manifest::check_digest(&descriptor.digest, &what)?;
            manifest::check_digest(diff_id, &what)?;
            layers.push(Layer { index, descriptor: descriptor.clone(), diff_id: diff_id.clone() });
        }
        Ok(Image {
            source,
            manifest_digest,
            manifest_bytes: bytes,
            manifest,
            config_bytes,
            config,
            diff_id_checked: layers.iter().map(|_| AtomicBool::new(false)).collect(),
            layers,
            transport,
        })
    }

    pub fn describe(&self) -> String {
        self.transport.describe()
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.config.labels()
    }

    /// Makes every layer blob local (a no-op except for registries, which download them in
    /// parallel into the cache).
    pub fn fetch_layers(&self, progress: &Progress) -> Result<()> {
        let descs: Vec<Descriptor> = self.layers.iter().map(|l| l.descriptor.clone()).collect();
        self.transport.prefetch(&descs, progress)
    }

    /// Layer `i` as its uncompressed tar stream. The blob's digest and the tar's diff_id are
    /// verified as the stream is read: the reader fails at its end if either differs, so the
    /// consumer must read it to the end (see [`blob::drain`]).
    /// Progress counts compressed bytes read.
    pub fn layer_tar(&self, i: usize, stage: Option<&Stage>) -> Result<Box<dyn Read + Send>> {
        let layer = &self.layers[i];
        let what = format!("{}: {}", self.describe(), layer.describe(self.layers.len()));
        let mut raw = self.transport.blob(&layer.descriptor).with_context(|| what.clone())?;
        if let Some(stage) = stage {
            raw = Box::new(blob::Counted { inner: raw, stage: stage.clone() });
        }
        // Three stages on threads of their own: read and hash the blob, decompress, and (the
        // caller's) hash the tar and store its files.
        let verified = blob::Verified::new(raw, &layer.descriptor.digest, Some(layer.descriptor.size), what.clone());
        let (compression, tar) = blob::decompress(blob::pipelined(Box::new(verified)), &layer.descriptor.media_type)
            .with_context(|| format!("{what}: reading"))?;
        let tar_is_blob = compression == blob::Compression::None && layer.diff_id == layer.descriptor.digest;
        let stream: Box<dyn Read + Send> = if tar_is_blob || self.diff_id_checked[i].load(Ordering::SeqCst) {
            tar
        } else {
            Box::new(blob::Verified::diff_id(tar, &layer.diff_id, format!("{what}: uncompressed tar (diff_id)")))
        };
        Ok(Box::new(blob::pipelined(stream)))
    }

    /// A blob as it was published: its local file when it is one whole file (an OCI
    /// directory's, the registry cache's), so it can be copied without reading it twice.
    pub fn blob_file(&self, d: &Descriptor) -> Option<PathBuf> {
        let (path, offset) = self.transport.blob_location(d)?;
        (offset == 0 && std::fs::metadata(&path).ok()?.len() == d.size).then_some(path)
    }

    /// A blob's bytes as published (not decompressed), checked against its digest as read.
    pub fn raw_blob(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>> {
        let what = format!("{}: blob {}", self.describe(), d.digest);
        let raw = self.transport.blob(d).with_context(|| what.clone())?;
        Ok(Box::new(blob::Verified::new(raw, &d.digest, Some(d.size), what)))
    }

    /// The size of layer `i`'s uncompressed tar, if known without decompressing it: an
    /// uncompressed layer's own size, or a gzip layer's trailer (its size modulo 4 GiB, trusted
    /// only when it is larger than the compressed size: a multi-member stream's last trailer
    /// covers only its last member).
    pub fn uncompressed_size_hint(&self, i: usize) -> Option<u64> {
        let d = &self.layers[i].descriptor;
        let (path, offset) = self.transport.blob_location(d)?;
        let f = std::fs::File::open(path).ok()?;
        use std::os::unix::fs::FileExt;
        let mut head = [0u8; 4];
        f.read_exact_at(&mut head, offset).ok()?;
        match blob::Compression::detect(&d.media_type, &head) {
            blob::Compression::None => Some(d.size),
            blob::Compression::Gzip => {
                let mut tail = [0u8; 4];
                f.read_exact_at(&mut tail, offset + d.size - 4).ok()?;
                Some(u32::from_le_bytes(tail) as u64).filter(|&n| n > d.size)
            }
            blob::Compression::Zstd => None,
        }
    }

    /// What the layers' uncompressed tars hold at least, without decompressing any: the sizes
    /// they declare, and for the others their compressed size.
    pub fn uncompressed_size_lower_bound(&self) -> u64 {
        (0..self.layers.len()).map(|i| self.uncompressed_size_hint(i).unwrap_or(self.layers[i].descriptor.size)).sum()
    }

    /// The total size of the layers' uncompressed tars: hints where there are, counting the
    /// other layers by decompressing them, on every core. The tars are checked against their
    /// diff_ids here (hashed on a thread beside the decompressing one), so the pass that uses
    /// their bytes checks only the blobs' digests.
    pub fn uncompressed_size(&self) -> Result<u64> {
        let unknown: Vec<usize> = (0..self.layers.len()).filter(|&i| self.uncompressed_size_hint(i).is_none()).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let count = |i: usize| -> Result<u64> {
            let d = &self.layers[i].descriptor;
            let raw = self.transport.blob(d)?;
            let (_, tar) = blob::decompress(raw, &d.media_type)?;
            // The caller's context names the image and the layer.
            let size = blob::count(blob::Verified::diff_id(blob::pipelined(tar), &self.layers[i].diff_id, "uncompressed tar (diff_id)"))?;
            self.diff_id_checked[i].store(true, Ordering::SeqCst);
            Ok(size)
        };
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(unknown.len());
        let counted: Vec<Result<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut sum = 0;
                        while let Some(&i) = unknown.get(next.fetch_add(1, Ordering::SeqCst)) {
                            sum += count(i).with_context(|| format!("{}: {}", self.describe(), self.layers[i].describe(self.layers.len())))?;
                        }
                        Ok(sum)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("counting a layer's size failed (the panic above)")))).collect()
        });
        let mut total: u64 = (0..self.layers.len()).filter_map(|i| self.uncompressed_size_hint(i)).sum();
        for c in counted {
            total += c?;
        }
        Ok(total)
    }

    /// Why this image cannot be baked, judged from its labels (the kernel is checked on the
    /// tree): bootc images carry `containers.bootc=1`, older ostree ones `ostree.bootable`.
    pub fn bootable_label(&self) -> Option<&'static str> {
        let labels = self.labels();
        let yes = |k: &str| labels.get(k).is_some_and(|v| v == "1" || v == "true");
        if yes("containers.bootc") {
            Some("containers.bootc")
        } else if yes("ostree.bootable") {
            Some("ostree.bootable")
        } else {
            None
        }
    }

    pub fn require_bootable_label(&self) -> Result<()> {
        if self.bootable_label().is_none() {
            bail!(
                "{} is not a bootable container image: it has neither the label containers.bootc=1 \
                 nor ostree.bootable=1 (build it FROM a bootc base image)",
                self.describe()
            );
        }
        Ok(())
    }
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
