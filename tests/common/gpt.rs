//! A disk's partitions as `sfdisk --json` reads them (an oracle independent of kiln), and
//! checkers run on one partition through a read-only loop device of its own.

use std::path::Path;
use std::process::Command;

use super::run;

pub struct Part {
    /// Offset and size in bytes, whatever the disk's sector size.
    pub start: u64,
    pub size: u64,
    pub name: String,
    /// The partition type GUID, upper case.
    pub type_guid: String,
}

pub fn partitions(disk: &Path) -> Vec<Part> {
    let v: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(disk))).unwrap();
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Part {
            start: p["start"].as_u64().unwrap() * sector,
            size: p["size"].as_u64().unwrap() * sector,
            name: p["name"].as_str().unwrap_or_default().to_string(),
            type_guid: p["type"].as_str().unwrap_or_default().to_uppercase(),
        })
        .collect()
}

/// Runs `cmd` with a read-only loop device of `part` appended; panics with its output if it
/// fails, returns its stdout.
pub fn on_partition(disk: &Path, part: &Part, cmd: &[&str]) -> String {
    let dev = run(Command::new("losetup")
        .args(["--find", "--show", "--read-only", "--offset", &part.start.to_string(), "--sizelimit", &part.size.to_string()])
        .arg(disk));
    let dev = dev.trim().to_string();
    let out = Command::new(cmd[0]).args(&cmd[1..]).arg(&dev).output().unwrap();
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    assert!(
        out.status.success(),
        "{cmd:?} on partition {} failed:\n{}\n{}",
        part.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
