//! OCI and Docker schema 2 manifests, indexes / manifest lists, and image configs.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What registries are asked for, in order of preference.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A manifest or an index, as both formats spell them (the fields overlap).
#[derive(Debug, Clone, Deserialize)]
struct AnyManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug, Clone)]
pub enum Parsed {
    Manifest(Manifest),
    Index(Vec<Descriptor>),
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Parses manifest or index JSON; `media_type` is what the transport said (a registry's
/// Content-Type), used when the document does not name itself.
pub fn parse(bytes: &[u8], media_type: Option<&str>, what: &str) -> Result<Parsed> {
    let m: AnyManifest = serde_json::from_slice(bytes).with_context(|| format!("{what}: not a valid manifest"))?;
    if m.schema_version != 2 {
        bail!("{what}: Docker schema {} manifests are not supported (only schema 2 and OCI); re-push the image with a current tool", m.schema_version);
    }
    let mt = m.media_type.clone().or(media_type.map(str::to_string)).unwrap_or_default();
    if let Some(list) = m.manifests {
        if mt.is_empty() || mt == OCI_INDEX || mt == DOCKER_LIST {
            return Ok(Parsed::Index(list));
        }
    }
    match (m.config, m.layers) {
        (Some(config), Some(layers)) => Ok(Parsed::Manifest(Manifest {
            media_type: if mt.is_empty() { OCI_MANIFEST.to_string() } else { mt },
            config,
            layers,
        })),
        _ => bail!("{what}: neither an image manifest nor an index (media type {mt:?})"),
    }
}

/// The OCI architecture name for a kernel/Rust architecture name (`x86_64` → `amd64`).
pub fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" | "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" | "riscv64gc" => "riscv64",
        "x86" | "i686" | "i386" => "386",
        other => other,
    }
}

/// The kernel architecture name for an OCI one (`arm64` → `aarch64`), as kargs.d's
/// `match-architectures` spells it.
pub fn kernel_arch(oci: &str) -> &str {
    match oci {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i686",
        other => other,
    }
}

/// Picks the manifest for `arch` (OCI naming) on linux from an index.
pub fn select_platform<'a>(list: &'a [Descriptor], arch: &str, what: &str) -> Result<&'a Descriptor> {
    let wanted_variant = (arch == "arm64").then_some("v8");
    let candidates: Vec<&Descriptor> = list
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
        .collect();
    let exact = candidates.iter().find(|d| {
        let v = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        v.is_none() || v == wanted_variant
    });
    if let Some(d) = exact.or(candidates.first()) {
        return Ok(d);
    }
    let available: Vec<String> = list
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    bail!(
        "{what} has no image for linux/{arch} (it has: {}); choose one with --target-arch",
        if available.is_empty() { "no platform information".to_string() } else { available.join(", ") }
    )
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct ContainerConfig {
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default()
    }
}

/// Checks a digest string's form before it is used in a path or a URL.
pub fn check_digest(d: &str, what: &str) -> Result<()> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) => Ok(()),
        _ => bail!("{what}: unsupported or malformed digest {d:?} (kiln reads sha256 digests)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_selection() {
        let list: Vec<Descriptor> = serde_json::from_str(
            r#"[{"mediaType":"m","digest":"a","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
                {"mediaType":"m","digest":"b","size":1,"platform":{"architecture":"amd64","os":"linux"}}]"#,
        )
        .unwrap();
        assert_eq!(select_platform(&list, "amd64", "x").unwrap().digest, "b");
        assert_eq!(select_platform(&list, "arm64", "x").unwrap().digest, "a");
        let err = select_platform(&list, "s390x", "img").unwrap_err().to_string();
        assert!(err.contains("linux/arm64/v8") && err.contains("--target-arch"), "{err}");
    }

    #[test]
    fn schema1_is_refused_clearly() {
        let err = parse(br#"{"schemaVersion":1,"name":"x"}"#, None, "m").unwrap_err().to_string();
        assert!(err.contains("schema 1"), "{err}");
    }
}
