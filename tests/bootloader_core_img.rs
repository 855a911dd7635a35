//! core.img built by kiln against the oracle, the host's `grub-mkimage -O i386-pc` run on the
//! same image files: the decompressed payloads must be identical byte for byte, and so must
//! everything around the LZMA stream except its size field (the streams themselves differ:
//! liblzma is not the LZMA SDK).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::bootloader::core_image::{self, CoreSpec};
use kiln::bootloader::image_files::ImageRoot;
use kiln::bootloader::BootloaderPlatform;

const MODULES_DIR: &str = "usr/lib/grub/i386-pc";
const COMPRESSED_SIZE_FIELD: std::ops::Range<usize> = 512 + 8..512 + 12;

/// The test image's files, unpacked once per run (by umoci: an oracle independent of kiln).
fn base() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kiln-core-img-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let image = format!("{}:latest", common::test_image().join("oci-gzip").display());
        common::run(Command::new("umoci").args(["raw", "unpack", "--image", &image]).arg(&dir));
        assert!(dir.join(MODULES_DIR).join("kernel.img").is_file(), "the test image lacks {MODULES_DIR}");
        dir
    })
    .clone()
}

fn platform_modules() -> Vec<String> {
    let platform = BootloaderPlatform::from_toml(include_str!("../platforms/x86_64.toml")).unwrap();
    platform.bios.unwrap().core_modules
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
    let base = base();
    let work = std::env::temp_dir().join(format!("kiln-core-img-{}-{}", std::process::id(), modules.len()));
    std::fs::create_dir_all(&work).unwrap();
    let spec = CoreSpec { modules, config, prefix };
    let theirs = grub_mkimage(&base, &spec, &work);
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
    std::fs::remove_dir_all(&work).unwrap();
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
    let empty = std::env::temp_dir().join(format!("kiln-empty-image-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let modules = platform_modules();
    let spec = CoreSpec { modules: &modules, config: "", prefix: "/grub2" };
    let error = core_image::build(&ImageRoot::new(&empty), MODULES_DIR, &spec).err().expect("an error").to_string();
    assert!(error.contains("/usr/lib/grub/i386-pc/"), "{error}");
    std::fs::remove_dir_all(&empty).unwrap();
}
