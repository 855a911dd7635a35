//! Signed requests to AWS endpoints over ureq, with retries: throttling, 5xx answers and
//! broken connections are retried with exponential backoff and jitter; other errors come back
//! as [`AwsError`], which names the call, the region and where the credentials came from.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::credentials::{Credentials, Provider};
use super::sigv4;
use super::xml::Element;

/// How many times a call is tried before its error is final.
const ATTEMPTS: u32 = 6;
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(8);

/// Where each service is: AWS's regional endpoints, or one URL for all (moto, a private
/// endpoint).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub url: Option<String>,
}

impl Endpoints {
    pub fn base(&self, service: &str, region: &str) -> String {
        match &self.url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("https://{service}.{region}.amazonaws.com"),
        }
    }

    /// An S3 object's endpoint and path: the bucket's own host on AWS, path style on a
    /// custom endpoint.
    pub fn s3_object(&self, bucket: &str, key: &str, region: &str) -> (String, String) {
        let key = sigv4::uri_encode(key, false);
        match &self.url {
            Some(u) => (u.trim_end_matches('/').to_string(), format!("/{bucket}/{key}")),
            None => (format!("https://{bucket}.s3.{region}.amazonaws.com"), format!("/{key}")),
        }
    }
}

/// The unsigned transport: one connection pool for every call.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
}

impl Http {
    pub fn new() -> Result<Http> {
        let tls = native_tls::TlsConnector::new().context("cannot set up TLS")?;
        let agent = ureq::AgentBuilder::new()
            .tls_connector(Arc::new(tls))
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(120))
            .timeout_write(Duration::from_secs(120))
            .max_idle_connections_per_host(64)
            .redirects(0)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Http { agent })
    }

    /// One HTTP exchange, no retries: `Err` (what went wrong) only when no answer came.
    pub fn exchange(&self, method: &str, url: &str, headers: &[(String, String)], body: &[u8], timeout: Option<Duration>) -> Result<Response, String> {
        let mut req = self.agent.request(method, url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = if body.is_empty() && (method == "GET" || method == "DELETE" || method == "HEAD") { req.call() } else { req.send_bytes(body) };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
        };
        let status = resp.status();
        let headers = resp.headers_names().into_iter().filter_map(|n| resp.header(&n).map(|v| (n.to_ascii_lowercase(), v.to_string()))).collect();
        let mut body = Vec::new();
        use std::io::Read;
        if let Err(e) = resp.into_reader().take(64 << 20).read_to_end(&mut body) {
            return Err(format!("the answer broke off: {e}"));
        }
        Ok(Response { status, headers, body })
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn xml(&self) -> Result<Element> {
        Element::parse(&self.text()).with_context(|| format!("unreadable answer: {}", snippet(&self.text())))
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("unreadable answer: {}", snippet(&self.text())))
    }
}

/// One API call.
pub struct Call<'a> {
    /// The signing name (`ec2`, `ebs`, `s3`, `sts`).
    pub service: &'a str,
    /// What the user would call it in an error (`EBS StartSnapshot`).
    pub action: &'a str,
    pub region: &'a str,
    pub method: &'a str,
    /// Percent-encoded path.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
    /// Hex SHA-256 of the body when the caller has it already.
    pub body_sha256: Option<String>,
    /// An endpoint other than the service's (an S3 bucket's own host).
    pub base: Option<String>,
}

impl<'a> Call<'a> {
    pub fn new(service: &'a str, action: &'a str, region: &'a str, method: &'a str, path: impl Into<String>) -> Call<'a> {
        Call { service, action, region, method, path: path.into(), query: Vec::new(), headers: Vec::new(), body: &[], body_sha256: None, base: None }
    }
}

/// A failed call, as AWS explained it.
#[derive(Debug, Clone)]
pub struct AwsError {
    pub action: String,
    pub region: String,
    pub status: u16,
    pub code: String,
    pub message: String,
    pub credentials: String,
}

impl AwsError {
    pub fn is_auth(&self) -> bool {
        AUTH_CODES.iter().any(|c| self.code == *c) || self.status == 403
    }
}

const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "RequestExpired",
];

const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "EC2ThrottledException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
];

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let msg = if self.message.is_empty() { String::new() } else { format!(": {}", self.message) };
        if self.code.contains("Expired") || self.code == "RequestExpired" {
            write!(
                f,
                "{} in {} was refused because the credentials from {} have expired ({}{msg}): renew them (e.g. `aws sso login`, a new CI token) and run again",
                self.action, self.region, self.credentials, self.code
            )
        } else if self.is_auth() {
            write!(
                f,
                "{} in {} was refused for the credentials from {} ({} {}{msg}): grant that identity the permission, or use other credentials (--aws-profile, AWS_PROFILE)",
                self.action, self.region, self.credentials, self.status, self.code
            )
        } else {
            write!(f, "{} in {} failed ({} {}{msg})", self.action, self.region, self.status, self.code)
        }
    }
}

impl std::error::Error for AwsError {}

/// Signs and sends calls for one set of credentials.
pub struct Client {
    pub http: Http,
    pub endpoints: Endpoints,
    pub credentials: Provider,
}

impl Client {
    /// Sends a call, retrying what is worth retrying. The error is an [`AwsError`] when AWS
    /// answered.
    pub fn send(&self, call: &Call) -> Result<Response> {
        let creds = self.credentials.get()?;
        send(&self.http, &self.endpoints, call, Some(&creds))
    }
}

/// Sends a call signed with `creds` (unsigned without), retrying throttling, 5xx answers and
/// broken connections.
pub fn send(http: &Http, endpoints: &Endpoints, call: &Call, creds: Option<&Credentials>) -> Result<Response> {
    let base = call.base.clone().unwrap_or_else(|| endpoints.base(call.service, call.region));
    let url_base = url::Parts::parse(&base).with_context(|| format!("--aws-endpoint {base:?} is not an http(s) URL"))?;
    let path = format!("{}{}", url_base.path.trim_end_matches('/'), call.path);
    let query: String = call
        .query
        .iter()
        .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k, true), sigv4::uri_encode(v, true)))
        .collect::<Vec<_>>()
        .join("&");
    let url = if query.is_empty() { format!("{}{path}", url_base.origin) } else { format!("{}{path}?{query}", url_base.origin) };
    let payload_hash = call.body_sha256.clone().unwrap_or_else(|| hex::encode(Sha256::digest(call.body)));
    let source = creds.map_or("no credentials (an unsigned call)", |c| c.source.as_str());
    let mut last: Option<anyhow::Error> = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(backoff(attempt));
        }
        let mut headers = call.headers.clone();
        headers.push(("host".into(), url_base.host.clone()));
        if let Some(creds) = creds {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let amz_date = sigv4::amz_date(now);
            headers.push(("x-amz-date".into(), amz_date.clone()));
            headers.push(("x-amz-content-sha256".into(), payload_hash.clone()));
            if let Some(t) = &creds.session_token {
                headers.push(("x-amz-security-token".into(), t.clone()));
            }
            let auth = sigv4::authorization(
                creds,
                &sigv4::Request { method: call.method, path: &path, query: &call.query, headers: &headers, payload_hash: &payload_hash },
                &sigv4::Scope { region: call.region, service: call.service, amz_date: &amz_date },
            );
            headers.push(("authorization".into(), auth));
        }
        match http.exchange(call.method, &url, &headers, call.body, None) {
            Err(t) => {
                last = Some(anyhow::anyhow!("{} in {} could not reach {base}: {t}", call.action, call.region));
            }
            Ok(resp) if resp.status < 300 => return Ok(resp),
            Ok(resp) => {
                let err = error_of(&resp, call, source);
                let retry = resp.status >= 500 || resp.status == 429 || THROTTLING_CODES.contains(&err.code.as_str());
                if !retry {
                    return Err(err.into());
                }
                last = Some(err.into());
            }
        }
    }
    let e = last.unwrap();
    Err(e.context(format!("gave up after {ATTEMPTS} attempts")))
}

fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << attempt.min(10)).min(BACKOFF_CAP);
    // Jitter from the clock's nanoseconds: enough to spread parallel retries.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    exp / 2 + Duration::from_millis(nanos % (exp.as_millis() as u64 / 2 + 1))
}

/// The error an answer carries: EC2's `<Response><Errors><Error>`, S3's and STS's `<Error>`,
/// or a JSON API's `x-amzn-ErrorType` and `message`.
fn error_of(resp: &Response, call: &Call, credentials: &str) -> AwsError {
    let text = resp.text();
    let (mut code, mut message) = (String::new(), String::new());
    if let Ok(doc) = Element::parse(&text) {
        let mut errors = Vec::new();
        doc.find_all("Error", &mut errors);
        if let Some(e) = errors.first() {
            code = e.text_at("Code").unwrap_or_default().to_string();
            message = e.text_at("Message").unwrap_or_default().to_string();
        }
    } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        message = v.get("message").or_else(|| v.get("Message")).and_then(|m| m.as_str()).unwrap_or_default().to_string();
        code = v.get("__type").and_then(|m| m.as_str()).unwrap_or_default().to_string();
    }
    if let Some(t) = resp.header("x-amzn-errortype") {
        code = t.split(':').next().unwrap_or(t).to_string();
    }
    if code.is_empty() {
        code = format!("HTTP {}", resp.status);
        if message.is_empty() {
            message = snippet(&text);
        }
    }
    AwsError {
        action: call.action.to_string(),
        region: call.region.to_string(),
        status: resp.status,
        code,
        message,
        credentials: credentials.to_string(),
    }
}

fn snippet(text: &str) -> String {
    let t: String = text.chars().take(300).collect();
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The AWS error code of a failed call, if AWS answered.
pub fn error_code(e: &anyhow::Error) -> Option<&str> {
    e.chain().find_map(|c| c.downcast_ref::<AwsError>()).map(|a| a.code.as_str())
}

pub mod url {
    /// An endpoint URL taken apart: `origin` (`scheme://host[:port]`), `host` (as the Host
    /// header carries it) and the path prefix.
    pub struct Parts {
        pub origin: String,
        pub host: String,
        pub path: String,
    }

    impl Parts {
        pub fn parse(url: &str) -> Option<Parts> {
            let (scheme, rest) = url.split_once("://")?;
            if scheme != "http" && scheme != "https" {
                return None;
            }
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            if authority.is_empty() {
                return None;
            }
            let default_port = if scheme == "https" { ":443" } else { ":80" };
            let host = authority.strip_suffix(default_port).unwrap_or(authority).to_string();
            Some(Parts { origin: format!("{scheme}://{authority}"), host, path: path.to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        let p = url::Parts::parse("http://127.0.0.1:5000/prefix/").unwrap();
        assert_eq!((p.origin.as_str(), p.host.as_str(), p.path.as_str()), ("http://127.0.0.1:5000", "127.0.0.1:5000", "/prefix/"));
        let p = url::Parts::parse("https://ebs.eu-west-1.amazonaws.com").unwrap();
        assert_eq!((p.host.as_str(), p.path.as_str()), ("ebs.eu-west-1.amazonaws.com", ""));
        assert!(url::Parts::parse("ftp://x").is_none());
        assert!(url::Parts::parse("localhost:5000").is_none());
    }

    #[test]
    fn errors_are_read_from_each_protocol() {
        let call = Call::new("ec2", "EC2 RegisterImage", "eu-west-1", "POST", "/");
        let ec2 = Response {
            status: 400,
            headers: vec![],
            body: b"<Response><Errors><Error><Code>InvalidAMIName.Duplicate</Code><Message>taken</Message></Error></Errors></Response>".to_vec(),
        };
        let e = error_of(&ec2, &call, "environment");
        assert_eq!((e.code.as_str(), e.message.as_str()), ("InvalidAMIName.Duplicate", "taken"));
        let ebs = Response {
            status: 403,
            headers: vec![("x-amzn-errortype".into(), "AccessDeniedException:http://internal".into())],
            body: br#"{"message":"no"}"#.to_vec(),
        };
        let e = error_of(&ebs, &call, "profile 'ci'");
        assert!(e.is_auth());
        let text = e.to_string();
        assert!(text.contains("profile 'ci'") && text.contains("AccessDeniedException") && text.contains("eu-west-1"), "{text}");
    }
}
