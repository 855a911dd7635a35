//! Shared test support: the test image, scratch directories, the boot harness, and checks that
//! nothing (loop device, mount) was left behind.
#![allow(dead_code)]

pub mod boot;
pub mod efivars;
pub mod gpt;
pub mod hybrid_iso;
pub mod moto;
pub mod oci;
pub mod registry;
pub mod running;
pub mod sid;
pub mod treediff;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository's top directory.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The project's shared, read-only material (the reference pipeline, the OVF schemas):
/// `$KILN_SHARED`, else `../shared` beside the repository, else `/work/shared`.
pub fn shared_dir() -> PathBuf {
    let candidates = [
        std::env::var_os("KILN_SHARED").map(PathBuf::from),
        Some(repo().join("../shared")),
        Some(PathBuf::from("/work/shared")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("bench/reference-pipeline.sh").exists())
        .expect("the shared directory (bench/reference-pipeline.sh): set KILN_SHARED")
}

/// The bookworm test image (built once and cached outside the repository by
/// scripts/test-image/build.sh): the directory holding `oci/`, `oci-gzip/`,
/// `image.oci-archive` and `base` (the root filesystem it was made from).
pub fn test_image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_test_image("bookworm"))
}

/// The sid test image: ostree with composefs enabled in its initramfs, SELinux policy
/// installed. Its `base` is also the toolbox the oracles run from (see [`sid::run`]).
pub fn sid_image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_test_image("sid"))
}

/// The arm64 test image: bookworm's shape and probe for aarch64, plus Apple Silicon's boot
/// files (m1n1, U-Boot, device trees, an icon). Built through qemu-user once, then cached.
pub fn arm64_image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_test_image("bookworm-arm64"))
}

fn build_test_image(flavor: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/test-image/build.sh"))
        .arg(flavor)
        .output()
        .expect("run scripts/test-image/build.sh");
    assert!(
        out.status.success(),
        "building the {flavor} test image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The test image's files as umoci unpacks them (an oracle independent of kiln), kept in the
/// test image's cache directory so that runs share one copy and leave nothing in /tmp.
pub fn umoci_unpacked_test_image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = test_image().join("umoci-unpacked");
        // Test processes run side by side (cargo-nextest): one unpacks, the others wait.
        let lock = std::fs::File::create(test_image().join("umoci-unpacked.lock")).unwrap();
        lock.lock().unwrap();
        if !dir.join("usr/lib/os-release").exists() {
            let tmp = test_image().join(format!("umoci-unpacked.tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let image = format!("{}:latest", test_image().join("oci-gzip").display());
            run(Command::new("umoci").args(["raw", "unpack", "--image", &image]).arg(&tmp));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
        }
        dir
    })
}

/// A fresh scratch directory for one test, under the system temp dir (large files live here,
/// outside the repository). Removed when dropped unless KILN_KEEP_SCRATCH is set.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let base = std::env::var_os("KILN_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("kiln-tests"));
        let dir = base.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("KILN_KEEP_SCRATCH").is_none() && std::fs::remove_dir_all(&self.0).is_err() {
            // Deployment roots are immutable, as ostree leaves them.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("find {} -path '*/ostree/deploy/*/deploy/*.0' -prune -exec chattr -i {{}} +", self.0.display()))
                .status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loop devices currently attached to files under `dir`.
pub fn loops_under(dir: &Path) -> Vec<String> {
    let out = Command::new("losetup").args(["-a", "-n", "-O", "NAME,BACK-FILE"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&*dir.to_string_lossy()))
        .map(str::to_string)
        .collect()
}

/// Mounts whose mount point is under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with(&*dir.to_string_lossy())))
        .map(str::to_string)
        .collect()
}

/// Runs the kiln binary under test.
pub fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap()
}

/// No loop device backed by a file under `dir`, no mount under it.
pub fn assert_no_leftovers(dir: &Path) {
    assert_eq!(loops_under(dir), Vec::<String>::new(), "loop devices left behind");
    assert_eq!(mounts_under(dir), Vec::<String>::new(), "mounts left behind");
}

/// Everything under `dir` that is not a directory.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), out);
            }
        } else {
            out.push(p.to_path_buf());
        }
    }
    let mut v = Vec::new();
    if dir.exists() {
        walk(dir, &mut v);
    }
    v
}

/// Nothing under `out` but empty directories.
pub fn assert_no_partial_output(out: &Path) {
    let files = files_under(out);
    assert!(files.is_empty(), "partial output left behind: {files:?}");
}

/// Runs `kiln bake` (`--type raw` unless `extra` names a type) into `<scratch>/out`, which must
/// fail with an error holding every string of `expect` and leave nothing behind; returns the error.
pub fn bake_fails(s: &Scratch, image: &str, extra: &[&str], expect: &[&str]) -> String {
    let out = s.path().join("out");
    let mut args = vec!["bake", "--output", out.to_str().unwrap()];
    if !extra.contains(&"--type") {
        args.extend(["--type", "raw"]);
    }
    args.extend_from_slice(extra);
    args.push(image);
    let out_existed = out.exists();
    let o = kiln(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "bake succeeded but should have failed");
    assert!(!err.contains("panicked"), "{err}");
    // What the user is told, in the test log.
    println!("{}", err.lines().filter(|l| l.contains("error")).collect::<Vec<_>>().join("\n"));
    for e in expect {
        assert!(err.contains(e), "error lacks {e:?}:\n{err}");
    }
    assert_no_partial_output(&out);
    assert!(out_existed || !out.exists(), "the failed bake left its output directory {} behind", out.display());
    assert_no_leftovers(s.path());
    err
}

/// Bakes `image` with `kiln bake --type raw` into `<scratch>/out`; returns the raw disk.
pub fn bake_raw(s: &Scratch, image: &str, extra: &[&str]) -> PathBuf {
    let out = s.path().join("out");
    let mut args = vec!["bake", "--type", "raw", "--output", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(image);
    let o = kiln(&args);
    assert!(o.status.success(), "kiln bake failed:\n{}", String::from_utf8_lossy(&o.stderr));
    out.join("image/disk.raw")
}

/// A bootable-looking one-layer image with the given extra files, for bad input tests.
pub fn tiny_image(s: &Scratch, files: &[(&str, &str)]) -> String {
    tiny_image_for(&s.path().join("layout"), "amd64", files)
}

/// A bootable-looking one-layer image for `arch` (OCI naming) with the given extra files, in `dir`.
pub fn tiny_image_for(dir: &Path, arch: &str, files: &[(&str, &str)]) -> String {
    let mut t = oci::RawTar::default()
        .dir("usr/")
        .dir("usr/lib/")
        .file("usr/lib/os-release", "ID=tiny\nPRETTY_NAME=\"Tiny\"\n")
        .dir("etc/")
        .dir("usr/lib/modules/")
        .dir("usr/lib/modules/6.1.0-a/")
        .file("usr/lib/modules/6.1.0-a/vmlinuz", "kernel")
        .file("usr/lib/modules/6.1.0-a/initramfs.img", "initramfs");
    for (path, content) in files {
        t = t.file(path, content);
    }
    oci::write_layout(dir, &[oci::LayerBlob { tar: t.finish(), gzip: true }], serde_json::json!({"containers.bootc": "1"}), arch)
}

/// A sparse disk image of `size` bytes partitioned by `sfdisk` with `script`, then `writes`
/// (offset, bytes) written into it.
pub fn sfdisk_image(path: &Path, size: u64, script: &str, writes: &[(u64, Vec<u8>)]) {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    let mut sf = Command::new("sfdisk").arg("-q").arg(path).stdin(std::process::Stdio::piped()).spawn().unwrap();
    sf.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(sf.wait().unwrap().success(), "sfdisk failed on {script:?}");
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for (at, bytes) in writes {
        f.write_all_at(bytes, *at).unwrap();
    }
}

/// Reproducible pseudo-random bytes (xorshift): data that neither compresses nor is zero.
pub struct Noise(pub u64);

impl Noise {
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 24) as u8
            })
            .collect()
    }
}
