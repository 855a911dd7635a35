//! A moto server for one test, on 127.0.0.1 and a free port, started from the venv
//! `scripts/setup.sh` makes (`KILN_MOTO_VENV`, default /opt/kiln-moto) through the launcher in
//! tests/fixtures (which fills moto's gaps and logs every request), stopped when dropped.
//! boto3 in the same venv is the oracle that reads back what is in the cloud.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::repo;

pub struct Moto {
    child: Child,
    pub url: String,
    log: PathBuf,
    _dir: super::Scratch,
}

pub fn venv() -> PathBuf {
    std::env::var_os("KILN_MOTO_VENV").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/kiln-moto"))
}

impl Moto {
    pub fn start(name: &str) -> Moto {
        let python = venv().join("bin/python");
        assert!(python.exists(), "{} is missing: run scripts/setup.sh (it installs moto)", python.display());
        let dir = super::Scratch::new(&format!("moto-{name}"));
        let log = dir.path().join("requests.jsonl");
        let mut child = Command::new(&python)
            .arg(repo().join("tests/fixtures/moto-server.py"))
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("server.err")).unwrap()))
            .spawn()
            .expect("start moto");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("PORT=").unwrap_or_else(|| {
            let err = std::fs::read_to_string(dir.path().join("server.err")).unwrap_or_default();
            panic!("moto did not start: {line:?}\n{err}")
        });
        Moto { child, url: format!("http://127.0.0.1:{port}"), log, _dir: dir }
    }

    /// Every request the server saw, in order.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Requests for one action.
    pub fn calls(&self, action: &str) -> Vec<Value> {
        self.requests().into_iter().filter(|r| r["action"] == action).collect()
    }

    /// Sets the launcher's faults (see tests/fixtures/moto-server.py).
    pub fn fault(&self, faults: Value) {
        let out = Command::new("curl")
            .args(["-sf", "-X", "POST", "--data-binary"])
            .arg(faults.to_string())
            .arg(format!("{}/_kiln/fault", self.url))
            .output()
            .unwrap();
        assert!(out.status.success(), "setting faults failed");
    }

    /// Runs the boto3 oracle (tests/fixtures/aws-oracle.py) and parses its JSON.
    pub fn oracle(&self, args: &[&str]) -> Value {
        let out = Command::new(venv().join("bin/python"))
            .arg(repo().join("tests/fixtures/aws-oracle.py"))
            .args(args)
            .env("KILN_MOTO_URL", &self.url)
            .output()
            .unwrap();
        assert!(out.status.success(), "aws-oracle {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Images, snapshots and (with a bucket) S3 objects in these regions.
    pub fn state(&self, regions: &[&str], bucket: Option<&str>) -> Value {
        let mut args = vec!["state"];
        args.extend(regions);
        if let Some(b) = bucket {
            args.extend(["--bucket", b]);
        }
        self.oracle(&args)
    }

    /// Asserts that nothing is left in these regions (and bucket).
    pub fn assert_empty(&self, regions: &[&str], bucket: Option<&str>) {
        let s = self.state(regions, bucket);
        for r in regions {
            assert_eq!(s[r]["images"], serde_json::json!([]), "images left in {r}: {s}");
            assert_eq!(s[r]["snapshots"], serde_json::json!([]), "snapshots left in {r}: {s}");
        }
        if bucket.is_some() {
            assert_eq!(s["objects"], serde_json::json!([]), "objects left: {s}");
            assert_eq!(s["multipart_uploads"], serde_json::json!([]), "multipart uploads left: {s}");
        }
    }

    /// Compares a snapshot with a raw disk block by block (ListSnapshotBlocks + GetSnapshotBlock).
    pub fn blocks(&self, snapshot: &str, raw: &Path, all: bool) -> Value {
        let raw = raw.to_str().unwrap();
        let mut args = vec!["blocks", snapshot, raw];
        if all {
            args.push("--all");
        }
        self.oracle(&args)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}
