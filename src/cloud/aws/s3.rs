//! S3 multipart upload of a raw disk (for `--aws-upload import-snapshot`): parts of at least
//! 16 MiB (more for disks past 10 000 parts), sent in parallel by a few workers, each holding
//! one part.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::http::{Call, Client};
use crate::interrupt;
use crate::output::RawDisk;
use crate::progress::Stage;

const MIN_PART: u64 = 16 << 20;
const MAX_PARTS: u64 = 10_000;
/// Parts in flight at once (memory: this many parts).
const WORKERS: usize = 4;

pub struct S3<'a> {
    pub client: &'a Client,
    pub region: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
}

impl S3<'_> {
    fn call<'b>(&'b self, action: &'b str, method: &'b str) -> Call<'b> {
        let (base, path) = self.client.endpoints.s3_object(self.bucket, self.key, self.region);
        let mut call = Call::new("s3", action, self.region, method, path);
        call.base = Some(base);
        call
    }

    /// Starts a multipart upload; returns its id.
    pub fn create_multipart(&self) -> Result<String> {
        let mut call = self.call("S3 CreateMultipartUpload", "POST");
        call.query.push(("uploads".into(), String::new()));
        let doc = self.client.send(&call).with_context(|| format!("bucket {}", self.bucket))?.xml()?;
        doc.text_at("UploadId").map(String::from).context("CreateMultipartUpload answered without an UploadId")
    }

    /// Sends the whole disk (holes as zeros: the object is the raw disk) and completes the
    /// upload.
    pub fn upload(&self, upload_id: &str, disk: &RawDisk, stage: &Stage) -> Result<()> {
        let part_size = MIN_PART.max(disk.size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20));
        let parts = disk.size.div_ceil(part_size);
        stage.add_total(disk.size);
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let etags: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
        let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..WORKERS {
                s.spawn(|| {
                    let result = (|| -> Result<()> {
                        let mut buf = Vec::new();
                        loop {
                            interrupt::check()?;
                            let n = next.fetch_add(1, Ordering::SeqCst) as u64;
                            if stop.load(Ordering::SeqCst) || n >= parts {
                                return Ok(());
                            }
                            let offset = n * part_size;
                            let len = part_size.min(disk.size - offset) as usize;
                            buf.resize(len, 0);
                            disk.read_at(&mut buf, offset)?;
                            let etag = self.upload_part(upload_id, n + 1, &buf)?;
                            etags.lock().unwrap().push((n + 1, etag));
                            stage.inc(len as u64);
                        }
                    })();
                    if let Err(e) = result {
                        stop.store(true, Ordering::SeqCst);
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap() {
            return Err(e);
        }
        let mut etags = etags.into_inner().unwrap();
        etags.sort();
        if etags.len() as u64 != parts {
            bail!("S3 upload of {}: {} of {parts} parts sent", disk.path.display(), etags.len());
        }
        self.complete(upload_id, &etags)
    }

    fn upload_part(&self, upload_id: &str, number: u64, data: &[u8]) -> Result<String> {
        let mut call = self.call("S3 UploadPart", "PUT");
        call.query.push(("partNumber".into(), number.to_string()));
        call.query.push(("uploadId".into(), upload_id.to_string()));
        call.body = data;
        call.body_sha256 = Some(hex::encode(Sha256::digest(data)));
        let resp = self.client.send(&call)?;
        resp.header("etag").map(String::from).with_context(|| format!("S3 UploadPart {number} answered without an ETag"))
    }

    fn complete(&self, upload_id: &str, etags: &[(u64, String)]) -> Result<()> {
        let mut body = String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
        for (n, etag) in etags {
            let etag = etag.replace('&', "&amp;").replace('"', "&quot;");
            body.push_str(&format!("<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"));
        }
        body.push_str("</CompleteMultipartUpload>");
        let mut call = self.call("S3 CompleteMultipartUpload", "POST");
        call.query.push(("uploadId".into(), upload_id.to_string()));
        call.headers.push(("content-type".into(), "application/xml".into()));
        call.body = body.as_bytes();
        let resp = self.client.send(&call)?;
        // S3 can answer 200 with an error document when completion fails late.
        if resp.text().contains("<Error>") {
            bail!("S3 CompleteMultipartUpload failed: {}", resp.text());
        }
        Ok(())
    }

    pub fn abort_multipart(&self, upload_id: &str) -> Result<()> {
        let mut call = self.call("S3 AbortMultipartUpload", "DELETE");
        call.query.push(("uploadId".into(), upload_id.to_string()));
        self.client.send(&call).map(drop)
    }

    pub fn delete_object(&self) -> Result<()> {
        self.client.send(&self.call("S3 DeleteObject", "DELETE")).map(drop)
    }
}
