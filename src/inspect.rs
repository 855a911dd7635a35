//! `kiln image inspect` and `kiln image unpack`: the image stage's commands for people.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::image::{Image, OpenOptions};
use crate::ostree::prepare_root;
use crate::progress::Progress;
use crate::selinux::Policy;
use crate::tree::{self, unpack};

/// What `inspect` reports, as JSON (the text form is rendered from it).
pub fn inspect(reference: &str, opts: &OpenOptions, progress: &Progress) -> Result<serde_json::Value> {
    let image = Image::open(reference, opts)?;
    image.fetch_layers(progress)?;
    let merged = tree::scan::scan(&image, &|p| crate::selinux::wanted(p) || prepare_root::wanted(p), progress)?;
    let kernels = tree::kernels(&merged.root);
    // What kiln cannot read is reported, not fatal: inspect is where people look first.
    let selinux = match Policy::from_files(&merged.files) {
        Ok(Some(p)) => json!({"policy": p.name(), "mode": p.mode(), "specs": p.labeler().spec_count(), "dir": p.dir()}),
        Ok(None) => serde_json::Value::Null,
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    let composefs = match prepare_root::read(&merged.files) {
        Ok(c) => json!({"enabled": c.enabled.as_str(), "from": c.origin}),
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    let label = image.bootable_label();
    let layers: Vec<_> = image
        .layers
        .iter()
        .map(|l| json!({"digest": l.descriptor.digest, "mediaType": l.descriptor.media_type, "size": l.descriptor.size, "diffID": l.diff_id}))
        .collect();
    Ok(json!({
        "reference": image.source.to_string(),
        "digest": image.manifest_digest,
        "architecture": image.config.architecture,
        "os": image.config.os,
        "labels": image.labels(),
        "layers": layers,
        "contentSize": merged.content_bytes,
        "kernels": kernels,
        "bootable": label.is_some() && !kernels.is_empty(),
        "bootableBecause": label.map(|l| format!("label {l}")),
        "selinux": selinux,
        "composefs": composefs,
    }))
}

pub fn print_inspect(v: &serde_json::Value) {
    println!("Reference:    {}", v["reference"].as_str().unwrap_or(""));
    println!("Digest:       {}", v["digest"].as_str().unwrap_or(""));
    println!("Platform:     {}/{}", v["os"].as_str().unwrap_or(""), v["architecture"].as_str().unwrap_or(""));
    let kernels: Vec<&str> = v["kernels"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect();
    println!("Kernel:       {}", if kernels.is_empty() { "none found under /usr/lib/modules".to_string() } else { kernels.join(", ") });
    let bootable = match (v["bootable"].as_bool(), v["bootableBecause"].as_str()) {
        (Some(true), Some(why)) => format!("yes ({why})"),
        (_, None) => "no (no containers.bootc or ostree.bootable label)".to_string(),
        _ => "no (no kernel)".to_string(),
    };
    println!("Bootable:     {bootable}");
    let se = &v["selinux"];
    let selinux = match (se["policy"].as_str(), se["error"].as_str()) {
        (Some(name), _) => format!(
            "{name} ({}, {} file context specs in /{})",
            se["mode"].as_str().unwrap_or(""),
            se["specs"].as_u64().unwrap_or(0),
            se["dir"].as_str().unwrap_or("")
        ),
        (None, Some(e)) => format!("cannot be read: {e}"),
        _ => "none (no SELinux config, or SELinux disabled: files are not labelled)".to_string(),
    };
    println!("SELinux:      {selinux}");
    let composefs = &v["composefs"];
    match (composefs["enabled"].as_str(), composefs["from"].as_str(), composefs["error"].as_str()) {
        (Some(mode), Some(from), _) => println!("Composefs:    {mode} ({from})"),
        (Some(mode), None, _) => println!("Composefs:    {mode} (no [composefs] enabled in ostree/prepare-root.conf)"),
        (_, _, Some(e)) => println!("Composefs:    unreadable: {e}"),
        _ => {}
    }
    println!("Labels:");
    if let Some(labels) = v["labels"].as_object() {
        for (k, val) in labels {
            println!("  {k}={}", val.as_str().unwrap_or(""));
        }
    }
    println!("Layers:");
    for l in v["layers"].as_array().into_iter().flatten() {
        println!(
            "  {}  {:>10}  {}",
            l["digest"].as_str().unwrap_or(""),
            human(l["size"].as_u64().unwrap_or(0)),
            l["mediaType"].as_str().unwrap_or("")
        );
    }
    println!("Content:      {}", human(v["contentSize"].as_u64().unwrap_or(0)));
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Applies the image's layers into `dir` (absent or empty). On failure nothing is left: the
/// directory is removed if kiln created it, emptied otherwise.
pub fn unpack(reference: &str, dir: &Path, opts: &OpenOptions, progress: &Progress) -> Result<()> {
    let created = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("{} is not empty: unpack into a new or empty directory", dir.display());
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            true
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let result = (|| {
        let image = Image::open(reference, opts)?;
        image.fetch_layers(progress)?;
        let store = unpack::StagingStore::create(dir)?;
        let merged = tree::apply_layers(&image, &store, progress, "layers")?;
        let stage = progress.stage("write", None);
        unpack::materialize(&merged.root, dir, &store)?;
        stage.finish();
        Ok(())
    })();
    if result.is_err() {
        if created {
            let _ = std::fs::remove_dir_all(dir);
        } else if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }
    result
}
