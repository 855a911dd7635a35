//! OCI image layouts: a directory (`oci:`) or the same in a tar file (`oci-archive:`), read in
//! place (the archive is indexed once, then blobs are read at their offsets).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::manifest::{self, Descriptor};
use super::Transport;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub(crate) struct Layout {
    what: String,
    files: Files,
    selected: Descriptor,
}

/// Where the layout's files are.
enum Files {
    Dir(PathBuf),
    /// Member name → (offset of its data, size) in the tar file.
    Archive(PathBuf, HashMap<String, (u64, u64)>),
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

impl Layout {
    pub fn open_dir(dir: &Path, tag: Option<&str>) -> Result<Layout> {
        let what = format!("OCI layout {}", dir.display());
        if !dir.join("oci-layout").is_file() {
            bail!("{what}: not an OCI image layout (no oci-layout file); give oci:DIR[:TAG] a directory made by skopeo, buildah or podman");
        }
        Layout::select(what, Files::Dir(dir.to_path_buf()), tag)
    }

    pub fn open_archive(file: &Path, tag: Option<&str>) -> Result<Layout> {
        let what = format!("OCI archive {}", file.display());
        let f = File::open(file).with_context(|| format!("{what}: cannot open"))?;
        let mut members = HashMap::new();
        let mut archive = tar::Archive::new(f);
        for entry in archive.entries_with_seek().with_context(|| format!("{what}: not a tar archive"))? {
            let entry = entry.with_context(|| format!("{what}: corrupt tar archive"))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).trim_start_matches("./").to_string();
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        if !members.contains_key("oci-layout") {
            bail!("{what}: not an OCI archive (no oci-layout member); for `docker save` output use docker-archive:");
        }
        Layout::select(what, Files::Archive(file.to_path_buf(), members), tag)
    }

    fn select(what: String, files: Files, tag: Option<&str>) -> Result<Layout> {
        let mut layout = Layout {
            what,
            files,
            selected: Descriptor { media_type: String::new(), digest: String::new(), size: 0, platform: None, annotations: None },
        };
        let mut index_json = Vec::new();
        layout.open_file("index.json")?.read_to_end(&mut index_json)?;
        let index: Index = serde_json::from_slice(&index_json)
            .with_context(|| format!("{}: index.json is not a valid image index", layout.what))?;
        let name_of = |d: &Descriptor| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).cloned();
        let found = match tag {
            Some(t) => index.manifests.iter().find(|d| name_of(d).as_deref() == Some(t)),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => None,
        };
        let Some(found) = found else {
            let names: Vec<String> = index.manifests.iter().filter_map(name_of).collect();
            match tag {
                Some(t) => bail!("{}: no image tagged {t:?} (tags: {})", layout.what, names.join(", ")),
                None => bail!(
                    "{}: holds {} images; name one with :TAG (tags: {})",
                    layout.what,
                    index.manifests.len(),
                    names.join(", ")
                ),
            }
        };
        manifest::check_digest(&found.digest, &layout.what)?;
        layout.selected = found.clone();
        Ok(layout)
    }

    fn open_file(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        match &self.files {
            Files::Dir(dir) => {
                let p = dir.join(name);
                let f = File::open(&p).with_context(|| format!("{}: cannot open {name}", self.what))?;
                Ok(Box::new(f))
            }
            Files::Archive(file, members) => {
                let Some(&(offset, size)) = members.get(name) else {
                    bail!("{}: has no member {name}", self.what);
                };
                let mut f = File::open(file).with_context(|| format!("{}: cannot open", self.what))?;
                f.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(f.take(size)))
            }
        }
    }
}

impl Transport for Layout {
    fn root_manifest(&self) -> Result<(Vec<u8>, Option<String>)> {
        let bytes = self.manifest(&self.selected)?;
        let got = super::sha256_digest(&bytes);
        if got != self.selected.digest {
            bail!("{}: manifest {} does not match its digest (got {got})", self.what, self.selected.digest);
        }
        Ok((bytes, Some(self.selected.media_type.clone()).filter(|m| !m.is_empty())))
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>> {
        let (algo, hex) = desc.digest.split_once(':').unwrap_or(("sha256", &desc.digest));
        self.open_file(&format!("blobs/{algo}/{hex}"))
            .with_context(|| format!("blob {} is missing from the layout", desc.digest))
    }

    fn blob_location(&self, desc: &Descriptor) -> Option<(PathBuf, u64)> {
        let (algo, hex) = desc.digest.split_once(':')?;
        let name = format!("blobs/{algo}/{hex}");
        match &self.files {
            Files::Dir(dir) => Some((dir.join(name), 0)),
            Files::Archive(file, members) => members.get(&name).map(|(off, _)| (file.clone(), *off)),
        }
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}
