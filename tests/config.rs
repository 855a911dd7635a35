//! `kiln bake --config`: the issue's two-user config baked into the test image boots and the
//! probe reports the users, home, keys, password, karg, partition and file; the same config as
//! JSON gives the same disk; an image shipping disk.yaml gets that table (sfdisk); bad input
//! fails naming the key and the file, and leaves nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::boot::{Boot, Firmware};
use common::oci::{append_layer, LayerBlob, RawTar};
use common::{run, test_image, Scratch};

fn image_ref() -> String {
    format!("oci:{}:latest", test_image().join("oci").display())
}

fn kiln(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

const BOB_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnTestKeyForBobOnlyNotARealKeyAtAll bob@kiln";
const ALICE_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnTestKeyForAliceNotARealKeyAtAll alice@kiln";
const PASSWORD: &str = "kiln-test-password";

/// The issue's config: two users (password and key; one in wheel), a group, a kernel
/// argument, a 2 GiB /var/lib/data partition and a file in /etc.
fn config_toml() -> String {
    format!(
        r#"name = "kiln-test"

[[customizations.group]]
name = "wheel"

[[customizations.user]]
name = "alice"
password = "{PASSWORD}"
key = "{ALICE_KEY}"
groups = ["wheel"]

[[customizations.user]]
name = "bob"
key = "{BOB_KEY}"
shell = "/bin/bash"

[customizations.kernel]
append = "kiln.test.config=1"

[[customizations.filesystem]]
mountpoint = "/var/lib/data"
minsize = "2 GiB"

[[customizations.files]]
path = "/etc/kiln-config-test"
mode = "0640"
user = "alice"
group = "wheel"
data = "written by the build config"
"#
    )
}

fn config_json() -> String {
    serde_json::json!({
        "name": "kiln-test",
        "customizations": {
            "group": [{"name": "wheel"}],
            "user": [
                {"name": "alice", "password": PASSWORD, "key": ALICE_KEY, "groups": ["wheel"]},
                {"name": "bob", "key": BOB_KEY, "shell": "/bin/bash"}
            ],
            "kernel": {"append": "kiln.test.config=1"},
            "filesystem": [{"mountpoint": "/var/lib/data", "minsize": "2 GiB"}],
            "files": [{"path": "/etc/kiln-config-test", "mode": "0640", "user": "alice", "group": "wheel", "data": "written by the build config"}]
        }
    })
    .to_string()
}

fn bake(s: &Scratch, image: &str, extra: &[&str], stdin: Option<&str>) -> PathBuf {
    let out = s.path().join("out");
    let mut args = vec!["bake", "--type", "raw", "--progress", "plain", "--output", out.to_str().unwrap(), "--target-imgref", "quay.io/kiln/test:latest"];
    args.extend_from_slice(extra);
    args.push(image);
    let o = kiln(&args, stdin);
    assert!(o.status.success(), "kiln bake failed:\n{}", String::from_utf8_lossy(&o.stderr));
    out.join("image/disk.raw")
}

fn sfdisk(raw: &Path) -> serde_json::Value {
    serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(raw))).unwrap()
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(p).unwrap(), &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Python's crypt (libxcrypt), an implementation independent of kiln's, checks a hash.
fn python_crypt_verifies(password: &str, hash: &str) -> bool {
    let out = run(Command::new("python3").args(["-W", "ignore", "-c", "import crypt,sys; print(crypt.crypt(sys.argv[1], sys.argv[2]) == sys.argv[2])", password, hash]));
    out.trim() == "True"
}

#[test]
fn the_issues_config_boots_with_users_keys_password_karg_partition_and_file() {
    let s = Scratch::new("config-boot");
    let cfg = s.path().join("config.toml");
    std::fs::write(&cfg, config_toml()).unwrap();
    let keys = s.path().join("root_keys");
    std::fs::write(&keys, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnRootKey kiln-root-key\n").unwrap();
    let raw = bake(
        &s,
        &image_ref(),
        &["--rootfs", "ext4", "--seed", "kiln-config", "--config", cfg.to_str().unwrap(), "--root-ssh-authorized-keys", keys.to_str().unwrap()],
        None,
    );

    // The partition table (sfdisk, independent of kiln): the data partition is 2 GiB of Linux
    // data, before the root, which is last.
    let t = sfdisk(&raw);
    let parts = t["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 5, "{t}");
    assert_eq!(parts[3]["size"].as_u64().unwrap() * 512, 2 << 30, "{t}");
    assert_eq!(parts[3]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(parts[4]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");

    // The same config as JSON on stdin gives the same disk.
    let j = Scratch::new("config-boot-json");
    let raw_json = bake(&j, &image_ref(), &["--rootfs", "ext4", "--seed", "kiln-config", "--config", "-", "--root-ssh-authorized-keys", keys.to_str().unwrap()], Some(&config_json()));
    assert_eq!(sha256_file(&raw), sha256_file(&raw_json), "the TOML and JSON configs gave different disks");
    drop(j);

    let report = Boot::new(&raw, Firmware::Uefi, "config-boot").run().unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    report.assert_outcome(&[]);
    for name in [
        "config.users",
        "config.group",
        "config.password",
        "config.home",
        "config.authorized-keys",
        "config.karg",
        "config.data-mount",
        "config.data-writable",
        "config.file",
        "config.root-ssh",
    ] {
        assert!(report.checks.get(name).is_some_and(|c| c.pass), "probe did not report {name} passing:\n{report}");
    }
    let hash = report.info("config.shadow-alice").expect("the probe reports alice's hash");
    assert!(hash.starts_with("$6$"), "{hash}");
    assert!(python_crypt_verifies(PASSWORD, hash), "python crypt does not verify {hash}");
    assert!(!python_crypt_verifies("wrong", hash));
}

/// An image with disk.yaml (bootc-image-builder's test table, a data partition added) is
/// baked to exactly that table, whether the image is scanned first or not.
#[test]
fn an_image_shipping_disk_yaml_gets_its_partition_table() {
    let s = Scratch::new("config-disk-yaml");
    let yaml = "---
mount_configuration: units
partition_table:
  size: '8589934592'
  uuid: d209c89e-ea5e-4fbd-b161-b461cce297e0
  partitions:
  - bootable: true
    size: 1 MiB
    type: 21686148-6449-6E6F-744E-656564454649
    uuid: fac7f1fb-3e8d-4137-a512-961de09a5549
  - label: efi
    payload:
      label: ESP
      mountpoint: /boot/efi
      type: vfat
    payload_type: filesystem
    size: '104857600'
    type: c12a7328-f81f-11d2-ba4b-00a0c93ec93b
    uuid: 68b2905b-df3e-4fb3-80fa-49d1e773aa33
  - label: spare
    size: '134217728'
    type: df331e4d-be00-463f-b4a7-8b43e18fb53a
    uuid: E4D4DA50-7050-41AE-A5F9-DEF12B94DFB5
  - label: data
    payload_type: filesystem
    payload:
      type: ext4
      mountpoint: /var/lib/data
      uuid: 0e1f8d4a-2b3c-4d5e-8f90-a1b2c3d4e5f6
    size: 1 GiB
    type: 0fc63daf-8483-4772-8e79-3d69d8477de4
    uuid: 5a6f3ade-eeb0-11ef-a838-e89c256c3906
  - label: root
    payload:
      label: root
      mountpoint: /
      type: ext4
    payload_type: filesystem
    type: 4f68bce3-e8cd-4db1-96e7-fbcaf984b709
    uuid: 6264d520-3fb9-423f-8ab8-7a0a8e3d3562
";
    // The test image with one more layer, its blobs shared with the cache.
    let tar = RawTar::default().dir("usr/").dir("usr/lib/").dir("usr/lib/bootc-image-builder/").file("usr/lib/bootc-image-builder/disk.yaml", yaml).finish();
    let image = append_layer(&test_image().join("oci-gzip"), &s.path().join("oci"), &LayerBlob { tar, gzip: true });

    // Once planned from a scan (the root type comes from disk.yaml), once with --rootfs (the
    // file is found after the commit and the disk laid out again).
    for (name, extra) in [("scan", &[][..]), ("rootfs", &["--rootfs", "ext4"][..])] {
        let b = Scratch::new(&format!("config-disk-yaml-{name}"));
        let raw = bake(&b, &image, extra, None);
        let t = sfdisk(&raw);
        let pt = &t["partitiontable"];
        assert_eq!(pt["id"], "D209C89E-EA5E-4FBD-B161-B461CCE297E0", "{t}");
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 8 << 30, "disk.yaml's size");
        let got: Vec<(String, u64, String, String)> = pt["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                (s("name"), p["size"].as_u64().unwrap() * 512, s("type"), s("uuid"))
            })
            .collect();
        let root_size = (8u64 << 30) - (1 << 20) - (1 << 20) - (100 << 20) - (128 << 20) - (1 << 30) - (1 << 20);
        let want: Vec<(String, u64, String, String)> = [
            ("", 1 << 20, "21686148-6449-6E6F-744E-656564454649", "FAC7F1FB-3E8D-4137-A512-961DE09A5549"),
            ("efi", 100 << 20, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "68B2905B-DF3E-4FB3-80FA-49D1E773AA33"),
            ("spare", 128 << 20, "DF331E4D-BE00-463F-B4A7-8B43E18FB53A", "E4D4DA50-7050-41AE-A5F9-DEF12B94DFB5"),
            ("data", 1 << 30, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "5A6F3ADE-EEB0-11EF-A838-E89C256C3906"),
            ("root", root_size, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "6264D520-3FB9-423F-8AB8-7A0A8E3D3562"),
        ]
        .iter()
        .map(|(n, s, t, u)| (n.to_string(), *s, t.to_string(), u.to_string()))
        .collect();
        assert_eq!(got, want, "{name}: {t}");
        // The data partition's filesystem carries disk.yaml's UUID (blkid, not kiln).
        let data = &pt["partitions"][3];
        let offset = data["start"].as_u64().unwrap() * 512;
        let probe = run(Command::new("blkid").args(["-p", "-o", "export", "-O"]).arg(offset.to_string()).arg(&raw));
        assert!(probe.contains("UUID=0e1f8d4a-2b3c-4d5e-8f90-a1b2c3d4e5f6") && probe.contains("TYPE=ext4"), "{probe}");
    }
}

// ---- bad input: a clear error naming key and file, nothing written ----

fn nothing_written(dir: &Path) {
    assert_eq!(common::loops_under(dir), Vec::<String>::new(), "loop devices left behind");
    assert_eq!(common::mounts_under(dir), Vec::<String>::new(), "mounts left behind");
    let out = dir.join("out");
    if out.exists() {
        let files: Vec<_> = walkdir(&out).into_iter().filter(|p| !p.is_dir()).collect();
        assert!(files.is_empty(), "partial output left behind: {files:?}");
    }
}

fn walkdir(p: &Path) -> Vec<PathBuf> {
    let mut v = vec![p.to_path_buf()];
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).unwrap() {
            v.extend(walkdir(&e.unwrap().path()));
        }
    }
    v
}

/// Bakes with `config` (written to `name`) and expects failure mentioning each of `expect`.
fn config_fails(test: &str, name: &str, config: &str, extra: &[&str], expect: &[&str]) {
    let s = Scratch::new(test);
    let path = s.path().join(name);
    std::fs::write(&path, config).unwrap();
    let out = s.path().join("out");
    let mut args = vec!["bake", "--type", "raw,qcow2", "--output", out.to_str().unwrap(), "--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let image = image_ref();
    args.push(&image);
    let o = kiln(&args, None);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{test}: bake succeeded but should have failed");
    assert!(!err.contains("panicked"), "{err}");
    for e in expect {
        assert!(err.contains(e), "{test}: error lacks {e:?}:\n{err}");
    }
    nothing_written(s.path());
}

#[test]
fn unknown_keys_are_refused_naming_key_file_and_position() {
    config_fails("config-unknown-top", "c.toml", "name = \"x\"\nhostnme = \"box\"\n", &[], &["c.toml:2:1", "hostnme: unknown key"]);
    config_fails(
        "config-unknown-nested",
        "c.json",
        "{\"customizations\": {\"user\": [{\"name\": \"a\",\n \"passwrd\": \"x\"}]}}",
        &[],
        &["c.json:2:", "customizations.user[0].passwrd: unknown key", "password"],
    );
    config_fails("config-refused", "c.toml", "[customizations]\nhostname = \"box\"\n", &[], &["c.toml:2:", "customizations.hostname", "/etc/hostname"]);
}

#[test]
fn malformed_files_give_line_and_column() {
    config_fails("config-bad-toml", "c.toml", "[[customizations.user]]\nname = \"a\n", &[], &["c.toml:2:"]);
    config_fails("config-bad-json", "c.json", "{\"customizations\": {\n  \"kernel\": {\"append\": ]}}", &[], &["c.json:2:"]);
    config_fails("config-bad-ext", "c.yaml", "x: 1\n", &[], &["c.yaml", "*.toml or *.json"]);
}

#[test]
fn forbidden_mountpoints_and_filesystem_with_disk_are_refused() {
    config_fails(
        "config-var-mountpoint",
        "c.toml",
        "[[customizations.filesystem]]\nmountpoint = \"/var\"\nminsize = \"1 GiB\"\n",
        &[],
        &["c.toml", "customizations.filesystem[0].mountpoint", "/var is not allowed"],
    );
    config_fails(
        "config-var-home",
        "c.toml",
        "[[customizations.filesystem]]\nmountpoint = \"/var/home\"\nminsize = \"1 GiB\"\n",
        &[],
        &["customizations.filesystem[0].mountpoint", "/var/home"],
    );
    config_fails(
        "config-fs-and-disk",
        "c.toml",
        "[[customizations.filesystem]]\nmountpoint = \"/\"\nminsize = \"4 GiB\"\n[customizations.disk]\n[[customizations.disk.partitions]]\nmountpoint = \"/var/log\"\nfs_type = \"ext4\"\nminsize = \"1 GiB\"\n",
        &[],
        &["c.toml", "customizations.filesystem and customizations.disk cannot be combined"],
    );
}

#[test]
fn a_table_larger_than_size_is_refused() {
    config_fails(
        "config-too-large",
        "c.toml",
        "[[customizations.filesystem]]\nmountpoint = \"/var/lib/data\"\nminsize = \"20 GiB\"\n",
        &["--rootfs", "ext4", "--size", "10G"],
        &["does not fit --size 10240"],
    );
}

/// Known only once the image's /etc/passwd is read: refused before the outputs are kept.
#[test]
fn a_user_clashing_with_an_image_users_uid_is_refused() {
    config_fails(
        "config-uid-clash",
        "c.toml",
        "[[customizations.user]]\nname = \"mallory\"\nuid = 65534\n",
        &["--rootfs", "ext4"],
        &["c.toml", "customizations.user[0].uid", "uid 65534", "\"nobody\""],
    );
}

/// `[customizations.disk]`: swap, a btrfs volume with two subvolumes and an xfs partition,
/// checked on the disk by sfdisk, blkid, btrfs (on a loop mount) and the deployment's fstab.
#[test]
fn a_disk_customization_makes_swap_btrfs_subvolumes_and_xfs() {
    let s = Scratch::new("config-disk-custom");
    let cfg = s.path().join("config.toml");
    std::fs::write(
        &cfg,
        r#"[customizations.disk]
[[customizations.disk.partitions]]
fs_type = "swap"
label = "swap"
minsize = "64 MiB"

[[customizations.disk.partitions]]
type = "btrfs"
minsize = "256 MiB"
part_label = "state"

[[customizations.disk.partitions.subvolumes]]
name = "log"
mountpoint = "/var/log"

[[customizations.disk.partitions.subvolumes]]
name = "cache"
mountpoint = "/var/cache"

[[customizations.disk.partitions]]
mountpoint = "/var/lib/xdata"
fs_type = "xfs"
label = "xdata"
minsize = "320 MiB"
"#,
    )
    .unwrap();
    let raw = bake(&s, &image_ref(), &["--rootfs", "ext4", "--config", cfg.to_str().unwrap()], None);
    let t = sfdisk(&raw);
    let parts = t["partitiontable"]["partitions"].as_array().unwrap().clone();
    let types: Vec<&str> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "21686148-6449-6E6F-744E-656564454649",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        ],
        "{t}"
    );
    assert_eq!(parts[3]["name"], "state");
    let blkid = |i: usize| run(Command::new("blkid").args(["-p", "-o", "export", "-O"]).arg((parts[i]["start"].as_u64().unwrap() * 512).to_string()).arg(&raw));
    let (swap, btrfs, xfs) = (blkid(2), blkid(3), blkid(4));
    assert!(swap.contains("TYPE=swap") && swap.contains("LABEL=swap"), "{swap}");
    assert!(btrfs.contains("TYPE=btrfs"), "{btrfs}");
    assert!(xfs.contains("TYPE=xfs") && xfs.contains("LABEL=xdata"), "{xfs}");
    let uuid = |b: &str| b.lines().find_map(|l| l.strip_prefix("UUID=")).unwrap().to_string();

    // Mounted read-only through loop devices of their own: btrfs lists the subvolumes, the
    // root holds the fstab.
    let mount = |i: usize, at: &Path| {
        std::fs::create_dir_all(at).unwrap();
        let (start, size) = (parts[i]["start"].as_u64().unwrap() * 512, parts[i]["size"].as_u64().unwrap() * 512);
        run(Command::new("mount").arg("-o").arg(format!("ro,loop,offset={start},sizelimit={size}")).arg(&raw).arg(at));
    };
    let (bmnt, rmnt) = (s.path().join("btrfs"), s.path().join("root"));
    mount(3, &bmnt);
    let list = run(Command::new("btrfs").args(["subvolume", "list"]).arg(&bmnt));
    run(Command::new("umount").arg("-d").arg(&bmnt));
    assert!(list.contains("path log") && list.contains("path cache"), "{list}");
    mount(5, &rmnt);
    let deploy = std::fs::read_dir(rmnt.join("ostree/deploy/default/deploy")).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    let fstab = std::fs::read_to_string(deploy.join("etc/fstab"));
    run(Command::new("umount").arg("-d").arg(&rmnt));
    let fstab = fstab.unwrap();
    for line in [
        format!("UUID={} none swap defaults 0 0", uuid(&swap)),
        format!("UUID={} /var/cache btrfs subvol=cache 0 0", uuid(&btrfs)),
        format!("UUID={} /var/lib/xdata xfs defaults 0 0", uuid(&xfs)),
        format!("UUID={} /var/log btrfs subvol=log 0 0", uuid(&btrfs)),
    ] {
        assert!(fstab.lines().any(|l| l == line), "fstab lacks {line:?}:\n{fstab}");
    }
    assert_eq!(common::loops_under(s.path()), Vec::<String>::new());
}
