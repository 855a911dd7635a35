//! `kiln bake --type ami` and `kiln upload aws` against moto on 127.0.0.1 (one server per
//! test). boto3 reads back what is in the "cloud" (snapshot blocks, images, permissions, tags,
//! S3 objects); the launcher's request log shows what kiln sent where moto keeps nothing
//! (RegisterImage's parameters, checksums, access keys). Faults leave nothing behind.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::moto::Moto;
use common::{test_image, Scratch};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BLOCK: u64 = 512 * 1024;
const X86_ROOT: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const ARM64_ROOT: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
const ENV_KEY: &str = "AKIAKILNENVTEST";

/// kiln with a clean AWS environment: keys from the environment unless `env` says otherwise,
/// no shared files (HOME is the scratch), instance metadata pointed at a closed local port.
fn kiln(s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = kiln_cmd(s, args, env);
    cmd.output().unwrap()
}

fn kiln_cmd(s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", s.path())
        .env("AWS_ACCESS_KEY_ID", ENV_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9");
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `kiln upload aws` of `raw` as `name` in us-east-1 (plus `extra`).
fn upload(s: &Scratch, moto: &Moto, raw: &Path, name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["upload", "aws", "--aws-endpoint", &moto.url, "--aws-region", "us-east-1", "--aws-ami-name", name];
    args.extend_from_slice(extra);
    args.push(raw.to_str().unwrap());
    kiln(s, &args, &[])
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "kiln failed:\n{}", stderr(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: &Output, expect: &[&str]) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "kiln succeeded but should not have:\n{err}");
    for e in expect {
        assert!(err.contains(e), "error lacks {e:?}:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A GPT disk (ESP, optional BIOS boot, root of `root_type`) of `size` bytes with what block
/// uploads get wrong: data across block boundaries, an allocated all-zero extent, holes, and
/// data in the last block.
fn gpt_disk(dir: &Path, size: u64, root_type: &str, bios: bool) -> PathBuf {
    let raw = dir.join("disk.raw");
    let mut script = String::from("label: gpt\nsize=32MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n");
    if bios {
        script += "size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios\n";
    }
    script += &format!("type={root_type}, name=root\n");
    let mut noise = common::Noise(0x9e37_79b9_7f4a_7c15);
    let writes = [
        (2 << 20, noise.bytes(3 << 20)),
        ((40 << 20) + 100 * 1024, noise.bytes(700 * 1024)),
        (64 << 20, vec![0u8; 4 << 20]),
        (size - (1 << 20) - 4096, noise.bytes(4096)),
    ];
    common::sfdisk_image(&raw, size, &script, &writes);
    raw
}

/// Blocks of `raw` that hold something other than zeros.
fn data_blocks(raw: &Path) -> Vec<(u64, [u8; 32])> {
    let f = std::fs::File::open(raw).unwrap();
    let size = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut buf = vec![0u8; BLOCK as usize];
    for i in 0..size.div_ceil(BLOCK) {
        buf.fill(0);
        let n = (size - i * BLOCK).min(BLOCK) as usize;
        f.read_exact_at(&mut buf[..n], i * BLOCK).unwrap();
        if buf.iter().any(|&b| b != 0) {
            out.push((i, Sha256::digest(&buf).into()));
        }
    }
    out
}

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// The RegisterImage parameters kiln sent (the last call).
fn registered(moto: &Moto) -> Value {
    let calls = moto.calls("RegisterImage");
    calls.last().unwrap_or_else(|| panic!("no RegisterImage call: {:?}", moto.requests()))["params"].clone()
}

fn ami_lines(stdout: &str) -> Vec<(String, String)> {
    stdout.lines().map(|l| l.split_once(' ').map(|(r, a)| (r.to_string(), a.to_string())).unwrap()).collect()
}

#[test]
fn upload_sends_the_data_blocks_checksummed_and_registers_what_was_asked() {
    let s = Scratch::new("aws-upload-blocks");
    let moto = Moto::start("upload-blocks");
    let raw = gpt_disk(s.path(), 256 << 20, X86_ROOT, true);
    let o = upload(&s, &moto, &raw, "kiln-blocks", &["--aws-tag", "team=os", "--aws-volume-size", "4", "--progress", "json"]);
    let lines = ami_lines(&ok(&o));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].0, "us-east-1");
    let ami = &lines[0].1;

    // Blocks: the snapshot holds exactly the raw's data blocks, as boto3 reads them back.
    let start = moto.calls("StartSnapshot");
    assert_eq!(start.len(), 1);
    assert_eq!(start[0]["params"]["VolumeSize"], 1);
    assert!(start[0]["params"]["ClientToken"].as_str().is_some_and(|t| t.len() >= 32));
    let snapshot = moto.state(&["us-east-1"], None)["us-east-1"]["images"][0]["snapshots"][0].as_str().unwrap().to_string();
    let cmp = moto.blocks(&snapshot, &raw, false);
    let expected = data_blocks(&raw);
    assert_eq!(cmp["missing"], json!([]), "{cmp}");
    assert_eq!(cmp["mismatched"], json!([]), "{cmp}");
    assert_eq!(cmp["unexpected"], json!([]), "{cmp}");
    assert_eq!(cmp["listed"], expected.len(), "{cmp}");
    assert!(expected.len() < 20, "the disk is mostly holes and zeros: {}", expected.len());

    // Each block went once, with its SHA-256; CompleteSnapshot carries the count and the
    // linear checksum of the checksums.
    let mut sent: Vec<(u64, String)> =
        moto.calls("PutSnapshotBlock").iter().map(|c| (c["index"].as_u64().unwrap(), c["checksum"].as_str().unwrap().to_string())).collect();
    sent.sort();
    assert_eq!(sent, expected.iter().map(|(i, d)| (*i, b64(d))).collect::<Vec<_>>());
    let complete = &moto.calls("CompleteSnapshot")[0];
    let mut linear = Sha256::new();
    expected.iter().for_each(|(_, d)| linear.update(d));
    assert_eq!(complete["checksum"], b64(&linear.finalize()));
    assert_eq!(complete["changed_blocks"], expected.len().to_string());
    assert_eq!(complete["aggregation"], "LINEAR");

    // Registration.
    let p = registered(&moto);
    for (k, v) in [
        ("Name", "kiln-blocks"),
        ("Architecture", "x86_64"),
        ("BootMode", "uefi-preferred"),
        ("VirtualizationType", "hvm"),
        ("EnaSupport", "true"),
        ("SriovNetSupport", "simple"),
        ("ImdsSupport", "v2.0"),
        ("RootDeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot.as_str()),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "4"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
    ] {
        assert_eq!(p[k], v, "{k} in {p}");
    }
    assert!(p.get("TpmSupport").is_none(), "{p}");

    // Tags and state, as EC2 shows them.
    let st = moto.state(&["us-east-1"], None);
    let image = &st["us-east-1"]["images"][0];
    assert_eq!(image["id"], ami.as_str());
    assert_eq!(image["state"], "available");
    assert_eq!(image["tags"], json!({"Name": "kiln-blocks", "team": "os"}));
    let snap = &st["us-east-1"]["snapshots"][0];
    assert_eq!(snap["tags"], json!({"Name": "kiln-blocks", "team": "os"}));
    assert_eq!(snap["state"], "completed");

    // --progress=json: block counts and a final result with the ids.
    let events: Vec<Value> = stderr(&o).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let upload_done = events.iter().find(|e| e["stage"] == "aws-upload" && e["event"] == "finish").expect("an aws-upload finish event");
    assert_eq!(upload_done["unit"], "blocks");
    assert_eq!(upload_done["done"], upload_done["total"]);
    let result = events.iter().find(|e| e["event"] == "result").expect("a result event");
    assert_eq!(result["result"]["aws"]["images"][0]["image_id"], ami.as_str());
    assert_eq!(result["result"]["aws"]["images"][0]["snapshot_ids"][0], snapshot.as_str());
    assert_eq!(result["result"]["aws"]["blocks_sent"], expected.len());
}

#[test]
fn encrypted_snapshots_get_every_block() {
    let s = Scratch::new("aws-encrypted");
    let moto = Moto::start("encrypted");
    let raw = gpt_disk(s.path(), 128 << 20, X86_ROOT, true);
    ok(&upload(&s, &moto, &raw, "kiln-encrypted", &["--aws-kms-key", "arn:aws:kms:us-east-1:123456789012:key/abc"]));
    let start = &moto.calls("StartSnapshot")[0]["params"];
    assert_eq!(start["Encrypted"], true);
    assert_eq!(start["KmsKeyArn"], "arn:aws:kms:us-east-1:123456789012:key/abc");
    let snapshot = registered(&moto)["BlockDeviceMapping.1.Ebs.SnapshotId"].as_str().unwrap().to_string();
    let cmp = moto.blocks(&snapshot, &raw, true);
    assert_eq!(cmp["missing"], json!([]), "{cmp}");
    assert_eq!(cmp["mismatched"], json!([]), "{cmp}");
    assert_eq!(cmp["listed"], 256, "{cmp}");
}

#[test]
fn regions_copies_and_sharing() {
    let s = Scratch::new("aws-regions");
    let moto = Moto::start("regions");
    let raw = gpt_disk(s.path(), 64 << 20, X86_ROOT, true);
    let o = upload(
        &s,
        &moto,
        &raw,
        "kiln-shared",
        &["--aws-region", "eu-west-1", "--aws-share-with", "111122223333", "--aws-public", "--aws-tpm", "--aws-imds", "v1"],
    );
    let lines = ami_lines(&ok(&o));
    assert_eq!(lines.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), ["us-east-1", "eu-west-1"]);
    let p = registered(&moto);
    assert_eq!(p["TpmSupport"], "v2.0");
    assert_eq!(p["BootMode"], "uefi", "a TPM needs UEFI: {p}");
    assert!(p.get("ImdsSupport").is_none(), "{p}");
    let copy = &moto.calls("CopyImage")[0]["params"];
    assert_eq!((copy["SourceRegion"].as_str(), copy["SourceImageId"].as_str()), (Some("us-east-1"), Some(lines[0].1.as_str())));
    let st = moto.state(&["us-east-1", "eu-west-1"], None);
    for (region, ami) in &lines {
        let images = st[region]["images"].as_array().unwrap();
        assert_eq!(images.len(), 1, "{st}");
        assert_eq!(images[0]["id"], ami.as_str());
        assert_eq!(images[0]["state"], "available");
        assert_eq!(images[0]["name"], "kiln-shared");
        let perms = &images[0]["launch_permissions"];
        assert!(perms.as_array().unwrap().contains(&json!({"UserId": "111122223333"})), "{perms}");
        assert!(perms.as_array().unwrap().contains(&json!({"Group": "all"})), "{perms}");
        for snap in st[region]["snapshots"].as_array().unwrap() {
            let perms = snap["create_volume_permissions"].as_array().unwrap();
            assert!(perms.contains(&json!({"UserId": "111122223333"})) && perms.contains(&json!({"Group": "all"})), "{snap}");
        }
    }
}

#[test]
fn architecture_and_boot_mode_come_from_the_gpt() {
    let s = Scratch::new("aws-arm64");
    let moto = Moto::start("arm64");
    let raw = gpt_disk(s.path(), 64 << 20, ARM64_ROOT, false);
    fails(&upload(&s, &moto, &raw, "kiln-arm", &["--aws-boot-mode", "legacy-bios"]), &["arm64 AMIs boot with UEFI only"]);
    fails(&upload(&s, &moto, &raw, "kiln-arm", &["--aws-boot-mode", "legacy-bios", "--aws-tpm"]), &["--aws-tpm needs UEFI"]);
    assert!(moto.calls("StartSnapshot").is_empty());
    moto.assert_empty(&["us-east-1"], None);
    ok(&upload(&s, &moto, &raw, "kiln-arm", &[]));
    let p = registered(&moto);
    assert_eq!((p["Architecture"].as_str(), p["BootMode"].as_str()), (Some("arm64"), Some("uefi")), "{p}");
    // --arch wins over the GPT.
    ok(&upload(&s, &moto, &raw, "kiln-arm-as-x86", &["--arch", "amd64"]));
    assert_eq!(registered(&moto)["Architecture"], "x86_64");
}

#[test]
fn import_snapshot_through_s3() {
    let s = Scratch::new("aws-import");
    let moto = Moto::start("import");
    moto.oracle(&["create-bucket", "kiln-images", "us-east-1"]);
    let raw = gpt_disk(s.path(), 40 << 20, X86_ROOT, true);
    let lines = ami_lines(&ok(&upload(&s, &moto, &raw, "kiln-imported", &["--aws-upload", "import-snapshot", "--aws-bucket", "kiln-images"])));
    let requests = moto.requests();
    let import = requests.iter().find(|r| r["event"] == "import").expect("ImportSnapshot reached the patched moto");
    let raw_sha = hex::encode(Sha256::digest(std::fs::read(&raw).unwrap()));
    assert_eq!(import["sha256"], raw_sha.as_str(), "the S3 object is the raw disk");
    assert!(moto.calls("UploadPart").len() >= 3, "40 MiB in 16 MiB parts");
    let p = &moto.calls("ImportSnapshot")[0]["params"];
    assert_eq!(p["DiskContainer.Format"], "RAW");
    assert_eq!(p["DiskContainer.UserBucket.S3Bucket"], "kiln-images");
    assert_eq!(registered(&moto)["BlockDeviceMapping.1.Ebs.SnapshotId"], import["snapshot"]);
    let st = moto.state(&["us-east-1"], Some("kiln-images"));
    assert_eq!(st["objects"], json!([]), "the object is deleted after the import: {st}");
    assert_eq!(st["us-east-1"]["images"][0]["id"], lines[0].1.as_str());
    assert_eq!(st["us-east-1"]["snapshots"][0]["tags"]["Name"], "kiln-imported");
    assert!(moto.calls("StartSnapshot").is_empty());

    // A failure after the import deletes the snapshot; the object is gone too.
    moto.fault(json!({"deny": ["RegisterImage"]}));
    fails(&upload(&s, &moto, &raw, "kiln-import-fails", &["--aws-upload", "import-snapshot", "--aws-bucket", "kiln-images"]), &["RegisterImage", "deleted what was created"]);
    let st = moto.state(&["us-east-1"], Some("kiln-images"));
    assert_eq!(st["us-east-1"]["images"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["us-east-1"]["snapshots"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["objects"], json!([]));
    assert_eq!(st["multipart_uploads"], json!([]));
    fails(&upload(&s, &moto, &raw, "kiln-nobucket", &["--aws-upload", "import-snapshot"]), &["--aws-bucket"]);
}

#[test]
fn the_same_name_is_refused_unless_replaced() {
    let s = Scratch::new("aws-replace");
    let moto = Moto::start("replace");
    let raw = gpt_disk(s.path(), 64 << 20, X86_ROOT, true);
    let first = ami_lines(&ok(&upload(&s, &moto, &raw, "kiln-release", &[])))[0].1.clone();
    let old_snapshot = registered(&moto)["BlockDeviceMapping.1.Ebs.SnapshotId"].as_str().unwrap().to_string();
    fails(&upload(&s, &moto, &raw, "kiln-release", &[]), &["already exists in us-east-1", &first, "--aws-replace"]);
    assert_eq!(moto.calls("StartSnapshot").len(), 1, "refused before uploading");
    let second = ami_lines(&ok(&upload(&s, &moto, &raw, "kiln-release", &["--aws-replace"])))[0].1.clone();
    assert_ne!(first, second);
    let st = moto.state(&["us-east-1"], None);
    let images: Vec<&str> = st["us-east-1"]["images"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(images, [second.as_str()]);
    let snapshots: Vec<&str> = st["us-east-1"]["snapshots"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(snapshots.len(), 1);
    assert_ne!(snapshots[0], old_snapshot, "the replaced image's snapshot is deleted");
}

/// Access keys of the calls to one service, in order.
fn keys_for(moto: &Moto, service: &str) -> Vec<String> {
    moto.requests().iter().filter(|r| r["service"] == service).map(|r| r["akid"].as_str().unwrap().to_string()).collect()
}

fn sts_key(response: &str) -> String {
    let start = response.find("<AccessKeyId>").unwrap() + "<AccessKeyId>".len();
    response[start..].split('<').next().unwrap().to_string()
}

/// tests/fixtures/metadata-server.py: IMDSv2 and ECS credentials on 127.0.0.1.
struct Metadata {
    child: std::process::Child,
    url: String,
    log: PathBuf,
}

impl Metadata {
    fn start(s: &Scratch) -> Metadata {
        let log = s.path().join("metadata.jsonl");
        let mut child = Command::new(common::moto::venv().join("bin/python"))
            .arg(common::repo().join("tests/fixtures/metadata-server.py"))
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let port = line.trim().strip_prefix("PORT=").expect("the metadata server did not start").to_string();
        Metadata { child, url: format!("http://127.0.0.1:{port}"), log }
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(String::from).collect()
    }
}

impl Drop for Metadata {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn credentials_from_the_environment_a_profile_web_identity_a_container_and_imds() {
    let s = Scratch::new("aws-credentials");
    let moto = Moto::start("credentials");
    let raw = gpt_disk(s.path(), 64 << 20, X86_ROOT, true);
    let args = |name: &'static str| -> Vec<String> {
        ["upload", "aws", "--aws-endpoint", &moto.url, "--aws-region", "us-east-1", "--aws-ami-name", name, raw.to_str().unwrap()]
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    let run = |a: &[String], env: &[(&str, &str)]| kiln(&s, &a.iter().map(String::as_str).collect::<Vec<_>>(), env);

    // The environment's keys.
    ok(&run(&args("kiln-env"), &[]));
    let ebs = keys_for(&moto, "ebs");
    assert!(!ebs.is_empty() && ebs.iter().all(|k| k == ENV_KEY), "{ebs:?}");

    // A profile in a temporary shared config: role_arn + source_profile (AssumeRole signed
    // with the source profile's keys, then everything with the role's).
    let aws = s.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(aws.join("config"), "[profile ci]\nrole_arn = arn:aws:iam::123456789012:role/kiln-ci\nsource_profile = base\nregion = us-east-1\n").unwrap();
    std::fs::write(aws.join("credentials"), "[base]\naws_access_key_id = AKIAKILNBASE\naws_secret_access_key = base-secret\n").unwrap();
    let before = moto.requests().len();
    let mut a = args("kiln-profile");
    a.extend(["--aws-profile".to_string(), "ci".to_string()]);
    let o = run(&a, &[]);
    ok(&o);
    let requests: Vec<Value> = moto.requests().split_off(before);
    let assume = requests.iter().find(|r| r["action"] == "AssumeRole").expect("an AssumeRole call");
    assert_eq!(assume["akid"], "AKIAKILNBASE");
    assert_eq!(assume["params"]["RoleArn"], "arn:aws:iam::123456789012:role/kiln-ci");
    let role_key = sts_key(assume["response"].as_str().unwrap());
    let used: Vec<&str> = requests.iter().filter(|r| r["service"] == "ec2" || r["service"] == "ebs").map(|r| r["akid"].as_str().unwrap()).collect();
    assert!(!used.is_empty() && used.iter().all(|k| *k == role_key), "{used:?} vs {role_key}");
    assert!(stderr(&o).contains("profile 'ci' (role arn:aws:iam::123456789012:role/kiln-ci assumed with source profile 'base')"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("base-secret"));

    // Web identity (GitHub Actions OIDC): the token file's token goes to
    // AssumeRoleWithWebIdentity, unsigned; the role's keys sign the rest.
    let token = s.path().join("token");
    std::fs::write(&token, "eyJ0b2tlbiI6ImtpbG4ifQ\n").unwrap();
    let before = moto.requests().len();
    ok(&run(
        &args("kiln-oidc"),
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/gh-actions"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
        ],
    ));
    let requests: Vec<Value> = moto.requests().split_off(before);
    let assume = requests.iter().find(|r| r["action"] == "AssumeRoleWithWebIdentity").expect("an AssumeRoleWithWebIdentity call");
    assert_eq!(assume["params"]["WebIdentityToken"], "eyJ0b2tlbiI6ImtpbG4ifQ");
    assert_eq!(assume["params"]["RoleArn"], "arn:aws:iam::123456789012:role/gh-actions");
    assert!(assume["akid"].is_null(), "unsigned");
    let role_key = sts_key(assume["response"].as_str().unwrap());
    let used: Vec<&str> = requests.iter().filter(|r| r["service"] == "ec2" || r["service"] == "ebs").map(|r| r["akid"].as_str().unwrap()).collect();
    assert!(!used.is_empty() && used.iter().all(|k| *k == role_key), "{used:?} vs {role_key}");

    // Container credentials (ECS) and EC2 instance metadata (IMDSv2), from a local server whose
    // credentials expire within a minute: kiln renews them rather than signing with stale ones.
    let meta = Metadata::start(&s);
    let before = moto.requests().len();
    ok(&run(
        &args("kiln-ecs"),
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &format!("{}/ecs/credentials", meta.url)),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-token"),
        ],
    ));
    let used: Vec<Value> = moto.requests().split_off(before);
    let ebs: Vec<&Value> = used.iter().filter(|r| r["service"] == "ebs").collect();
    assert!(!ebs.is_empty() && ebs.iter().all(|r| r["akid"] == "AKIAKILNECS"), "{used:?}");
    let before = moto.requests().len();
    ok(&run(&args("kiln-imds"), &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", ""), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &meta.url)]));
    let used: Vec<Value> = moto.requests().split_off(before);
    let ebs: Vec<&Value> = used.iter().filter(|r| r["service"] == "ebs").collect();
    assert!(!ebs.is_empty() && ebs.iter().all(|r| r["akid"] == "AKIAKILNIMDS"), "{used:?}");
    let fetched = meta.requests().iter().filter(|l| l.contains("security-credentials/kiln-role")).count();
    assert!(fetched >= 2, "credentials about to expire are renewed: fetched {fetched} times");

    // None at all: a clear error, nothing created. (The profile files are gone.)
    std::fs::remove_dir_all(&aws).unwrap();
    let before = moto.requests().len();
    let o = run(&args("kiln-none"), &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")]);
    fails(&o, &["no AWS credentials found", "AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE", "--aws-profile", "no EC2 instance metadata at http://127.0.0.1:9"]);
    assert_eq!(moto.requests().len(), before, "nothing sent without credentials");
    // A profile that does not exist.
    let mut a = args("kiln-none");
    a.extend(["--aws-profile".to_string(), "nope".to_string()]);
    fails(&run(&a, &[]), &["profile \"nope\"", ".aws/config"]);
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing() {
    let s = Scratch::new("aws-bad-input");
    let moto = Moto::start("bad-input");
    let raw = gpt_disk(s.path(), 64 << 20, X86_ROOT, true);
    fails(&upload(&s, &moto, &raw, "kiln-bad", &["--aws-region", "xx-nowhere-9"]), &["--aws-region xx-nowhere-9: no such region"]);
    fails(&upload(&s, &moto, &raw, "kiln-bad", &["--aws-region", "mars"]), &["\"mars\" is not a region name"]);
    fails(&upload(&s, &moto, &raw, "kiln*bad", &[]), &["not a valid AMI name"]);
    fails(&upload(&s, &moto, &raw, "kiln-bad", &["--aws-boot-mode", "legacy-bios", "--aws-tpm"]), &["--aws-tpm needs UEFI"]);
    fails(&upload(&s, &moto, &raw, "kiln-bad", &["--aws-volume-size", "0"]), &["smaller than the disk"]);
    // Not a GPT disk: an MBR signature alone, then not a disk at all.
    let mbr = s.path().join("mbr.raw");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    std::fs::write(&mbr, &bytes).unwrap();
    fails(&upload(&s, &moto, &mbr, "kiln-bad", &[]), &["mbr.raw has no readable GPT", "kiln bake --type raw"]);
    let text = s.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    fails(&upload(&s, &moto, &text, "kiln-bad", &[]), &["notes.txt is not a raw disk image"]);
    assert!(moto.calls("StartSnapshot").is_empty());
    moto.assert_empty(&["us-east-1"], None);
}

#[test]
fn access_denied_names_the_call_region_and_credentials() {
    let s = Scratch::new("aws-denied");
    let moto = Moto::start("denied");
    let raw = gpt_disk(s.path(), 64 << 20, X86_ROOT, true);
    moto.fault(json!({"deny": ["StartSnapshot"]}));
    let err = fails(&upload(&s, &moto, &raw, "kiln-denied", &[]), &["EBS StartSnapshot in us-east-1 was refused for the credentials from the environment", "AccessDeniedException"]);
    assert!(!err.contains("not-a-secret"), "{err}");
    moto.assert_empty(&["us-east-1"], None);
    // Denied later: what was made is deleted…
    moto.fault(json!({"deny": ["RegisterImage"]}));
    fails(&upload(&s, &moto, &raw, "kiln-denied", &[]), &["EC2 RegisterImage", "deleted what was created: snapshot snap-"]);
    moto.assert_empty(&["us-east-1"], None);
    // Expired credentials say so; throttling is retried.
    moto.fault(json!({"expired": ["DescribeRegions"]}));
    fails(&upload(&s, &moto, &raw, "kiln-denied", &[]), &["EC2 DescribeRegions in us-east-1 was refused because the credentials from the environment (AWS_ACCESS_KEY_ID) have expired", "renew them"]);
    moto.fault(json!({"throttle": {"RegisterImage": 2, "DescribeImages": 1}}));
    ok(&upload(&s, &moto, &raw, "kiln-throttled", &[]));
    assert_eq!(moto.requests().iter().filter(|r| r["fault"] == "RequestLimitExceeded").count(), 3);
    moto.fault(json!({}));
    let st = moto.state(&["us-east-1"], None);
    assert_eq!(st["us-east-1"]["images"].as_array().unwrap().len(), 1, "one image despite the retried RegisterImage: {st}");
    let throttled = st["us-east-1"]["images"][0]["id"].as_str().unwrap().to_string();
    // …unless asked to keep it.
    moto.fault(json!({"deny": ["RegisterImage"]}));
    let err = fails(&upload(&s, &moto, &raw, "kiln-denied", &["--aws-keep-on-error"]), &["kept (--aws-keep-on-error): snapshot snap-"]);
    moto.fault(json!({}));
    let st = moto.state(&["us-east-1"], None);
    let images: Vec<&str> = st["us-east-1"]["images"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(images, [throttled.as_str()], "{err}");
    assert_eq!(st["us-east-1"]["snapshots"].as_array().unwrap().len(), 2, "the kept snapshot beside the throttled upload's: {err}");
}

#[test]
fn ebs_endpoint_gone_mid_upload_is_retried_then_cleaned_up() {
    let s = Scratch::new("aws-ebs-down");
    let moto = Moto::start("ebs-down");
    let raw = gpt_disk(s.path(), 64 << 20, X86_ROOT, true);
    moto.fault(json!({"ebs_down_after_blocks": 3}));
    fails(
        &upload(&s, &moto, &raw, "kiln-down", &["--aws-upload-threads", "2"]),
        &["EBS PutSnapshotBlock in us-east-1 could not reach", "gave up after 6 attempts", "deleted what was created: snapshot snap-"],
    );
    let dropped = moto.requests().iter().filter(|r| r["fault"] == "down").count();
    assert!(dropped >= 6, "retried: {dropped} dropped requests");
    moto.assert_empty(&["us-east-1"], None);
}

#[test]
fn sigint_mid_upload_deletes_the_snapshot() {
    let s = Scratch::new("aws-sigint");
    let moto = Moto::start("sigint");
    let raw = gpt_disk(s.path(), 64 << 20, X86_ROOT, true);
    moto.fault(json!({"slow_block_ms": 400}));
    let child = kiln_cmd(
        &s,
        &["upload", "aws", "--aws-endpoint", &moto.url, "--aws-region", "us-east-1", "--aws-ami-name", "kiln-sigint", "--aws-upload-threads", "1", raw.to_str().unwrap()],
        &[],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let started = Instant::now();
    while moto.calls("PutSnapshotBlock").len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "the upload never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    fails(&o, &["interrupted (SIGINT)", "deleted what was created: snapshot snap-"]);
    assert!(moto.calls("CompleteSnapshot").is_empty());
    moto.assert_empty(&["us-east-1"], None);
}

/// The test image baked with `--type ami,raw`: the raw kept beside the AMI is what the snapshot
/// holds, block for block; the AMI is available in both regions and shared as asked.
#[test]
fn bake_type_ami_end_to_end() {
    let s = Scratch::new("aws-bake");
    let moto = Moto::start("bake");
    let out = s.path().join("out");
    let image = format!("oci:{}:latest", test_image().join("oci").display());
    let o = kiln(
        &s,
        &[
            "bake", "--type", "ami,raw", "--rootfs", "ext4", "--output", out.to_str().unwrap(), "--progress", "json",
            "--aws-endpoint", &moto.url, "--aws-region", "us-east-1", "--aws-region", "eu-west-1", "--aws-share-with", "111122223333",
            &image,
        ],
        &[],
    );
    let lines = ami_lines(&ok(&o));
    assert_eq!(lines.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), ["us-east-1", "eu-west-1"]);
    let raw = out.join("image/disk.raw");
    let p = registered(&moto);
    let snapshot = p["BlockDeviceMapping.1.Ebs.SnapshotId"].as_str().unwrap().to_string();
    let cmp = moto.blocks(&snapshot, &raw, false);
    assert_eq!((&cmp["missing"], &cmp["mismatched"], &cmp["unexpected"]), (&json!([]), &json!([]), &json!([])), "{cmp}");
    assert_eq!(cmp["listed"], cmp["data_blocks"]);
    assert!(cmp["listed"].as_u64().unwrap() < cmp["total"].as_u64().unwrap() / 2, "holes and zeros are skipped: {cmp}");
    assert_eq!((p["Architecture"].as_str(), p["BootMode"].as_str()), (Some("x86_64"), Some("uefi-preferred")), "{p}");
    // The default name: the image's title (or repository) and version (or digest).
    let name = p["Name"].as_str().unwrap();
    assert!(name.len() >= 3 && !name.contains(' '), "{name}");
    let st = moto.state(&["us-east-1", "eu-west-1"], None);
    for (region, ami) in &lines {
        let img = &st[region]["images"][0];
        assert_eq!((img["id"].as_str(), img["state"].as_str(), img["name"].as_str()), (Some(ami.as_str()), Some("available"), Some(name)));
        assert_eq!(img["launch_permissions"], json!([{"UserId": "111122223333"}]));
    }
    let events: Vec<Value> = stderr(&o).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(events.iter().any(|e| e["stage"] == "aws-copy eu-west-1" && e["event"] == "finish"));
    let result = events.iter().find(|e| e["event"] == "result").expect("a result event");
    assert_eq!(result["result"]["aws"]["images"].as_array().unwrap().len(), 2);
}
