//! aarch64 and Apple Silicon: the arm64 test image, baked on this x86_64 machine with no
//! emulation anywhere in kiln's path, boots under QEMU aarch64 (`virt`, AAVMF) with every probe
//! check passing; `--type asahi` makes the Asahi installer's package, which is read as the
//! installer reads it and laid down as the installer would, then booted; bad input fails
//! clearly and leaves nothing behind.
//!
//! The boots, each proving what no other does (a TCG boot of this image takes one to two
//! minutes on an idle machine):
//! - xfs root, qcow2, the default layout, an image that ships a `devicetree`: kiln's own disk
//!   on aarch64 with a separate /boot (no BIOS boot partition, the aarch64 root type, shim and
//!   GRUB from bootupd's aa64 layout, kargs.d's `match-architectures`), the qcow2 writer on an
//!   arm64 disk, an xfs root, and the BLS `devicetree` GRUB loads, on which the kernel runs
//!   instead of ACPI.
//! - btrfs root, raw, the bootc layout: a btrfs root holding /boot (no boot partition), baked
//!   while no binfmt handler could have run an arm64 program; its ESP holds the image's shim.
//! - the Asahi package laid down on a 4 KiB-sector disk: the ESP formatted as the installer
//!   formats it (FAT32, 4 KiB sectors, serial = `volume_id`) from `esp/`, kiln's ext4
//!   `boot.img` and `root.img` (4 KiB blocks; the kernel's `dtb/` deployed as ostree does, as
//!   `fdtdir`) in partitions of their own, the root's larger: the package's parts alone boot
//!   (through the removable path, as U-Boot on a Mac does), the ESP is mounted by that serial,
//!   the root grows into its partition.
//!
//! An ext4 root on kiln's own aarch64 disk is not booted again: nothing in kiln's path differs
//! from the Asahi boot's ext4 root or the x86_64 suite's ext4 boots.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::boot::{aarch64_machine_dtb, Boot};
use common::gpt::{on_partition, partitions};
use common::oci::{append_layer, LayerBlob, RawTar};
use common::{arm64_image, bake_fails, kiln, run, test_image, tiny_image_for, Scratch};
use serde_json::json;

const AARCH64_ROOT: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
const TARGET: &str = "quay.io/kiln/test-arm64:latest";

fn image_ref() -> String {
    format!("oci:{}:latest", arm64_image().join("oci").display())
}

/// The arm64 image's base root filesystem (what it was made from): the oracle for its files.
fn base(path: &str) -> PathBuf {
    arm64_image().join("base").join(path)
}

/// Bakes `image` into `<scratch>/out` (no --target-arch: a single image is baked for its own
/// architecture); returns the output directory.
fn bake(s: &Scratch, image: &str, extra: &[&str]) -> PathBuf {
    let out = s.path().join("out");
    let mut args = vec!["bake", "--output", out.to_str().unwrap(), "--target-imgref", TARGET];
    args.extend_from_slice(extra);
    args.push(image);
    let o = kiln(&args);
    assert!(o.status.success(), "kiln bake failed:\n{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// The GPT is sound, has no BIOS boot partition, and its root partition has aarch64's
/// discoverable-partitions type; each filesystem passes its checker.
fn check_disk(raw: &Path, names: &[&str], rootfs: &str) {
    let v = run(Command::new("sgdisk").arg("-v").arg(raw));
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    let parts = partitions(raw);
    assert_eq!(parts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), names);
    let root = parts.last().unwrap();
    assert_eq!(root.type_guid, AARCH64_ROOT, "the root partition's type");
    on_partition(raw, &parts[0], &["fsck.fat", "-n"]);
    if names.contains(&"boot") {
        on_partition(raw, &parts[1], &["e2fsck", "-fn"]);
    }
    match rootfs {
        "ext4" => on_partition(raw, root, &["e2fsck", "-fn"]),
        "xfs" => on_partition(raw, root, &["xfs_repair", "-n"]),
        "btrfs" => on_partition(raw, root, &["btrfs", "check", "--readonly"]),
        other => panic!("{other}"),
    };
}

/// The ESP holds the image's own shim at the removable path, read with mtools (not kiln).
fn check_esp_shim(raw: &Path) {
    let esp = &partitions(raw)[0];
    let copy = raw.with_extension("BOOTAA64.EFI");
    run(Command::new("mcopy").arg("-n").arg("-i").arg(format!("{}@@{}", raw.display(), esp.start)).arg("::/EFI/BOOT/BOOTAA64.EFI").arg(&copy));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(base("usr/lib/shim/shimaa64.efi.signed")).unwrap(), "EFI/BOOT/BOOTAA64.EFI is not the image's shim");
    std::fs::remove_file(copy).unwrap();
}

fn boots(name: &str, disk: &Path) -> common::boot::ProbeReport {
    let report = Boot::aarch64(disk, name).run().unwrap_or_else(|e| panic!("{e}"));
    println!("{name}:\n{report}");
    report.assert_outcome(&[]);
    assert_eq!(report.info("arch"), Some("aarch64"), "{report}");
    assert!(report.info_all("ostree-status").iter().any(|l| l.contains("Version: 12.kiln-test.1")), "{report}");
    report
}

// ---- binfmt: kiln runs nothing from the image ----

/// The ELF header of an arm64 program (64-bit, little-endian, EM_AARCH64).
const ARM64_ELF: [u8; 20] = [0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0xb7, 0];

/// The enabled binfmt_misc handlers that would run an arm64 program: none may exist while
/// kiln bakes an arm64 image, so the bake cannot have run one of its programs. binfmt_misc
/// is mounted to look if it is not (handlers outlive their filesystem), and unmounted again.
fn arm64_binfmt_handlers() -> Vec<String> {
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    let mounted = std::fs::read_to_string("/proc/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == Some("/proc/sys/fs/binfmt_misc"));
    if !mounted {
        run(Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc"]).arg(dir));
    }
    let mut found = Vec::new();
    if std::fs::read_to_string(dir.join("status")).unwrap().trim() == "enabled" {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == "register" || name == "status" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
            let hex = |h: &str| -> Vec<u8> { (0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()).collect() };
            let (Some(magic), true) = (field("magic "), text.starts_with("enabled")) else { continue };
            let magic = hex(magic);
            let mask = field("mask ").map(hex).unwrap_or_else(|| vec![0xff; magic.len()]);
            let offset: usize = field("offset ").and_then(|o| o.parse().ok()).unwrap_or(0);
            let matches = magic.iter().enumerate().all(|(i, m)| ARM64_ELF.get(offset + i).is_some_and(|b| b & mask[i] == m & mask[i]));
            if matches {
                found.push(format!("{name} ({})", field("interpreter ").unwrap_or("?")));
            }
        }
    }
    if !mounted {
        run(Command::new("umount").arg(dir));
    }
    found
}

#[test]
fn binfmt_check_sees_a_registered_arm64_handler() {
    // The check must be able to fail: register a handler (pointing at /bin/true, enabled for a
    // moment only, under a name of our own) and see it reported.
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    let mounted = std::fs::read_to_string("/proc/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == Some("/proc/sys/fs/binfmt_misc"));
    if !mounted {
        run(Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc"]).arg(dir));
    }
    let name = format!("kiln-test-probe-{}", std::process::id());
    let magic: String = ARM64_ELF.iter().map(|b| format!("\\x{b:02x}")).collect();
    std::fs::write(dir.join("register"), format!(":{name}:M::{magic}::/bin/true:")).unwrap();
    let seen = arm64_binfmt_handlers();
    std::fs::write(dir.join(&name), "-1").unwrap();
    if !mounted {
        run(Command::new("umount").arg(dir));
    }
    assert!(seen.iter().any(|h| h.starts_with(&name)), "the registered handler was not seen: {seen:?}");
}

// ---- the boots ----

#[test]
fn xfs_qcow2_with_a_devicetree_boots_on_it() {
    let s = Scratch::new("arm64-xfs-devicetree");
    // QEMU's own device tree for the machine the harness boots, with the nodes the firmware
    // keeps for itself disabled (the kernel would touch its GPIO controller and fail), and a
    // marker the probe looks for in the running kernel's device tree.
    let dtb = s.path().join("virt.dtb");
    aarch64_machine_dtb(&dtb).unwrap();
    for node in ["/pl061@9030000", "/pl031@9010000", "/flash@0", "/gpio-keys"] {
        run(Command::new("fdtput").args(["-t", "s"]).arg(&dtb).args([node, "status", "disabled"]));
    }
    run(Command::new("fdtput").args(["-t", "s"]).arg(&dtb).args(["/", "kiln-test", "devicetree from the image"]));
    let kver = std::fs::read_dir(base("usr/lib/modules")).unwrap().next().unwrap().unwrap().file_name().into_string().unwrap();
    let modules = format!("usr/lib/modules/{kver}");
    let tar = RawTar::default().entry(&format!("{modules}/devicetree"), b'0', 0o644, "", &std::fs::read(&dtb).unwrap()).finish();
    let image = append_layer(&arm64_image().join("oci"), &s.path().join("layout"), &LayerBlob { tar, gzip: true });
    let out = bake(&s, &image, &["--type", "qcow2", "--rootfs", "xfs"]);
    let qcow2 = out.join("qcow2/disk.qcow2");
    let info = run(Command::new("qemu-img").args(["check"]).arg(&qcow2));
    assert!(info.contains("No errors"), "{info}");
    let report = boots("arm64-xfs-devicetree", &qcow2);
    assert!(report.checks.get("boot.devicetree").is_some_and(|c| c.pass), "no devicetree check:\n{report}");
    assert_eq!(report.info("firmware-tables"), Some("devicetree"), "{report}");
    common::assert_no_leftovers(s.path());
}

#[test]
fn btrfs_raw_bootc_layout_boots_and_kiln_ran_nothing_from_the_image() {
    let s = Scratch::new("arm64-btrfs");
    let image = image_ref();
    assert_eq!(arm64_binfmt_handlers(), Vec::<String>::new(), "a binfmt handler could run arm64 programs: the bake would not prove kiln runs none");
    let out = bake(&s, &image, &["--type", "raw", "--rootfs", "btrfs", "--layout", "bootc"]);
    assert_eq!(arm64_binfmt_handlers(), Vec::<String>::new(), "a binfmt handler for arm64 appeared during the bake");
    println!("baked with no binfmt_misc handler for arm64 programs registered, before or after: kiln ran none of the image's programs");
    let raw = out.join("image/disk.raw");
    check_disk(&raw, &["EFI-SYSTEM", "root"], "btrfs");
    check_esp_shim(&raw);
    boots("arm64-btrfs", &raw);
    common::assert_no_leftovers(s.path());
}

// ---- the Asahi package ----

fn fdt_models(bytes: &[u8], dir: &Path) -> Vec<String> {
    let f = dir.join("one.dtb");
    std::fs::write(&f, bytes).unwrap();
    let dts = run(Command::new("dtc").args(["-q", "-I", "dtb", "-O", "dts"]).arg(&f));
    dts.lines().filter_map(|l| l.trim().strip_prefix("model = \"")).map(|m| m.trim_end_matches("\";").to_string()).collect()
}

/// m1n1/boot.bin read back as m1n1 reads it: the image's m1n1, device trees back to back
/// (magic d00dfeed, big-endian size at +4), one gzip member that inflates to the image's U-Boot,
/// then `name=value` lines.
fn check_boot_bin(boot_bin: &[u8], scratch: &Path) {
    let m1n1 = std::fs::read(base("usr/lib/m1n1/m1n1.bin")).unwrap();
    assert!(boot_bin.starts_with(&m1n1), "boot.bin does not start with the image's m1n1.bin");
    let mut at = m1n1.len();
    let mut models = Vec::new();
    while boot_bin[at..].starts_with(&[0xd0, 0x0d, 0xfe, 0xed]) {
        let size = u32::from_be_bytes(boot_bin[at + 4..at + 8].try_into().unwrap()) as usize;
        models.extend(fdt_models(&boot_bin[at..at + size], scratch));
        at += size;
    }
    // update-m1n1's order: t6*.dtb, then t81*.dtb, each sorted; the iPhone's t8015 left out.
    assert_eq!(
        models,
        ["Apple MacBook Pro (14-inch, M1 Pro, 2021)", "Apple Mac Studio (M1 Max, 2022)", "Apple Mac mini (M1, 2020)", "Apple MacBook Air (13-inch, M2, 2022)"]
    );
    assert_eq!(&boot_bin[at..at + 2], &[0x1f, 0x8b], "no gzip member after the device trees");
    let mut d = flate2::Decompress::new(false);
    let gz = &boot_bin[at..];
    // The gzip header: 10 bytes (kiln sets no optional fields), then raw deflate.
    assert_eq!(gz[3], 0, "gzip flags");
    let mut u_boot = Vec::with_capacity(4 << 20);
    d.decompress_vec(&gz[10..], &mut u_boot, flate2::FlushDecompress::Finish).unwrap();
    assert_eq!(u_boot, std::fs::read(base("usr/lib/u-boot/apple_m1/u-boot-nodtb.bin")).unwrap(), "the gzip member is not the image's U-Boot");
    let rest = &gz[10 + d.total_in() as usize + 8..];
    let vars = String::from_utf8(rest.to_vec()).unwrap();
    assert!(vars.lines().all(|l| l.contains('=') && ["chosen.", "display=", "mitigations="].iter().any(|k| l.starts_with(k))), "{vars:?}");
}

#[test]
fn asahi_package_reads_as_the_installer_reads_it_and_its_parts_boot() {
    let s = Scratch::new("arm64-asahi");
    let out = bake(&s, &image_ref(), &["--type", "asahi"]);
    let dir = out.join("asahi");
    let zip = dir.join("kiln-test-image-12.kiln-test.1.zip");
    let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["installer_data.json", "kiln-test-image-12.kiln-test.1.zip"]);
    assert!(!out.join("image/disk.raw").exists(), "the raw disk was not asked for but left behind");
    let t = run(Command::new("unzip").arg("-t").arg(&zip));
    assert!(t.contains("No errors detected"), "{t}");

    // As the installer reads it.
    let read = s.path().join("installer");
    let summary = run(Command::new("python3").arg(common::repo().join("tests/fixtures/asahi-installer-read.py")).arg(dir.join("installer_data.json")).arg(&read));
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let entry = &summary["entry"];
    println!("{}", serde_json::to_string_pretty(entry).unwrap());
    assert_eq!(entry["name"], "kiln test image 12.kiln-test.1");
    assert_eq!(entry["default_os_name"], "Debian GNU/Linux 12 (bookworm)");
    assert_eq!((entry["boot_object"].as_str(), entry["next_object"].as_str()), (Some("m1n1.bin"), Some("m1n1/boot.bin")));
    assert_eq!(entry["icon"], "debian.icns");
    assert!(entry["supported_fw"].as_array().unwrap().contains(&json!("13.5")));
    let parts = entry["partitions"].as_array().unwrap();
    assert_eq!(parts.iter().map(|p| p["name"].as_str().unwrap()).collect::<Vec<_>>(), ["EFI", "Boot", "Root"]);
    let volume_id = parts[0]["volume_id"].as_str().unwrap().to_string();
    let efi_size: u64 = parts[0]["size"].as_str().unwrap().trim_end_matches('B').parse().unwrap();
    assert!(parts[0]["copy_firmware"].as_bool().unwrap() && parts[0]["copy_installer_data"].as_bool().unwrap());

    // The ESP tree: the image's bootupd EFI tree, GRUB's configs beside it, m1n1/boot.bin.
    let esp = read.join("esp");
    let updates = base("usr/lib/bootupd/updates/EFI");
    for f in ["BOOT/BOOTAA64.EFI", "BOOT/fbaa64.efi", "debian/shimaa64.efi", "debian/mmaa64.efi", "debian/grubaa64.efi", "debian/BOOTAA64.CSV"] {
        assert_eq!(std::fs::read(esp.join("EFI").join(f)).unwrap(), std::fs::read(updates.join(f)).unwrap(), "esp/EFI/{f}");
    }
    for f in ["EFI/debian/grub.cfg", "EFI/debian/bootuuid.cfg", "m1n1/boot.bin"] {
        assert!(esp.join(f).is_file(), "esp/{f} missing");
    }
    check_boot_bin(&std::fs::read(esp.join("m1n1/boot.bin")).unwrap(), s.path());
    let icon = s.path().join("icon");
    run(Command::new("unzip").args(["-p"]).arg(&zip).arg("debian.icns").stdout(std::fs::File::create(&icon).unwrap()));
    assert_eq!(std::fs::read(&icon).unwrap(), b"icns\x00\x00\x00\x10kiln-test");

    // The filesystems: checked, 4 KiB blocks; /boot's fstab line mounts the ESP by the serial.
    let (root_img, boot_img) = (read.join("root.img"), read.join("boot.img"));
    for img in [&root_img, &boot_img] {
        run(Command::new("e2fsck").arg("-fn").arg(img));
        let header = run(Command::new("dumpe2fs").arg("-h").arg(img));
        assert!(header.lines().any(|l| l.starts_with("Block size:") && l.ends_with(" 4096")), "{header}");
    }
    // The kernel's dtb/ directory, deployed as ostree deploys it (read with debugfs).
    let entry = run(Command::new("debugfs").args(["-R", "cat /loader.1/entries/ostree-1.conf"]).arg(&boot_img));
    assert!(entry.lines().any(|l| l.starts_with("fdtdir /boot/ostree/default-") && l.ends_with("/dtb")), "{entry}");

    // The parts laid down as the installer would, with 1 GiB more for the root: it boots, mounts
    // its ESP by volume_id and grows its root (the probe's root.fills-partition and esp.mounted).
    let disk = s.path().join("mac.img");
    let root_part = lay_down(&disk, efi_size, &volume_id, &esp, &boot_img, &root_img, 1 << 30);
    let mut boot = Boot::aarch64(&disk, "arm64-asahi");
    boot.logical_block_size = Some(4096);
    let report = boot.run().unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    report.assert_outcome(&[]);
    let root_info = report.info("root-size").unwrap();
    assert!(root_info.ends_with(&format!("partition {root_part}")), "{root_info}");
    common::assert_no_leftovers(s.path());
}

/// Makes the disk the installer would leave on a Mac: GPT on 4 KiB sectors; an ESP of the
/// package's EFI size formatted as `newfs_msdos -F 32 -I volume_id` would (FAT32, 4 KiB
/// sectors) and filled with `esp/`; boot.img on a partition of its own; root.img on a larger
/// partition (the room `expand` gives). Returns the root partition's size.
fn lay_down(disk: &Path, esp_size: u64, volume_id: &str, esp_tree: &Path, boot_img: &Path, root_img: &Path, root_room: u64) -> u64 {
    let mib = 1u64 << 20;
    let boot_size = std::fs::metadata(boot_img).unwrap().len();
    let root_size = std::fs::metadata(root_img).unwrap().len();
    let root_part = (root_size + root_room).div_ceil(mib) * mib;
    let size = mib + esp_size.div_ceil(mib) * mib + boot_size.div_ceil(mib) * mib + root_part + 2 * mib;
    std::fs::File::create(disk).unwrap().set_len(size).unwrap();
    let script = format!(
        "label: gpt\nstart=256, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI - kiln\"\nsize={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"Boot - kiln\"\nsize={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"Root - kiln\"\n",
        esp_size / 4096,
        boot_size.div_ceil(mib) * mib / 4096,
        root_part / 4096
    );
    // sfdisk partitions a disk of the sector size its device reports (bookworm's sfdisk has
    // no --sector-size): a loop device of 4 KiB sectors over the file.
    let parts = {
        let dev = LoopDevice::attach_4k(disk);
        let mut sf = Command::new("sfdisk").arg("-q").arg(&dev.0).stdin(std::process::Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        sf.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(sf.wait().unwrap().success(), "sfdisk on {} failed", dev.0);
        let parts = partitions(Path::new(&dev.0));
        assert_eq!(parts[0].start, 256 * 4096, "the GPT is not of 4 KiB sectors");
        parts
    };
    let esp = disk.with_extension("esp");
    std::fs::File::create(&esp).unwrap().set_len(parts[0].size).unwrap();
    // newfs_msdos -F 32 -v <name> -I <volume_id> on a 4 KiB-sector NVMe partition.
    run(Command::new("mkfs.vfat").args(["-F", "32", "-S", "4096", "-s", "1", "-n", "EFI - kiln", "-i", volume_id.trim_start_matches("0x")]).arg(&esp));
    let entries: Vec<PathBuf> = std::fs::read_dir(esp_tree).unwrap().map(|e| e.unwrap().path()).collect();
    run(Command::new("mcopy").arg("-s").arg("-i").arg(&esp).args(&entries).arg("::/"));
    run(Command::new("fsck.fat").arg("-n").arg(&esp));
    let blkid = run(Command::new("blkid").args(["-o", "value", "-s", "UUID"]).arg(&esp));
    let serial = volume_id.trim_start_matches("0x").to_uppercase();
    assert_eq!(blkid.trim(), format!("{}-{}", &serial[..4], &serial[4..]), "the FAT serial is not volume_id");
    for (file, part) in [(esp.as_path(), &parts[0]), (boot_img, &parts[1]), (root_img, &parts[2])] {
        run(Command::new("dd")
            .arg(format!("if={}", file.display()))
            .arg(format!("of={}", disk.display()))
            .args(["bs=4M", "conv=notrunc,sparse", "status=none", "oflag=seek_bytes"])
            .arg(format!("seek={}", part.start)));
    }
    std::fs::remove_file(esp).unwrap();
    parts[2].size
}

/// A loop device of 4 KiB logical sectors over a file, detached when dropped.
struct LoopDevice(String);

impl LoopDevice {
    fn attach_4k(file: &Path) -> LoopDevice {
        LoopDevice(run(Command::new("losetup").args(["--find", "--show", "--sector-size", "4096"]).arg(file)).trim().to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

// ---- bad input ----

#[test]
fn an_image_for_an_architecture_without_a_platform_is_refused() {
    let s = Scratch::new("arm64-bad-arch");
    let image = tiny_image_for(&s.path().join("layout"), "riscv64", &[]);
    bake_fails(&s, &image, &["--type", "raw", "--rootfs", "ext4"], &["no platform for riscv64", "amd64 and arm64", "--target-arch"]);
}

#[test]
fn target_arch_missing_from_the_index_lists_what_it_has() {
    let s = Scratch::new("arm64-index");
    let layout = s.path().join("layout");
    // Two images in one layout, under one index with their platforms.
    let mut manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        tiny_image_for(&layout, arch, &[]);
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mut m = index["manifests"][0].clone();
        m["platform"] = if arch == "arm64" { json!({"os": "linux", "architecture": arch, "variant": "v8"}) } else { json!({"os": "linux", "architecture": arch}) };
        manifests.push(m);
    }
    let list = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})).unwrap();
    let digest = common::oci::sha256(&list);
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), &list).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
        "size": list.len(), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let image = format!("oci:{}:latest", layout.display());
    bake_fails(&s, &image, &["--type", "raw", "--rootfs", "ext4", "--target-arch", "s390x"], &["no image for linux/s390x", "linux/amd64", "linux/arm64/v8", "--target-arch"]);
}

#[test]
fn asahi_needs_an_arm64_image_with_m1n1_and_u_boot() {
    let s = Scratch::new("arm64-asahi-x86");
    bake_fails(
        &s,
        &format!("oci:{}:latest", test_image().join("oci").display()),
        &["--type", "asahi", "--rootfs", "ext4"],
        &["--type asahi", "Apple Silicon", "arm64", "amd64 image"],
    );
    let s = Scratch::new("arm64-asahi-no-m1n1");
    let image = tiny_image_for(&s.path().join("layout"), "arm64", &[]);
    bake_fails(
        &s,
        &image,
        &["--type", "asahi", "--rootfs", "ext4"],
        &["m1n1 (none of /usr/lib/asahi-boot/m1n1.bin, /usr/lib64/m1n1/m1n1.bin, /usr/lib/m1n1/m1n1.bin)", "U-Boot", "/usr/lib/modules/6.1.0-a/dtb/apple", "u-boot-asahi"],
    );
    // convert has no image to take them from.
    let raw = s.path().join("disk.raw");
    common::sfdisk_image(&raw, 8 << 20, "label: gpt\nsize=4MiB\n", &[]);
    let o = kiln(&["convert", "--type", "asahi", "--output", s.path().join("c").to_str().unwrap(), raw.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("kiln bake --type asahi"), "{err}");
    common::assert_no_partial_output(&s.path().join("c"));
}

#[test]
fn an_arm64_image_without_shim_or_grub_names_the_paths_searched() {
    let s = Scratch::new("arm64-no-bootloader");
    let image = tiny_image_for(&s.path().join("layout"), "arm64", &[]);
    bake_fails(
        &s,
        &image,
        &["--type", "raw", "--rootfs", "ext4"],
        &["no UEFI bootloader", "/usr/lib/efi/<package>/<version>/EFI", "/usr/lib/bootupd/updates/EFI", "/usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed", "/usr/lib/shim/shimaa64.efi.signed"],
    );
    let s = Scratch::new("arm64-no-shim");
    let image = tiny_image_for(&s.path().join("layout"), "arm64", &[("usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed", "not a PE file")]);
    let err = bake_fails(&s, &image, &["--type", "raw", "--rootfs", "ext4"], &["/usr/lib/shim/shimaa64.efi.signed", "/usr/lib/shim/mmaa64.efi.signed", "missing"]);
    assert!(!err.contains("grubaa64.efi.signed,"), "GRUB is there, yet named missing:\n{err}");
}
