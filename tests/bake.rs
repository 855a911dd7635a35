//! `kiln bake --type raw` end to end: the test image baked with each root filesystem and
//! layout boots under UEFI and BIOS with every probe check passing; the disk passes the
//! partition and filesystem checkers; bad input fails clearly and leaves nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::boot::{Boot, Firmware};
use common::gpt::{on_partition, partitions, Part};
use common::oci::{write_layout, LayerBlob, RawTar};
use common::running::Running;
use common::{bake_fails, kiln, run, test_image, tiny_image, Scratch};
use serde_json::json;

fn image_ref() -> String {
    format!("oci:{}:latest", test_image().join("oci").display())
}

/// Bakes the test image into `<scratch>/out`; returns the raw disk's path.
fn bake(s: &Scratch, extra: &[&str]) -> PathBuf {
    bake_image(s, &image_ref(), extra)
}

fn bake_image(s: &Scratch, image: &str, extra: &[&str]) -> PathBuf {
    let out = s.path().join("out");
    let mut args = vec!["bake", "--type", "raw", "--output", out.to_str().unwrap(), "--target-imgref", "quay.io/kiln/test:latest"];
    args.extend_from_slice(extra);
    args.push(image);
    let o = kiln(&args);
    assert!(o.status.success(), "kiln bake failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let raw = out.join("image/disk.raw");
    assert!(raw.is_file());
    raw
}

/// The raw disk passes the independent checkers for its partition table and filesystems.
fn check_disk(raw: &Path, rootfs: &str, layout: &str) {
    let v = run(Command::new("sgdisk").arg("-v").arg(raw));
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    let parts = partitions(raw);
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    let expected: &[&str] = if layout == "bootc" { &["BIOS-BOOT", "EFI-SYSTEM", "root"] } else { &["BIOS-BOOT", "EFI-SYSTEM", "boot", "root"] };
    assert_eq!(names, expected);
    on_partition(raw, &parts[1], &["fsck.fat", "-n"]);
    if layout != "bootc" {
        on_partition(raw, &parts[2], &["e2fsck", "-fn"]);
    }
    let root = parts.last().unwrap();
    match rootfs {
        "ext4" => on_partition(raw, root, &["e2fsck", "-fn"]),
        "xfs" => on_partition(raw, root, &["xfs_repair", "-n"]),
        "btrfs" => on_partition(raw, root, &["btrfs", "check", "--readonly"]),
        other => panic!("{other}"),
    };
    // Labels and types as bootc-image-builder and systemd expect them.
    let blkid = |p: &Part| {
        run(Command::new("blkid").args(["-p", "-o", "export", "--offset", &p.start.to_string(), "--size", &p.size.to_string()]).arg(raw))
    };
    assert!(blkid(&parts[1]).contains("LABEL=EFI-SYSTEM"), "{}", blkid(&parts[1]));
    let r = blkid(root);
    assert!(r.contains("LABEL=root") && r.contains(&format!("TYPE={rootfs}")), "{r}");
}

/// Boots under each of `firmware` with every probe check passing.
fn boots_with(name: &str, raw: &Path, firmware: &[Firmware]) {
    for &fw in firmware {
        let report = Boot::new(raw, fw, name).run().unwrap_or_else(|e| panic!("{e}"));
        println!("{name} {fw}:\n{report}");
        report.assert_outcome(&[]);
        assert!(
            report.info_all("ostree-status").iter().any(|l| l.contains("Version: 12.kiln-test.1")),
            "ostree admin status lacks the version:\n{report}"
        );
    }
}

#[test]
fn ext4_root_boots_uefi_and_bios() {
    let s = Scratch::new("bake-ext4");
    // Seeded as the seed test's disks are, so that the bytes it compares are the bytes that boot.
    let raw = bake(&s, &["--type", "qcow2,vmdk", "--rootfs", "ext4", "--karg", "kiln.test.cli=1", "--seed", "kiln-test"]);
    check_disk(&raw, "ext4", "default");
    // One raw build feeds every format: qemu-img reads the same disk from each, so the qcow2
    // boots under UEFI and the raw under BIOS (a boot of each format would prove no more).
    let (qcow2, vmdk) = (s.path().join("out/qcow2/disk.qcow2"), s.path().join("out/vmdk/disk.vmdk"));
    run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "qcow2"]).arg(&raw).arg(&qcow2));
    run(Command::new("qemu-img").args(["compare", "-f", "qcow2", "-F", "vmdk"]).arg(&qcow2).arg(&vmdk));
    boots_with("bake-ext4", &qcow2, &[Firmware::Uefi]);
    boots_with("bake-ext4", &raw, &[Firmware::Bios]);
    common::assert_no_leftovers(s.path());
}

// The default layout's /boot is its own ext4, so with xfs or btrfs the firmware only changes
// what ext4's pair already proves: one boot each, the firmware alternating (the sid image boots
// xfs under BIOS and btrfs under UEFI; the bootc layout, whose /boot is on the root, boots both).
// Both bake the test image with a zstd layer of zeros on top that declares no size: without
// a scan (--rootfs given), the root starts at what the layers declare and grows online while
// the file is stored (`disk::grow`); the grown filesystem passes its checker and boots with
// the probe's check that it fills its partition.
#[test]
fn xfs_root_boots_uefi() {
    let s = Scratch::new("bake-xfs");
    let raw = bake_image(&s, &image_growing_the_root(&s), &["--rootfs", "xfs"]);
    check_disk(&raw, "xfs", "default");
    check_root_holds(&raw, ZEROS);
    boots_with("bake-xfs", &raw, &[Firmware::Uefi]);
}

#[test]
fn btrfs_root_boots_bios() {
    let s = Scratch::new("bake-btrfs");
    let raw = bake_image(&s, &image_growing_the_root(&s), &["--rootfs", "btrfs"]);
    check_disk(&raw, "btrfs", "default");
    check_root_holds(&raw, ZEROS);
    boots_with("bake-btrfs", &raw, &[Firmware::Bios]);
}

/// The zero bytes [`image_growing_the_root`] adds: over twice what the test image holds.
const ZEROS: u64 = 3 << 29;

fn image_growing_the_root(s: &Scratch) -> String {
    common::oci::append_zeros_zstd_layer(&test_image().join("oci"), &s.path().join("layout"), "usr/share/kiln-test/zeros", ZEROS)
}

/// The root partition has room for `content` bytes and the filesystem's own (a quarter more).
fn check_root_holds(raw: &Path, content: u64) {
    let root = partitions(raw).pop().unwrap();
    assert!(root.size >= content + content / 4, "the root partition ({} bytes) is too small for {content} bytes of content", root.size);
}

/// The bootc layout (no /boot partition) with the root filesystem type from the image's
/// install configuration (no --rootfs). UEFI only: `install to-disk`, whose default layout is
/// bootc's, boots it under both firmwares.
#[test]
fn bootc_layout_with_the_images_rootfs_boots() {
    let s = Scratch::new("bake-bootc-layout");
    let raw = bake(&s, &["--layout", "bootc"]);
    check_disk(&raw, "ext4", "bootc");
    boots_with("bake-bootc-layout", &raw, &[Firmware::Uefi]);
}

// ---- bad input and faults: a clear error and nothing left behind ----

#[test]
fn an_image_without_a_kernel_is_refused() {
    let s = Scratch::new("bake-no-kernel");
    let tar = RawTar::default().dir("usr/").dir("usr/lib/").file("usr/lib/os-release", "ID=x\n").finish();
    let reference = write_layout(&s.path().join("layout"), &[LayerBlob { tar, gzip: true }], json!({"containers.bootc": "1"}), "amd64");
    bake_fails(&s, &reference, &["--rootfs", "ext4"], &["no kernel", "/usr/lib/modules"]);
}

#[test]
fn an_image_without_the_bootable_label_is_refused() {
    let s = Scratch::new("bake-not-bootable");
    let tar = RawTar::default().dir("usr/").finish();
    let reference = write_layout(&s.path().join("layout"), &[LayerBlob { tar, gzip: true }], json!({}), "amd64");
    bake_fails(&s, &reference, &[], &["not a bootable container image", "containers.bootc=1"]);
}

#[test]
fn unknown_rootfs_and_layouts_that_do_not_fit_are_refused() {
    let s = Scratch::new("bake-bad-options");
    bake_fails(&s, &image_ref(), &["--rootfs", "zfs"], &["zfs", "ext4, xfs, btrfs"]);
    bake_fails(&s, &image_ref(), &["--rootfs", "ext4", "--size", "1G"], &["does not fit --size 1024"]);
    bake_fails(&s, &image_ref(), &["--rootfs", "ext4", "--layout", "nonesuch"], &["unknown layout", "default"]);
}

#[test]
fn an_existing_output_is_kept_unless_forced() {
    let s = Scratch::new("bake-existing");
    let raw = s.path().join("out/image/disk.raw");
    std::fs::create_dir_all(raw.parent().unwrap()).unwrap();
    std::fs::write(&raw, b"precious").unwrap();
    let o = kiln(&["bake", "--type", "raw", "--rootfs", "ext4", "--output", s.path().join("out").to_str().unwrap(), &image_ref()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("already exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&raw).unwrap(), b"precious");
    let o = kiln(&["bake", "--type", "raw", "--rootfs", "ext4", "--force", "--output", s.path().join("out").to_str().unwrap(), &image_ref()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::metadata(&raw).unwrap().len() > 1 << 30);
    common::assert_no_leftovers(s.path());
}

#[test]
fn an_unwritable_output_directory_is_refused() {
    let s = Scratch::new("bake-readonly-output");
    let out = s.path().join("ro");
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=1m", "kiln-test-ro"]).arg(&out));
    let o = kiln(&["bake", "--type", "raw", "--rootfs", "ext4", "--output", out.to_str().unwrap(), &image_ref()]);
    let _ = Command::new("umount").arg(&out).status();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&out.display().to_string()), "{err}");
    common::assert_no_leftovers(s.path());
}

#[test]
fn a_root_filesystem_that_fills_up_is_a_clear_error() {
    // --rootfs and --size skip the scan; the size leaves the root too small for the image.
    let s = Scratch::new("bake-enospc");
    bake_fails(&s, &image_ref(), &["--rootfs", "ext4", "--size", "2080M"], &["root filesystem is full", "--size"]);
}

#[test]
fn an_output_disk_that_fills_up_is_a_clear_error() {
    // 150 MiB: refused before anything is written. 560 MiB: passes that estimate (--size and
    // --rootfs skip the scan, so kiln only knows the compressed size), fills up while the
    // layers are written, and must be caught when the filesystems are flushed.
    for (tmpfs, extra) in [("150m", vec![]), ("560m", vec!["--size", "4G"])] {
        let s = Scratch::new(&format!("bake-host-full-{tmpfs}"));
        let out = s.path().join("small");
        std::fs::create_dir_all(&out).unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={tmpfs}"), "kiln-test-small"]).arg(&out));
        let mut args = vec!["bake", "--type", "raw", "--rootfs", "ext4", "--output", out.to_str().unwrap()];
        args.extend(extra);
        let image = image_ref();
        args.push(&image);
        let o = kiln(&args);
        let leftovers = common::files_under(&out);
        let loops = common::loops_under(&out);
        let mounts = common::mounts_under(&out);
        let _ = Command::new("umount").arg(&out).status();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "bake into a {tmpfs} tmpfs succeeded:\n{err}");
        assert!(!err.contains("panicked") && (err.contains("free") || err.contains("full")), "{err}");
        assert!(leftovers.is_empty(), "partial output left: {leftovers:?}");
        assert_eq!((loops, mounts.len()), (Vec::<String>::new(), 1), "only the test's own tmpfs may remain mounted");
    }
}

#[test]
fn sigint_and_sigterm_mid_bake_clean_up() {
    for (signal, name) in [(libc::SIGTERM, "terminated"), (libc::SIGINT, "interrupted")] {
        let s = Scratch::new(&format!("bake-signal-{signal}"));
        let out = s.path().join("out");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(["bake", "--type", "raw", "--rootfs", "ext4", "--progress", "json", "--output", out.to_str().unwrap(), &image_ref()]);
        // Wait until the layers are being written into the mounted disk, then signal.
        let started = Instant::now();
        let mut bake = Running::start(cmd);
        assert!(bake.wait_for_stage("layers"), "the bake ended before the layers:\n{}", bake.log.join("\n"));
        std::thread::sleep(Duration::from_millis(300));
        let (status, err) = bake.signal(signal);
        assert!(!status.success(), "bake finished despite the signal");
        assert!(err.contains(name), "no {name} message:\n{err}");
        assert!(started.elapsed() < Duration::from_secs(120));
        common::assert_no_partial_output(&out);
        common::assert_no_leftovers(s.path());
    }
}

/// Formats without the raw: the raw build is not left behind, the qcow2 is consistent and qemu
/// reads the same disk from the vmdk (`qemu-img compare`: the reader a vmdk boot would use).
/// The boot of a qcow2 is in `ext4_root_boots_uefi_and_bios`.
#[test]
fn qcow2_and_vmdk_alone_leave_no_raw_and_hold_the_same_disk() {
    let s = Scratch::new("bake-formats");
    let out = s.path().join("out");
    let image = image_ref();
    let o = kiln(&["bake", "--type", "qcow2,vmdk", "--rootfs", "ext4", "--output", out.to_str().unwrap(), "--target-imgref", "quay.io/kiln/test:latest", &image]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.join("image/disk.raw").exists(), "the raw was not asked for but left behind");
    let (qcow2, vmdk) = (out.join("qcow2/disk.qcow2"), out.join("vmdk/disk.vmdk"));
    run(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(&qcow2));
    run(Command::new("qemu-img").args(["compare", "-f", "qcow2", "-F", "vmdk"]).arg(&qcow2).arg(&vmdk));
    common::assert_no_leftovers(s.path());
}

#[test]
fn the_ostree_stage_refuses_what_bootc_would() {
    let s = Scratch::new("bake-two-kernels");
    let img = tiny_image(&s, &[("usr/lib/modules/6.2.0-b/vmlinuz", "other kernel")]);
    bake_fails(&s, &img, &["--rootfs", "ext4"], &["several kernels", "6.1.0-a", "6.2.0-b"]);

    let s = Scratch::new("bake-boot-not-empty");
    let img = tiny_image(&s, &[("boot/vmlinuz", "stray")]);
    bake_fails(&s, &img, &["--rootfs", "ext4"], &["/boot is not empty", "vmlinuz"]);

    let s = Scratch::new("bake-bad-kargs");
    let img = tiny_image(&s, &[("usr/lib/bootc/kargs.d/50-broken.toml", "kargs = \"not a list\"\n")]);
    bake_fails(&s, &img, &["--rootfs", "ext4"], &["/usr/lib/bootc/kargs.d/50-broken.toml"]);

    let s = Scratch::new("bake-bad-install-config");
    let img = tiny_image(&s, &[("usr/lib/bootc/install/00-broken.toml", "[install\n")]);
    bake_fails(&s, &img, &[], &["/usr/lib/bootc/install/00-broken.toml"]);
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(p).unwrap(), &mut h).unwrap();
    hex::encode(h.finalize())
}

/// The same seed and image give the same bytes; another seed other bytes (a seeded disk boots in
/// `ext4_root_boots_uefi_and_bios`).
#[test]
fn the_same_seed_gives_a_byte_identical_disk() {
    let a = Scratch::new("bake-seed-a");
    let b = Scratch::new("bake-seed-b");
    let c = Scratch::new("bake-seed-c");
    let raw_a = bake(&a, &["--rootfs", "ext4", "--seed", "kiln-test"]);
    let raw_b = bake(&b, &["--rootfs", "ext4", "--seed", "kiln-test"]);
    let raw_c = bake(&c, &["--rootfs", "ext4", "--seed", "another"]);
    assert_eq!(sha256_file(&raw_a), sha256_file(&raw_b), "two bakes with the same seed differ");
    assert_ne!(sha256_file(&raw_a), sha256_file(&raw_c), "different seeds gave the same disk");
    check_disk(&raw_a, "ext4", "default");
    let s = Scratch::new("bake-seed-xfs");
    bake_fails(&s, &image_ref(), &["--rootfs", "xfs", "--seed", "x"], &["--seed", "ext4"]);
}
