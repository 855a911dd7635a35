//! Oracles from Debian sid, run inside the sid test image's base root filesystem: ostree 2026
//! (built with composefs), mkcomposefs and composefs-info, fsck.erofs, setfiles and
//! matchpathcon (libselinux 3.11). The host is Debian 12 and has none of them at these versions.
//!
//! Each run gets a private mount namespace: a tmpfs on the root's `/tmp` and `/run`, and the
//! host directories the command needs bound under `/run/host` at the same paths, so nothing is
//! written into the cached tree and nothing stays mounted when the command ends.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `script` with `sh -c` inside the sid root, with each of `binds` (host paths) visible at
/// `/run/host<path>`. Returns the output; the caller checks the status.
pub fn run(script: &str, binds: &[&Path]) -> Output {
    let root = super::sid_image().join("base");
    let root = root.canonicalize().expect("the sid test image's base");
    let mut setup = String::from("set -e; mount --make-rprivate /; ");
    setup += &format!("mount -t tmpfs kiln-oracle-tmp {0}/tmp; mount -t tmpfs kiln-oracle-run {0}/run; ", root.display());
    setup += &format!("mount -t proc proc {0}/proc; mount --rbind /dev {0}/dev; ", root.display());
    for b in binds {
        let b = b.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", b.display()));
        let at = format!("{}/run/host{}", root.display(), b.display());
        let kind = if b.is_dir() { "mkdir -p".to_string() } else { format!("mkdir -p \"$(dirname '{at}')\"; touch") };
        setup += &format!("{kind} '{at}'; mount --bind '{}' '{at}'; ", b.display());
    }
    let inner = format!("cd /; {script}");
    setup += &format!("exec chroot {} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 sh -c {}", root.display(), shell_quote(&inner));
    Command::new("unshare").args(["--mount", "--fork", "sh", "-c", &setup]).output().expect("run unshare")
}

/// `path` as the sid root sees a bound host path.
pub fn host(path: &Path) -> String {
    format!("/run/host{}", path.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", path.display())).display())
}

/// Like [`run`], panicking with the output when the command fails; returns stdout.
pub fn run_ok(script: &str, binds: &[&Path]) -> String {
    let out = run(script, binds);
    assert!(
        out.status.success(),
        "in the sid root: {script} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
