//! The ISO writer against independent readers: xorriso's El Torito and system-area reports,
//! isoinfo (Rock Ridge, Joliet), osirrox (Rock Ridge tree) and 7z (Joliet tree) extracting
//! byte-equal files, sfdisk and sgdisk on the hybrid GPT; and under QEMU, GRUB (kiln's El
//! Torito core; the host's grub-mkimage for EFI) booting from it in all four ways: CD and USB
//! stick, BIOS and UEFI.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::hybrid_iso::{assert_hybrid_boot, sha};
use common::{run, Noise, Scratch};
use kiln::bootloader::core_image::{self, CoreSpec};
use kiln::bootloader::image_files::ImageRoot;
use kiln::disk::Ids;
use kiln::output::iso::{self, Content, IsoFile, IsoSpec};
use kiln::progress::{Progress, ProgressMode};

const VOLUME_ID: &str = "KILN_TEST_ISO";
const MARKER: &str = "kiln-iso-marker-5b1e0f";

/// A GRUB that needs nothing but the ISO: its embedded config finds the volume by a file on
/// it, prints that file on the serial console and resets (QEMU runs with -no-reboot).
fn grub_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("embed.cfg");
    fs::write(
        &cfg,
        "serial --unit=0 --speed=115200\nterminal_output serial\nsearch --no-floppy --file --set=root /boot/kiln/marker.txt\ncat ($root)/boot/kiln/marker.txt\nreboot\n",
    )
    .unwrap();
    cfg
}

const GRUB_MODULES: &[&str] = &["iso9660", "part_gpt", "serial", "terminal", "echo", "cat", "search", "search_fs_file", "reboot"];

/// GRUB's El Torito core as kiln builds it (from the host's i386-pc files here; from the
/// image's in a bake).
fn bios_core(dir: &Path) -> Vec<u8> {
    let config = fs::read_to_string(grub_config(dir)).unwrap();
    let modules: Vec<String> = std::iter::once("biosdisk").chain(GRUB_MODULES.iter().copied()).map(String::from).collect();
    let spec = CoreSpec { modules: &modules, config: &config, prefix: "/boot/grub" };
    core_image::build_eltorito(&ImageRoot::new("/"), "usr/lib/grub/i386-pc", &spec).unwrap()
}

/// A FAT ESP image holding a GRUB EFI as the removable-media path.
fn esp_image(dir: &Path) -> PathBuf {
    let efi = dir.join("BOOTX64.EFI");
    let cfg = grub_config(dir);
    run(Command::new("grub-mkimage").args(["-O", "x86_64-efi", "-p", "/EFI/BOOT", "-c"]).arg(&cfg).arg("-o").arg(&efi).arg("fat").args(GRUB_MODULES));
    let img = dir.join("esp.img");
    run(Command::new("mkfs.vfat").arg("-C").arg(&img).arg("4096"));
    run(Command::new("mmd").arg("-i").arg(&img).args(["::/EFI", "::/EFI/BOOT"]));
    run(Command::new("mcopy").arg("-i").arg(&img).arg(&efi).arg("::/EFI/BOOT/BOOTX64.EFI"));
    img
}

/// The test volume's files, also written under `tree` (what the readers must give back).
fn test_files(s: &Path, tree: &Path, bios: Vec<u8>) -> Vec<IsoFile> {
    let mut noise = Noise(0x150_9660);
    let blob = "4f2c8e1d7a9b3c5e6f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60";
    let big = s.join("layer.tar.zst");
    fs::write(&big, noise.bytes(3 << 20 | 123)).unwrap();
    let mut files = vec![
        ("boot/grub/grub.cfg", Content::Bytes(b"set timeout=0\n".to_vec())),
        ("boot/grub/i386-pc/eltorito.img", Content::Bytes(bios)),
        ("boot/kiln/marker.txt", Content::Bytes(format!("{MARKER}\n").into_bytes())),
        ("kiln/image/oci-layout", Content::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())),
        ("kiln/image/index.json", Content::Bytes(noise.bytes(5000))),
        ("kiln/image/blobs/sha256/empty", Content::Bytes(Vec::new())),
        ("Mixed Case.Name.with.dots", Content::Bytes(noise.bytes(2048))),
        ("a/b/c/d/e/f/g/deep.txt", Content::Bytes(b"seven levels\n".to_vec())),
    ];
    // Names that are the same in their first 30 ISO characters.
    let blob2 = format!("{}0000", &blob[..60]);
    files.push((Box::leak(format!("kiln/image/blobs/sha256/{blob}").into_boxed_str()), Content::File(big.clone())));
    files.push((Box::leak(format!("kiln/image/blobs/sha256/{blob2}").into_boxed_str()), Content::Bytes(noise.bytes(70_000))));
    for (path, content) in &files {
        let dest = tree.join(path);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        match content {
            Content::Bytes(b) => fs::write(&dest, b).unwrap(),
            Content::File(p) => drop(fs::copy(p, &dest).unwrap()),
        }
    }
    files.into_iter().map(|(path, content)| IsoFile { path: path.to_string(), content }).collect()
}

/// The boot pieces, made once per test: GRUB's BIOS core and the ESP image.
struct Boot {
    bios: Vec<u8>,
    esp: PathBuf,
}

impl Boot {
    fn new(s: &Path) -> Boot {
        Boot { bios: bios_core(s), esp: esp_image(s) }
    }
}

fn make_iso(s: &Path, boot: &Boot, tree: &Path, seed: &str, out: &Path) {
    let spec = IsoSpec {
        volume_id: VOLUME_ID.into(),
        medium_id: "kiln-test-medium-1".into(),
        files: test_files(s, tree, boot.bios.clone()),
        bios_image: Some("boot/grub/i386-pc/eltorito.img".into()),
        mbr_code: Some(fs::read("/usr/lib/grub/i386-pc/boot_hybrid.img").unwrap()),
        efi_image: Some(Content::File(boot.esp.clone())),
        unix_time: 1_764_633_600,
    };
    let file = fs::File::create(out).unwrap();
    let progress = Progress::new(ProgressMode::Plain);
    let stage = progress.stage("iso", None);
    iso::write(&spec, &Ids::from_seed(Some(seed)), &file, &stage).unwrap();
}

fn diff_trees(a: &Path, b: &Path) {
    let out = Command::new("diff").arg("-r").arg(a).arg(b).output().unwrap();
    assert!(out.status.success(), "extracted tree differs from the source:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn iso_is_read_by_xorriso_isoinfo_osirrox_7z_and_sgdisk() {
    let s = Scratch::new("iso-oracles");
    let tree = s.path().join("tree");
    let iso = s.path().join("install.iso");
    let boot = Boot::new(s.path());
    make_iso(s.path(), &boot, &tree, "one", &iso);

    // Same input and seed: the same bytes.
    let again = s.path().join("again.iso");
    make_iso(s.path(), &boot, &s.path().join("tree2"), "one", &again);
    assert_eq!(sha(&iso), sha(&again), "the ISO is not reproducible");

    let area = assert_hybrid_boot(&iso);
    for want in ["GPT", "ISO image size/512 :"] {
        assert!(area.contains(want), "no {want:?} in:\n{area}");
    }
    assert!(area.contains("GPT type GUID : 2 28732ac11ff8d211ba4b00a0c93ec93b"), "{area}");
    assert!(area.contains("MBR partition : 1 0x00 0xee 1 "), "{area}");
    // The ESP right after the ISO volume.
    let iso_sectors = area.lines().find_map(|l| l.strip_prefix("ISO image size/512 : ")).unwrap();
    assert!(area.contains(&format!("GPT start and size : 2 {iso_sectors} ")), "{area}");
    assert!(area.contains("GPT start and size : 1 64 "), "{area}");

    let d = run(Command::new("isoinfo").args(["-d", "-R", "-J", "-i"]).arg(&iso));
    for want in [&format!("Volume id: {VOLUME_ID}") as &str, "Volume set id: kiln-test-medium-1", "Rock Ridge signatures version 1 found", "Joliet with UCS level 3 found", "El Torito VD version 1 found"] {
        assert!(d.contains(want), "no {want:?} in isoinfo -d:\n{d}");
    }
    let rr = run(Command::new("isoinfo").args(["-R", "-l", "-i"]).arg(&iso));
    assert!(rr.contains("Mixed Case.Name.with.dots") && rr.contains("4f2c8e1d7a9b3c5e6f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60"), "{rr}");
    assert!(rr.contains("-r--r--r--"), "{rr}");
    let joliet = run(Command::new("isoinfo").args(["-J", "-l", "-i"]).arg(&iso));
    assert!(joliet.contains("Mixed Case.Name.with.dots") && joliet.contains("Directory listing of /a/b/c/d/e/f/g/"), "{joliet}");

    // osirrox reads the Rock Ridge tree; 7z the Joliet one. The BIOS image differs where it
    // is patched (xorriso's "boot-info-table grub2-boot-info" above checked those bytes).
    let rr_out = s.path().join("osirrox");
    run(Command::new("osirrox").arg("-indev").arg(&iso).args(["-extract", "/"]).arg(&rr_out));
    let core = "boot/grub/i386-pc/eltorito.img";
    let (given, written) = (fs::read(tree.join(core)).unwrap(), fs::read(rr_out.join(core)).unwrap());
    assert_eq!(given.len(), written.len());
    let unpatched = |b: &[u8]| [&b[..8], &b[64..2548], &b[2556..]].concat();
    assert!(unpatched(&given) == unpatched(&written), "the BIOS image differs beyond its patched bytes");
    fs::copy(tree.join(core), rr_out.join(core)).unwrap();
    diff_trees(&tree, &rr_out);
    let joliet_out = s.path().join("7z");
    run(Command::new("7z").args(["x", "-y"]).arg(format!("-o{}", joliet_out.display())).arg(&iso));
    let _ = fs::remove_dir_all(joliet_out.join("[BOOT]"));
    fs::copy(tree.join(core), joliet_out.join(core)).unwrap();
    diff_trees(&tree, &joliet_out);

    let table: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("-J").arg(&iso))).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(table["partitiontable"]["label"], "gpt");
    assert_eq!(parts.len(), 2, "{table}");
    assert_eq!(parts[0]["start"], 64, "the ISO data partition starts at block 16");
    assert_eq!(parts[1]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    let v = run(Command::new("sgdisk").arg("-v").arg(&iso));
    assert!(v.contains("No problems found"), "{v}");
}

/// Boots `iso` in QEMU (as a CD or as a disk) with `firmware`, waiting for the marker the
/// GRUB on it prints after reading it from the ISO 9660 tree.
fn boot_prints_marker(iso: &Path, uefi: bool, as_cd: bool, name: &str) -> Result<(), String> {
    let logs = std::env::var_os("KILN_BOOT_LOGS").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("kiln-boot-logs"));
    fs::create_dir_all(&logs).unwrap();
    let console = logs.join(format!("{name}.console.log"));
    let _ = fs::remove_file(&console);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-machine", "q35", "-m", "512", "-nographic", "-monitor", "none", "-nic", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=none,id=iso,readonly=on", iso.display()))
        .arg("-device")
        .arg(if as_cd { "ide-cd,drive=iso,bootindex=1" } else { "virtio-blk-pci,drive=iso,bootindex=1" });
    let vars = logs.join(format!("{name}.OVMF_VARS.fd"));
    if uefi {
        fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        cmd.arg("-drive")
            .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
    }
    let mut vm = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let timeout = Duration::from_secs(std::env::var("KILN_BOOT_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(300));
    let started = Instant::now();
    let result = loop {
        let log = String::from_utf8_lossy(&fs::read(&console).unwrap_or_default()).into_owned();
        if log.contains(MARKER) {
            break Ok(());
        }
        if let Ok(Some(status)) = vm.try_wait() {
            let log = String::from_utf8_lossy(&fs::read(&console).unwrap_or_default()).into_owned();
            break if log.contains(MARKER) { Ok(()) } else { Err(format!("{name}: QEMU exited ({status}) without the marker; console:\n{log}")) };
        }
        if started.elapsed() > timeout {
            break Err(format!("{name}: no marker within {}s; console:\n{log}", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = vm.kill();
    let _ = vm.wait();
    let _ = fs::remove_file(&vars);
    result
}

/// GRUB boots from the ISO and reads its tree: as a CD (El Torito BIOS and UEFI entries) and
/// as a USB stick (BIOS through the MBR code and the 2548 patch; UEFI through the GPT's ESP,
/// with the El Torito record renamed so OVMF cannot use it).
#[test]
fn iso_boots_grub_as_cd_and_usb_under_bios_and_uefi() {
    let s = Scratch::new("iso-boot");
    let iso = s.path().join("install.iso");
    make_iso(s.path(), &Boot::new(s.path()), &s.path().join("tree"), "boot", &iso);
    let mut failures = Vec::new();
    for (uefi, cd, name) in [(false, true, "iso-cd-bios"), (true, true, "iso-cd-uefi"), (false, false, "iso-usb-bios")] {
        if let Err(e) = boot_prints_marker(&iso, uefi, cd, name) {
            failures.push(e);
        }
    }
    // The USB stick under UEFI without El Torito: only the GPT's ESP leads to GRUB.
    let usb = s.path().join("usb.img");
    fs::copy(&iso, &usb).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&usb).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"NO", 17 * 2048 + 7).unwrap();
    drop(f);
    if let Err(e) = boot_prints_marker(&usb, true, false, "iso-usb-uefi") {
        failures.push(e);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
