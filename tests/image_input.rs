//! The image stage against independent oracles: `kiln image unpack` must give, entry for
//! entry, the tree `umoci raw unpack` gives, from every transport; bad input must fail clearly
//! and leave nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::oci::{layer_blobs, write_layout, LayerBlob, RawTar};
use common::treediff::{assert_same, snapshot, Snapshot};
use common::{run, test_image, Scratch};
use serde_json::json;

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

fn kiln_ok(args: &[&str]) -> String {
    let out = kiln(args);
    assert!(out.status.success(), "kiln {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kiln must fail; returns its stderr.
fn kiln_err(args: &[&str]) -> String {
    let out = kiln(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "kiln {args:?} succeeded but should have failed");
    assert!(!err.contains("panicked"), "kiln panicked:\n{err}");
    err
}

/// `umoci raw unpack` of the test image's all-gzip copy (unpacked once into the test image's
/// cache): the oracle, snapshotted once per test process.
fn umoci_tree() -> &'static Snapshot {
    static SNAP: std::sync::OnceLock<Snapshot> = std::sync::OnceLock::new();
    SNAP.get_or_init(|| snapshot(common::umoci_unpacked_test_image(), &[]))
}

fn unpack_and_compare(reference: &str, name: &str) {
    let s = Scratch::new(name);
    let out = s.path().join("rootfs");
    kiln_ok(&["image", "unpack", "--progress", "plain", reference, out.to_str().unwrap()]);
    assert_same(&snapshot(&out, &[]), umoci_tree(), &format!("kiln image unpack {reference} vs umoci"));
}

#[test]
fn unpack_oci_dir_equals_umoci() {
    // kiln reads the original (gzip, zstd and uncompressed layers); umoci the gzip copy.
    unpack_and_compare(&format!("oci:{}:latest", test_image().join("oci").display()), "image-oci");
}

#[test]
fn unpack_oci_archive_equals_umoci() {
    unpack_and_compare(
        &format!("oci-archive:{}:latest", test_image().join("image.oci-archive").display()),
        "image-oci-archive",
    );
}

#[test]
fn unpack_docker_archive_equals_umoci() {
    let s = Scratch::new("image-docker-archive-src");
    let archive = s.path().join("image.docker.tar");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        // Docker archives cannot hold zstd layers: start from the gzip copy.
        &format!("oci:{}:latest", test_image().join("oci-gzip").display()),
        &format!("docker-archive:{}:kiln/test:latest", archive.display()),
    ]));
    unpack_and_compare(&format!("docker-archive:{}", archive.display()), "image-docker-archive");
}

#[test]
fn inspect_reports_the_image() {
    let reference = format!("oci:{}:latest", test_image().join("oci").display());
    let v: serde_json::Value = serde_json::from_str(&kiln_ok(&["image", "inspect", "--json", &reference])).unwrap();
    let skopeo: serde_json::Value =
        serde_json::from_str(&run(Command::new("skopeo").args(["inspect", &reference]))).unwrap();
    assert_eq!(v["digest"], skopeo["Digest"]);
    assert_eq!(v["architecture"], "amd64");
    assert_eq!(v["labels"], skopeo["Labels"]);
    let layers: Vec<&str> = v["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    let expected: Vec<&str> = skopeo["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(layers, expected);
    assert_eq!(v["bootable"], true);
    // The kernel the oracle's tree has.
    let kvers: Vec<String> = umoci_tree()
        .entries
        .keys()
        .filter_map(|p| {
            let s = p.to_str()?;
            Some(s.strip_prefix("./usr/lib/modules/")?.strip_suffix("/vmlinuz")?.to_string())
        })
        .collect();
    assert_eq!(v["kernels"], json!(kvers));
    let text = kiln_ok(&["image", "inspect", "--progress", "quiet", &reference]);
    assert!(text.contains("Bootable:     yes") && text.contains("Kernel:"), "{text}");
}

// ---- bad input: a clear error naming the layer, and nothing written ----

/// Runs `kiln image unpack` on a layout built from `layers`; asserts it fails with every
/// string of `expect` in its message and leaves no output directory.
fn refuse(name: &str, layers: Vec<LayerBlob>, expect: &[&str]) -> String {
    let s = Scratch::new(&format!("image-bad-{name}"));
    let reference = write_layout(&s.path().join("layout"), &layers, json!({"containers.bootc": "1"}), "amd64");
    refuse_ref(&s, &reference, expect)
}

fn refuse_ref(s: &Scratch, reference: &str, expect: &[&str]) -> String {
    let out = s.path().join("rootfs");
    let err = kiln_err(&["image", "unpack", reference, out.to_str().unwrap()]);
    for e in expect {
        assert!(err.contains(e), "error lacks {e:?}:\n{err}");
    }
    assert!(!out.exists(), "unpack left {} behind after failing", out.display());
    // Nothing appeared beside the output either (a write that escaped the root).
    let names: Vec<PathBuf> = std::fs::read_dir(s.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(names, vec![s.path().join("layout")], "unexpected files beside the output");
    err
}

fn base() -> RawTar {
    RawTar::default().dir("etc/").file("etc/hostname", "x\n")
}

#[test]
fn refuses_paths_with_dotdot() {
    let tar = base().file("usr/../../escape", "boom").finish();
    refuse("dotdot", vec![LayerBlob { tar, gzip: true }], &["layer 1/1", "usr/../../escape", "'..'"]);
}

#[test]
fn refuses_absolute_paths() {
    let tar = base().file("/etc/shadow", "boom").finish();
    refuse("absolute", vec![LayerBlob { tar, gzip: false }], &["layer 1/1", "/etc/shadow", "absolute"]);
}

#[test]
fn refuses_writes_through_a_symlink_out_of_the_root() {
    let l1 = RawTar::default().entry("etc", b'2', 0o777, "/", b"").finish();
    let l2 = RawTar::default().file("etc/passwd", "root::0:0::/:/bin/sh\n").finish();
    refuse(
        "symlink-escape",
        vec![LayerBlob { tar: l1, gzip: true }, LayerBlob { tar: l2, gzip: true }],
        &["layer 2/2", "etc/passwd", "symlink \"etc\" -> \"/\"", "outside the image root"],
    );
}

#[test]
fn refuses_hardlinks_out_of_the_tree() {
    let tar = base().entry("etc/link", b'1', 0o644, "../../etc/passwd", b"").finish();
    refuse("hardlink-out", vec![LayerBlob { tar, gzip: true }], &["layer 1/1", "etc/link", "hardlink target"]);
    let tar = base().entry("etc/link", b'1', 0o644, "/etc/passwd", b"").finish();
    refuse("hardlink-abs", vec![LayerBlob { tar, gzip: true }], &["layer 1/1", "etc/link", "absolute"]);
}

#[test]
fn refuses_corrupt_truncated_and_missing_blobs() {
    let make = |name: &str| {
        let s = Scratch::new(&format!("image-bad-{name}"));
        let tar = base().file("usr/data", &"payload ".repeat(5000)).finish();
        let reference = write_layout(&s.path().join("layout"), &[LayerBlob { tar, gzip: true }], json!({}), "amd64");
        let blob = layer_blobs(&s.path().join("layout")).remove(0);
        (s, reference, blob)
    };
    let (s, reference, blob) = make("corrupt");
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    refuse_ref(&s, &reference, &["layer 1/1"]);

    let (s, reference, blob) = make("truncated");
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &bytes[..bytes.len() - 10]).unwrap();
    refuse_ref(&s, &reference, &["layer 1/1", "truncated"]);

    let (s, reference, blob) = make("missing");
    std::fs::remove_file(&blob).unwrap();
    refuse_ref(&s, &reference, &["layer 1/1", "missing"]);
}

#[test]
fn refuses_a_layer_whose_diff_id_differs() {
    let s = Scratch::new("image-bad-diffid");
    let layout = s.path().join("layout");
    let tar = base().finish();
    let reference = write_layout(&layout, &[LayerBlob { tar, gzip: true }], json!({}), "amd64");
    // Rewrite the config with a wrong diff_id, and the manifest and index to match.
    rewrite_config(&layout, |c| c["rootfs"]["diff_ids"][0] = json!(format!("sha256:{}", "0".repeat(64))));
    let err = refuse_ref(&s, &reference, &["layer 1/1", "diff_id", "rebuild and push it again"]);
    assert!(err.contains("does not match"), "{err}");
}

/// A bake sizes the disk from the uncompressed layers, and that pass is where a zstd layer's
/// tar meets its diff_id (the later pass checks only the blob's digest): a wrong diff_id on the
/// test image's zstd layer stops the bake there, naming the layer, with nothing left behind.
#[test]
fn bake_refuses_a_zstd_layer_whose_diff_id_differs() {
    let s = Scratch::new("bake-bad-diffid");
    let layout = s.path().join("layout");
    let image = test_image().join("oci");
    // Blobs hard-linked (never written: rewrite_config adds new ones), the index copied.
    run(Command::new("cp").arg("-rl").arg(&image).arg(&layout));
    std::fs::remove_file(layout.join("index.json")).unwrap();
    std::fs::copy(image.join("index.json"), layout.join("index.json")).unwrap();
    let read = |p: PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let index = read(layout.join("index.json"));
    let manifest = read(layout.join("blobs/sha256").join(&index["manifests"][0]["digest"].as_str().unwrap()[7..]));
    let layers = manifest["layers"].as_array().unwrap();
    let zstd = layers.iter().position(|l| l["mediaType"].as_str().unwrap().ends_with("+zstd")).expect("the test image has a zstd layer");
    rewrite_config(&layout, |c| c["rootfs"]["diff_ids"][zstd] = json!(format!("sha256:{}", "0".repeat(64))));
    let reference = format!("oci:{}:latest", layout.display());
    let layer = format!("layer {}/{}", zstd + 1, layers.len());
    let err = common::bake_fails(&s, &reference, &["--rootfs", "ext4", "--progress", "plain"], &[&layer, "uncompressed tar (diff_id)", "does not match", "the image config's diff_id"]);
    assert!(!err.contains("layers: started"), "the layers pass began before the check:\n{err}");
}

/// A single image is taken for its own architecture unless --target-arch names another.
#[test]
fn refuses_an_image_for_another_architecture_than_the_one_asked() {
    let s = Scratch::new("image-bad-arch");
    let reference = write_layout(&s.path().join("layout"), &[LayerBlob { tar: base().finish(), gzip: true }], json!({}), "s390x");
    let out = s.path().join("rootfs");
    let err = kiln_err(&["image", "unpack", "--target-arch", "amd64", &reference, out.to_str().unwrap()]);
    for e in ["linux/s390x", "--target-arch s390x"] {
        assert!(err.contains(e), "error lacks {e:?}:\n{err}");
    }
    assert!(!out.exists(), "unpack left {} behind after failing", out.display());
    let o = Command::new(env!("CARGO_BIN_EXE_kiln")).args(["image", "unpack", &reference, out.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(out.join("etc/hostname")).unwrap(), "x\n");
}

#[test]
fn device_nodes_and_fifos_are_skipped_with_one_warning() {
    let s = Scratch::new("image-fifo");
    let tar = base().entry("run/fifo", b'6', 0o644, "", b"").entry("dev/null", b'3', 0o666, "", b"").finish();
    let reference = write_layout(&s.path().join("layout"), &[LayerBlob { tar, gzip: true }], json!({}), "amd64");
    let out = s.path().join("rootfs");
    let o = kiln(&["image", "unpack", &reference, out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("/run/fifo") && warnings[0].contains("/dev/null"), "{err}");
    assert!(out.join("etc/hostname").is_file() && !out.join("run/fifo").exists());
}

#[test]
fn inspect_says_when_an_image_is_not_bootable() {
    let s = Scratch::new("image-not-bootable");
    let reference = write_layout(&s.path().join("layout"), &[LayerBlob { tar: base().finish(), gzip: true }], json!({}), "amd64");
    let v: serde_json::Value = serde_json::from_str(&kiln_ok(&["image", "inspect", "--json", &reference])).unwrap();
    assert_eq!(v["bootable"], false);
    assert_eq!(v["kernels"], json!([]));
}

fn rewrite_config(layout: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let read = |p: PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let put = |v: &serde_json::Value| -> (String, usize) {
        let b = serde_json::to_vec(v).unwrap();
        let d = common::oci::sha256(&b);
        std::fs::write(blob(&d), &b).unwrap();
        (d, b.len())
    };
    let mut index = read(layout.join("index.json"));
    let mut manifest = read(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let mut config = read(blob(manifest["config"]["digest"].as_str().unwrap()));
    edit(&mut config);
    let (d, s) = put(&config);
    manifest["config"]["digest"] = json!(d);
    manifest["config"]["size"] = json!(s);
    let (d, s) = put(&manifest);
    index["manifests"][0]["digest"] = json!(d);
    index["manifests"][0]["size"] = json!(s);
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

// ---- registries ----

use common::registry::{auth_file, BearerProxy, Registry, PASSWORD, USER};

/// Runs kiln with its own blob cache and auth file.
fn kiln_env(args: &[&str], cache: &Path, auth: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args).env("KILN_CACHE_DIR", cache).env("XDG_RUNTIME_DIR", cache).env("HOME", cache);
    match auth {
        Some(a) => cmd.env("REGISTRY_AUTH_FILE", a),
        None => cmd.env_remove("REGISTRY_AUTH_FILE"),
    };
    cmd.output().unwrap()
}

fn unpack_from(reference: &str, s: &Scratch, out_name: &str, auth: Option<&Path>) -> Output {
    let out = s.path().join(out_name);
    kiln_env(&["image", "unpack", "--tls-verify=false", reference, out.to_str().unwrap()], &s.path().join("cache"), auth)
}

#[test]
fn registry_pull_with_basic_auth_and_a_warm_cache() {
    let s = Scratch::new("image-registry-basic");
    let reg = Registry::start(&s.path().join("registry"), true);
    let src = format!("oci:{}:latest", test_image().join("oci").display());
    let dest = reg.push(&src, "kiln/test:latest", true);
    let good = s.path().join("auth.json");
    auth_file(&good, &format!("127.0.0.1:{}", reg.port), USER, PASSWORD);

    // No credentials, then wrong ones: refused, naming the registry and the auth file, never
    // printing the password.
    let o = unpack_from(&dest, &s, "none", None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&format!("registry 127.0.0.1:{}", reg.port)) && err.contains("podman login"), "{err}");
    let bad = s.path().join("bad-auth.json");
    auth_file(&bad, &format!("127.0.0.1:{}", reg.port), USER, "not-the-password");
    let o = unpack_from(&dest, &s, "bad", Some(&bad));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "wrong credentials accepted");
    assert!(err.contains(&bad.display().to_string()) && err.contains("127.0.0.1"), "{err}");
    assert!(!err.contains("not-the-password") && !err.contains(PASSWORD), "secret printed: {err}");
    assert!(!s.path().join("bad").exists() && !s.path().join("none").exists());

    let before = reg.blob_gets();
    let o = unpack_from(&dest, &s, "first", Some(&good));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(&snapshot(&s.path().join("first"), &[]), umoci_tree(), "docker:// (basic auth) vs umoci");
    let first = reg.blob_gets() - before;
    assert!(first >= 5, "expected the config and 4 layers downloaded, saw {first} blob requests");

    // A second run of the same image downloads nothing.
    let o = unpack_from(&dest, &s, "second", Some(&good));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(reg.blob_gets() - before, first, "the second pull made blob requests");
    assert_same(&snapshot(&s.path().join("second"), &[]), umoci_tree(), "docker:// from the cache vs umoci");
}

#[test]
fn registry_pull_anonymous_and_bearer_token() {
    let s = Scratch::new("image-registry-bearer");
    let reg = Registry::start(&s.path().join("registry"), false);
    let src = format!("oci:{}:latest", test_image().join("oci").display());
    let dest = reg.push(&src, "kiln/anon:1", false);
    // Pinned by digest, anonymously.
    let digest = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}", &dest]));
    let pinned = format!("docker://127.0.0.1:{}/kiln/anon@{}", reg.port, digest.trim());
    let o = unpack_from(&pinned, &s, "anon", None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(&snapshot(&s.path().join("anon"), &[]), umoci_tree(), "docker://…@digest vs umoci");

    // Behind a bearer-token service: without credentials refused, with them the same tree.
    let proxy = BearerProxy::start(reg.port);
    let via = format!("127.0.0.1:{}/kiln/anon:1", proxy.port); // bare reference: docker:// implied
    let o = unpack_from(&via, &s, "denied", None);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("access denied"));
    let auth = s.path().join("auth.json");
    auth_file(&auth, &format!("127.0.0.1:{}", proxy.port), USER, PASSWORD);
    let fresh = Scratch::new("image-registry-bearer-fresh");
    let o = unpack_from(&via, &fresh, "bearer", Some(&auth));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(&snapshot(&fresh.path().join("bearer"), &[]), umoci_tree(), "bearer-token pull vs umoci");
}

// ---- containers-storage ----

/// Copies the test image into a containers store (skopeo writes it in-process, as podman
/// would) and checks kiln reads the same tree from it.
fn storage_roundtrip(driver: &str) {
    let s = Scratch::new(&format!("image-storage-{driver}"));
    let store = format!("[{driver}@{}+{}]", s.path().join("root").display(), s.path().join("run").display());
    let src = format!("oci:{}:latest", test_image().join("oci").display());
    run(Command::new("skopeo").args(["copy", "-q", &src, &format!("containers-storage:{store}localhost/kiln/test:latest")]));
    let out = s.path().join("rootfs");
    let result = std::panic::catch_unwind(|| {
        kiln_ok(&["image", "unpack", &format!("containers-storage:{store}kiln/test"), out.to_str().unwrap()]);
        assert_same(&snapshot(&out, &[]), umoci_tree(), &format!("containers-storage ({driver}) vs umoci"));
    });
    // containers/storage leaves its overlay directory bind-mounted.
    for m in common::mounts_under(s.path()).iter().rev() {
        let _ = Command::new("umount").arg(m.split(' ').nth(1).unwrap()).status();
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn containers_storage_overlay_equals_umoci() {
    storage_roundtrip("overlay");
}

#[test]
fn containers_storage_vfs_equals_umoci() {
    storage_roundtrip("vfs");
}

#[test]
fn a_hardlink_to_a_file_of_a_lower_layer_matches_umoci() {
    // Valid OCI that podman cannot store, so not in the test image: checked here.
    let s = Scratch::new("image-lower-hardlink");
    let l1 = RawTar::default().dir("data/").file("data/lower", "lower content").finish();
    let l2 = RawTar::default().entry("data/link", b'1', 0o644, "data/lower", b"").finish();
    let reference = write_layout(
        &s.path().join("layout"),
        &[LayerBlob { tar: l1, gzip: true }, LayerBlob { tar: l2, gzip: true }],
        json!({}),
        "amd64",
    );
    let ours = s.path().join("kiln");
    kiln_ok(&["image", "unpack", &reference, ours.to_str().unwrap()]);
    let theirs = s.path().join("umoci");
    run(Command::new("umoci").args(["raw", "unpack", "--image", reference.trim_start_matches("oci:")]).arg(&theirs));
    let snap = snapshot(&ours, &[]);
    assert_same(&snap, &snapshot(&theirs, &[]), "cross-layer hardlink");
    assert_eq!(snap.hardlinks.len(), 1, "the link and its target share an inode");
}

#[test]
fn containers_storage_default_root_store() {
    // The root store podman uses (/var/lib/containers/storage unless storage.conf moves it).
    let name = format!("localhost/kiln/test-default-{}:latest", std::process::id());
    let src = format!("oci:{}:latest", test_image().join("oci").display());
    run(Command::new("skopeo").args(["copy", "-q", &src, &format!("containers-storage:{name}")]));
    let s = Scratch::new("image-storage-default");
    let out = s.path().join("rootfs");
    let short = name.trim_start_matches("localhost/").trim_end_matches(":latest").to_string();
    let result = kiln(&["image", "unpack", &format!("containers-storage:{short}"), out.to_str().unwrap()]);
    let _ = Command::new("skopeo").args(["delete", &format!("containers-storage:{name}")]).output();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert_same(&snapshot(&out, &[]), umoci_tree(), "containers-storage (default root) vs umoci");
}
