//! The EC2 calls kiln makes, over the EC2 Query protocol (a form-encoded POST with
//! `Action` and `Version=2016-11-15`, an XML answer): a dozen actions instead of aws-sdk-ec2.

use anyhow::{Context, Result};

use super::http::{Call, Client};
use super::sigv4::uri_encode;
use super::xml::Element;

const VERSION: &str = "2016-11-15";

/// EC2 in one region.
pub struct Ec2<'a> {
    pub client: &'a Client,
    pub region: &'a str,
}

/// An image as DescribeImages shows it.
#[derive(Debug, Clone)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub state: String,
    pub snapshots: Vec<String>,
}

/// What RegisterImage is given.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub description: String,
    pub architecture: String,
    pub boot_mode: String,
    pub snapshot_id: String,
    pub volume_size_gib: u64,
    pub imds_v2: bool,
    pub tpm: bool,
}

/// The device the root volume is attached as (cosa's choice; nitro maps it to NVMe).
pub const ROOT_DEVICE: &str = "/dev/xvda";

impl Ec2<'_> {
    /// One call; `params` are the action's parameters, flattened as the Query protocol wants.
    pub fn call(&self, action: &str, params: &[(String, String)]) -> Result<Element> {
        let mut body = format!("Action={action}&Version={VERSION}");
        for (k, v) in params {
            body.push('&');
            body.push_str(&uri_encode(k, true));
            body.push('=');
            body.push_str(&uri_encode(v, true));
        }
        let label = format!("EC2 {action}");
        let mut call = Call::new("ec2", &label, self.region, "POST", "/");
        call.headers.push(("content-type".into(), "application/x-www-form-urlencoded; charset=utf-8".into()));
        call.body = body.as_bytes();
        let resp = self.client.send(&call)?;
        resp.xml().with_context(|| format!("EC2 {action} in {}", self.region))
    }

    pub fn describe_regions(&self) -> Result<Vec<String>> {
        let doc = self.call("DescribeRegions", &[p("AllRegions", "true")])?;
        Ok(doc.items("regionInfo").iter().filter_map(|r| r.text_at("regionName").map(String::from)).collect())
    }

    /// A snapshot's state (`pending`, `completed`, `error`) and progress (`42%`).
    pub fn snapshot_state(&self, id: &str) -> Result<(String, String)> {
        let doc = self.call("DescribeSnapshots", &[p("SnapshotId.1", id)])?;
        let item = doc.items("snapshotSet").into_iter().next().with_context(|| format!("snapshot {id} is not in {}", self.region))?;
        Ok((item.text_at("status").unwrap_or_default().to_string(), item.text_at("progress").unwrap_or_default().to_string()))
    }

    /// This account's images with this name.
    pub fn images_named(&self, name: &str) -> Result<Vec<Image>> {
        let doc = self.call("DescribeImages", &[p("Owner.1", "self"), p("Filter.1.Name", "name"), p("Filter.1.Value.1", name)])?;
        Ok(images(&doc).into_iter().filter(|i| i.name == name).collect())
    }

    pub fn image(&self, id: &str) -> Result<Option<Image>> {
        match self.call("DescribeImages", &[p("ImageId.1", id)]) {
            Ok(doc) => Ok(images(&doc).into_iter().next()),
            Err(e) if super::http::error_code(&e).is_some_and(|c| c.starts_with("InvalidAMIID")) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn register_image(&self, r: &Registration) -> Result<String> {
        let mut params = vec![
            p("Name", &r.name),
            p("Architecture", &r.architecture),
            p("BootMode", &r.boot_mode),
            p("VirtualizationType", "hvm"),
            p("EnaSupport", "true"),
            p("SriovNetSupport", "simple"),
            p("RootDeviceName", ROOT_DEVICE),
            p("BlockDeviceMapping.1.DeviceName", ROOT_DEVICE),
            p("BlockDeviceMapping.1.Ebs.SnapshotId", &r.snapshot_id),
            p("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
            p("BlockDeviceMapping.1.Ebs.VolumeSize", &r.volume_size_gib.to_string()),
            p("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ];
        if !r.description.is_empty() {
            params.push(p("Description", &r.description));
        }
        if r.imds_v2 {
            params.push(p("ImdsSupport", "v2.0"));
        }
        if r.tpm {
            params.push(p("TpmSupport", "v2.0"));
        }
        let doc = self.call("RegisterImage", &params)?;
        doc.text_at("imageId").map(String::from).context("RegisterImage answered without an image id")
    }

    /// Copies an image from `source_region` into this region.
    pub fn copy_image(&self, source_region: &str, image_id: &str, name: &str, description: &str, client_token: &str) -> Result<String> {
        let mut params = vec![p("SourceRegion", source_region), p("SourceImageId", image_id), p("Name", name), p("ClientToken", client_token)];
        if !description.is_empty() {
            params.push(p("Description", description));
        }
        let doc = self.call("CopyImage", &params)?;
        doc.text_at("imageId").map(String::from).context("CopyImage answered without an image id")
    }

    pub fn create_tags(&self, resource: &str, tags: &[(String, String)]) -> Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut params = vec![p("ResourceId.1", resource)];
        for (i, (k, v)) in tags.iter().enumerate() {
            params.push(p(&format!("Tag.{}.Key", i + 1), k));
            params.push(p(&format!("Tag.{}.Value", i + 1), v));
        }
        self.call("CreateTags", &params).map(drop)
    }

    /// Lets these accounts (or everyone) launch the image.
    pub fn share_image(&self, image_id: &str, accounts: &[String], public: bool) -> Result<()> {
        let mut params = vec![p("ImageId", image_id)];
        let mut n = 0;
        for a in accounts {
            n += 1;
            params.push(p(&format!("LaunchPermission.Add.{n}.UserId"), a));
        }
        if public {
            params.push(p(&format!("LaunchPermission.Add.{}.Group", n + 1), "all"));
        }
        self.call("ModifyImageAttribute", &params).map(drop)
    }

    /// Lets these accounts (or everyone) create volumes from the snapshot.
    pub fn share_snapshot(&self, snapshot_id: &str, accounts: &[String], public: bool) -> Result<()> {
        let mut params = vec![p("SnapshotId", snapshot_id), p("Attribute", "createVolumePermission"), p("OperationType", "add")];
        for (i, a) in accounts.iter().enumerate() {
            params.push(p(&format!("UserId.{}", i + 1), a));
        }
        if public {
            params.push(p("UserGroup.1", "all"));
        }
        self.call("ModifySnapshotAttribute", &params).map(drop)
    }

    pub fn deregister_image(&self, id: &str) -> Result<()> {
        self.call("DeregisterImage", &[p("ImageId", id)]).map(drop)
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.call("DeleteSnapshot", &[p("SnapshotId", id)]).map(drop)
    }

    /// Starts an import of a raw disk in S3; returns the task id.
    pub fn import_snapshot(&self, bucket: &str, key: &str, description: &str, encrypted: bool, kms_key: Option<&str>, client_token: &str) -> Result<String> {
        let mut params = vec![
            p("Description", description),
            p("DiskContainer.Description", description),
            p("DiskContainer.Format", "RAW"),
            p("DiskContainer.UserBucket.S3Bucket", bucket),
            p("DiskContainer.UserBucket.S3Key", key),
            p("ClientToken", client_token),
        ];
        if encrypted {
            params.push(p("Encrypted", "true"));
        }
        if let Some(k) = kms_key {
            params.push(p("KmsKeyId", k));
        }
        let doc = self.call("ImportSnapshot", &params)?;
        doc.text_at("importTaskId").map(String::from).context("ImportSnapshot answered without a task id")
    }

    /// An import task's status, progress, message and (once done) snapshot.
    pub fn import_task(&self, task_id: &str) -> Result<ImportTask> {
        let doc = self.call("DescribeImportSnapshotTasks", &[p("ImportTaskId.1", task_id)])?;
        let item = doc.items("importSnapshotTaskSet").into_iter().next().with_context(|| format!("import task {task_id} is not in {}", self.region))?;
        let d = item.at("snapshotTaskDetail").context("DescribeImportSnapshotTasks answered without snapshotTaskDetail")?;
        let s = |n: &str| d.text_at(n).unwrap_or_default().to_string();
        Ok(ImportTask { status: s("status"), progress: s("progress"), message: s("statusMessage"), snapshot_id: d.text_at("snapshotId").map(String::from) })
    }

    pub fn cancel_import_task(&self, task_id: &str) -> Result<()> {
        self.call("CancelImportTask", &[p("ImportTaskId", task_id)]).map(drop)
    }
}

pub struct ImportTask {
    pub status: String,
    pub progress: String,
    pub message: String,
    pub snapshot_id: Option<String>,
}

fn p(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn images(doc: &Element) -> Vec<Image> {
    doc.items("imagesSet")
        .iter()
        .map(|i| Image {
            id: i.text_at("imageId").unwrap_or_default().to_string(),
            name: i.text_at("name").unwrap_or_default().to_string(),
            state: i.text_at("imageState").unwrap_or_default().to_string(),
            snapshots: i.items("blockDeviceMapping").iter().filter_map(|b| b.text_at("ebs/snapshotId").map(String::from)).collect(),
        })
        .collect()
}
