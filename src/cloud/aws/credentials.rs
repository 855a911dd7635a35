//! AWS credentials, found where the AWS tools look: `--aws-profile`, the environment
//! (`AWS_ACCESS_KEY_ID`…), web identity (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`: GitHub
//! Actions OIDC, EKS), the profile (`AWS_PROFILE`, else `default`) in the shared config and
//! credentials files (static keys, `role_arn` with `source_profile`, `credential_source` or
//! `web_identity_token_file`), container credentials (ECS) and EC2 instance metadata (IMDSv2).
//! Temporary credentials are renewed before they expire. Errors say where kiln looked and
//! which profile or role it used, never a secret.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

use super::http::{self, Call, Endpoints, Http};
use super::sigv4::parse_iso8601;
use super::xml::Element;

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Unix seconds.
    pub expires: Option<u64>,
    /// Where they came from, for error messages (`profile 'ci'`, `role arn:…`).
    pub source: String,
}

/// Renewed this long before they expire.
const REFRESH_MARGIN: u64 = 300;

/// How to get credentials (again, when they expire).
#[derive(Clone, Debug)]
enum Source {
    Static { access_key_id: String, secret_access_key: String, session_token: Option<String>, described: String },
    WebIdentity { role_arn: String, token_file: PathBuf, session_name: String },
    AssumeRole { role_arn: String, session_name: String, external_id: Option<String>, base: Box<Source>, described: String },
    Container { url: String, token: Option<String>, token_file: Option<PathBuf> },
    Imds { endpoint: String },
}

/// Hands out current credentials to the signer, renewing them when needed.
pub struct Provider {
    source: Source,
    current: Mutex<Option<Credentials>>,
    http: Http,
    endpoints: Endpoints,
    region: String,
}

impl Provider {
    /// Finds credentials for `profile` (the `--aws-profile`), fetching the first set now so a
    /// missing or broken source fails before any work.
    pub fn resolve(profile: Option<&str>, http: Http, endpoints: Endpoints, region: &str) -> Result<Provider> {
        let source = find_source(profile, &Env::process())?;
        let p = Provider { source, current: Mutex::new(None), http, endpoints, region: region.to_string() };
        p.get()?;
        Ok(p)
    }

    /// Credentials valid for at least a few more minutes.
    pub fn get(&self) -> Result<Credentials> {
        let mut current = self.current.lock().unwrap();
        let now = now();
        if let Some(c) = current.as_ref() {
            if c.expires.is_none_or(|e| e > now + REFRESH_MARGIN) {
                return Ok(c.clone());
            }
        }
        let fresh = fetch(&self.source, &self.http, &self.endpoints, &self.region)?;
        *current = Some(fresh.clone());
        Ok(fresh)
    }

    /// What the credentials are (for messages).
    pub fn describe(&self) -> String {
        describe(&self.source)
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn describe(s: &Source) -> String {
    match s {
        Source::Static { described, .. } | Source::AssumeRole { described, .. } => described.clone(),
        Source::WebIdentity { role_arn, token_file, .. } => format!("role {role_arn} (web identity token {})", token_file.display()),
        Source::Container { url, .. } => format!("container credentials ({url})"),
        Source::Imds { .. } => "EC2 instance metadata".to_string(),
    }
}

/// The environment kiln reads, as a map (tests give their own).
pub struct Env(BTreeMap<String, String>);

impl Env {
    pub fn process() -> Env {
        Env(std::env::vars().collect())
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn home(&self) -> PathBuf {
        PathBuf::from(self.get("HOME").unwrap_or("/root"))
    }

    fn config_file(&self) -> PathBuf {
        self.get("AWS_CONFIG_FILE").map(PathBuf::from).unwrap_or_else(|| self.home().join(".aws/config"))
    }

    fn credentials_file(&self) -> PathBuf {
        self.get("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from).unwrap_or_else(|| self.home().join(".aws/credentials"))
    }
}

/// The region named by the profile in use, when `--aws-region`, `AWS_REGION` and
/// `AWS_DEFAULT_REGION` are all absent.
pub fn default_region(profile: Option<&str>) -> Option<String> {
    let env = Env::process();
    if let Some(r) = env.get("AWS_REGION").or(env.get("AWS_DEFAULT_REGION")) {
        return Some(r.to_string());
    }
    let name = profile.or(env.get("AWS_PROFILE")).unwrap_or("default");
    let files = Files::read(&env).ok()?;
    files.profile(name).and_then(|p| p.get("region").cloned())
}

fn find_source(profile: Option<&str>, env: &Env) -> Result<Source> {
    if let Some(name) = profile {
        let files = Files::read(env)?;
        return profile_source(name, &files, env, 0);
    }
    if let (Some(id), Some(secret)) = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Source::Static {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
            session_token: env.get("AWS_SESSION_TOKEN").map(String::from),
            described: "the environment (AWS_ACCESS_KEY_ID)".into(),
        });
    }
    if let (Some(role), Some(file)) = (env.get("AWS_ROLE_ARN"), env.get("AWS_WEB_IDENTITY_TOKEN_FILE")) {
        return Ok(Source::WebIdentity {
            role_arn: role.into(),
            token_file: file.into(),
            session_name: env.get("AWS_ROLE_SESSION_NAME").unwrap_or("kiln").into(),
        });
    }
    let files = Files::read(env)?;
    let name = env.get("AWS_PROFILE").unwrap_or("default");
    if files.profile(name).is_some() {
        return profile_source(name, &files, env, 0);
    } else if env.get("AWS_PROFILE").is_some() {
        bail!("AWS_PROFILE names profile {name:?}, which is in neither {} nor {}", files.config.display(), files.credentials.display());
    }
    if let Some(c) = container_source(env) {
        return Ok(c);
    }
    if env.get("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        bail!(no_credentials(&files, "EC2 instance metadata is disabled (AWS_EC2_METADATA_DISABLED)"));
    }
    let endpoint = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or("http://169.254.169.254").trim_end_matches('/').to_string();
    // Only worth trying when something answers there: off EC2 this fails within a second.
    let http = Http::new()?;
    match imds_token(&http, &endpoint) {
        Ok(_) => Ok(Source::Imds { endpoint }),
        Err(e) => bail!(no_credentials(&files, &format!("no EC2 instance metadata at {endpoint} ({e})"))),
    }
}

fn no_credentials(files: &Files, imds: &str) -> String {
    format!(
        "no AWS credentials found. kiln looked at: the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), web identity (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE), the profile (AWS_PROFILE, else 'default') in {} and {}, container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI); {imds}. Set one of them or pass --aws-profile NAME",
        files.config.display(),
        files.credentials.display()
    )
}

fn container_source(env: &Env) -> Option<Source> {
    let url = match (env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"), env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")) {
        (Some(rel), _) => format!("http://169.254.170.2{rel}"),
        (None, Some(full)) => full.to_string(),
        (None, None) => return None,
    };
    Some(Source::Container {
        url,
        token: env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(String::from),
        token_file: env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").map(PathBuf::from),
    })
}

/// The shared config and credentials files, parsed.
struct Files {
    config: PathBuf,
    credentials: PathBuf,
    /// Profile name → settings, from both files (the credentials file wins).
    profiles: BTreeMap<String, BTreeMap<String, String>>,
}

impl Files {
    fn read(env: &Env) -> Result<Files> {
        let (config, credentials) = (env.config_file(), env.credentials_file());
        let mut profiles: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (path, is_config) in [(&config, true), (&credentials, false)] {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            for (section, settings) in parse_ini(&text).with_context(|| format!("{} is not a valid AWS config file", path.display()))? {
                let name = if is_config {
                    match section.strip_prefix("profile ") {
                        Some(n) => n.trim().to_string(),
                        None if section == "default" => section,
                        None => continue, // sso-session, services…
                    }
                } else {
                    section
                };
                profiles.entry(name).or_default().extend(settings);
            }
        }
        Ok(Files { config, credentials, profiles })
    }

    fn profile(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.profiles.get(name)
    }
}

/// `[section]` / `key = value` lines; indented lines continue a nested setting (skipped).
fn parse_ini(text: &str) -> Result<Vec<(String, BTreeMap<String, String>)>> {
    let mut out: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') || line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some(section) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            out.push((section.trim().to_string(), BTreeMap::new()));
        } else if let Some((k, v)) = trimmed.split_once('=') {
            let Some((_, settings)) = out.last_mut() else { bail!("line {}: a setting before any [section]", n + 1) };
            settings.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        } else {
            bail!("line {}: expected [section] or key = value", n + 1);
        }
    }
    Ok(out)
}

fn profile_source(name: &str, files: &Files, env: &Env, depth: usize) -> Result<Source> {
    if depth > 5 {
        bail!("profile {name:?}: source_profile chain is too long (a loop?)");
    }
    let p = files
        .profile(name)
        .with_context(|| format!("profile {name:?} is in neither {} nor {}", files.config.display(), files.credentials.display()))?;
    let keys = || -> Option<Source> {
        Some(Source::Static {
            access_key_id: p.get("aws_access_key_id")?.clone(),
            secret_access_key: p.get("aws_secret_access_key")?.clone(),
            session_token: p.get("aws_session_token").cloned(),
            described: format!("profile '{name}'"),
        })
    };
    let Some(role_arn) = p.get("role_arn") else {
        if let Some(s) = keys() {
            return Ok(s);
        }
        if p.contains_key("sso_session") || p.contains_key("sso_start_url") {
            bail!("profile {name:?} uses AWS IAM Identity Center (SSO), which kiln does not read: export the session with `eval \"$(aws configure export-credentials --profile {name} --format env)\"`");
        }
        if p.contains_key("credential_process") {
            bail!("profile {name:?} uses credential_process, which kiln does not run: export the credentials with `eval \"$(aws configure export-credentials --profile {name} --format env)\"`");
        }
        bail!("profile {name:?} has no credentials: it needs aws_access_key_id and aws_secret_access_key, or role_arn with source_profile");
    };
    let session_name = p.get("role_session_name").cloned().unwrap_or_else(|| "kiln".into());
    if let Some(file) = p.get("web_identity_token_file") {
        return Ok(Source::WebIdentity { role_arn: role_arn.clone(), token_file: file.into(), session_name });
    }
    let (base, via) = if let Some(src) = p.get("source_profile") {
        let base = if src == name {
            keys().with_context(|| format!("profile {name:?} is its own source_profile but has no keys"))?
        } else {
            profile_source(src, files, env, depth + 1)?
        };
        (base, format!("source profile '{src}'"))
    } else if let Some(cs) = p.get("credential_source") {
        let base = match cs.as_str() {
            "Environment" => find_source(None, &Env(env.0.iter().filter(|(k, _)| k.starts_with("AWS_ACCESS") || k.starts_with("AWS_SECRET") || k.starts_with("AWS_SESSION")).map(|(k, v)| (k.clone(), v.clone())).collect()))?,
            "EcsContainer" => container_source(env).context("credential_source EcsContainer, but AWS_CONTAINER_CREDENTIALS_* is not set")?,
            "Ec2InstanceMetadata" => Source::Imds { endpoint: env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or("http://169.254.169.254").trim_end_matches('/').into() },
            other => bail!("profile {name:?}: unknown credential_source {other:?} (Environment, Ec2InstanceMetadata or EcsContainer)"),
        };
        (base, format!("credential_source {cs}"))
    } else {
        bail!("profile {name:?} has role_arn but neither source_profile, credential_source nor web_identity_token_file");
    };
    Ok(Source::AssumeRole {
        role_arn: role_arn.clone(),
        session_name,
        external_id: p.get("external_id").cloned(),
        described: format!("profile '{name}' (role {role_arn} assumed with {via})"),
        base: Box::new(base),
    })
}

fn fetch(source: &Source, http: &Http, endpoints: &Endpoints, region: &str) -> Result<Credentials> {
    let described = describe(source);
    match source {
        Source::Static { access_key_id, secret_access_key, session_token, described } => Ok(Credentials {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.clone(),
            session_token: session_token.clone(),
            expires: None,
            source: described.clone(),
        }),
        Source::WebIdentity { role_arn, token_file, session_name } => {
            let token = std::fs::read_to_string(token_file)
                .with_context(|| format!("cannot read the web identity token {} (AWS_WEB_IDENTITY_TOKEN_FILE)", token_file.display()))?;
            let form = form(&[
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", role_arn),
                ("RoleSessionName", session_name),
                ("WebIdentityToken", token.trim()),
            ]);
            let call = sts_call("STS AssumeRoleWithWebIdentity", region, form.as_bytes());
            let resp = http::send(http, endpoints, &call, None).with_context(|| format!("cannot assume {described}"))?;
            sts_credentials(&resp.xml()?, described)
        }
        Source::AssumeRole { role_arn, session_name, external_id, base, .. } => {
            let base_creds = fetch(base, http, endpoints, region)?;
            let mut params = vec![("Action", "AssumeRole"), ("Version", "2011-06-15"), ("RoleArn", role_arn.as_str()), ("RoleSessionName", session_name.as_str())];
            if let Some(x) = external_id {
                params.push(("ExternalId", x));
            }
            let body = form(&params);
            let call = sts_call("STS AssumeRole", region, body.as_bytes());
            let resp = http::send(http, endpoints, &call, Some(&base_creds)).with_context(|| format!("cannot assume {described}"))?;
            sts_credentials(&resp.xml()?, described)
        }
        Source::Container { url, token, token_file } => {
            let mut headers = Vec::new();
            let token = match (token_file, token) {
                (Some(f), _) => Some(std::fs::read_to_string(f).with_context(|| format!("cannot read {} (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)", f.display()))?.trim().to_string()),
                (None, t) => t.clone(),
            };
            if let Some(t) = token {
                headers.push(("authorization".to_string(), t));
            }
            let resp = http.exchange("GET", url, &headers, &[], Some(Duration::from_secs(5))).map_err(|e| anyhow!("container credentials at {url}: {e}"))?;
            if resp.status != 200 {
                bail!("container credentials at {url} answered {}: {}", resp.status, resp.text());
            }
            json_credentials(&resp.json()?, described)
        }
        Source::Imds { endpoint } => {
            let token = imds_token(http, endpoint)?;
            let headers = vec![("x-aws-ec2-metadata-token".to_string(), token)];
            let get = |path: &str| -> Result<String> {
                let resp = http
                    .exchange("GET", &format!("{endpoint}/latest/meta-data/iam/security-credentials/{path}"), &headers, &[], Some(Duration::from_secs(2)))
                    .map_err(|e| anyhow!("EC2 instance metadata: {e}"))?;
                if resp.status != 200 {
                    bail!("EC2 instance metadata has no role credentials (HTTP {}): attach an instance profile to this machine", resp.status);
                }
                Ok(resp.text())
            };
            let role = get("")?.lines().next().unwrap_or_default().trim().to_string();
            let v: serde_json::Value = serde_json::from_str(&get(&role)?).context("EC2 instance metadata: unreadable credentials")?;
            json_credentials(&v, format!("EC2 instance metadata (role {role})"))
        }
    }
}

fn imds_token(http: &Http, endpoint: &str) -> Result<String> {
    let resp = http
        .exchange("PUT", &format!("{endpoint}/latest/api/token"), &[("x-aws-ec2-metadata-token-ttl-seconds".into(), "21600".into())], b"", Some(Duration::from_secs(1)))
        .map_err(|e| anyhow!("{e}"))?;
    if resp.status != 200 {
        bail!("IMDSv2 token request answered {}", resp.status);
    }
    Ok(resp.text())
}

fn form(params: &[(&str, &str)]) -> String {
    params.iter().map(|(k, v)| format!("{k}={}", super::sigv4::uri_encode(v, true))).collect::<Vec<_>>().join("&")
}

fn sts_call<'a>(action: &'a str, region: &'a str, body: &'a [u8]) -> Call<'a> {
    let mut call = Call::new("sts", action, region, "POST", "/");
    call.headers.push(("content-type".into(), "application/x-www-form-urlencoded; charset=utf-8".into()));
    call.body = body;
    call
}

fn sts_credentials(doc: &Element, source: String) -> Result<Credentials> {
    let mut found = Vec::new();
    doc.find_all("Credentials", &mut found);
    let c = found.first().context("STS answered without credentials")?;
    let field = |n: &str| c.text_at(n).map(String::from).with_context(|| format!("STS answered without {n}"));
    Ok(Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: Some(field("SessionToken")?),
        expires: c.text_at("Expiration").and_then(parse_iso8601),
        source,
    })
}

fn json_credentials(v: &serde_json::Value, source: String) -> Result<Credentials> {
    let field = |n: &str| v.get(n).and_then(|x| x.as_str()).map(String::from);
    Ok(Credentials {
        access_key_id: field("AccessKeyId").with_context(|| format!("{source}: no AccessKeyId"))?,
        secret_access_key: field("SecretAccessKey").with_context(|| format!("{source}: no SecretAccessKey"))?,
        session_token: field("Token"),
        expires: field("Expiration").as_deref().and_then(parse_iso8601),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn profiles_resolve_like_the_aws_cli() {
        let dir = std::env::temp_dir().join(format!("kiln-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config"),
            "[default]\nregion = eu-west-1\n[profile ci]\nrole_arn = arn:aws:iam::123456789012:role/ci\nsource_profile = base\n\
             [profile oidc]\nrole_arn = arn:aws:iam::123456789012:role/gh\nweb_identity_token_file = /tmp/token\n[profile sso]\nsso_session = corp\n\
             s3 =\n  max_concurrent_requests = 4\n[sso-session corp]\nsso_region = us-east-1\n",
        )
        .unwrap();
        std::fs::write(dir.join("credentials"), "[base]\naws_access_key_id = AKIABASE\naws_secret_access_key = s3cret\n").unwrap();
        let e = env(&[("AWS_CONFIG_FILE", dir.join("config").to_str().unwrap()), ("AWS_SHARED_CREDENTIALS_FILE", dir.join("credentials").to_str().unwrap())]);
        match find_source(Some("ci"), &e).unwrap() {
            Source::AssumeRole { role_arn, base, described, .. } => {
                assert_eq!(role_arn, "arn:aws:iam::123456789012:role/ci");
                assert!(matches!(*base, Source::Static { ref access_key_id, .. } if access_key_id == "AKIABASE"));
                assert!(described.contains("profile 'ci'") && described.contains("source profile 'base'") && !described.contains("s3cret"));
            }
            s => panic!("{s:?}"),
        }
        assert!(matches!(find_source(Some("oidc"), &e).unwrap(), Source::WebIdentity { .. }));
        let sso = find_source(Some("sso"), &e).unwrap_err().to_string();
        assert!(sso.contains("export-credentials"), "{sso}");
        let missing = find_source(Some("nope"), &e).unwrap_err().to_string();
        assert!(missing.contains("\"nope\"") && missing.contains("config"), "{missing}");
        // The environment's keys come before the default profile.
        let mut with_keys = env(&[("AWS_ACCESS_KEY_ID", "AKIAENV"), ("AWS_SECRET_ACCESS_KEY", "x")]);
        with_keys.0.extend(e.0.clone());
        assert!(matches!(find_source(None, &with_keys).unwrap(), Source::Static { access_key_id, .. } if access_key_id == "AKIAENV"));
        let nothing = find_source(None, &env(&[("HOME", dir.to_str().unwrap()), ("AWS_EC2_METADATA_DISABLED", "true")])).unwrap_err().to_string();
        assert!(nothing.contains("no AWS credentials found") && nothing.contains("AWS_EC2_METADATA_DISABLED"), "{nothing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ini_errors_name_the_line() {
        let e = parse_ini("[a]\nkey = v\nnonsense\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
    }
}
