//! Image references: which transport, and where.

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Result};

/// Where an image comes from, parsed from the user's reference string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    OciDir { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`: an OCI image layout in a tar file.
    OciArchive { file: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE[:REF]`: `docker save` output.
    DockerArchive { file: PathBuf, reference: Option<String> },
    /// `docker://REF` or a bare registry reference.
    Registry(RegistryRef),
    /// `containers-storage:[DRIVER@ROOT+RUNROOT]NAME`: podman's local store, read on disk.
    ContainersStorage { root: Option<PathBuf>, driver: Option<String>, name: String },
}

/// A registry reference, normalised as the containers tools do: `quay.io/org/img:tag`,
/// `docker.io/library/debian:12`, `host:5000/repo@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl RegistryRef {
    pub fn parse(s: &str) -> Result<RegistryRef> {
        let s = s.trim_start_matches("//");
        if s.is_empty() {
            bail!("empty image reference");
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !d.starts_with("sha256:") || d.len() != 71 {
                    bail!("reference {s:?}: digest must be sha256:<64 hex digits>");
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(name[last_slash + i + 1..].to_string())),
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || !repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        {
            bail!("reference {s:?}: repository name {repository:?} must be lowercase letters, digits, '.', '_', '-' and '/'");
        }
        if let Some(t) = &tag {
            if t.is_empty() || t.len() > 128 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                bail!("reference {s:?}: invalid tag {t:?}");
            }
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(RegistryRef { registry, repository, tag, digest })
    }

    /// What to ask the registry's manifest endpoint for.
    pub fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl Source {
    pub fn parse(s: &str) -> Result<Source> {
        let (transport, rest) = match s.split_once(':') {
            Some((t, r)) if ["oci", "oci-archive", "docker-archive", "docker", "containers-storage"].contains(&t) => (t, r),
            _ => ("docker", s),
        };
        let path_and_tag = |r: &str| -> (PathBuf, Option<String>) {
            // The tag is what follows the last ':' unless that ':' is part of the path.
            match r.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !p.is_empty() => (PathBuf::from(p), Some(t.to_string())),
                _ => (PathBuf::from(r), None),
            }
        };
        Ok(match transport {
            "oci" => {
                let (dir, tag) = path_and_tag(rest);
                Source::OciDir { dir, tag }
            }
            "oci-archive" => {
                let (file, tag) = path_and_tag(rest);
                Source::OciArchive { file, tag }
            }
            "docker-archive" => {
                let (file, reference) = path_and_tag(rest);
                Source::DockerArchive { file, reference }
            }
            "containers-storage" => parse_storage(rest)?,
            _ => Source::Registry(RegistryRef::parse(rest)?),
        })
    }

    /// The reference as a registry would name it, used as the default target image reference:
    /// a registry reference as is, otherwise the tag or name the local source carries.
    pub fn registry_form(&self) -> Option<String> {
        match self {
            Source::Registry(r) => Some(r.to_string()),
            Source::ContainersStorage { name, .. } => RegistryRef::parse(name).ok().map(|r| r.to_string()),
            Source::DockerArchive { reference: Some(r), .. } => RegistryRef::parse(r).ok().map(|r| r.to_string()),
            _ => None,
        }
    }
}

/// `[DRIVER@ROOT+RUNROOT]NAME` or plain `NAME`.
fn parse_storage(s: &str) -> Result<Source> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((spec, name)) = rest.split_once(']') else {
            bail!("containers-storage reference {s:?}: missing ']' after the store specification");
        };
        let (driver, paths) = match spec.split_once('@') {
            Some((d, p)) => (Some(d.to_string()), p),
            None => (None, spec),
        };
        let root = paths.split('+').next().filter(|p| !p.is_empty()).map(PathBuf::from);
        if name.is_empty() {
            bail!("containers-storage reference {s:?}: no image name");
        }
        return Ok(Source::ContainersStorage { root, driver, name: name.to_string() });
    }
    if s.is_empty() {
        bail!("containers-storage reference: no image name");
    }
    Ok(Source::ContainersStorage { root: None, driver: None, name: s.to_string() })
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let tagged = |f: &mut fmt::Formatter, t: &str, p: &PathBuf, tag: &Option<String>| match tag {
            Some(tag) => write!(f, "{t}:{}:{tag}", p.display()),
            None => write!(f, "{t}:{}", p.display()),
        };
        match self {
            Source::OciDir { dir, tag } => tagged(f, "oci", dir, tag),
            Source::OciArchive { file, tag } => tagged(f, "oci-archive", file, tag),
            Source::DockerArchive { file, reference } => tagged(f, "docker-archive", file, reference),
            Source::Registry(r) => write!(f, "docker://{r}"),
            Source::ContainersStorage { name, .. } => write!(f, "containers-storage:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        RegistryRef::parse(s).unwrap()
    }

    #[test]
    fn registry_references_normalise_like_containers_tools() {
        assert_eq!(reg("debian").to_string(), "docker.io/library/debian:latest");
        assert_eq!(reg("quay.io/org/img:tag").to_string(), "quay.io/org/img:tag");
        assert_eq!(reg("localhost:5000/a/b").to_string(), "localhost:5000/a/b:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = reg(&format!("127.0.0.1:5000/x@{d}"));
        assert_eq!((r.registry.as_str(), r.tag, r.digest.as_deref()), ("127.0.0.1:5000", None, Some(d.as_str())));
        assert!(RegistryRef::parse("Quay.io/UPPER/case").is_err());
        assert!(RegistryRef::parse("x@sha256:short").is_err());
    }

    #[test]
    fn transports() {
        assert_eq!(
            Source::parse("oci:/a/b:latest").unwrap(),
            Source::OciDir { dir: "/a/b".into(), tag: Some("latest".into()) }
        );
        assert_eq!(Source::parse("oci:/a/b").unwrap(), Source::OciDir { dir: "/a/b".into(), tag: None });
        assert!(matches!(Source::parse("docker://quay.io/a/b").unwrap(), Source::Registry(_)));
        assert!(matches!(Source::parse("quay.io/a/b:1").unwrap(), Source::Registry(_)));
        assert_eq!(
            Source::parse("containers-storage:[overlay@/s+/r]localhost/x:1").unwrap(),
            Source::ContainersStorage {
                root: Some("/s".into()),
                driver: Some("overlay".into()),
                name: "localhost/x:1".into()
            }
        );
    }
}
