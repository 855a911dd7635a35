//! `kiln convert` against the consumers' own readers: qemu-img (check, compare, info),
//! libvmdk (an independent vmdk reader), xmllint with DMTF's OVF schema, tar, sgdisk.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{run, Scratch};
use sha2::{Digest, Sha256};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap()
}

fn convert(raw: &Path, types: &str, out: &Path) {
    let o = kiln(&["convert", "--type", types, "--output", out.to_str().unwrap(), raw.to_str().unwrap()]);
    assert!(o.status.success(), "kiln convert failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

/// A raw disk with what writers get wrong: a GPT, random data, allocated zeros, holes, data
/// across cluster boundaries, and a size that is whole sectors but not whole clusters.
fn synthetic_raw(dir: &Path, size: u64) -> PathBuf {
    let raw = dir.join("disk.raw");
    let mut noise = common::Noise(0x1234_5678);
    let writes = [
        (2 << 20, noise.bytes(3 << 20)),
        (40 << 20, vec![0u8; 4 << 20]),
        ((100 << 20) - 4096, noise.bytes(12288)),
        (size / 2 + 777 * 512, b"text that compresses well ".repeat(10_000)),
        (size - (1 << 20) - 4096, noise.bytes(4096)),
    ];
    common::sfdisk_image(&raw, size, "label: gpt\nsize=64MiB, name=first\nname=rest\n", &writes);
    raw
}

fn qemu_check(image: &Path) {
    let out = run(Command::new("qemu-img").arg("check").arg(image));
    assert!(out.contains("No errors were found"), "{out}");
}

fn qemu_same(raw: &Path, fmt: &str, image: &Path) {
    let out = run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", fmt]).arg(raw).arg(image));
    assert!(out.contains("Images are identical"), "{out}");
}

fn virtual_size(image: &Path, fmt: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&run(Command::new("qemu-img").args(["info", "--output=json", "-f", fmt]).arg(image))).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

fn sha256_file(p: &Path) -> String {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(p).unwrap(), &mut h).unwrap();
    hex::encode(h.finalize())
}

/// The vmdk read back by libvmdk (pyvmdk), independent of qemu: same bytes as the raw.
fn libvmdk_same(raw: &Path, vmdk: &Path) {
    let script = r#"
import hashlib, sys, pyvmdk
h = pyvmdk.handle(); h.open(sys.argv[1]); h.open_extent_data_files()
size = h.get_media_size(); d = hashlib.sha256(); left = size
while left:
    b = h.read_buffer(min(left, 1 << 20)); d.update(b); left -= len(b)
print(size, d.hexdigest())
"#;
    let out = run(Command::new("/usr/bin/python3").arg("-c").arg(script).arg(vmdk));
    let size = std::fs::metadata(raw).unwrap().len();
    assert_eq!(out.trim(), format!("{size} {}", sha256_file(raw)), "libvmdk reads different data");
}

#[test]
fn qcow2_vmdk_and_vhd_hold_exactly_the_raw() {
    let s = Scratch::new("output-basic");
    let size = (1 << 30) + 12345 * 512;
    let raw = synthetic_raw(s.path(), size);
    let out = s.path().join("out");
    convert(&raw, "qcow2,vmdk,vhd", &out);

    let qcow2 = out.join("qcow2/disk.qcow2");
    qemu_check(&qcow2);
    qemu_same(&raw, "qcow2", &qcow2);
    assert_eq!(virtual_size(&qcow2, "qcow2"), size);
    let info = run(Command::new("qemu-img").args(["info", "--output=json"]).arg(&qcow2));
    assert!(info.contains("\"compat\": \"1.1\""), "not qcow2 version 3:\n{info}");
    // Compressed clusters, zero clusters unallocated: the file is far smaller than the data.
    let check = run(Command::new("qemu-img").args(["check", "--output=json"]).arg(&qcow2));
    let v: serde_json::Value = serde_json::from_str(&check).unwrap();
    assert!(v["compressed-clusters"].as_u64().unwrap() > 0, "{check}");
    assert!(v["allocated-clusters"].as_u64().unwrap() < 200, "zero clusters were allocated: {check}");

    let vmdk = out.join("vmdk/disk.vmdk");
    qemu_check(&vmdk);
    qemu_same(&raw, "vmdk", &vmdk);
    assert_eq!(virtual_size(&vmdk, "vmdk"), size);
    libvmdk_same(&raw, &vmdk);
    let info = run(Command::new("qemu-img").args(["info", "--output=json"]).arg(&vmdk));
    assert!(info.contains("streamOptimized") && info.contains("\"compressed\": true"), "{info}");
    let head = std::fs::read(&vmdk).unwrap();
    let desc = String::from_utf8_lossy(&head[512..512 * 21]);
    for key in ["ddb.adapterType", "ddb.virtualHWVersion", "ddb.toolsVersion", "createType=\"streamOptimized\""] {
        assert!(desc.contains(key), "descriptor lacks {key}:\n{desc}");
    }
    assert_eq!(u32::from_le_bytes(head[4..8].try_into().unwrap()), 3, "vmdk header version");

    let vhd = out.join("vpc/disk.vhd");
    qemu_same(&raw, "vpc", &vhd);
    let footer = &std::fs::read(&vhd).unwrap()[std::fs::metadata(&vhd).unwrap().len() as usize - 512..];
    let current = u64::from_be_bytes(footer[48..56].try_into().unwrap());
    assert_eq!(current % (1 << 20), 0, "vhd size not a whole number of MiB");
    assert_eq!(current, size.div_ceil(1 << 20) << 20);
    assert_eq!(std::fs::metadata(&vhd).unwrap().len(), current + 512);
    assert_eq!(&footer[0..8], b"conectix");
    assert_eq!(u32::from_be_bytes(footer[60..64].try_into().unwrap()), 2, "not a fixed vhd");
    let mut zeroed = footer.to_vec();
    zeroed[64..68].fill(0);
    let sum: u32 = zeroed.iter().map(|&b| b as u32).sum();
    assert_eq!(u32::from_be_bytes(footer[64..68].try_into().unwrap()), !sum, "vhd footer checksum");
    // qemu sizes it as it sizes its own fixed vhd of the same disk grown to whole MiB.
    let padded = s.path().join("padded.raw");
    run(Command::new("cp").arg("--sparse=always").arg(&raw).arg(&padded));
    std::fs::OpenOptions::new().write(true).open(&padded).unwrap().set_len(current).unwrap();
    let theirs = s.path().join("qemu.vhd");
    run(Command::new("qemu-img").args(["convert", "-O", "vpc", "-o", "subformat=fixed,force_size=on"]).arg(&padded).arg(&theirs));
    assert_eq!(virtual_size(&vhd, "vpc"), virtual_size(&theirs, "vpc"));
}

#[test]
fn ova_holds_a_valid_ovf_manifest_and_vmdk_in_order() {
    let s = Scratch::new("output-ova");
    let raw = synthetic_raw(s.path(), 512 << 20);
    let out = s.path().join("out");
    convert(&raw, "ova", &out);
    let ova = out.join("ova/disk.ova");
    let names = run(Command::new("tar").arg("-tf").arg(&ova));
    assert_eq!(names.lines().collect::<Vec<_>>(), vec!["disk.ovf", "disk.mf", "disk.vmdk"]);
    let x = s.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&ova).arg("-C").arg(&x));
    let mf = std::fs::read_to_string(x.join("disk.mf")).unwrap();
    let lines: Vec<&str> = mf.lines().collect();
    assert_eq!(lines.len(), 2, "{mf}");
    for (line, name) in lines.iter().zip(["disk.ovf", "disk.vmdk"]) {
        assert_eq!(*line, format!("SHA256({name})= {}", sha256_file(&x.join(name))), "manifest line");
    }
    validate_ovf(&x.join("disk.ovf"));
    let ovf = std::fs::read_to_string(x.join("disk.ovf")).unwrap();
    for want in ["VirtualSCSI", "VmxNet3", "VM Network", "vmw:key=\"firmware\" vmw:value=\"efi\"", "<rasd:ResourceType>3</rasd:ResourceType>"] {
        assert!(ovf.contains(want), "OVF lacks {want}");
    }
    let vmdk = x.join("disk.vmdk");
    assert!(ovf.contains(&format!("ovf:size=\"{}\"", std::fs::metadata(&vmdk).unwrap().len())));
    qemu_check(&vmdk);
    qemu_same(&raw, "vmdk", &vmdk);
}

fn validate_ovf(ovf: &Path) {
    let schema = common::shared_dir().join("ovf-schema/dsp8023_1.1.1.xsd");
    let o = Command::new("xmllint").args(["--noout", "--nonet", "--schema"]).arg(&schema).arg(ovf).output().unwrap();
    assert!(o.status.success(), "the OVF does not validate:\n{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn ova_options_and_disks_over_8_gib() {
    let s = Scratch::new("output-big");
    let size = 9 << 30;
    let raw = synthetic_raw(s.path(), size);
    let out = s.path().join("out");
    let o = kiln(&[
        "convert", "--type", "ova,gce", "--output", out.to_str().unwrap(), "--ova-name", "edge-node", "--ova-cpus", "4",
        "--ova-memory", "8192", "--ova-hw-version", "19", "--ova-firmware", "bios", raw.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let x = s.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(out.join("ova/disk.ova")).arg("-C").arg(&x));
    validate_ovf(&x.join("disk.ovf"));
    let ovf = std::fs::read_to_string(x.join("disk.ovf")).unwrap();
    for want in [
        format!("ovf:capacity=\"{size}\""),
        "vmx-19".to_string(),
        "<rasd:VirtualQuantity>4</rasd:VirtualQuantity>".into(),
        "<rasd:VirtualQuantity>8192</rasd:VirtualQuantity>".into(),
        "vmw:value=\"bios\"".into(),
        "<Name>edge-node</Name>".into(),
    ] {
        assert!(ovf.contains(&want), "OVF lacks {want}");
    }
    qemu_same(&raw, "vmdk", &x.join("disk.vmdk"));
    // The GCE tarball of a 9 GiB disk: its disk.raw is past ustar's 8 GiB size field.
    let list = run(Command::new("tar").arg("-tvzf").arg(out.join("gce/image.tar.gz")));
    assert!(list.contains(&size.to_string()) && list.trim_end().ends_with("disk.raw"), "{list}");
}

#[test]
fn gce_tarball_holds_exactly_disk_raw_resized_with_the_gpt_moved() {
    let s = Scratch::new("output-gce");
    let size = (1 << 30) + (300 << 20);
    let raw = synthetic_raw(s.path(), size);
    let out = s.path().join("out");
    convert(&raw, "gce", &out);
    let tgz = out.join("gce/image.tar.gz");
    let names = run(Command::new("tar").arg("-tzf").arg(&tgz));
    assert_eq!(names, "disk.raw\n");
    // oldgnu: the header's magic is "ustar  \0".
    let mut head = [0u8; 512];
    flate2::read::MultiGzDecoder::new(std::fs::File::open(&tgz).unwrap()).read_exact(&mut head).unwrap();
    assert_eq!(&head[257..265], b"ustar  \0", "not GNU tar's oldgnu format");
    let x = s.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    run(Command::new("tar").args(["-xzf"]).arg(&tgz).arg("-C").arg(&x));
    let disk = x.join("disk.raw");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 2 << 30, "not grown to a whole number of GiB");
    let v = run(Command::new("sgdisk").arg("-v").arg(&disk));
    assert!(v.contains("No problems found"), "{v}");
    // Partitions as they were; the data of the disk unchanged past the GPT.
    let table = |p: &Path| {
        run(Command::new("sfdisk").arg("-d").arg(p))
            .lines()
            .filter_map(|l| l.split_once(" : ").filter(|(_, r)| r.contains("start=")).map(|(_, r)| r.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&disk), table(&raw));
    let region = |p: &Path| {
        let mut f = std::fs::File::open(p).unwrap();
        let mut v = vec![0u8; (size - (2 << 20)) as usize];
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(1 << 20)).unwrap();
        f.read_exact(&mut v).unwrap();
        hex::encode(Sha256::digest(&v))
    };
    assert_eq!(region(&disk), region(&raw));
}

#[test]
fn convert_refuses_what_is_not_a_disk() {
    let s = Scratch::new("output-not-a-disk");
    let bogus = s.path().join("notes.txt");
    std::fs::write(&bogus, "not a disk image\n".repeat(100)).unwrap();
    let out = s.path().join("out");
    let o = kiln(&["convert", "--type", "qcow2", "--output", out.to_str().unwrap(), bogus.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("not a raw disk image") && err.contains("notes.txt"), "{err}");
    assert!(!out.join("qcow2/disk.qcow2").exists());
    let o = kiln(&["convert", "--type", "floppy", bogus.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("qcow2, vmdk"), "unknown type not explained");
}

#[test]
fn convert_onto_a_full_disk_leaves_nothing() {
    let s = Scratch::new("output-full");
    let raw = synthetic_raw(s.path(), 256 << 20);
    let out = s.path().join("small");
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "kiln-test-full"]).arg(&out));
    let o = kiln(&["convert", "--type", "vmdk", "--output", out.to_str().unwrap(), raw.to_str().unwrap()]);
    let left: Vec<_> = std::fs::read_dir(out.join("vmdk")).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    let _ = Command::new("umount").arg(&out).status();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is full"), "{err}");
    assert!(left.is_empty(), "partial output left: {left:?}");
}
