//! `kiln install to-disk` on loop devices attached with partition scanning (512-byte and
//! 4096-byte sectors): the installed disk read back with independent tools (sfdisk, blkid,
//! ostree) and its backing file booted with every probe check; every refusal with its message
//! and the disk untouched; an interrupted install leaves an empty GPT.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::boot::{Boot, Firmware};
use common::running::Running;
use common::{run, test_image, Scratch};

fn image_ref() -> String {
    format!("oci:{}:latest", test_image().join("oci").display())
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap()
}

/// A loop device over a sparse file of `size`, detached when dropped (only this one).
struct Loop {
    dev: String,
    file: PathBuf,
}

impl Loop {
    fn new(s: &Scratch, name: &str, size: &str, extra: &[&str]) -> Loop {
        let file = s.path().join(name);
        run(Command::new("truncate").args(["-s", size]).arg(&file));
        let dev = run(Command::new("losetup").args(["--find", "--show"]).args(extra).arg(&file)).trim().to_string();
        Loop { dev, file }
    }

    /// The node of partition `n` (the kernel's naming for loop devices).
    fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.dev)
    }

    fn sys_name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }

    /// The partitions the kernel knows.
    fn kernel_partitions(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/sys/class/block/{}", self.sys_name()))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("partition").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Installs the test image on `dev`; returns kiln's stderr.
fn install(dev: &str, extra: &[&str]) -> String {
    let image = image_ref();
    let mut args = vec!["install", "to-disk", "--progress", "plain", "--target-imgref", "quay.io/kiln/test:latest"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[dev, &image]);
    let o = kiln(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "kiln install to-disk failed:\n{err}");
    err
}

fn sfdisk_json(dev: &str) -> serde_json::Value {
    serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(dev)))
        .unwrap_or_else(|e| panic!("sfdisk --json {dev}: {e}"))
}

fn blkid(node: &str, tag: &str) -> String {
    run(Command::new("blkid").args(["-p", "-s", tag, "-o", "value", node])).trim().to_string()
}

/// Reads the installed disk back: the table at the device's sector size, MiB-aligned, with
/// bootc's partitions; the filesystems' UUIDs in the boot entry's kargs and GRUB's
/// bootuuid.cfg; bootupd's state and the aleph; the deployment `ostree admin status` lists.
fn read_back(lo: &Loop, sector: u64) {
    let t = sfdisk_json(&lo.dev);
    let table = &t["partitiontable"];
    assert_eq!(table["label"], "gpt", "{t}");
    assert_eq!(table["sectorsize"].as_u64(), Some(sector), "{t}");
    let parts = table["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["BIOS-BOOT", "EFI-SYSTEM", "root"], "{t}");
    for p in parts {
        assert_eq!(p["start"].as_u64().unwrap() * sector % (1 << 20), 0, "not MiB-aligned: {p}");
    }
    let v = run(Command::new("sgdisk").arg("-v").arg(&lo.dev));
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    // The kernel's partitions are the table's.
    assert_eq!(lo.kernel_partitions(), [1, 2, 3].map(|n| format!("{}p{n}", lo.sys_name())));

    assert_eq!(blkid(&lo.part(2), "TYPE"), "vfat");
    assert_eq!(blkid(&lo.part(2), "LABEL"), "EFI-SYSTEM");
    let fat = run(Command::new("fsck.fat").args(["-n", &lo.part(2)]));
    assert!(!fat.contains("differ") && !fat.contains("Free cluster summary wrong"), "{fat}");
    run(Command::new("e2fsck").args(["-fn", &lo.part(3)]));
    let root_uuid = blkid(&lo.part(3), "UUID");
    assert_eq!(blkid(&lo.part(3), "TYPE"), "ext4");

    // The root and the ESP read in a mount namespace of their own (the ESP through mtools:
    // this kernel has no vfat).
    let script = format!(
        "set -e; m=$(mktemp -d); mount -o ro {root} $m; \
         echo; echo '== status'; ostree admin status --sysroot $m; \
         echo; echo '== entries'; cat $m/boot/loader/entries/*.conf; \
         echo; echo '== bootuuid'; cat $m/boot/grub2/bootuuid.cfg; \
         echo; echo '== state'; cat $m/boot/bootupd-state.json; \
         echo; echo '== aleph'; cat $m/.bootc-aleph.json; \
         echo; echo '== origin'; cat $m/ostree/deploy/default/deploy/*.origin; \
         umount $m; rmdir $m",
        root = lo.part(3)
    );
    let out = run(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]));
    let section = |name: &str| out.split(&format!("== {name}\n")).nth(1).unwrap_or_default().split("\n== ").next().unwrap_or_default().to_string();
    assert!(section("status").contains("Version: 12.kiln-test.1"), "ostree admin status:\n{out}");
    assert!(section("entries").contains(&format!("root=UUID={root_uuid}")), "boot entry kargs:\n{out}");
    assert!(section("bootuuid").contains(&root_uuid), "bootuuid.cfg:\n{out}");
    let state: serde_json::Value = serde_json::from_str(&section("state")).unwrap_or_else(|e| panic!("bootupd-state.json: {e}\n{out}"));
    assert!(state["installed"]["EFI"].is_object(), "{state}");
    assert_eq!(state["installed"]["BIOS"].is_object(), sector == 512, "BIOS GRUB on 512-byte disks only: {state}");
    let aleph: serde_json::Value = serde_json::from_str(&section("aleph")).unwrap_or_else(|e| panic!("aleph: {e}\n{out}"));
    assert!(aleph["image"].as_str().is_some_and(|i| i.contains("quay.io/kiln/test")), "{aleph}");
    assert!(section("origin").contains("ostree-unverified-registry:quay.io/kiln/test:latest"), "origin:\n{out}");
    let esp = run(Command::new("mdir").args(["-b", "-i", &lo.part(2), "::/EFI/BOOT"]));
    assert!(esp.to_uppercase().contains("BOOTX64.EFI"), "ESP:\n{esp}");
}

fn boots(file: &Path, firmware: Firmware, name: &str, logical_block_size: Option<u32>) {
    let mut boot = Boot::new(file, firmware, name);
    boot.logical_block_size = logical_block_size;
    let report = boot.run().unwrap_or_else(|e| panic!("{e}"));
    println!("{name} {firmware}:\n{report}");
    if let Some(n) = logical_block_size {
        let console = String::from_utf8_lossy(&std::fs::read(&report.console_log).unwrap()).into_owned();
        assert!(console.contains(&format!("{n}-byte logical blocks")), "the guest did not see {n}-byte sectors");
    }
    report.assert_outcome(&[]);
    assert!(
        report.info_all("ostree-status").iter().any(|l| l.contains("Version: 12.kiln-test.1")),
        "ostree admin status lacks the version:\n{report}"
    );
}

/// Nothing of kiln's mounted anywhere after a run.
fn no_mounts_of(lo: &Loop) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&format!("{} ", lo.dev)) && !mounts.contains(&format!("{}p", lo.dev)), "{mounts}");
}

/// A 512-byte-sector disk: installed over an older table with --wipe, read back, boots under
/// BIOS (under UEFI, the guest test's disk — installed by kiln on a real kernel with udev —
/// boots with every probe check, and so does the 4Kn disk below).
#[test]
fn to_disk_on_a_loop_device_boots_bios() {
    let s = Scratch::new("install-to-disk-512");
    let lo = Loop::new(&s, "disk.raw", "4G", &["--partscan"]);
    // An older disk: without --wipe it is refused (tested below); with it, replaced.
    run(Command::new("sh").arg("-c").arg(format!("printf 'label: gpt\\n,100M\\n,\\n' | sfdisk -q {}", lo.dev)));
    install(&lo.dev, &["--wipe"]);
    read_back(&lo, 512);
    no_mounts_of(&lo);
    drop(lo);
    let file = s.path().join("disk.raw");
    boots(&file, Firmware::Bios, "install-512", None);
}

/// A 4Kn disk: GPT, alignment and the ESP's FAT at 4096-byte sectors; BIOS GRUB skipped with
/// a note; boots under UEFI from a disk of 4096-byte logical blocks.
#[test]
fn to_disk_on_a_4k_sector_loop_device_boots_uefi() {
    let s = Scratch::new("install-to-disk-4k");
    let lo = Loop::new(&s, "disk.raw", "4G", &["--partscan", "--sector-size", "4096"]);
    let err = install(&lo.dev, &[]);
    assert!(err.contains("4096-byte sectors, which BIOS GRUB cannot boot"), "{err}");
    read_back(&lo, 4096);
    drop(lo);
    boots(&s.path().join("disk.raw"), Firmware::Uefi, "install-4k", Some(4096));
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path)).split_whitespace().next().unwrap().to_string()
}

/// The disk's first and last MiB (its tables; where kiln writes first), for a disk whose
/// filesystems are in use while kiln is refused.
fn edges(path: &Path) -> (Vec<u8>, Vec<u8>) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    f.read_exact_at(&mut a, 0).unwrap();
    f.read_exact_at(&mut b, len - (1 << 20)).unwrap();
    (a, b)
}

/// Runs kiln install to-disk, expects a refusal containing every one of `expect`.
fn refused(args: &[&str], expect: &[&str]) -> String {
    let image = image_ref();
    let mut all = vec!["install", "to-disk", "--progress", "plain"];
    all.extend_from_slice(args);
    all.push(&image);
    let o = kiln(&all);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "kiln accepted {args:?}:\n{err}");
    for e in expect {
        assert!(err.contains(e), "{args:?}: expected {e:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A disk with a GPT of two partitions the kernel knows (partx adds them: the kernel here
/// does not scan loop devices itself).
fn partitioned(s: &Scratch, name: &str) -> Loop {
    let lo = Loop::new(s, name, "64M", &["--partscan"]);
    run(Command::new("sh").arg("-c").arg(format!("printf 'label: gpt\\n,20M\\n,20M\\n' | sfdisk -q {0} && partx -a {0} || partx -u {0}", lo.dev)));
    for n in 1..=2 {
        let node = lo.part(n);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !Path::new(&node).exists() {
            assert!(std::time::Instant::now() < deadline, "{node} never appeared");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    lo
}

/// Every refusal names the culprit and what to do, and leaves the disk as it was.
#[test]
fn bad_devices_are_refused_and_left_untouched() {
    let s = Scratch::new("install-refusals");

    refused(&["/dev/null"], &["/dev/null is a character device, not a disk"]);
    refused(&[s.path().join("nope").to_str().unwrap()], &["does not exist"]);
    let plain = s.path().join("plain.raw");
    std::fs::write(&plain, b"").unwrap();
    refused(&[plain.to_str().unwrap()], &["is not a block device", "kiln bake --type raw"]);

    // A partition, and a disk that has partitions.
    let lo = partitioned(&s, "parts.raw");
    let before = sha256(&lo.file);
    refused(&[&lo.part(1)], &[&format!("{} is partition 1 of {}, not a whole disk: pass {}", lo.part(1), lo.dev, lo.dev)]);
    refused(&[&lo.dev], &[&format!("{} has partitions ({}, {}): pass --wipe", lo.dev, lo.part(1), lo.part(2))]);
    assert_eq!(sha256(&lo.file), before, "a refused install changed the disk");

    // What --enroll-mok is given is checked before anything is written.
    let pem = s.path().join("cert.pem");
    let der = s.path().join("cert.der");
    run(Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kiln refusal test/"]).arg("-keyout").arg(s.path().join("key.pem")).arg("-out").arg(&pem));
    run(Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&pem).arg("-out").arg(&der));
    let (pem, der) = (pem.to_str().unwrap(), der.to_str().unwrap());
    refused(&["--wipe", "--enroll-mok", pem, &lo.dev], &[&format!("{pem} is PEM; MOK enrollment takes DER")]);
    let missing = s.path().join("missing.der");
    refused(&["--wipe", "--enroll-mok", missing.to_str().unwrap(), &lo.dev], &[&format!("--enroll-mok: cannot read {}", missing.display())]);
    refused(&["--wipe", "--enroll-mok", der, "--mok-password", "pässwort", &lo.dev], &["the MOK password must be printable ASCII"]);
    assert_eq!(sha256(&lo.file), before, "a refused install changed the disk");

    // A table the kernel does not know about is found on the disk itself.
    let unknown = Loop::new(&s, "table.raw", "64M", &["--partscan"]);
    run(Command::new("sh").arg("-c").arg(format!("printf 'label: gpt\\n,20M\\n' | sfdisk -q --no-reread {}; partx -d {0} 2>/dev/null; true", unknown.file.display())));
    let before_unknown = sha256(&unknown.file);
    refused(&[&unknown.dev], &[&format!("{} has a GPT partition table: pass --wipe", unknown.dev)]);
    assert_eq!(sha256(&unknown.file), before_unknown);
    drop(unknown);

    // Mounted, swap, held by device-mapper: each named; --wipe does not override them.
    run(Command::new("mkfs.ext4").args(["-q", &lo.part(1)]));
    run(Command::new("mkswap").arg(lo.part(2)));
    let edges_before = edges(&lo.file);
    let mnt = s.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount").arg(lo.part(1)).arg(&mnt));
    let err = std::panic::catch_unwind(|| refused(&["--wipe", &lo.dev], &[&format!("{} is mounted on {}", lo.part(1), mnt.display())]));
    let _ = Command::new("umount").arg(&mnt).status();
    let err = err.unwrap();
    assert_eq!(err.matches("is mounted on").count(), 1, "one line per mount:\n{err}");

    run(Command::new("swapon").arg(lo.part(2)));
    let swap = std::panic::catch_unwind(|| refused(&["--wipe", &lo.dev], &[&format!("{} is in use as swap (swapoff {})", lo.part(2), lo.part(2))]));
    let _ = Command::new("swapoff").arg(lo.part(2)).status();
    swap.unwrap();

    // Device-mapper over a partition (where the kernel has it).
    if Path::new("/sys/class/misc/device-mapper").exists() {
        let sectors = 20 * 2048;
        let dm = format!("kiln-test-holder-{}", std::process::id());
        run(Command::new("dmsetup").args(["create", &dm, "--table", &format!("0 {sectors} linear {} 0", lo.part(1))]));
        let held = std::panic::catch_unwind(|| refused(&["--wipe", &lo.dev], &[&format!("{} is held by /dev/dm-", lo.part(1)), &format!("/dev/mapper/{dm}")]));
        let _ = Command::new("dmsetup").args(["remove", &dm]).status();
        held.unwrap();
    } else {
        println!("skipped the device-mapper holder refusal: this kernel has no device-mapper");
    }
    assert_eq!(edges(&lo.file), edges_before, "a refused install changed the disk's table");
    drop(lo);

    // A loop device without partition scanning.
    let noscan = Loop::new(&s, "noscan.raw", "64M", &[]);
    refused(&[&noscan.dev], &["without partition scanning", "losetup --partscan"]);
    drop(noscan);

    // Too small for the image: refused before anything is written.
    let small = Loop::new(&s, "small.raw", "256M", &["--partscan"]);
    let before_small = sha256(&small.file);
    refused(&[&small.dev], &[&format!("{} is too small: it has 256 MiB", small.dev), "choose a disk of at least"]);
    assert_eq!(sha256(&small.file), before_small);
    drop(small);

    // The disk holding the running system's root (never written: refused first).
    let root_source = run(Command::new("findmnt").args(["-n", "-o", "SOURCE", "/"])).trim().to_string();
    if root_source.starts_with("/dev/") {
        let parent = run(Command::new("lsblk").args(["-n", "-d", "-o", "PKNAME", &root_source])).trim().to_string();
        let disk = if parent.is_empty() { root_source.clone() } else { format!("/dev/{parent}") };
        refused(&[&disk], &[&format!("{disk} holds the running system's root filesystem")]);
    } else {
        println!("skipped the running-root refusal: / is {root_source}, not a block device");
    }
}

/// SIGINT while the root is written: the disk has an empty GPT and no boot code, the kernel
/// no partitions; with --preserve-on-error the partial layout stays.
#[test]
fn sigint_mid_install_leaves_an_empty_gpt() {
    for preserve in [false, true] {
        let s = Scratch::new(&format!("install-sigint-{preserve}"));
        let lo = Loop::new(&s, "disk.raw", "4G", &["--partscan"]);
        let image = image_ref();
        let mut args = vec!["install", "to-disk", "--progress", "json"];
        if preserve {
            args.push("--preserve-on-error");
        }
        args.extend_from_slice(&[&lo.dev, &image]);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(&args);
        let mut inst = Running::start(cmd);
        assert!(inst.wait_for_stage("layers"), "the install ended before the layers:\n{}", inst.log.join("\n"));
        // Into the writing of the root.
        std::thread::sleep(Duration::from_millis(300));
        let (status, err) = inst.signal(libc::SIGINT);
        assert!(!status.success(), "the install finished despite SIGINT:\n{err}");
        assert!(err.contains("interrupted"), "{err}");
        no_mounts_of(&lo);
        let mut mbr = vec![0u8; 512];
        std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&lo.file).unwrap(), &mut mbr, 0).unwrap();
        if preserve {
            assert!(err.contains("--preserve-on-error"), "{err}");
            // The table was not committed (it is written last), but the partitions the kernel
            // was given and the root filesystem being written are there to look at.
            assert_eq!(lo.kernel_partitions().len(), 3, "{err}");
            assert_eq!(blkid(&lo.part(3), "TYPE"), "ext4");
        } else {
            assert!(err.contains("was left with an empty partition table"), "{err}");
            let t = sfdisk_json(&lo.dev);
            assert_eq!(t["partitiontable"]["label"], "gpt", "{t}");
            assert!(t["partitiontable"]["partitions"].as_array().is_none_or(|p| p.is_empty()), "partitions left: {t}");
            assert!(mbr[..446].iter().all(|b| *b == 0), "boot code left in the MBR");
            assert!(lo.kernel_partitions().is_empty(), "the kernel still has {:?}", lo.kernel_partitions());
        }
    }
}

/// `kill -9` in the middle of an install (while the deployment is written, the partitions
/// made): `sfdisk -d` finds no table (the primary header and protective MBR are written last),
/// nothing is mounted (kiln's mounts were in its own namespace), and a new install succeeds.
#[test]
fn kill_9_mid_install_leaves_no_table() {
    let s = Scratch::new("install-kill-9");
    let lo = Loop::new(&s, "disk.raw", "4G", &["--partscan"]);
    let image = image_ref();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(["install", "to-disk", "--progress", "json", &lo.dev, &image]);
    let mut first = Running::start(cmd);
    assert!(first.wait_for_stage("deploy"), "the install ended before the deploy stage:\n{}", first.log.join("\n"));
    let (_, log) = first.signal(libc::SIGKILL);
    no_mounts_of(&lo);
    let dump = Command::new("sfdisk").arg("-d").arg(&lo.dev).output().unwrap();
    assert!(!dump.status.success(), "sfdisk still finds a table after kill -9:\n{}\n{log}", String::from_utf8_lossy(&dump.stdout));
    // The kernel still has the partitions the dead kiln gave it: the next install needs --wipe.
    install(&lo.dev, &["--wipe"]);
    assert_eq!(sfdisk_json(&lo.dev)["partitiontable"]["partitions"].as_array().map(Vec::len), Some(3));
    no_mounts_of(&lo);
}

/// Runs `script` in a mount namespace of its own (its mounts vanish with it), with kiln as
/// `$KILN` and the test image as `$IMAGE`; returns its output.
fn in_namespace(script: &str) -> Output {
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("KILN", env!("CARGO_BIN_EXE_kiln"))
        .env("IMAGE", image_ref())
        .output()
        .unwrap()
}

/// `install to-filesystem` onto partitions and filesystems the test made (kiln writes the
/// ESP, which is not mounted, as bootupd finds it: the ESP partition of root's disk): with a
/// separate /boot (`boot=UUID=…`; the disk boots under UEFI) and without (no `boot=`). A
/// non-empty root and a directory that is not a mount point are refused.
#[test]
fn to_filesystem_with_and_without_a_separate_boot() {
    for separate_boot in [true, false] {
        let s = Scratch::new(&format!("install-to-filesystem-{separate_boot}"));
        let lo = Loop::new(&s, "disk.raw", "4G", &["--partscan"]);
        let boot_line = if separate_boot { ",1G,L\n" } else { "" };
        run(Command::new("sh").arg("-c").arg(format!(
            "printf 'label: gpt\\n,1M,21686148-6449-6E6F-744E-656564454649\\n,512M,U\\n{boot_line},,L\\n' | sfdisk -q --no-reread {0} && partx -a {0}",
            lo.dev
        )));
        let root_part = lo.part(if separate_boot { 4 } else { 3 });
        std::thread::sleep(Duration::from_millis(300));
        run(Command::new("mkfs.fat").args(["-F", "32", "-n", "EFI-SYSTEM", &lo.part(2)]));
        run(Command::new("mkfs.ext4").args(["-q", "-L", "root", &root_part]));
        if separate_boot {
            run(Command::new("mkfs.ext4").args(["-q", "-L", "boot", &lo.part(3)]));
        }
        let mnt = s.path().join("root");
        std::fs::create_dir_all(&mnt).unwrap();
        let mount_boot = if separate_boot { format!("mkdir -p {m}/boot && mount {b} {m}/boot &&", m = mnt.display(), b = lo.part(3)) } else { String::new() };

        if separate_boot {
            // Refusals first: not a mount point, then not empty.
            let o = in_namespace(&format!("\"$KILN\" install to-filesystem {} \"$IMAGE\"", mnt.display()));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains(&format!("{} is not a mount point", mnt.display())), "{err}");
            let o = in_namespace(&format!("mount {r} {m} && touch {m}/leftover && \"$KILN\" install to-filesystem {m} \"$IMAGE\"; s=$?; rm -f {m}/leftover; exit $s", r = root_part, m = mnt.display()));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains(&format!("{} is not empty (found {}/leftover)", mnt.display(), mnt.display())), "{err}");
        }

        // With a separate /boot, the root and /boot are named by label (bootc's mount specs), and
        // the boot below proves the system finds them so.
        let specs = if separate_boot { "--root-mount-spec LABEL=root --boot-mount-spec LABEL=boot" } else { "" };
        let o = in_namespace(&format!(
            "set -e; mount {r} {m}; {mount_boot} \"$KILN\" install to-filesystem --progress plain --target-imgref quay.io/kiln/test:latest {specs} {m} \"$IMAGE\"; \
             echo; echo '== entries'; cat {m}/boot/loader/entries/*.conf; echo; echo '== fstab'; cat {m}/ostree/deploy/default/deploy/*.0/etc/fstab; \
             echo; echo '== status'; ostree admin status --sysroot {m}",
            r = root_part,
            m = mnt.display()
        ));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "install to-filesystem failed:\n{}\n{out}", String::from_utf8_lossy(&o.stderr));
        let section = |name: &str| out.split(&format!("== {name}\n")).nth(1).unwrap_or_default().split("\n== ").next().unwrap_or_default().to_string();
        let root_uuid = blkid(&root_part, "UUID");
        let entries = section("entries");
        let root_spec = if separate_boot { "LABEL=root".to_string() } else { format!("UUID={root_uuid}") };
        assert!(entries.contains(&format!("root={root_spec} rw")), "{out}");
        assert!(section("status").contains("Version: 12.kiln-test.1"), "{out}");
        let esp_uuid = blkid(&lo.part(2), "UUID");
        assert!(section("fstab").contains(&format!("UUID={esp_uuid} /boot/efi vfat")), "{out}");
        if separate_boot {
            assert!(entries.contains("boot=LABEL=boot"), "{out}");
            assert!(section("fstab").contains("LABEL=boot /boot ext4"), "{out}");
        } else {
            assert!(!entries.contains("boot=UUID"), "{out}");
        }
        let fat = run(Command::new("fsck.fat").args(["-n", &lo.part(2)]));
        assert!(!fat.contains("differ"), "{fat}");
        let esp = run(Command::new("mdir").args(["-b", "-i", &lo.part(2), "::/EFI/BOOT"]));
        assert!(esp.to_uppercase().contains("BOOTX64.EFI"), "ESP:\n{esp}");
        drop(lo);
        if separate_boot {
            boots(&s.path().join("disk.raw"), Firmware::Uefi, "install-to-filesystem", None);
        }
    }
}

/// The `result` event of a `--progress json` run's stderr.
fn result_event(stderr: &str) -> serde_json::Value {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result")
        .map(|v| v["result"].clone())
        .unwrap_or_else(|| panic!("no result event:\n{stderr}"))
}

/// `--root-size` gives the root that much and leaves the rest of the disk unallocated; with
/// `--progress json` the run ends with a result event whose device, partitions (node, start,
/// size, filesystem, UUID) and deployment are what sfdisk, blkid and ostree read back; a loop
/// device gets no firmware variables, and says so.
#[test]
fn to_disk_root_size_and_json_result() {
    let s = Scratch::new("install-root-size");
    let lo = Loop::new(&s, "disk.raw", "8G", &["--partscan"]);
    let o = kiln(&["install", "to-disk", "--progress", "json", "--root-size", "3G", &lo.dev, &image_ref()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("is a loop device: no firmware boot entry or MOK request written"), "{err}");
    let result = result_event(&err);
    println!("{result:#}");
    assert_eq!(result["device"], lo.dev.as_str(), "{result:#}");
    assert_eq!(result["firmware"]["boot_entry"], serde_json::Value::Null, "{result:#}");

    let t = sfdisk_json(&lo.dev);
    let sector = t["partitiontable"]["sectorsize"].as_u64().unwrap();
    let table = t["partitiontable"]["partitions"].as_array().unwrap();
    let reported = result["partitions"].as_array().unwrap();
    assert_eq!(reported.len(), table.len(), "{result:#}\n{t:#}");
    for (r, p) in reported.iter().zip(table) {
        assert_eq!(r["node"], p["node"], "{result:#}\n{t:#}");
        assert_eq!(r["start"].as_u64(), p["start"].as_u64().map(|n| n * sector), "{result:#}\n{t:#}");
        assert_eq!(r["size"].as_u64(), p["size"].as_u64().map(|n| n * sector), "{result:#}\n{t:#}");
        if let Some(fs) = r["filesystem"].as_str() {
            let node = p["node"].as_str().unwrap();
            assert_eq!(blkid(node, "TYPE"), fs, "{result:#}");
            assert_eq!(blkid(node, "UUID"), r["uuid"].as_str().unwrap(), "{result:#}");
        }
    }
    let root = reported.iter().find(|r| r["role"] == "root").expect("a root partition");
    assert_eq!(root["size"].as_u64(), Some(3 << 30), "{result:#}");
    let last = table.last().unwrap();
    let end = (last["start"].as_u64().unwrap() + last["size"].as_u64().unwrap()) * sector;
    assert!((8u64 << 30) - end > 4 << 30, "the rest of the disk is not free: the partitions end at {end}\n{t:#}");
    let free = run(Command::new("sfdisk").args(["-F", &lo.dev]));
    assert!(free.contains("Unpartitioned space"), "{free}");

    let deployment = result["deployment"]["path"].as_str().unwrap();
    let root_node = root["node"].as_str().unwrap();
    let out = run(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c"]).arg(format!(
        "set -e; m=$(mktemp -d); mount -o ro {root_node} $m; test -d $m/{deployment}; ostree admin status --sysroot $m; umount $m; rmdir $m"
    )));
    let checksum = deployment.rsplit('/').next().unwrap().split('.').next().unwrap();
    assert!(out.contains(checksum), "ostree admin status does not list {deployment}:\n{out}");
    no_mounts_of(&lo);
}

/// `to-filesystem --replace alongside` onto a btrfs subvolume that holds another system's
/// files, with a separate /boot: those files stay, /boot and the ESP are emptied first, the
/// boot entry mounts the subvolume (`rootflags=subvol=/root`, as bootc adds it), and the disk
/// boots under UEFI. Without a separate /boot it is refused (GRUB would not find /boot inside
/// the subvolume).
#[test]
fn to_filesystem_alongside_on_a_btrfs_subvolume() {
    let s = Scratch::new("install-to-filesystem-alongside");
    let lo = Loop::new(&s, "disk.raw", "4G", &["--partscan"]);
    run(Command::new("sh").arg("-c").arg(format!(
        "printf 'label: gpt\\n,1M,21686148-6449-6E6F-744E-656564454649\\n,512M,U\\n,1G,L\\n,,L\\n' | sfdisk -q --no-reread {0} && partx -a {0}",
        lo.dev
    )));
    std::thread::sleep(Duration::from_millis(300));
    run(Command::new("mkfs.fat").args(["-F", "32", "-n", "EFI-SYSTEM", &lo.part(2)]));
    let old = s.path().join("OLD.TXT");
    std::fs::write(&old, "the other system's loader").unwrap();
    run(Command::new("mcopy").args(["-i", &lo.part(2)]).arg(&old).arg("::/OLD.TXT"));
    run(Command::new("mkfs.ext4").args(["-q", "-L", "boot", &lo.part(3)]));
    run(Command::new("mkfs.btrfs").args(["-q", "-f", "-L", "root", &lo.part(4)]));
    let mnt = s.path().join("root");
    std::fs::create_dir_all(&mnt).unwrap();
    let prepare = format!(
        "set -e; mount {r} {m}; btrfs -q subvolume create {m}/root; mkdir -p {m}/root/etc {m}/root/boot; echo old > {m}/root/etc/other-os; umount {m}",
        r = lo.part(4),
        m = mnt.display()
    );
    let install = "\"$KILN\" install to-filesystem --replace alongside --progress json --target-imgref quay.io/kiln/test:latest";
    let o = in_namespace(&format!("{prepare}; mount -o subvol=root {r} {m}; {install} {m} \"$IMAGE\"", r = lo.part(4), m = mnt.display()));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is the btrfs subvolume /root, and GRUB does not find a /boot inside a subvolume"), "{err}");
    let o = in_namespace(&format!(
        "set -e; mount -o subvol=root {r} {m}; mount {b} {m}/boot; echo kernel > {m}/boot/vmlinuz-other; \
         {install} {m} \"$IMAGE\"; \
         echo '== entries'; cat {m}/boot/loader/entries/*.conf; echo '== other'; cat {m}/etc/other-os; echo '== boot'; ls {m}/boot",
        r = lo.part(4),
        b = lo.part(3),
        m = mnt.display()
    ));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "install to-filesystem --replace alongside failed:\n{err}\n{out}");
    let section = |name: &str| out.split(&format!("== {name}\n")).nth(1).unwrap_or_default().split("\n== ").next().unwrap_or_default().to_string();
    let root_uuid = blkid(&lo.part(4), "UUID");
    assert!(section("entries").contains(&format!("root=UUID={root_uuid} rw")), "{out}");
    assert!(section("entries").contains("rootflags=subvol=/root"), "{out}");
    assert_eq!(section("other").trim(), "old", "{out}");
    assert!(!section("boot").contains("vmlinuz-other"), "/boot was not emptied:\n{out}");
    assert_eq!(result_event(&err)["root"], mnt.display().to_string());
    let esp = run(Command::new("mdir").args(["-b", "-i", &lo.part(2), "::/"]));
    assert!(!esp.to_uppercase().contains("OLD.TXT"), "the ESP was not emptied:\n{esp}");
    let fat = run(Command::new("fsck.fat").args(["-n", &lo.part(2)]));
    assert!(!fat.contains("differ"), "{fat}");
    drop(lo);
    boots(&s.path().join("disk.raw"), Firmware::Uefi, "install-alongside-btrfs", None);
}
