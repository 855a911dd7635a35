//! Crash safety: a bake killed with SIGKILL at any stage, or by a memory limit, leaves no
//! mount, no loop device and nothing in its output directory, and the next bake succeeds
//! (removing what the dead one left elsewhere, saying so); a second kiln is refused an output
//! directory a live one is writing into; two bakes sharing a blob cache at once both succeed
//! and give the disk a bake alone gives; concurrent pulls leave the cache consistent.
//!
//! The oracles are the kernel's own views (`/proc/mounts`, `losetup -a`, which sees loop
//! devices of every mount namespace), the directory listing, `sfdisk`, `qemu-img check`, sha256
//! of every cached blob, and `cmp` against a bake alone.

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::registry::Registry;
use common::running::Running;
use common::{loops_under, mounts_under, run, test_image, Scratch};

fn image_ref() -> String {
    format!("oci:{}:latest", test_image().join("oci").display())
}

/// kiln with its runtime directory (where mount points live) inside the test's scratch.
fn kiln(s: &Scratch) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env("KILN_RUNTIME_DIR", s.path().join("run"));
    c
}

fn bake_args(out: &Path, types: &str) -> Vec<String> {
    ["bake", "--type", types, "--rootfs", "ext4", "--progress", "json", "--output", out.to_str().unwrap(), "--target-imgref", "quay.io/kiln/test:latest"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Every path under `dir` (files and directories), relative to it.
fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(base: &Path, p: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            out.insert(path.strip_prefix(base).unwrap().to_path_buf());
            if path.is_dir() && !path.is_symlink() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Waits (the kernel tears a dead process's mount namespace down, and with it the loop
/// devices, just after it exits) until no loop device is backed by a file under `dir` and
/// nothing is mounted under it; panics with what remains after 60 s.
fn nothing_attached_or_mounted(dir: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (loops, mounts) = (loops_under(dir), mounts_under(dir));
        if loops.is_empty() && mounts.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: left behind\n loop devices: {loops:?}\n mounts: {mounts:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The mounts of process `pid`, as it sees them.
fn mounts_of(pid: u32, under: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap_or_default();
    text.lines().filter(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with(&*under.to_string_lossy()))).map(str::to_string).collect()
}

fn assert_disk_and_qcow2(out: &Path) {
    let raw = out.join("image/disk.raw");
    let dump = run(Command::new("sfdisk").arg("--dump").arg(&raw));
    assert!(dump.contains("name=\"root\""), "{dump}");
    run(Command::new("qemu-img").args(["check", "-q"]).arg(out.join("qcow2/disk.qcow2")));
    let cmp = Command::new("qemu-img").args(["compare", "-q", "-f", "raw", "-F", "qcow2"]).arg(&raw).arg(out.join("qcow2/disk.qcow2")).status().unwrap();
    assert!(cmp.success(), "the qcow2 differs from the raw");
}

/// SIGKILL during each stage of a bake (layers, commit, deploy, bootloader, the qcow2
/// conversion): no mount, no loop device, the output directory as it was. Then a bake into
/// the same directory succeeds and removes what the dead ones left (their run directories,
/// and an older kiln's partial file and work directory), saying so.
#[test]
fn kill_9_at_each_stage_leaves_nothing_behind() {
    let s = Scratch::new("crash-kill9");
    let out = s.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "the user's").unwrap();
    let before = listing(&out);
    let mut dead = Vec::new();
    let mut logs = String::new();
    for stage in ["layers", "commit", "deploy", "bootloader", "qcow2"] {
        let mut cmd = kiln(&s);
        cmd.args(bake_args(&out, "raw,qcow2")).arg(image_ref());
        let mut bake = Running::start(cmd);
        assert!(bake.wait_for_stage(stage), "the bake ended before {stage}:\n{}", bake.log.join("\n"));
        let pid = bake.child.id();
        if stage == "layers" {
            // While it runs: the disk is attached (an unnamed file in the output directory),
            // the sysroot is mounted in kiln's namespace only, and nothing has a name.
            std::thread::sleep(Duration::from_millis(1500));
            let loops = loops_under(&out);
            assert!(!loops.is_empty() && loops.iter().all(|l| l.contains("(deleted)")), "expected unnamed backing files: {loops:?}");
            assert!(!mounts_of(pid, &s.path().join("run")).is_empty(), "the bake's own view has no sysroot mount");
            assert_eq!(mounts_under(s.path()), Vec::<String>::new(), "kiln's mounts are visible outside its namespace");
            assert_eq!(listing(&out), before, "names appeared in the output directory mid-bake");
        }
        let status = bake.kill9();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "killed during {stage}");
        logs += &bake.log.join("\n");
        nothing_attached_or_mounted(s.path(), &format!("kill -9 during {stage}"));
        assert_eq!(listing(&out), before, "kill -9 during {stage} left names in the output directory");
        dead.push(pid);
    }

    // What an older kiln left when it was killed, beside the outputs.
    std::fs::create_dir_all(out.join("image/.kiln-sysroot-4242/boot")).unwrap();
    std::fs::write(out.join("image/.disk.raw.kiln-partial"), "half a disk").unwrap();

    let o = kiln(&s).args(bake_args(&out, "raw,qcow2")).arg(image_ref()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "the bake after the kills failed:\n{err}");
    // Each dead bake's run directory (an empty mount point) was removed by the bake after it.
    logs += &err;
    for pid in dead {
        let gone = s.path().join("run").join(pid.to_string());
        assert!(logs.contains(&format!("removed {}", gone.display())), "no word of removing {}:\n{logs}", gone.display());
        assert!(!gone.exists());
    }
    for old in ["image/.kiln-sysroot-4242", "image/.disk.raw.kiln-partial"] {
        assert!(err.contains(&format!("removed {}", out.join(old).display())), "no word of removing {old}:\n{err}");
    }
    let mut expected = before.clone();
    expected.extend(["image", "image/disk.raw", "qcow2", "qcow2/disk.qcow2"].map(PathBuf::from));
    assert_eq!(listing(&out), expected);
    assert_eq!(listing(&s.path().join("run")), BTreeSet::new(), "the run directory was not removed");
    assert_disk_and_qcow2(&out);
    nothing_attached_or_mounted(s.path(), "the bake after the kills");
}

/// A memory limit that stops the bake (the address space capped with prlimit: an allocation
/// fails and the process aborts, unwinding nothing, or a thread cannot start and the bake
/// fails with an error) leaves what SIGKILL leaves: nothing. It never hangs or panics.
#[test]
fn a_bake_killed_by_a_memory_limit_leaves_nothing_behind() {
    let s = Scratch::new("crash-memory");
    let out = s.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={}", MEMORY_LIMIT)).arg(env!("CARGO_BIN_EXE_kiln")).args(bake_args(&out, "raw"));
    cmd.arg(image_ref()).env("KILN_RUNTIME_DIR", s.path().join("run"));
    let bake = Running::start(cmd);
    let (status, log) = bake.finish();
    assert!(!status.success(), "the bake fit in {MEMORY_LIMIT} bytes of address space:\n{log}");
    assert!(log.contains("\"stage\":\"layers\""), "the bake died before it wrote anything (raise the limit):\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(status.signal().is_some() || log.contains("kiln: error: "), "expected the bake to die of a signal or fail with an error: {status}\n{log}");
    nothing_attached_or_mounted(s.path(), "a bake killed by a memory limit");
    // Empty after a signal; gone after an error (the bake removes the directory it made).
    assert!(!out.exists() || listing(&out).is_empty(), "{:?}", listing(&out));
}

/// Enough address space for kiln to start, fetch the layers and mount the disk, not to write
/// the layers. Measured with one malloc arena: the layers start at 36 MiB and die up to 48 MiB,
/// the whole bake fits in 52 (before one arena it needed more than 100): lower this when kiln
/// needs less.
const MEMORY_LIMIT: u64 = 40 << 20;

/// A second kiln writing into the output directory of a running one is refused, naming it;
/// the first is unharmed and, stopped, leaves nothing.
#[test]
fn a_live_kilns_output_directory_is_refused() {
    let s = Scratch::new("crash-live-lock");
    let out = s.path().join("out");
    let mut cmd = kiln(&s);
    cmd.args(bake_args(&out, "raw")).arg(image_ref());
    let mut first = Running::start(cmd);
    assert!(first.wait_for_stage("layers"));
    let o = kiln(&s).args(bake_args(&out, "qcow2")).arg(image_ref()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a second kiln was let into a live one's output directory");
    assert!(err.contains(&format!("another kiln (pid {}) is writing into {}", first.child.id(), out.display())), "{err}");
    assert!(err.contains("--output"), "{err}");
    unsafe { libc::kill(first.child.id() as i32, libc::SIGTERM) };
    let (status, log) = first.finish();
    assert!(!status.success() && log.contains("terminated"), "{log}");
    nothing_attached_or_mounted(s.path(), "the stopped first bake");
    // It made the output directory, so it removed it.
    assert!(!out.exists(), "the stopped bake left {} behind: {:?}", out.display(), listing(&out));
}

/// Every file in the blob cache is a whole blob: its sha256 is its name; nothing else is there.
fn assert_cache_consistent(cache: &Path) {
    let dir = cache.join("blobs/sha256");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let digest = common::oci::sha256(&std::fs::read(e.path()).unwrap());
        assert_eq!(digest, format!("sha256:{name}"), "{} is not the blob its name says", e.path().display());
        n += 1;
    }
    assert!(n >= 5, "expected the config and four layers in the cache, found {n} files");
}

fn push_test_image(s: &Scratch) -> (Registry, String) {
    let reg = Registry::start(&s.path().join("registry"), false);
    let dest = reg.push(&image_ref(), "kiln/test:latest", false);
    (reg, dest)
}

/// Several pulls of one image from a registry into one empty cache at the same time.
#[test]
fn concurrent_pulls_leave_the_cache_consistent() {
    let s = Scratch::new("crash-concurrent-pulls");
    let (_reg, image) = push_test_image(&s);
    let cache = s.path().join("cache");
    let pulls: Vec<Child> = (0..4)
        .map(|_| {
            kiln(&s)
                .args(["image", "inspect", "--tls-verify=false", &image])
                .env("KILN_CACHE_DIR", &cache)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in pulls {
        let o: Output = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_cache_consistent(&cache);
}

/// Two bakes of the test image at the same time (two CI jobs on one runner), pulling it from
/// a registry into one empty blob cache, into two output directories: both succeed, the cache
/// is consistent, and, seeded alike, the two disks are the same bytes, which boot.
#[test]
fn two_concurrent_bakes_sharing_a_cache_give_the_disk_a_bake_alone_gives() {
    let s = Scratch::new("crash-concurrent-bakes");
    let (_reg, image) = push_test_image(&s);
    let cache = s.path().join("cache");
    let outs = [s.path().join("a"), s.path().join("b")];
    let bakes: Vec<Running> = outs
        .iter()
        .map(|out| {
            let mut cmd = kiln(&s);
            cmd.args(bake_args(out, "qcow2")).args(["--seed", "concurrent", "--tls-verify=false", &image]).env("KILN_CACHE_DIR", &cache);
            Running::start(cmd)
        })
        .collect();
    for b in bakes {
        let (status, log) = b.finish();
        assert!(status.success(), "a concurrent bake failed:\n{log}");
    }
    assert_cache_consistent(&cache);
    nothing_attached_or_mounted(s.path(), "two concurrent bakes");
    let [a, b] = outs.map(|out| out.join("qcow2/disk.qcow2"));
    let same = |x: &Path, y: &Path| Command::new("cmp").arg("-s").arg(x).arg(y).status().unwrap().success();
    assert!(same(&a, &b), "two concurrent bakes with the same seed gave different disks");
    // The same bake alone, from the cache the two filled: byte for byte their disk, so the two
    // neither disturbed each other nor the cache (a bake alone is what the boot tests boot).
    let alone = s.path().join("alone");
    let mut cmd = kiln(&s);
    cmd.args(bake_args(&alone, "qcow2")).args(["--seed", "concurrent", "--tls-verify=false", &image]).env("KILN_CACHE_DIR", &cache);
    let (status, log) = Running::start(cmd).finish();
    assert!(status.success(), "the bake alone failed:\n{log}");
    assert!(same(&a, &alone.join("qcow2/disk.qcow2")), "two concurrent bakes gave another disk than a bake alone");
    nothing_attached_or_mounted(s.path(), "the bake alone");
}
