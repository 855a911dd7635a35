//! core.img built by kiln against the oracle, the host's `grub-mkimage -O i386-pc` run on the
//! same image files: the decompressed payloads must be identical byte for byte, and so must
//! everything around the LZMA stream except its size field (the streams themselves differ:
//! liblzma is not the LZMA SDK).
//!
//! And the choice of `/boot/grub2/grub.cfg`, which the boot tests cannot make for us (Debian's
//! GRUB has no blscfg): bootupd's static config when the image ships it and its GRUB has
//! blscfg, menu entries rendered from the BLS entries otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::bootloader::core_image::{self, CoreSpec};
use kiln::bootloader::{BiosBootPartition, BiosTarget, BootFilesystem, BootTarget, GrubConfig};
use kiln::bootloader::image_files::ImageRoot;
use kiln::platform::Platform;

const MODULES_DIR: &str = "usr/lib/grub/i386-pc";
const COMPRESSED_SIZE_FIELD: std::ops::Range<usize> = 512 + 8..512 + 12;

fn platform_modules() -> Vec<String> {
    Platform::for_oci_arch("amd64").unwrap().bootloader.bios.unwrap().core_modules
}

fn grub_mkimage(base: &Path, spec: &CoreSpec, work: &Path) -> Vec<u8> {
    let cfg = work.join("embedded.cfg");
    std::fs::write(&cfg, spec.config).unwrap();
    let out = work.join("core.img");
    let status = Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-d"])
        .arg(base.join(MODULES_DIR))
        .arg("-c")
        .arg(&cfg)
        .args(["-p", spec.prefix, "-o"])
        .arg(&out)
        .args(spec.modules)
        .status()
        .expect("running grub-mkimage (grub-pc-bin)");
    assert!(status.success(), "grub-mkimage failed");
    std::fs::read(out).unwrap()
}

fn compare_with_grub_mkimage(modules: &[String], config: &str, prefix: &str) {
    let base = common::umoci_unpacked_test_image();
    let scratch = common::Scratch::new(&format!("core-img-{}", modules.len()));
    let work = scratch.path();
    let spec = CoreSpec { modules, config, prefix };
    let theirs = grub_mkimage(&base, &spec, work);
    let image = ImageRoot::new(&base);
    let ours = core_image::build(&image, MODULES_DIR, &spec).unwrap().bytes;
    let decompressor_len = std::fs::metadata(base.join(MODULES_DIR).join("lzma_decompress.img")).unwrap().len() as usize;

    let payload = core_image::payload(&image, MODULES_DIR, &spec).unwrap();
    let their_payload = core_image::unpack_payload(&theirs, decompressor_len).unwrap();
    let our_payload = core_image::unpack_payload(&ours, decompressor_len).unwrap();
    assert_eq!(their_payload.len(), payload.len(), "payload sizes differ");
    if let Some(at) = their_payload.iter().zip(&payload).position(|(a, b)| a != b) {
        panic!("payload differs from grub-mkimage's at offset {at:#x}");
    }
    assert!(our_payload == payload, "our LZMA stream does not decompress to our payload");

    // diskboot.img (blocklist length included) and the decompressor, but the compressed size.
    let header = 512 + decompressor_len;
    let mut ours_header = ours[..header].to_vec();
    let mut theirs_header = theirs[..header].to_vec();
    ours_header[COMPRESSED_SIZE_FIELD].fill(0);
    theirs_header[COMPRESSED_SIZE_FIELD].fill(0);
    // The blocklist counts sectors of the LZMA stream, whose length differs a little.
    let sectors = |img: &[u8]| u16::from_le_bytes([img[508], img[509]]);
    assert!(sectors(&ours).abs_diff(sectors(&theirs)) <= 2, "blocklist lengths {} vs {}", sectors(&ours), sectors(&theirs));
    assert_eq!(sectors(&ours) as usize, (ours.len() - 512).div_ceil(512));
    ours_header[508..510].fill(0);
    theirs_header[508..510].fill(0);
    assert!(ours_header == theirs_header, "diskboot/decompressor bytes differ from grub-mkimage's");
}

#[test]
fn core_img_matches_grub_mkimage_for_the_platform_modules() {
    let config = "search --no-floppy --fs-uuid --set=root 0123abcd-4567-89ab-cdef-0123456789ab\nset prefix=($root)/grub2\n";
    compare_with_grub_mkimage(&platform_modules(), config, "/grub2");
}

#[test]
fn core_img_matches_grub_mkimage_for_other_modules_and_odd_sizes() {
    // Another dependency graph, a config whose size is not a multiple of 4, a longer prefix.
    let modules: Vec<String> = ["search", "lvm", "gfxterm", "all_video", "part_gpt", "luks2", "cryptodisk", "xfs"].iter().map(|s| s.to_string()).collect();
    compare_with_grub_mkimage(&modules, "set root=(hd0,gpt3)\nset prefix=($root)/boot/grub2x\n", "/boot/grub2x");
}

#[test]
fn missing_i386_pc_files_are_an_error_naming_the_path() {
    let scratch = common::Scratch::new("empty-image");
    let empty = scratch.path();
    let modules = platform_modules();
    let spec = CoreSpec { modules: &modules, config: "", prefix: "/grub2" };
    let error = core_image::build(&ImageRoot::new(empty), MODULES_DIR, &spec).err().expect("an error").to_string();
    assert!(error.contains("/usr/lib/grub/i386-pc/"), "{error}");
}

const STATIC_PRE: &str = "set timeout=1\nsource $prefix/bootuuid.cfg\n";
const STATIC_DROPIN: &str = "blscfg\n";
const BOOT_UUID: &str = "0123abcd-4567-89ab-cdef-0123456789ab";
const KERNEL: &str = "/ostree/default-abc/vmlinuz-6.1.0-1-amd64";

/// An image root with what the BIOS bootloader needs, taken from the test image, and
/// bootupd's static GRUB configs; `blscfg` says whether its GRUB has the blscfg module.
fn image_with_bootupd_static_configs(dir: &Path, blscfg: bool) {
    let base = common::umoci_unpacked_test_image();
    for path in [MODULES_DIR, "var/lib/dpkg/status"] {
        std::fs::create_dir_all(dir.join(path).parent().unwrap()).unwrap();
        common::run(Command::new("cp").arg("-a").arg(base.join(path)).arg(dir.join(path)));
    }
    let static_dir = dir.join("usr/lib/bootupd/grub2-static");
    std::fs::create_dir_all(static_dir.join("configs.d")).unwrap();
    std::fs::write(static_dir.join("grub-static-pre.cfg"), STATIC_PRE).unwrap();
    std::fs::write(static_dir.join("configs.d/10-blscfg.cfg"), STATIC_DROPIN).unwrap();
    std::fs::write(static_dir.join("configs.d/README"), "not a config").unwrap();
    if blscfg {
        // Only its presence is looked at: nothing here boots.
        std::fs::copy(dir.join(MODULES_DIR).join("echo.mod"), dir.join(MODULES_DIR).join("blscfg.mod")).unwrap();
    }
}

/// Installs the BIOS bootloader of `image` for a disk with a separate /boot holding one
/// ostree BLS entry; returns what install reported and /boot.
fn install_bios(image: &Path, work: &Path) -> (kiln::bootloader::Installed, PathBuf) {
    let disk = work.join("disk.raw");
    let mut mbr = vec![0u8; 4 << 20];
    mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
    std::fs::write(&disk, mbr).unwrap();
    let disk = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    let boot = work.join("boot");
    std::fs::create_dir_all(boot.join("loader/entries")).unwrap();
    std::fs::create_dir_all(boot.join("ostree/default-abc")).unwrap();
    std::fs::write(boot.join(&KERNEL[1..]), "kernel").unwrap();
    std::fs::write(boot.join("ostree/default-abc/initramfs-6.1.0-1-amd64.img"), "initrd").unwrap();
    std::fs::write(
        boot.join("loader/entries/ostree-1.conf"),
        format!("title Debian 12\nversion 1\nlinux {KERNEL}\ninitrd /ostree/default-abc/initramfs-6.1.0-1-amd64.img\noptions root=UUID={BOOT_UUID} rw ostree=/ostree/boot.1/default/abc/0\n"),
    )
    .unwrap();
    let platform = Platform::for_oci_arch("amd64").unwrap().bootloader;
    let target = BootTarget {
        boot_dir: &boot,
        boot_fs: BootFilesystem { uuid: BOOT_UUID.to_string(), separate_partition: true },
        entries_dir: boot.join("loader/entries"),
        esp: None,
        bios: Some(BiosTarget { disk: &disk, partition: BiosBootPartition { first_lba: 2048, sectors: 4096 } }),
    };
    (kiln::bootloader::install(&platform, image, target).unwrap(), boot)
}

fn static_configs_state(boot: &Path) -> serde_json::Value {
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(boot.join("bootupd-state.json")).unwrap()).unwrap();
    state["static-configs"].clone()
}

#[test]
fn grub_with_blscfg_gets_bootupds_static_config() {
    let scratch = common::Scratch::new("bootupd-static-blscfg");
    let image = scratch.path().join("image");
    image_with_bootupd_static_configs(&image, true);
    let (installed, boot) = install_bios(&image, scratch.path());
    assert_eq!(installed.grub_config, GrubConfig::BootupdStatic);
    let grub_cfg = std::fs::read_to_string(boot.join("grub2/grub.cfg")).unwrap();
    // As bootupd assembles it: the pre config, then each configs.d/*.cfg in name order.
    let expected = format!(
        "# Generated by bootupd / do not edit\n\n{STATIC_PRE}\n### BEGIN 10-blscfg.cfg ###\n{STATIC_DROPIN}### END 10-blscfg.cfg ###\n"
    );
    assert_eq!(grub_cfg, expected);
    assert_eq!(std::fs::read_to_string(boot.join("grub2/bootuuid.cfg")).unwrap().trim(), format!("set BOOT_UUID=\"{BOOT_UUID}\""));
    let static_configs = static_configs_state(&boot);
    assert!(static_configs["version"].as_str().is_some_and(|v| v.starts_with("kiln-")), "{static_configs}");
}

#[test]
fn grub_without_blscfg_gets_menu_entries_even_with_static_configs() {
    let scratch = common::Scratch::new("bootupd-static-no-blscfg");
    let image = scratch.path().join("image");
    image_with_bootupd_static_configs(&image, false);
    let (installed, boot) = install_bios(&image, scratch.path());
    assert_eq!(installed.grub_config, GrubConfig::RenderedEntries);
    let grub_cfg = std::fs::read_to_string(boot.join("grub2/grub.cfg")).unwrap();
    assert!(grub_cfg.contains("menuentry 'Debian 12'") && grub_cfg.contains(&format!("linux {KERNEL} root=UUID={BOOT_UUID}")), "{grub_cfg}");
    assert!(!grub_cfg.contains("Generated by bootupd") && !grub_cfg.contains(STATIC_DROPIN), "{grub_cfg}");
    assert!(static_configs_state(&boot).is_null());
}
