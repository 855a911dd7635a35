//! Registry credentials, found where the containers tools keep them (containers-auth.json(5)):
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json` (root without one:
//! `/run/containers/0/auth.json`), `$XDG_CONFIG_HOME/containers/auth.json`,
//! `~/.docker/config.json`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use base64::Engine;

/// Credentials for one registry and the file they came from (named in errors; never the
/// secret itself).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub file: PathBuf,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, from: {} }}", self.username, self.file.display())
    }
}

/// The auth files searched, in order.
pub fn auth_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut files = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        files.push(f);
    }
    match env("XDG_RUNTIME_DIR") {
        Some(d) => files.push(d.join("containers/auth.json")),
        None => files.push(PathBuf::from(format!("/run/containers/{}/auth.json", unsafe { libc::getuid() }))),
    }
    let home = env("HOME");
    match env("XDG_CONFIG_HOME") {
        Some(d) => files.push(d.join("containers/auth.json")),
        None => {
            if let Some(h) = &home {
                files.push(h.join(".config/containers/auth.json"));
            }
        }
    }
    if let Some(h) = &home {
        files.push(h.join(".docker/config.json"));
    }
    files
}

/// Credentials for `registry`/`repository`: the most specific key of the first file that has
/// one (`host/ns/repo` before `host/ns` before `host`).
pub fn lookup(registry: &str, repository: &str) -> Result<Option<Credentials>> {
    for file in auth_files() {
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(_) => continue,
        };
        let v: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not valid JSON (a containers auth file)", file.display()))?;
        let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else { continue };
        let mut keys = vec![];
        let full = format!("{registry}/{repository}");
        let mut k = full.as_str();
        loop {
            keys.push(k.to_string());
            match k.rfind('/') {
                Some(i) => k = &k[..i],
                None => break,
            }
        }
        if registry == "docker.io" {
            keys.extend(["index.docker.io".to_string(), "https://index.docker.io/v1/".to_string()]);
        }
        for key in keys {
            let entry = auths.get(&key).or_else(|| auths.get(&format!("https://{key}")));
            let Some(auth) = entry.and_then(|e| e.get("auth")).and_then(|a| a.as_str()) else { continue };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .with_context(|| format!("{}: the credentials for {key} are not valid base64 user:password", file.display()))?;
            let (username, password) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
            return Ok(Some(Credentials { username: username.to_string(), password: password.to_string(), file }));
        }
    }
    Ok(None)
}
