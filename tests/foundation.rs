//! Proves the test image and the boot harness before kiln bakes anything: the image has the
//! shape bootc images have, a disk made from it by the reference pipeline (Debian's own tools,
//! naive about bootc) boots in UEFI and BIOS mode, and the probe reports exactly what that
//! pipeline gets right and wrong.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::boot::{Boot, Firmware};
use common::{run, test_image, Scratch};

/// What the reference pipeline is expected to get wrong: it knows nothing of bootc's
/// install config and kargs.d, does not seed /var, mount the ESP, record a container origin
/// or make the sysroot read-only. Everything else (layer semantics, ostree boot) must pass.
const REFERENCE_FAILS: &[&str] = &[
    "kargs.install",
    "kargs.kargsd",
    "var.seeded",
    "esp.mounted",
    "ostree.origin",
    "sysroot.readonly",
];

#[test]
fn test_image_has_bootc_shape() {
    let img = test_image();
    let oci = format!("oci:{}:latest", img.join("oci").display());
    let inspect: serde_json::Value =
        serde_json::from_str(&run(Command::new("skopeo").args(["inspect", &oci]))).unwrap();
    assert_eq!(inspect["Labels"]["containers.bootc"], "1");
    assert_eq!(inspect["Labels"]["ostree.bootable"], "1");
    let raw: serde_json::Value =
        serde_json::from_str(&run(Command::new("skopeo").args(["inspect", "--raw", &oci]))).unwrap();
    let media: Vec<&str> =
        raw["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap()).collect();
    assert!(media.len() >= 3, "{media:?}");
    assert!(media.iter().any(|m| m.ends_with("+gzip")), "{media:?}");
    assert!(media.iter().any(|m| m.ends_with("+zstd")), "{media:?}");

    // The oci-archive and the all-gzip copy hold the same image (same diff_ids).
    let diff_ids = |r: &str| -> serde_json::Value {
        let c: serde_json::Value =
            serde_json::from_str(&run(Command::new("skopeo").args(["inspect", "--config", r]))).unwrap();
        c["rootfs"]["diff_ids"].clone()
    };
    let archive = format!("oci-archive:{}:latest", img.join("image.oci-archive").display());
    let gzip = format!("oci:{}:latest", img.join("oci-gzip").display());
    assert_eq!(diff_ids(&oci), diff_ids(&archive));
    assert_eq!(diff_ids(&oci), diff_ids(&gzip));
}

#[test]
fn test_image_tree_has_bootc_layout() {
    // Read with an independent unpacker, not kiln.
    let s = Scratch::new("foundation-umoci");
    let tree = s.path().join("tree");
    let image = format!("{}:latest", test_image().join("oci-gzip").display());
    run(Command::new("umoci").args(["raw", "unpack", "--image", &image]).arg(&tree));
    let kver = std::fs::read_dir(tree.join("usr/lib/modules")).unwrap().next().unwrap().unwrap().file_name();
    let modules = tree.join("usr/lib/modules").join(kver);
    for f in ["vmlinuz", "initramfs.img"] {
        assert!(modules.join(f).is_file(), "{f} missing in {}", modules.display());
    }
    assert_eq!(std::fs::read_dir(tree.join("boot")).unwrap().count(), 0, "/boot must be empty");
    assert!(tree.join("etc").is_dir() && !tree.join("etc").is_symlink());
    for (link, target) in [("home", "var/home"), ("ostree", "sysroot/ostree"), ("root", "var/roothome")] {
        assert_eq!(std::fs::read_link(tree.join(link)).unwrap(), Path::new(target));
    }
    assert!(tree.join("sysroot").is_dir());
    for f in ["BOOT/BOOTX64.EFI", "debian/shimx64.efi", "debian/grubx64.efi", "debian/mmx64.efi"] {
        assert!(tree.join("usr/lib/bootupd/updates/EFI").join(f).is_file(), "{f}");
    }
    assert!(tree.join("usr/lib/grub/i386-pc/boot.img").is_file());
    // The initramfs carries ostree-prepare-root (lsinitrd-free check: the dracut module's files
    // are in the uncompressed cpio listing).
    let listing = run(Command::new("sh").arg("-c").arg(format!(
        "cd /tmp && (zstdcat {0} 2>/dev/null || zcat {0}) | cpio -t 2>/dev/null",
        modules.join("initramfs.img").display()
    )));
    assert!(listing.contains("ostree-prepare-root"), "initramfs lacks ostree-prepare-root");
}

/// Builds a raw disk from an OCI layout with the reference pipeline (RAW_ONLY).
fn reference_disk(image_ref: &str, work: &Path) -> std::path::PathBuf {
    let script = common::shared_dir().join("bench/reference-pipeline.sh");
    run(Command::new("bash").arg(&script).arg(image_ref).arg(work).env("RAW_ONLY", "1"));
    work.join("disk.raw")
}

/// UEFI only: the next test boots the same pipeline's disk under BIOS (and must see it fail
/// exactly where the layer is missing).
#[test]
fn reference_pipeline_disk_boots_uefi() {
    let s = Scratch::new("foundation-reference");
    let image = format!("{}:latest", test_image().join("oci-gzip").display());
    let disk = reference_disk(&image, &s.path().join("work"));
    let report = Boot::new(&disk, Firmware::Uefi, "reference").run().unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    assert!(report.checks.len() >= 30, "probe reported too few checks:\n{report}");
    report.assert_outcome(REFERENCE_FAILS);
}

/// The probe must catch a broken image: without the layer that whites out, replaces and links
/// files, the layer-semantics checks fail.
#[test]
fn probe_catches_an_image_missing_a_layer() {
    let s = Scratch::new("foundation-broken");
    let broken = s.path().join("oci");
    drop_layer(&test_image().join("oci-gzip"), &broken, 2);
    let disk = reference_disk(&format!("{}:latest", broken.display()), &s.path().join("work"));
    let report = Boot::new(&disk, Firmware::Bios, "broken-image").run().unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    for check in ["layer.whiteout", "layer.opaque", "layer.hardlink", "layer.setuid", "layer.override"] {
        assert!(!report.checks[check].pass, "{check} passed on an image without the layer:\n{report}");
    }
    let outcome = std::panic::catch_unwind(|| report.assert_outcome(REFERENCE_FAILS));
    assert!(outcome.is_err(), "the broken image passed the reference expectations");
}

#[test]
fn a_disk_that_does_not_boot_fails_with_the_console_tail() {
    let s = Scratch::new("foundation-noboot");
    let disk = s.path().join("empty.raw");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    for fw in [Firmware::Uefi, Firmware::Bios] {
        let mut boot = Boot::new(&disk, fw, "noboot");
        boot.timeout = Duration::from_secs(30);
        let started = std::time::Instant::now();
        let err = boot.run().expect_err("an empty disk cannot boot").to_string();
        assert!(started.elapsed() < Duration::from_secs(75), "harness overran its timeout");
        assert!(err.contains(&fw.to_string()), "error does not name the firmware: {err}");
        assert!(err.contains("no probe report within 30s"), "{err}");
        assert!(err.contains("last lines of the serial console"), "{err}");
        if fw == Firmware::Uefi {
            assert!(err.contains("BdsDxe"), "OVMF's messages missing from the tail: {err}");
        }
    }
}

/// Copies an OCI layout, leaving out layer `index` (and its diff_id): a corrupt-on-purpose
/// image for the probe to catch.
fn drop_layer(src: &Path, dst: &Path, index: usize) {
    run(Command::new("cp").arg("-a").arg(src).arg(dst));
    let blob = |d: &str| dst.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let put = |v: &serde_json::Value| -> (String, u64) {
        let bytes = serde_json::to_vec(v).unwrap();
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        std::fs::write(blob(&digest), &bytes).unwrap();
        (digest, bytes.len() as u64)
    };
    let mut index_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst.join("index.json")).unwrap()).unwrap();
    let mdigest = index_json["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&mdigest)).unwrap()).unwrap();
    let cdigest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&cdigest)).unwrap()).unwrap();
    manifest["layers"].as_array_mut().unwrap().remove(index);
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().remove(index);
    let (cd, cs) = put(&config);
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md, ms) = put(&manifest);
    index_json["manifests"][0]["digest"] = md.into();
    index_json["manifests"][0]["size"] = ms.into();
    std::fs::write(dst.join("index.json"), serde_json::to_vec(&index_json).unwrap()).unwrap();
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
