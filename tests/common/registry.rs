//! A local registry for tests: Debian's docker-registry (the distribution project's server) on
//! 127.0.0.1, with or without htpasswd auth, started by the test and stopped when dropped.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "kiln";
pub const PASSWORD: &str = "s3cret-pw";

pub struct Registry {
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Registry {
    pub fn start(dir: &Path, htpasswd: bool) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        if htpasswd {
            super::run(Command::new("htpasswd").args(["-Bbc"]).arg(dir.join("htpasswd")).args([USER, PASSWORD]));
            config += &format!("auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n", dir.join("htpasswd").display());
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("start docker-registry (scripts/setup.sh installs it)");
        wait_for_port(port);
        Registry { port, log, child }
    }

    pub fn push(&self, src: &str, repo: &str, creds: bool) -> String {
        let dest = format!("docker://127.0.0.1:{}/{repo}", self.port);
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        if creds {
            cmd.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        super::run(cmd.arg(src).arg(&dest));
        dest
    }

    /// Lines of the registry's access log for blob downloads.
    pub fn blob_gets(&self) -> usize {
        let mut s = String::new();
        std::fs::File::open(&self.log).unwrap().read_to_string(&mut s).unwrap();
        s.lines().filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:")).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bearer-token front (tests/fixtures/bearer-proxy.py) before an anonymous registry.
pub struct BearerProxy {
    pub port: u16,
    child: Child,
}

impl BearerProxy {
    pub fn start(upstream: u16) -> BearerProxy {
        let port = free_port();
        let child = Command::new("python3")
            .arg(super::repo().join("tests/fixtures/bearer-proxy.py"))
            .args([port.to_string(), upstream.to_string(), USER.into(), PASSWORD.into()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        BearerProxy { port, child }
    }
}

impl Drop for BearerProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A containers auth file holding `user:password` for `host`.
pub fn auth_file(path: &Path, host: &str, user: &str, password: &str) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(path, format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#)).unwrap();
}
