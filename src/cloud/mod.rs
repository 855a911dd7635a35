//! The cloud stage: a raw disk uploaded and registered where users launch it. One module per
//! cloud; `bake --type ami` and `kiln upload aws` share [`aws::Session`].

pub mod aws;

/// `--type` names that are uploads rather than files.
pub const UPLOAD_TYPES: &[&str] = &["ami"];

/// Splits `--type` values into file formats and uploads.
pub fn split_types(types: &[String]) -> (Vec<String>, Vec<String>) {
    types.iter().filter(|t| !t.is_empty()).cloned().partition(|t| !UPLOAD_TYPES.contains(&t.as_str()))
}

/// `kiln upload aws`: an existing raw disk made into an AMI.
pub fn upload_aws(raw: &std::path::Path, arch: Option<&str>, config: aws::Config, progress: &crate::progress::Progress) -> anyhow::Result<()> {
    use anyhow::Context;
    let disk = crate::output::RawDisk::open(raw)?;
    let facts = aws::DiskFacts::read(raw)?;
    let architecture = facts.architecture(arch, raw)?;
    let name = config.name.clone().with_context(|| format!("name the AMI with --aws-ami-name (kiln cannot tell {}'s image name)", raw.display()))?;
    let session = aws::Session::connect(config, progress)?;
    let uploaded = session.upload(&disk, &architecture, &facts, &name, progress)?;
    report(&uploaded, progress);
    Ok(())
}

/// A line per region with the AMI id on stdout, and the result event for `--progress=json`.
pub fn report(uploaded: &aws::Uploaded, progress: &crate::progress::Progress) {
    for i in &uploaded.images {
        println!("{} {}", i.region, i.image_id);
    }
    progress.result(serde_json::json!({ "aws": uploaded }));
}
