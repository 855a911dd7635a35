//! `kiln bake --type iso` (the installer ISO) against independent readers: xorriso's El
//! Torito and system-area reports, isoinfo, osirrox extracting the tree, skopeo copying the
//! same image (the payload must hold the same manifest and blobs), mtools reading the ESP,
//! GNU cpio listing kiln.img; bad input; an unattended install from the ISO as a CD under
//! UEFI and one under BIOS where the installer asks for the disk, the installed disks then
//! booting with every probe check.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::boot::{Boot, ConsoleAction, Firmware, USB_DEVICE_ID};
use common::hybrid_iso::{assert_hybrid_boot, sha};
use common::{bake_fails, efivars, kiln, oci, run, test_image, Scratch};

fn bake_iso(s: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = s.join(name);
    let image = format!("oci:{}:latest", test_image().join("oci").display());
    let mut args = vec!["bake", "--type", "iso", "--output", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(&image);
    let o = kiln(&args);
    assert!(o.status.success(), "kiln bake --type iso failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let iso = out.join("bootiso/install.iso");
    assert!(iso.is_file(), "no {}", iso.display());
    iso
}

/// Every file below `dir`, by its path relative to it, with its sha256.
fn tree_digests(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = common::files_under(dir).iter().map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), sha(p))).collect();
    v.sort();
    v
}

/// The image's file at `path` (the test image's base root filesystem).
fn image_file(path: &str) -> PathBuf {
    test_image().join("base").join(path)
}

fn kernel_version() -> String {
    let dir = image_file("usr/lib/modules");
    fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).find(|k| dir.join(k).join("vmlinuz").exists()).unwrap()
}

/// Where the installed systems update from (the test image comes from an OCI directory).
const TARGET_IMGREF: &str = "registry.example/kiln/test:latest";

#[test]
fn iso_is_reproducible_and_carries_the_image_as_published() {
    let s = Scratch::new("installer-iso");
    let args = ["--seed", "iso-test", "--iso-target-disk", "auto", "--target-imgref", TARGET_IMGREF];
    let iso = bake_iso(s.path(), "one", &args);
    let again = bake_iso(s.path(), "two", &args);
    assert_eq!(sha(&iso), sha(&again), "the same seed made different ISOs");

    assert_hybrid_boot(&iso);

    let d = run(Command::new("isoinfo").args(["-d", "-R", "-J", "-i"]).arg(&iso));
    for want in ["Volume id: KILN_", "Rock Ridge signatures version 1 found", "Joliet with UCS level 3 found", "El Torito VD version 1 found"] {
        assert!(d.contains(want), "no {want:?} in isoinfo -d:\n{d}");
    }
    let medium_id = d.lines().find_map(|l| l.strip_prefix("Volume set id: ")).unwrap().trim().to_string();
    assert!(medium_id.starts_with("kiln-"), "{d}");

    let tree = s.path().join("tree");
    run(Command::new("osirrox").arg("-indev").arg(&iso).args(["-extract", "/"]).arg(&tree));

    // The payload: what skopeo copies from the same image, blob for blob.
    let copy = s.path().join("skopeo-copy");
    run(Command::new("skopeo").args(["copy", "-q", "--preserve-digests"]).arg(format!("oci:{}:latest", test_image().join("oci").display())).arg(format!("oci:{}", copy.display())));
    let index = |dir: &Path| -> serde_json::Value { serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap() };
    let (ours, theirs) = (index(&tree.join("kiln/image")), index(&copy));
    assert_eq!(ours["manifests"][0]["digest"], theirs["manifests"][0]["digest"], "{ours}\n{theirs}");
    assert_eq!(ours["manifests"][0]["size"], theirs["manifests"][0]["size"]);
    assert_eq!(tree_digests(&tree.join("kiln/image/blobs")), tree_digests(&copy.join("blobs")), "the payload's blobs are not the image's");
    // skopeo reads the payload as an image too.
    let raw = run(Command::new("skopeo").args(["inspect", "--raw"]).arg(format!("oci:{}", tree.join("kiln/image").display())));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&raw).unwrap(), serde_json::from_slice::<serde_json::Value>(&fs::read(copy.join("blobs/sha256").join(theirs["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:"))).unwrap()).unwrap());

    // The image's kernel and initramfs, unchanged.
    let kver = kernel_version();
    assert_eq!(sha(&tree.join("boot/vmlinuz")), sha(&image_file(&format!("usr/lib/modules/{kver}/vmlinuz"))));
    assert_eq!(sha(&tree.join("boot/initramfs.img")), sha(&image_file(&format!("usr/lib/modules/{kver}/initramfs.img"))));

    let cfg = fs::read_to_string(tree.join("boot/grub/grub.cfg")).unwrap();
    let linux = format!("linux /boot/vmlinuz rd.systemd.unit=kiln-install.target kiln.iso={medium_id} console=tty0 console=ttyS0,115200 rd.md=0 rd.lvm=0 rd.dm=0 rd.luks=0");
    assert!(cfg.contains(&linux), "no {linux:?} in:\n{cfg}");
    assert!(cfg.contains("initrd /boot/initramfs.img /boot/kiln.img"), "{cfg}");

    // kiln.img, as GNU cpio reads it: the settings, the units, kiln with its loader.
    let listed = run(Command::new("sh").arg("-c").arg(format!("cpio -it --quiet < {}", tree.join("boot/kiln.img").display())));
    for want in ["etc/kiln/iso.toml", "etc/systemd/system/kiln-install.target", "etc/systemd/system/kiln-install.service", "usr/lib/kiln/kiln", "usr/lib/kiln/ld.so", "usr/lib/kiln/libc.so.6", "usr/sbin/mke2fs", "usr/sbin/mkfs.ext4", "usr/sbin/mkfs.xfs", "usr/lib/x86_64-linux-gnu/libext2fs.so.2"] {
        assert!(listed.lines().any(|l| l == want), "kiln.img lacks {want}:\n{listed}");
    }
    let unpacked = s.path().join("kiln-img");
    fs::create_dir(&unpacked).unwrap();
    run(Command::new("sh").arg("-c").arg(format!("cd {} && cpio -id --quiet < {}", unpacked.display(), tree.join("boot/kiln.img").display())));
    let settings = fs::read_to_string(unpacked.join("etc/kiln/iso.toml")).unwrap();
    assert!(settings.contains("target = \"auto\"") && settings.contains(&format!("medium_id = \"{medium_id}\"")), "{settings}");
    assert!(settings.contains(&format!("target_imgref = \"{TARGET_IMGREF}\"")), "{settings}");
    // The bundled kiln is this kiln without its debug info: objcopy finds the same loaded
    // bytes in both, readelf no debug section with content in the bundled one.
    let (bundled, built) = (unpacked.join("usr/lib/kiln/kiln"), Path::new(env!("CARGO_BIN_EXE_kiln")));
    let loaded = |elf: &Path, name: &str| {
        let out = s.path().join(name);
        run(Command::new("objcopy").args(["-O", "binary"]).arg(elf).arg(&out));
        sha(&out)
    };
    assert_eq!(loaded(&bundled, "bundled.bin"), loaded(built, "built.bin"), "the bundled kiln's loaded bytes differ from the built one's");
    let sections = run(Command::new("readelf").args(["-SW"]).arg(&bundled));
    let debug_bytes: u64 = sections.lines().filter(|l| l.contains(" .debug_") && !l.contains(".debug_gdb_scripts")).map(|l| u64::from_str_radix(l.split(']').nth(1).unwrap().split_whitespace().nth(4).unwrap(), 16).unwrap()).sum();
    assert_eq!(debug_bytes, 0, "the bundled kiln carries debug info:\n{sections}");
    let (bundled_size, built_size) = (fs::metadata(&bundled).unwrap().len(), fs::metadata(built).unwrap().len());
    println!("bundled kiln: {bundled_size} bytes (built: {built_size})");
    // The bundle runs on its own: the loader finds every library in the bundle.
    let bundle = unpacked.join("usr/lib/kiln");
    let version = run(Command::new(bundle.join("ld.so")).arg("--library-path").arg(&bundle).arg(bundle.join("kiln")).arg("--version"));
    assert!(version.starts_with("kiln "), "{version}");

    // The ESP (GPT partition 2), as mtools reads it: shim, GRUB and MokManager; no fallback.
    let table: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("-J").arg(&iso))).unwrap();
    let esp_part = &table["partitiontable"]["partitions"][1];
    let esp = s.path().join("esp.img");
    run(Command::new("dd").arg(format!("if={}", iso.display())).arg(format!("of={}", esp.display())).args(["bs=512", "status=none"]).arg(format!("skip={}", esp_part["start"])).arg(format!("count={}", esp_part["size"])));
    let dir = run(Command::new("mdir").args(["-b", "-i"]).arg(&esp).arg("::/EFI/BOOT"));
    let mut names: Vec<&str> = dir.lines().map(|l| l.rsplit('/').next().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["BOOTX64.EFI", "grub.cfg", "grubx64.efi", "mmx64.efi"], "{dir}");
    let shim = s.path().join("shim.efi");
    run(Command::new("mcopy").arg("-i").arg(&esp).arg("::/EFI/BOOT/BOOTX64.EFI").arg(&shim));
    assert_eq!(sha(&shim), sha(&image_file("usr/lib/shim/shimx64.efi.signed")));
    let vendor_cfg = run(Command::new("mtype").arg("-i").arg(&esp).arg("::/EFI/debian/grub.cfg"));
    assert!(vendor_cfg.contains("search --no-floppy --label --set=root KILN_"), "{vendor_cfg}");
}

/// A cpio archive (GNU cpio, newc) of `files` (path, content), made in `dir`.
fn cpio(dir: &Path, files: &[(&str, &str)]) -> Vec<u8> {
    let _ = fs::remove_dir_all(dir);
    for (path, content) in files {
        fs::create_dir_all(dir.join(path).parent().unwrap()).unwrap();
        fs::write(dir.join(path), content).unwrap();
    }
    let list: String = files.iter().map(|(p, _)| format!("{p}\n")).collect();
    let out = Command::new("sh").arg("-c").arg(format!("cd {} && printf '{list}' | cpio -o -H newc --quiet", dir.display())).output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn iso_refuses_images_it_cannot_make_an_installer_of() {
    let s = Scratch::new("installer-iso-bad");
    // An arm64 image: no installer ISO for it yet.
    let arm = common::tiny_image_for(&s.path().join("arm"), "arm64", &[]);
    bake_fails(&s, &arm, &["--type", "iso"], &["installer ISOs for amd64 images so far", "arm64"]);

    // An initramfs without systemd (initramfs-tools' shape): an uncompressed early-microcode
    // archive, then the main one, gzip'd.
    let early = cpio(&s.path().join("early"), &[("kernel/x86/microcode/GenuineIntel.bin", "microcode")]);
    let main = cpio(&s.path().join("main"), &[("init", "#!/bin/sh\n"), ("usr/bin/busybox", "busybox")]);
    let gz = Command::new("sh").arg("-c").arg("gzip -c").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut gz = gz;
    std::io::Write::write_all(gz.stdin.as_mut().unwrap(), &main).unwrap();
    drop(gz.stdin.take());
    let main_gz = gz.wait_with_output().unwrap().stdout;
    let initramfs = [early, main_gz].concat();
    let tar = oci::RawTar::default()
        .dir("usr/")
        .dir("usr/lib/")
        .dir("usr/lib/modules/")
        .dir("usr/lib/modules/6.1.0-a/")
        .file("usr/lib/modules/6.1.0-a/vmlinuz", "kernel")
        .entry("usr/lib/modules/6.1.0-a/initramfs.img", b'0', 0o644, "", &initramfs)
        .finish();
    let dir = s.path().join("no-systemd");
    let image = oci::write_layout(&dir, &[oci::LayerBlob { tar, gzip: true }], serde_json::json!({"containers.bootc": "1"}), "amd64");
    bake_fails(&s, &image, &["--type", "iso"], &["initramfs.img cannot host kiln's installer", "no /usr/lib/systemd/systemd"]);
}

/// A boot that installs onto `target`: the guest's writes kept, memory and time for the install.
fn install_boot<'a>(target: &'a Path, firmware: Firmware, name: &str) -> Boot<'a> {
    let mut boot = Boot::new(target, firmware, name);
    boot.image_writable = true;
    boot.memory_mib = 2048;
    boot.timeout = boot.timeout.max(std::time::Duration::from_secs(2400));
    boot
}

/// The unattended ISO (`--iso-target-disk auto`, a MOK to enroll) as a CD under UEFI, an empty
/// disk first in the boot order: the installer installs onto that disk (`install to-disk` in a
/// guest, with a real kernel and udev making the partition nodes), then powers off. On the host,
/// virt-firmware (not kiln's code) reads the variable store: kiln's boot entry first in
/// BootOrder (shim's path, HD() of the disk's ESP as sfdisk reads it) and the MOK request. The
/// request removed (shim would wait in MokManager), the disk boots alone with that store through
/// kiln's entry, and every probe check passes.
#[test]
fn iso_installs_unattended_from_cd_under_uefi() {
    let s = Scratch::new("installer-iso-install");
    let der = efivars::test_certificate(s.path());
    let iso = bake_iso(s.path(), "out", &["--iso-target-disk", "auto", "--target-imgref", TARGET_IMGREF, "--iso-enroll-mok", der.to_str().unwrap()]);
    let target = s.path().join("target.raw");
    fs::File::create(&target).unwrap().set_len(8 << 30).unwrap();
    let vars = s.path().join("OVMF_VARS.fd");
    let mut installer = install_boot(&target, Firmware::Uefi, "installer-iso-install");
    installer.cdrom = Some(iso);
    installer.vars = Some(vars.clone());
    let tail = installer.until_console("kiln installer: installed onto /dev/vda; powering off").unwrap_or_else(|e| panic!("{e}"));
    println!("{tail}");
    let (entry, esp_nr) = efivars::assert_boot_entry_first(&vars, &target, "Debian GNU/Linux", "\\EFI\\debian\\shimx64.efi");
    efivars::assert_mok_request_and_remove_it(&vars, &der);

    let mut installed = Boot::new(&target, Firmware::Uefi, "installer-iso-installed");
    installed.vars = Some(vars);
    let report = installed.run().unwrap_or_else(|e| panic!("{e}"));
    println!("the installed disk:\n{report}");
    report.assert_outcome(&[]);
    efivars::assert_started_entry(&report.console_log, &entry, "Debian GNU/Linux", esp_nr);
}

/// Blocks the sparse file `path` has allocated: any write from the guest allocates some.
fn allocated_blocks(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks()
}

/// No target named, an empty disk and one holding an ext4 filesystem, the ISO as a CD under BIOS
/// (SeaBIOS: El Torito's GRUB core): the installer shows the disk table on the console and
/// asks. The test answers a number no disk has (asked again), then the second disk but not
/// "yes" to erasing it (left alone, asked again), then the second disk and "yes". The install
/// writes that disk only, and the disk then boots under BIOS with every probe check.
#[test]
fn iso_asks_for_the_target_and_installs_it_under_bios() {
    let s = Scratch::new("installer-iso-ask");
    let iso = bake_iso(s.path(), "out", &["--target-imgref", TARGET_IMGREF]);
    let (first, second) = (s.path().join("first.raw"), s.path().join("second.raw"));
    for d in [&first, &second] {
        fs::File::create(d).unwrap().set_len(8 << 30).unwrap();
    }
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&second));
    let mut installer = install_boot(&first, Firmware::Bios, "installer-iso-ask");
    installer.cdrom = Some(iso);
    installer.extra_disks = vec![(second.clone(), true)];
    let answer = |prompt: &str, line: &str| (prompt.to_string(), ConsoleAction::Type(line.into()));
    installer.on_console = vec![
        answer("install onto which disk?", "7"),
        answer("install onto which disk?", "2"),
        answer("type yes to go on:", "no"),
        answer("install onto which disk?", "/dev/vdb"),
        answer("type yes to go on:", "yes"),
    ];
    let tail = installer.until_console("kiln installer: installed onto ").unwrap_or_else(|e| panic!("{e}"));
    println!("{tail}");
    let console = String::from_utf8_lossy(&fs::read(installer.log_dir.join("installer-iso-ask-bios.console.log")).unwrap()).into_owned();
    // The table: a header, then each disk with its size and what is on it.
    let row = |disk: &str| console.lines().find(|l| l.split_whitespace().nth(1) == Some(disk)).map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert!(console.lines().any(|l| l.split_whitespace().eq(["#", "DISK", "SIZE", "MODEL", "SERIAL", "CONTENT"])), "no disk table header:\n{console}");
    assert_eq!(row("/dev/vda"), Some(vec!["1", "/dev/vda", "8.0", "GiB", "-", "-", "empty"]), "{console}");
    assert_eq!(row("/dev/vdb"), Some(vec!["2", "/dev/vdb", "8.0", "GiB", "-", "-", "an", "ext2/3/4", "filesystem"]), "{console}");
    assert!(console.contains("kiln installer: \"7\" is none of the disks listed"), "{console}");
    assert!(console.contains("kiln installer: /dev/vdb is left as it is"), "{console}");
    assert!(console.contains("kiln installer: the medium is /dev/sr0"), "{console}");
    assert_eq!(allocated_blocks(&first), 0, "the installer wrote to the disk it was not told to use:\n{tail}");
    assert!(tail.contains("kiln installer: installed onto /dev/vdb; powering off"), "{tail}");

    let installed = Boot::new(&second, Firmware::Bios, "installer-iso-ask-installed");
    let report = installed.run().unwrap_or_else(|e| panic!("{e}"));
    println!("the installed disk:\n{report}");
    report.assert_outcome(&[]);
}

/// Where an ISO 9660 volume's El Torito boot record names its specification ("EL TORITO
/// SPECIFICATION" in the descriptor at block 17): a firmware that does not find it there
/// sees no El Torito catalog.
const EL_TORITO_ID: u64 = 17 * 2048 + 7;

/// The ISO `dd`'d to a USB stick, its El Torito record disabled (so OVMF must boot the GPT's
/// ESP, as on a stick whose firmware ignores El Torito), under Secure Boot with Microsoft's keys
/// (the image's signed shim, GRUB and kernel), the target named but too small for the image:
/// the installer finds its medium on the stick, says why it stops on the console, and the
/// target is not written.
#[test]
fn iso_as_usb_stick_boots_under_secure_boot_and_refuses_a_small_target() {
    let s = Scratch::new("installer-iso-usb");
    let iso = bake_iso(s.path(), "out", &["--iso-target-disk", "/dev/vda"]);
    let stick = s.path().join("stick.img");
    fs::copy(&iso, &stick).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&stick).unwrap();
        f.write_all_at(b"NO", EL_TORITO_ID).unwrap();
    }
    let d = run(Command::new("isoinfo").arg("-d").arg("-i").arg(&stick));
    assert!(!d.contains("El Torito"), "the stick still has an El Torito record:\n{d}");
    let target = s.path().join("small.raw");
    fs::File::create(&target).unwrap().set_len(1 << 30).unwrap();
    let mut boot = Boot::new(&target, Firmware::Uefi, "installer-iso-usb");
    boot.usb = Some(stick);
    boot.secure_boot = true;
    boot.image_writable = true;
    let tail = boot.until_console("choose a disk of at least").unwrap_or_else(|e| panic!("{e}"));
    println!("{tail}");
    let console = String::from_utf8_lossy(&fs::read(boot.log_dir.join("installer-iso-usb-uefi.console.log")).unwrap()).into_owned();
    for want in ["Secure boot enabled", "kiln installer: the medium is /dev/sd", "kiln installer: installing onto /dev/vda", "nothing was written to /dev/vda: /dev/vda is too small: it has 1024 MiB"] {
        assert!(console.contains(want), "the console lacks {want:?}:\n{tail}");
    }
    assert_eq!(allocated_blocks(&target), 0, "the installer wrote to the disk it refused");
}

/// The ISO `dd`'d to a USB stick under BIOS (SeaBIOS through the hybrid MBR), the target
/// named: the stick is pulled (QMP `device_del`) once the install writes the disk. The
/// installer stops with an error naming its medium and leaves the target with an empty GPT,
/// as sfdisk reads it.
#[test]
fn iso_pulled_mid_install_leaves_the_target_with_an_empty_gpt() {
    let s = Scratch::new("installer-iso-pulled");
    let iso = bake_iso(s.path(), "out", &["--iso-target-disk", "/dev/vda"]);
    let target = s.path().join("target.raw");
    fs::File::create(&target).unwrap().set_len(8 << 30).unwrap();
    let mut boot = install_boot(&target, Firmware::Bios, "installer-iso-pulled");
    boot.usb = Some(iso);
    let unplug = format!(r#"{{"execute": "device_del", "arguments": {{"id": "{USB_DEVICE_ID}"}}}}"#);
    // The disk stage makes the filesystems: the target is being written, the payload not read yet.
    boot.on_console = vec![("kiln: disk: started".into(), ConsoleAction::Qmp(unplug))];
    let tail = boot.until_console("was left with an empty partition table").unwrap_or_else(|e| panic!("{e}"));
    println!("{tail}");
    let console = String::from_utf8_lossy(&fs::read(boot.log_dir.join("installer-iso-pulled-bios.console.log")).unwrap()).into_owned();
    for want in ["kiln installer: the medium is /dev/sd", "kiln installer: installing onto /dev/vda", "the installer's medium /dev/sd", "was removed during the install"] {
        assert!(console.contains(want), "the console lacks {want:?}:\n{tail}");
    }
    let table: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("-J").arg(&target))).unwrap();
    assert_eq!(table["partitiontable"]["label"], "gpt", "{table}");
    assert_eq!(table["partitiontable"]["partitions"].as_array().map_or(0, Vec::len), 0, "the target keeps partitions: {table}");
}

/// The ISO's files `osirrox` extracts, and kiln.img unpacked by GNU cpio, below `dir`.
fn unpack_iso(iso: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let tree = dir.join("tree");
    run(Command::new("osirrox").arg("-indev").arg(iso).args(["-extract", "/boot"]).arg(&tree));
    let unpacked = dir.join("kiln-img");
    fs::create_dir_all(&unpacked).unwrap();
    run(Command::new("sh").arg("-c").arg(format!("cd {} && cpio -id --quiet < {}", unpacked.display(), tree.join("kiln.img").display())));
    (tree, unpacked)
}

/// The installer's settings (etc/kiln/iso.toml) in an unpacked kiln.img.
fn iso_settings(unpacked: &Path) -> toml::Value {
    toml::from_str(&fs::read_to_string(unpacked.join("etc/kiln/iso.toml")).unwrap()).unwrap()
}

/// The install settings from the build config's `[customizations.installer]`, as the ISO
/// carries them (iso.toml and the unit in kiln.img, GRUB's menu); the `--iso-*` options
/// before the config's; a config target only when the config says the install is unattended.
#[test]
fn iso_takes_its_install_settings_from_the_config_file() {
    let s = Scratch::new("installer-iso-config");
    let config = s.path().join("config.toml");
    fs::write(&config, "[customizations.installer]\nunattended = true\ntarget-disk = \"/dev/sdb\"\nwipe = true\nkargs = [\"quiet\", \"kiln.test=1\"]\nfilesystem = \"xfs\"\nfinish = \"reboot\"\n").unwrap();
    let iso = bake_iso(s.path(), "config", &["--config", config.to_str().unwrap()]);
    let (tree, unpacked) = unpack_iso(&iso, &s.path().join("config-files"));
    let settings = iso_settings(&unpacked);
    assert_eq!(settings["target"].as_str(), Some("/dev/sdb"), "{settings}");
    assert_eq!(settings["filesystem"].as_str(), Some("xfs"), "{settings}");
    assert_eq!((settings["wipe"].as_bool(), settings["reboot"].as_bool()), (Some(true), Some(true)), "{settings}");
    let unit = fs::read_to_string(unpacked.join("etc/systemd/system/kiln-install.service")).unwrap();
    assert!(unit.lines().any(|l| l == "SuccessAction=reboot"), "{unit}");
    // The config's kargs are the installer's own boot's: GRUB's menu has them.
    let cfg = fs::read_to_string(tree.join("grub/grub.cfg")).unwrap();
    let linux = cfg.lines().find(|l| l.trim_start().starts_with("linux ")).unwrap();
    assert!(linux.ends_with(" rd.luks=0 quiet kiln.test=1"), "{cfg}");

    // The options before the config's; not unattended: the config's target is not used.
    fs::write(&config, "[customizations.installer]\ntarget-disk = \"/dev/sdb\"\nfilesystem = \"xfs\"\n").unwrap();
    let out = s.path().join("options");
    let image = format!("oci:{}:latest", test_image().join("oci").display());
    let o = kiln(&["bake", "--type", "iso", "--config", config.to_str().unwrap(), "--rootfs", "btrfs", "--output", out.to_str().unwrap(), &image]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("customizations.installer.target-disk \"/dev/sdb\" is not used: the install is not unattended"), "{stderr}");
    let (_, unpacked) = unpack_iso(&out.join("bootiso/install.iso"), &s.path().join("options-files"));
    let settings = iso_settings(&unpacked);
    assert_eq!(settings.get("target"), None, "{settings}");
    assert_eq!(settings["filesystem"].as_str(), Some("btrfs"), "{settings}");
    assert_eq!((settings["wipe"].as_bool(), settings["reboot"].as_bool()), (Some(false), Some(false)), "{settings}");
    let unit = fs::read_to_string(unpacked.join("etc/systemd/system/kiln-install.service")).unwrap();
    assert!(unit.lines().any(|l| l == "SuccessAction=poweroff"), "{unit}");

    // --iso-reboot without a config; the installer wipes the disk it is told to use. A MOK
    // certificate travels on the ISO, its password in the settings.
    let der = efivars::test_certificate(s.path());
    let iso = bake_iso(s.path(), "reboot", &["--iso-reboot", "--iso-target-disk", "auto", "--iso-enroll-mok", der.to_str().unwrap(), "--iso-mok-password", "kiln test"]);
    let (_, unpacked) = unpack_iso(&iso, &s.path().join("reboot-files"));
    let settings = iso_settings(&unpacked);
    assert_eq!((settings["target"].as_str(), settings["wipe"].as_bool(), settings["reboot"].as_bool()), (Some("auto"), Some(true), Some(true)), "{settings}");
    assert_eq!((settings["enroll_mok"].as_str(), settings["mok_password"].as_str()), (Some("kiln/mok.der"), Some("kiln test")), "{settings}");
    let carried = s.path().join("carried.der");
    run(Command::new("osirrox").arg("-indev").arg(&iso).args(["-extract", "/kiln/mok.der"]).arg(&carried));
    assert_eq!(fs::read(&carried).unwrap(), fs::read(&der).unwrap(), "the ISO's /kiln/mok.der is not the certificate");

    // MOK requests the installer could not carry out are refused at bake time, naming the key.
    fs::write(&config, "[customizations.installer]\nenroll-mok = true\n").unwrap();
    bake_fails(&s, &image, &["--type", "iso", "--config", config.to_str().unwrap()], &["customizations.installer.enroll-mok", "the image has no /etc/pki/akmods/certs/*.der"]);
    let pem = s.path().join("test-mok.pem");
    run(Command::new("openssl").args(["x509", "-inform", "DER", "-in"]).arg(&der).arg("-out").arg(&pem));
    bake_fails(&s, &image, &["--type", "iso", "--iso-enroll-mok", pem.to_str().unwrap()], &["test-mok.pem is PEM; MOK enrollment takes DER"]);
    bake_fails(&s, &image, &["--type", "iso", "--iso-mok-password", "x"], &["--iso-mok-password without --iso-enroll-mok"]);
}
