//! A raw disk becomes a launchable AMI: the snapshot is made with the EBS direct APIs (or, for
//! organisations that only grant S3, an S3 multipart upload and ImportSnapshot), registered
//! with what the instance types need (architecture, boot mode, ENA, IMDSv2, TPM, gp3 root),
//! copied to the other regions, shared, and named idempotently. Whatever was created is
//! deleted again when a step fails or a signal arrives, unless asked to keep it.
//!
//! Plain HTTP + SigV4 (`sigv4`, `http`) instead of the AWS SDK: the SDK's EC2 crate alone
//! takes 9 minutes and 8 GB to build, for a dozen calls.

mod credentials;
mod disk_facts;
mod ebs;
mod ec2;
mod http;
mod s3;
pub(crate) mod sigv4;
mod xml;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::interrupt;
use crate::output::RawDisk;
use crate::progress::{Progress, Unit};

pub use disk_facts::{aws_arch, DiskFacts};
pub use ebs::BLOCK_SIZE;
use ec2::{Ec2, Registration};
use http::{Client, Endpoints, Http};

/// How the snapshot is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadMethod {
    /// EBS direct APIs (no bucket, no service role).
    Ebs,
    /// S3 multipart upload to this bucket, then ImportSnapshot (needs the `vmimport` role).
    ImportSnapshot { bucket: String },
}

/// Everything an upload is told, as plain data (the CLI fills it from `--aws-…`).
#[derive(Debug, Clone)]
pub struct Config {
    /// The first gets the upload, the others a copy.
    pub regions: Vec<String>,
    pub profile: Option<String>,
    pub endpoint: Option<String>,
    pub method: UploadMethod,
    /// The AMI's name (`None`: the caller's default).
    pub name: Option<String>,
    pub description: Option<String>,
    /// `uefi`, `legacy-bios` or `uefi-preferred`; `None`: from the disk and architecture.
    pub boot_mode: Option<String>,
    pub imds_v1: bool,
    pub tpm: bool,
    pub volume_size_gib: Option<u64>,
    pub tags: Vec<(String, String)>,
    pub share_with: Vec<String>,
    pub public: bool,
    pub replace: bool,
    pub keep_on_error: bool,
    pub encrypted: bool,
    pub kms_key: Option<String>,
    /// Blocks in flight at once (memory: this × 512 KiB).
    pub threads: usize,
}

/// One region's AMI.
#[derive(Debug, Clone, Serialize)]
pub struct RegionImage {
    pub region: String,
    pub image_id: String,
    pub snapshot_ids: Vec<String>,
}

/// The result of an upload.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    pub name: String,
    pub architecture: String,
    pub boot_mode: String,
    pub blocks_sent: Option<u64>,
    pub images: Vec<RegionImage>,
}

const BOOT_MODES: &[&str] = &["uefi", "legacy-bios", "uefi-preferred"];

impl Config {
    /// Checks what can be checked without AWS or the disk.
    pub fn validate(&self) -> Result<()> {
        if self.regions.is_empty() {
            bail!("no AWS region: pass --aws-region REGION (or set AWS_REGION, or region in the profile)");
        }
        for r in &self.regions {
            if !valid_region_name(r) {
                bail!("--aws-region {r:?} is not a region name (like us-east-1 or eu-central-2)");
            }
        }
        if let Some(m) = &self.boot_mode {
            if !BOOT_MODES.contains(&m.as_str()) {
                bail!("--aws-boot-mode {m:?}: use one of {}", BOOT_MODES.join(", "));
            }
            if self.tpm && m == "legacy-bios" {
                bail!("--aws-tpm needs UEFI: NitroTPM is not available to legacy-bios AMIs; drop --aws-tpm or use --aws-boot-mode uefi");
            }
        }
        for a in &self.share_with {
            if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
                bail!("--aws-share-with {a:?} is not an AWS account id (12 digits)");
            }
        }
        if let Some(name) = &self.name {
            check_ami_name(name)?;
        }
        if self.kms_key.is_some() && !self.encrypted {
            bail!("internal: a KMS key implies encryption");
        }
        if let UploadMethod::ImportSnapshot { bucket } = &self.method {
            if bucket.is_empty() {
                bail!("--aws-upload import-snapshot needs --aws-bucket BUCKET");
            }
        }
        Ok(())
    }
}

fn valid_region_name(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        && parts.last().unwrap().bytes().all(|b| b.is_ascii_digit())
}

/// AMI names: 3–128 characters of letters, digits and `()[] ./-'@_`.
pub fn check_ami_name(name: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c);
    if name.len() < 3 || name.len() > 128 || !name.chars().all(ok) {
        bail!("{name:?} is not a valid AMI name: 3 to 128 letters, digits, spaces and ( ) [ ] . / - ' @ _");
    }
    Ok(())
}

/// A default AMI name from an image's name and version: other characters become `-`.
pub fn default_ami_name(name: &str, version: &str) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || "()[]./-'@_".contains(c) { c } else { '-' }).collect::<String>();
    let mut n = format!("{}-{}", clean(name), clean(version));
    n.truncate(128);
    n
}

/// Credentials found and regions checked: ready to upload.
pub struct Session {
    client: Client,
    config: Config,
}

impl Session {
    /// Validates the configuration, finds credentials and checks that every region exists,
    /// before any long work.
    pub fn connect(config: Config, progress: &Progress) -> Result<Session> {
        config.validate()?;
        let http = Http::new()?;
        let endpoints = Endpoints { url: config.endpoint.clone() };
        let home = &config.regions[0];
        let provider = credentials::Provider::resolve(config.profile.as_deref(), http.clone(), endpoints.clone(), home)?;
        progress.info(&format!("AWS credentials from {}", provider.describe()));
        let client = Client { http, endpoints, credentials: provider };
        let known = Ec2 { client: &client, region: home }.describe_regions()?;
        for r in &config.regions {
            if !known.contains(r) {
                bail!("--aws-region {r}: no such region (the account knows {})", known.join(", "));
            }
        }
        Ok(Session { client, config })
    }

    /// The default region when none was given: the environment's, else the profile's.
    pub fn default_region(profile: Option<&str>) -> Option<String> {
        credentials::default_region(profile)
    }

    /// Uploads the disk, registers it as `name` and copies and shares it as configured.
    pub fn upload(&self, disk: &RawDisk, architecture: &str, facts: &DiskFacts, default_name: &str, progress: &Progress) -> Result<Uploaded> {
        let c = &self.config;
        let name = c.name.clone().unwrap_or_else(|| default_name.to_string());
        check_ami_name(&name)?;
        let boot_mode = boot_mode(c, architecture, facts)?;
        let snapshot_gib = ebs::volume_size_gib(disk.size);
        let volume_gib = c.volume_size_gib.unwrap_or(snapshot_gib);
        if volume_gib < snapshot_gib {
            bail!("--aws-volume-size {volume_gib} is smaller than the disk ({snapshot_gib} GiB)");
        }
        // Names are unique per region: refuse (or plan the replacement) before uploading.
        let mut old: Vec<(String, ec2::Image)> = Vec::new();
        for region in &c.regions {
            for image in self.ec2(region).images_named(&name)? {
                if !c.replace {
                    bail!(
                        "an AMI named {name:?} already exists in {region} ({}): choose another --aws-ami-name, or pass --aws-replace to replace it",
                        image.id
                    );
                }
                old.push((region.clone(), image));
            }
        }
        let mut ledger = Ledger::default();
        let result = self.run(disk, &name, architecture, &boot_mode, volume_gib, &old, &mut ledger, progress);
        match result {
            Ok(mut up) => {
                up.boot_mode = boot_mode;
                Ok(up)
            }
            Err(e) if c.keep_on_error => {
                let kept = ledger.describe();
                Err(if kept.is_empty() { e } else { e.context(format!("kept (--aws-keep-on-error): {kept}")) })
            }
            Err(e) => {
                let failures = self.clean_up(&ledger, progress);
                if failures.is_empty() {
                    let removed = ledger.describe();
                    Err(if removed.is_empty() { e } else { e.context(format!("deleted what was created: {removed}")) })
                } else {
                    Err(e.context(format!("could not delete everything it created; delete these by hand: {}", failures.join("; "))))
                }
            }
        }
    }

    fn ec2<'a>(&'a self, region: &'a str) -> Ec2<'a> {
        Ec2 { client: &self.client, region }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        disk: &RawDisk,
        name: &str,
        architecture: &str,
        boot_mode: &str,
        volume_gib: u64,
        old: &[(String, ec2::Image)],
        ledger: &mut Ledger,
        progress: &Progress,
    ) -> Result<Uploaded> {
        let c = &self.config;
        let home = c.regions[0].as_str();
        let description = c.description.clone().unwrap_or_else(|| format!("{name}, made by kiln"));
        let mut snapshot_tags = vec![("Name".to_string(), name.to_string())];
        snapshot_tags.extend(c.tags.iter().cloned());
        let token = client_token();

        let (snapshot, blocks_sent) = match &c.method {
            UploadMethod::Ebs => self.upload_ebs(disk, &description, &snapshot_tags, &token, ledger, progress)?,
            UploadMethod::ImportSnapshot { bucket } => (self.upload_import(disk, bucket, name, &description, &token, ledger, progress)?, None),
        };
        if c.method != UploadMethod::Ebs {
            self.ec2(home).create_tags(&snapshot, &snapshot_tags)?;
        }
        interrupt::check()?;

        let mut image_tags = vec![("Name".to_string(), name.to_string())];
        image_tags.extend(c.tags.iter().cloned());
        let registration = Registration {
            name: name.to_string(),
            description: description.clone(),
            architecture: architecture.to_string(),
            boot_mode: boot_mode.to_string(),
            snapshot_id: snapshot.clone(),
            volume_size_gib: volume_gib,
            imds_v2: !c.imds_v1,
            tpm: c.tpm,
        };
        self.deregister_old(old, home, progress)?;
        let stage = progress.stage("aws-register", None);
        let image_id = self.register(home, &registration)?;
        ledger.images.push((home.to_string(), image_id.clone()));
        self.tag_new(home, &image_id, &image_tags)?;
        self.wait_available(home, &image_id)?;
        stage.finish();
        progress.info(&format!("registered {image_id} ({name}) in {home}"));
        let mut images = vec![RegionImage { region: home.to_string(), image_id: image_id.clone(), snapshot_ids: vec![snapshot.clone()] }];

        for region in &c.regions[1..] {
            interrupt::check()?;
            self.deregister_old(old, region, progress)?;
            let stage = progress.stage(&format!("aws-copy {region}"), None);
            let copy = self.ec2(region).copy_image(home, &image_id, name, &description, &format!("{token}-{region}"))?;
            ledger.images.push((region.clone(), copy.clone()));
            let snapshots = self.wait_available(region, &copy)?;
            ledger.copied_snapshots.extend(snapshots.iter().map(|s| (region.clone(), s.clone())));
            self.tag_new(region, &copy, &image_tags)?;
            for s in &snapshots {
                self.ec2(region).create_tags(s, &snapshot_tags)?;
            }
            stage.finish();
            progress.info(&format!("copied {image_id} to {region} as {copy}"));
            images.push(RegionImage { region: region.clone(), image_id: copy, snapshot_ids: snapshots });
        }

        if !c.share_with.is_empty() || c.public {
            let stage = progress.stage("aws-share", None);
            for img in &images {
                interrupt::check()?;
                let ec2 = self.ec2(&img.region);
                ec2.share_image(&img.image_id, &c.share_with, c.public)?;
                for s in &img.snapshot_ids {
                    ec2.share_snapshot(s, &c.share_with, c.public)?;
                }
            }
            stage.finish();
        }

        // The replaced images' snapshots go once every new image is available.
        for (region, image) in old {
            for s in &image.snapshots {
                match self.ec2(region).delete_snapshot(s) {
                    Ok(()) => progress.info(&format!("deleted {s}, the replaced {}'s snapshot in {region}", image.id)),
                    Err(e) => progress.warn(&format!("could not delete {s}, the replaced {}'s snapshot in {region}: {e:#}", image.id)),
                }
            }
        }
        Ok(Uploaded { name: name.to_string(), architecture: architecture.to_string(), boot_mode: boot_mode.to_string(), blocks_sent, images })
    }

    fn upload_ebs(
        &self,
        disk: &RawDisk,
        description: &str,
        tags: &[(String, String)],
        token: &str,
        ledger: &mut Ledger,
        progress: &Progress,
    ) -> Result<(String, Option<u64>)> {
        let c = &self.config;
        let home = c.regions[0].as_str();
        let ebs = ebs::Ebs { client: &self.client, region: home };
        let snapshot = ebs.start_snapshot(&ebs::NewSnapshot {
            volume_size_gib: ebs::volume_size_gib(disk.size),
            description,
            tags,
            encrypted: c.encrypted,
            kms_key: c.kms_key.as_deref(),
            client_token: token,
        })?;
        ledger.snapshots.push((home.to_string(), snapshot.clone()));
        let stage = progress.stage_in("aws-upload", None, Unit::Blocks);
        let sent = ebs.upload(&snapshot, disk, c.encrypted, c.threads, &stage)?;
        stage.finish();
        progress.info(&format!("sent {} of {} blocks of 512 KiB to {snapshot} in {home}", sent.blocks, sent.volume_blocks));
        self.wait_snapshot(home, &snapshot, progress)?;
        Ok((snapshot, Some(sent.blocks)))
    }

    #[allow(clippy::too_many_arguments)]
    fn upload_import(
        &self,
        disk: &RawDisk,
        bucket: &str,
        name: &str,
        description: &str,
        token: &str,
        ledger: &mut Ledger,
        progress: &Progress,
    ) -> Result<String> {
        let c = &self.config;
        let home = c.regions[0].as_str();
        let key = format!("kiln-import/{token}-{}.raw", name.replace([' ', '/', '(', ')', '[', ']', '\'', '@'], "_"));
        let s3 = s3::S3 { client: &self.client, region: home, bucket, key: &key };
        let upload_id = s3.create_multipart()?;
        ledger.multipart = Some((bucket.to_string(), key.clone(), upload_id.clone()));
        let stage = progress.stage("aws-s3-upload", None);
        s3.upload(&upload_id, disk, &stage)?;
        stage.finish();
        ledger.multipart = None;
        ledger.object = Some((bucket.to_string(), key.clone()));
        let ec2 = self.ec2(home);
        let task = ec2.import_snapshot(bucket, &key, description, c.encrypted, c.kms_key.as_deref(), token)?;
        ledger.import_task = Some(task.clone());
        let stage = progress.stage("aws-import", Some(100));
        let mut shown = 0;
        let snapshot = wait(&format!("import task {task}"), Duration::from_secs(24 * 3600), || {
            let t = ec2.import_task(&task)?;
            if let Ok(p) = t.progress.trim_end_matches('%').parse::<u64>() {
                if p > shown {
                    stage.inc(p - shown);
                    shown = p;
                }
            }
            stage.set_message(&t.message);
            match t.status.as_str() {
                "completed" => Ok(Some(t.snapshot_id.context("the import completed without a snapshot id")?)),
                "deleted" | "deleting" | "cancelled" | "cancelling" | "error" => {
                    bail!("ImportSnapshot {task} {}: {} (is the vmimport service role set up for bucket {bucket}?)", t.status, t.message)
                }
                _ => Ok(None),
            }
        })?;
        stage.finish();
        ledger.import_task = None;
        ledger.snapshots.push((home.to_string(), snapshot.clone()));
        s3.delete_object()?;
        ledger.object = None;
        progress.info(&format!("imported {snapshot} in {home} from s3://{bucket}/{key} (object deleted)"));
        self.wait_snapshot(home, &snapshot, progress)?;
        Ok(snapshot)
    }

    fn wait_snapshot(&self, region: &str, snapshot: &str, progress: &Progress) -> Result<()> {
        let stage = progress.stage("aws-snapshot", Some(100));
        let mut shown = 0;
        let ec2 = self.ec2(region);
        wait(&format!("snapshot {snapshot}"), Duration::from_secs(6 * 3600), || {
            let (state, pct) = ec2.snapshot_state(snapshot)?;
            if let Ok(p) = pct.trim_end_matches('%').parse::<u64>() {
                if p > shown {
                    stage.inc(p - shown);
                    shown = p;
                }
            }
            match state.as_str() {
                "completed" => Ok(Some(())),
                "error" => bail!("snapshot {snapshot} in {region} failed (state error)"),
                _ => Ok(None),
            }
        })?;
        stage.finish();
        Ok(())
    }

    /// Waits for an image to be available; returns its snapshots.
    fn wait_available(&self, region: &str, image_id: &str) -> Result<Vec<String>> {
        let ec2 = self.ec2(region);
        wait(&format!("image {image_id} in {region}"), Duration::from_secs(6 * 3600), || match ec2.image(image_id)? {
            Some(i) if i.state == "available" => Ok(Some(i.snapshots)),
            Some(i) if i.state == "failed" || i.state == "error" || i.state == "invalid" => bail!("image {image_id} in {region} is {}", i.state),
            // Not visible yet (eventual consistency) or pending.
            _ => Ok(None),
        })
    }

    /// RegisterImage is not idempotent: when a retried call finds the name taken, the image
    /// holding our snapshot is the one the lost answer named.
    fn register(&self, region: &str, r: &Registration) -> Result<String> {
        let ec2 = self.ec2(region);
        match ec2.register_image(r) {
            Err(e) if http::error_code(&e) == Some("InvalidAMIName.Duplicate") => {
                match ec2.images_named(&r.name)?.into_iter().find(|i| i.snapshots.contains(&r.snapshot_id)) {
                    Some(i) => Ok(i.id),
                    None => Err(e.context(format!("another AMI took the name {:?} meanwhile", r.name))),
                }
            }
            other => other,
        }
    }

    /// Tags a new image, retrying while it is not visible yet.
    fn tag_new(&self, region: &str, image_id: &str, tags: &[(String, String)]) -> Result<()> {
        let ec2 = self.ec2(region);
        wait(&format!("tagging {image_id}"), Duration::from_secs(300), || match ec2.create_tags(image_id, tags) {
            Ok(()) => Ok(Some(())),
            Err(e) if http::error_code(&e) == Some("InvalidAMIID.NotFound") => Ok(None),
            Err(e) => Err(e),
        })
    }

    fn deregister_old(&self, old: &[(String, ec2::Image)], region: &str, progress: &Progress) -> Result<()> {
        for (r, image) in old.iter().filter(|(r, _)| r == region) {
            self.ec2(r).deregister_image(&image.id).with_context(|| format!("replacing {} in {r}", image.id))?;
            progress.info(&format!("deregistered {} ({}) in {r}, replaced", image.id, image.name));
        }
        Ok(())
    }

    /// Deletes what the ledger holds; returns what could not be deleted.
    fn clean_up(&self, ledger: &Ledger, progress: &Progress) -> Vec<String> {
        let mut failed = Vec::new();
        let mut attempt = |what: String, r: Result<()>| match r {
            Ok(()) => progress.info(&format!("deleted {what}")),
            // Gone already (a retried delete whose first answer was lost).
            Err(e) if http::error_code(&e).is_some_and(|c| c.ends_with(".NotFound") || c == "InvalidAMIID.Unavailable" || c == "NoSuchKey" || c == "NoSuchUpload") => {
                progress.info(&format!("deleted {what}"))
            }
            Err(e) => {
                progress.warn(&format!("could not delete {what}: {e:#}"));
                failed.push(what);
            }
        };
        for (region, image) in ledger.images.iter().rev() {
            attempt(format!("image {image} in {region}"), self.ec2(region).deregister_image(image));
        }
        // A copy's snapshots may be found only now.
        let mut snapshots: Vec<(String, String)> = ledger.copied_snapshots.clone();
        snapshots.extend(ledger.snapshots.iter().cloned());
        for (region, snapshot) in snapshots {
            attempt(format!("snapshot {snapshot} in {region}"), self.ec2(&region).delete_snapshot(&snapshot));
        }
        let home = &self.config.regions[0];
        if let Some(task) = &ledger.import_task {
            attempt(format!("import task {task} in {home}"), self.ec2(home).cancel_import_task(task));
        }
        if let Some((bucket, key, upload)) = &ledger.multipart {
            let s3 = s3::S3 { client: &self.client, region: home, bucket, key };
            attempt(format!("multipart upload of s3://{bucket}/{key}"), s3.abort_multipart(upload));
        }
        if let Some((bucket, key)) = &ledger.object {
            let s3 = s3::S3 { client: &self.client, region: home, bucket, key };
            attempt(format!("s3://{bucket}/{key}"), s3.delete_object());
        }
        failed
    }
}

/// What this run created so far (deleted on failure).
#[derive(Default)]
struct Ledger {
    snapshots: Vec<(String, String)>,
    copied_snapshots: Vec<(String, String)>,
    images: Vec<(String, String)>,
    multipart: Option<(String, String, String)>,
    object: Option<(String, String)>,
    import_task: Option<String>,
}

impl Ledger {
    fn describe(&self) -> String {
        let mut v: Vec<String> = Vec::new();
        v.extend(self.images.iter().map(|(r, i)| format!("image {i} in {r}")));
        v.extend(self.snapshots.iter().chain(&self.copied_snapshots).map(|(r, s)| format!("snapshot {s} in {r}")));
        v.extend(self.import_task.iter().map(|t| format!("import task {t}")));
        v.extend(self.multipart.iter().map(|(b, k, _)| format!("multipart upload of s3://{b}/{k}")));
        v.extend(self.object.iter().map(|(b, k)| format!("s3://{b}/{k}")));
        v.join(", ")
    }
}

/// The boot mode: as asked, else `uefi` for arm64, `uefi-preferred` for x86_64 disks that boot
/// both ways (`uefi` with a TPM), the only one the disk has otherwise.
fn boot_mode(c: &Config, architecture: &str, facts: &DiskFacts) -> Result<String> {
    let mode = match &c.boot_mode {
        Some(m) => m.clone(),
        None if architecture == "arm64" => "uefi".into(),
        None if facts.uefi && facts.bios && !c.tpm => "uefi-preferred".into(),
        None if facts.uefi || !facts.bios => "uefi".into(),
        None => "legacy-bios".into(),
    };
    if architecture == "arm64" && mode != "uefi" {
        bail!("--aws-boot-mode {mode}: arm64 AMIs boot with UEFI only; use --aws-boot-mode uefi (the default for arm64)");
    }
    if c.tpm && mode == "legacy-bios" {
        bail!("--aws-tpm needs UEFI, but the AMI would boot with legacy-bios; use --aws-boot-mode uefi");
    }
    if mode == "legacy-bios" && !facts.bios {
        bail!("--aws-boot-mode legacy-bios, but the disk has no BIOS boot partition: it boots with UEFI only");
    }
    if mode == "uefi" && !facts.uefi {
        bail!("--aws-boot-mode uefi, but the disk has no EFI system partition: it boots with legacy BIOS only");
    }
    Ok(mode)
}

/// Polls `check` until it gives a value: at once, then every 1 s growing to 15 s; stops on a
/// signal or after `limit`.
fn wait<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_secs(1);
    loop {
        interrupt::check()?;
        if let Some(v) = check()? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("gave up waiting for {what} after {} minutes", limit.as_secs() / 60);
        }
        // Sleep in short steps so a signal is seen quickly.
        let until = Instant::now() + pause;
        while Instant::now() < until {
            interrupt::check()?;
            std::thread::sleep(Duration::from_millis(100));
        }
        pause = (pause * 3 / 2).min(Duration::from_secs(15));
    }
}

/// A token unique to this run (idempotent retries of StartSnapshot, ImportSnapshot, CopyImage).
fn client_token() -> String {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        b = (t ^ ((std::process::id() as u128) << 64)).to_le_bytes();
    }
    uuid::Uuid::from_bytes(b).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            regions: vec!["us-east-1".into()],
            profile: None,
            endpoint: None,
            method: UploadMethod::Ebs,
            name: None,
            description: None,
            boot_mode: None,
            imds_v1: false,
            tpm: false,
            volume_size_gib: None,
            tags: vec![],
            share_with: vec![],
            public: false,
            replace: false,
            keep_on_error: false,
            encrypted: false,
            kms_key: None,
            threads: 4,
        }
    }

    #[test]
    fn boot_modes_follow_the_disk_and_architecture() {
        let both = DiskFacts { arch: None, uefi: true, bios: true };
        let uefi = DiskFacts { arch: None, uefi: true, bios: false };
        let c = config();
        assert_eq!(boot_mode(&c, "x86_64", &both).unwrap(), "uefi-preferred");
        assert_eq!(boot_mode(&c, "x86_64", &uefi).unwrap(), "uefi");
        assert_eq!(boot_mode(&c, "arm64", &both).unwrap(), "uefi");
        let tpm = Config { tpm: true, ..config() };
        assert_eq!(boot_mode(&tpm, "x86_64", &both).unwrap(), "uefi");
        let legacy = Config { boot_mode: Some("legacy-bios".into()), ..config() };
        assert!(boot_mode(&legacy, "arm64", &both).unwrap_err().to_string().contains("arm64 AMIs boot with UEFI only"));
        assert!(boot_mode(&legacy, "x86_64", &uefi).is_err());
        let legacy_tpm = Config { boot_mode: Some("legacy-bios".into()), tpm: true, ..config() };
        assert!(legacy_tpm.validate().unwrap_err().to_string().contains("--aws-tpm needs UEFI"));
    }

    #[test]
    fn configuration_is_checked() {
        assert!(config().validate().is_ok());
        let bad_region = Config { regions: vec!["mars-1".into()], ..config() };
        assert!(bad_region.validate().unwrap_err().to_string().contains("not a region name"));
        let bad_share = Config { share_with: vec!["1234".into()], ..config() };
        assert!(bad_share.validate().is_err());
        assert!(check_ami_name("ok name (1.0)").is_ok());
        assert!(check_ami_name("no*stars").is_err());
        assert_eq!(default_ami_name("kiln test", "1.0+x"), "kiln-test-1.0-x");
        assert!(valid_region_name("us-gov-west-1") && valid_region_name("eu-central-2") && !valid_region_name("us-east"));
    }
}
