//! `docker://`: pulls from registries (the distribution API v2): anonymous, bearer-token and
//! basic auth, retries on transient errors, blobs downloaded in parallel into the
//! content-addressed cache, so a second bake of the same image downloads nothing.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use sha2::{Digest, Sha256};

use super::auth::{self, Credentials};
use super::cache;
use super::manifest::{self, Descriptor};
use super::reference::RegistryRef;
use super::{OpenOptions, Transport};
use crate::pending::PendingFile;
use crate::progress::{Progress, Stage};

const ATTEMPTS: u32 = 4;
const PARALLEL_DOWNLOADS: usize = 4;

pub(crate) struct Registry {
    reference: RegistryRef,
    /// The host the API is served from (`docker.io` is served by `registry-1.docker.io`).
    host: String,
    agent: ureq::Agent,
    tls_verify: bool,
    /// `https`, or `http` once HTTPS failed and TLS verification is off (a local registry).
    scheme: Mutex<&'static str>,
    credentials: Option<Credentials>,
    /// The Authorization header value once authenticated.
    authorization: Mutex<Option<String>>,
    cache_dir: PathBuf,
}

impl Registry {
    pub fn new(reference: RegistryRef, opts: &OpenOptions) -> Result<Registry> {
        let tls = native_tls::TlsConnector::builder()
            .danger_accept_invalid_certs(!opts.tls_verify)
            .danger_accept_invalid_hostnames(!opts.tls_verify)
            .build()
            .context("setting up TLS")?;
        let agent = ureq::AgentBuilder::new()
            .tls_connector(Arc::new(tls))
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(120))
            .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build();
        let host = if reference.registry == "docker.io" { "registry-1.docker.io".to_string() } else { reference.registry.clone() };
        let credentials = auth::lookup(&reference.registry, &reference.repository)?;
        Ok(Registry {
            reference,
            host,
            agent,
            tls_verify: opts.tls_verify,
            scheme: Mutex::new("https"),
            credentials,
            authorization: Mutex::new(None),
            cache_dir: opts.cache_dir.clone(),
        })
    }

    fn what(&self) -> String {
        format!("registry {}", self.reference.registry)
    }

    /// GET `/v2/<repository>/<path>`, authenticating when challenged and retrying transient
    /// failures.
    fn get(&self, path: &str, accept: Option<&str>) -> Result<ureq::Response> {
        let mut authenticated = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let scheme = *self.scheme.lock().unwrap();
            let url = format!("{scheme}://{}/v2/{}/{path}", self.host, self.reference.repository);
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(auth) = self.authorization.lock().unwrap().clone() {
                req = req.set("Authorization", &auth);
            }
            match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if !authenticated => {
                    let challenge = resp.header("WWW-Authenticate").unwrap_or_default().to_string();
                    self.authenticate(&challenge)?;
                    authenticated = true;
                }
                Err(ureq::Error::Status(code @ (401 | 403), _)) => return Err(self.denied(code)),
                Err(ureq::Error::Status(404, _)) => {
                    bail!("{}: {} not found ({url})", self.what(), self.reference)
                }
                Err(ureq::Error::Status(code, resp)) if (code == 429 || code >= 500) && attempt < ATTEMPTS => {
                    let _ = resp.into_string();
                    backoff(attempt);
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let body = resp.into_string().unwrap_or_default();
                    bail!("{}: GET {url} answered {code}: {}", self.what(), body.chars().take(300).collect::<String>())
                }
                Err(ureq::Error::Transport(t)) => {
                    // A plain-HTTP local registry: allowed only without TLS verification, as
                    // the containers tools do.
                    if scheme == "https" && !self.tls_verify {
                        *self.scheme.lock().unwrap() = "http";
                        continue;
                    }
                    if attempt >= ATTEMPTS {
                        let hint = if self.tls_verify { " (a local registry without TLS needs --tls-verify=false)" } else { "" };
                        bail!("{}: cannot reach {url}: {t}{hint}", self.what());
                    }
                    backoff(attempt);
                }
            }
        }
    }

    fn denied(&self, code: u16) -> anyhow::Error {
        match &self.credentials {
            Some(c) => anyhow!(
                "{}: access denied ({code}) for user {:?} with the credentials from {}; check them (podman login {})",
                self.what(),
                c.username,
                c.file.display(),
                self.reference.registry
            ),
            None => {
                let searched: Vec<String> = auth::auth_files().iter().map(|f| f.display().to_string()).collect();
                anyhow!(
                    "{}: access denied ({code}) to {} and no credentials found (searched {}); log in with `podman login {}` or set REGISTRY_AUTH_FILE",
                    self.what(),
                    self.reference.repository,
                    searched.join(", "),
                    self.reference.registry
                )
            }
        }
    }

    /// Answers a `WWW-Authenticate` challenge: fetches a bearer token (with the credentials,
    /// if any) or prepares basic auth.
    fn authenticate(&self, challenge: &str) -> Result<()> {
        let (scheme, params) = parse_challenge(challenge);
        let basic = self.credentials.as_ref().map(|c| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password)))
        });
        let header = match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.clone()).ok_or_else(|| {
                    anyhow!("{}: bearer challenge without a realm: {challenge}", self.what())
                })?;
                let mut req = self.agent.get(&realm);
                if let Some((_, s)) = params.iter().find(|(k, _)| k == "service") {
                    req = req.query("service", s);
                }
                let scope = params
                    .iter()
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
                req = req.query("scope", &scope);
                if let Some(b) = &basic {
                    req = req.set("Authorization", b);
                }
                let resp = match req.call() {
                    Ok(r) => r,
                    Err(ureq::Error::Status(code @ (401 | 403), _)) => return Err(self.denied(code)),
                    Err(e) => bail!("{}: token request to {realm} failed: {e}", self.what()),
                };
                let v: serde_json::Value = serde_json::from_reader(resp.into_reader().take(1 << 20))
                    .with_context(|| format!("{}: token service {realm} sent no JSON", self.what()))?;
                let token = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| anyhow!("{}: token service {realm} sent no token", self.what()))?;
                format!("Bearer {token}")
            }
            "basic" => match basic {
                Some(b) => b,
                None => return Err(self.denied(401)),
            },
            _ => bail!("{}: unsupported authentication challenge {challenge:?}", self.what()),
        };
        *self.authorization.lock().unwrap() = Some(header);
        Ok(())
    }

    /// Downloads a blob into the cache, verifying size and digest before it gets its name
    /// (see `cache`).
    fn download(&self, desc: &Descriptor, stage: Option<&Stage>) -> Result<PathBuf> {
        let path = cache::blob_path(&self.cache_dir, &desc.digest);
        if path.exists() {
            return Ok(path);
        }
        let dir = path.parent().unwrap();
        fs::create_dir_all(dir).with_context(|| format!("cannot create the blob cache {}", dir.display()))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tmp = PendingFile::create(dir, &desc.digest[7..19])?;
            let result = (|| -> Result<()> {
                let resp = self.get(&format!("blobs/{}", desc.digest), None)?;
                let mut body = resp.into_reader().take(desc.size + 1);
                let mut out = BufWriter::with_capacity(1 << 20, tmp.file());
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                loop {
                    let n = match body.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e).context("download interrupted"),
                    };
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n]).with_context(|| format!("writing a blob into {}", dir.display()))?;
                    total += n as u64;
                    if let Some(s) = stage {
                        s.inc(n as u64);
                    }
                }
                let got = format!("sha256:{}", hex::encode(hasher.finalize()));
                if total != desc.size || got != desc.digest {
                    bail!("downloaded {total} bytes with digest {got}, expected {} bytes with {}", desc.size, desc.digest);
                }
                out.flush().with_context(|| format!("writing a blob into {}", dir.display()))?;
                Ok(())
            })();
            match result {
                Ok(()) => {
                    // Another kiln may have stored the same blob meanwhile: replacing it with
                    // the same verified bytes is harmless to its readers.
                    tmp.persist(&path).with_context(|| format!("storing {}", path.display()))?;
                    return Ok(path);
                }
                Err(e) => {
                    drop(tmp);
                    if attempt >= ATTEMPTS {
                        return Err(e.context(format!("{}: blob {}", self.what(), desc.digest)));
                    }
                    backoff(attempt);
                }
            }
        }
    }
}

impl Transport for Registry {
    fn root_manifest(&self) -> Result<(Vec<u8>, Option<String>)> {
        let reference = self.reference.manifest_reference();
        self.fetch_manifest(reference, self.reference.digest.as_deref())
    }

    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        Ok(self.fetch_manifest(&desc.digest, Some(&desc.digest))?.0)
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>> {
        let path = self.download(desc, None)?;
        Ok(Box::new(File::open(&path).with_context(|| format!("cannot open {}", path.display()))?))
    }

    fn blob_location(&self, desc: &Descriptor) -> Option<(PathBuf, u64)> {
        let p = cache::blob_path(&self.cache_dir, &desc.digest);
        p.exists().then_some((p, 0))
    }

    fn prefetch(&self, descs: &[Descriptor], progress: &Progress) -> Result<()> {
        let mut missing: Vec<&Descriptor> =
            descs.iter().filter(|d| !cache::blob_path(&self.cache_dir, &d.digest).exists()).collect();
        // An image may list one blob twice; one download is enough.
        missing.sort_by(|a, b| a.digest.cmp(&b.digest));
        missing.dedup_by(|a, b| a.digest == b.digest);
        if missing.is_empty() {
            return Ok(());
        }
        for p in cache::sweep(&self.cache_dir) {
            progress.info(&format!("removed {}, a partial download left by a kiln that is no longer running", p.display()));
        }
        let stage = progress.stage("download", Some(missing.iter().map(|d| d.size).sum()));
        let next = AtomicUsize::new(0);
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_DOWNLOADS.min(missing.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(d) = missing.get(i) else { return };
                    if let Err(e) = self.download(d, Some(&stage)) {
                        errors.lock().unwrap().push(e);
                        return;
                    }
                });
            }
        });
        if let Some(e) = errors.into_inner().unwrap().into_iter().next() {
            return Err(e);
        }
        stage.finish();
        Ok(())
    }

    fn describe(&self) -> String {
        format!("docker://{}", self.reference)
    }
}

impl Registry {
    fn fetch_manifest(&self, reference: &str, expect: Option<&str>) -> Result<(Vec<u8>, Option<String>)> {
        let resp = self.get(&format!("manifests/{reference}"), Some(&manifest::ACCEPTED.join(", ")))?;
        let media_type = resp.header("Content-Type").map(|m| m.split(';').next().unwrap_or(m).trim().to_string());
        let header_digest = resp.header("Docker-Content-Digest").map(str::to_string);
        let mut bytes = Vec::new();
        resp.into_reader().take(16 << 20).read_to_end(&mut bytes).context("reading the manifest")?;
        let got = super::sha256_digest(&bytes);
        for want in [expect, header_digest.as_deref()].into_iter().flatten() {
            if want.starts_with("sha256:") && want != got {
                bail!("{}: manifest {reference} does not match its digest {want} (got {got})", self.what());
            }
        }
        Ok((bytes, media_type))
    }
}

fn backoff(attempt: u32) {
    std::thread::sleep(Duration::from_millis(500 << attempt.min(4)));
}

/// `Bearer realm="…",service="…"` → ("Bearer", [(realm, …), (service, …)]).
fn parse_challenge(s: &str) -> (String, Vec<(String, String)>) {
    let s = s.trim();
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key, value));
        rest = remaining.trim_start_matches(',').trim();
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull""#);
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "reg".into()),
                ("scope".into(), "repository:a/b:pull".into())
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="kiln-test""#);
        assert_eq!((s.as_str(), p.len()), ("Basic", 1));
    }
}
