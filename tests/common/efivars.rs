//! An OVMF variable store as virt-firmware (not kiln's code) reads it: boot entries, and the
//! MOK request `mokutil --import` would write.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

const SHIM_GUID: &str = "605dab50-e046-4300-abb6-3dd810dd8b23";
const X509_GUID: &str = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";

fn virt_firmware_python() -> PathBuf {
    let venv = std::env::var_os("KILN_VIRT_FIRMWARE_VENV").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/kiln-virt-firmware"));
    let python = venv.join("bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh (it installs virt-firmware there)", python.display());
    python
}

/// What virt-firmware reads from the variable store: BootOrder, each boot entry's title and
/// device path, the MOK request.
const READ_VARS: &str = r#"
import json, struct, sys
from virt.firmware.varstore.edk2 import Edk2VarStore
from virt.firmware.efi import bootentry, siglist
vl = Edk2VarStore(sys.argv[1]).get_varlist()
out = {"boot_order": [], "entries": {}, "mok_new": None, "mok_auth": None}
if "BootOrder" in vl:
    d = vl["BootOrder"].data
    out["boot_order"] = ["Boot%04X" % struct.unpack_from("<H", d, i)[0] for i in range(0, len(d), 2)]
for name, var in vl.items():
    if name.startswith("Boot") and len(name) == 8 and name not in ("BootOrder", "BootNext"):
        e = bootentry.BootEntry(data=var.data)
        entry = {"title": str(e.title), "hd": None, "file": None}
        for el in e.devicepath:
            if el.is_type(0x04, 0x01):
                nr, start, size = struct.unpack_from("<LQQ", el.data)
                entry["hd"] = {"nr": nr, "start": start, "size": size, "guid": str(el.get_partuuid())}
            elif el.is_type(0x04, 0x04):
                entry["file"] = str(el.get_filepath())
        out["entries"][name] = entry
if "MokNew" in vl:
    out["mok_new"] = [{"type": str(l.guid), "sigs": [{"owner": str(s["guid"]), "data": s["data"].hex()} for s in l]} for l in siglist.EfiSigDB(vl["MokNew"].data)]
if "MokAuth" in vl:
    out["mok_auth"] = {"attr": vl["MokAuth"].attr, "size": len(vl["MokAuth"].data)}
print(json.dumps(out))
"#;

pub fn read_vars(vars: &Path) -> serde_json::Value {
    let out = run(Command::new(virt_firmware_python()).arg("-c").arg(READ_VARS).arg(vars));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("virt-firmware's output: {e}\n{out}"))
}

/// A self-signed certificate in DER form (openssl's), as a MOK to enroll.
pub fn test_certificate(dir: &Path) -> PathBuf {
    let der = dir.join("test-mok.der");
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=kiln MOK test/", "-outform", "DER"])
        .arg("-keyout")
        .arg(dir.join("test-mok.key"))
        .arg("-out")
        .arg(&der));
    der
}

/// The store holds a request to enroll `der` alone, as mokutil makes it (MokNew: one X509
/// list owned by shim; MokAuth: mokutil's 172-byte password hash, non-volatile, boot and
/// runtime access); then the request is removed: with it shim would wait in MokManager for
/// someone to type the password.
pub fn assert_mok_request_and_remove_it(vars: &Path, der: &Path) {
    let found = read_vars(vars);
    let request = found["mok_new"].as_array().unwrap_or_else(|| panic!("MokNew is not set: {found:#}"));
    assert_eq!(request.len(), 1, "{found:#}");
    assert_eq!(request[0]["type"], X509_GUID, "{found:#}");
    let sigs = request[0]["sigs"].as_array().unwrap();
    assert_eq!(sigs.len(), 1, "{found:#}");
    assert_eq!(sigs[0]["owner"], SHIM_GUID, "{found:#}");
    assert_eq!(sigs[0]["data"].as_str(), Some(hex::encode(std::fs::read(der).unwrap()).as_str()), "MokNew does not hold the certificate");
    assert_eq!(found["mok_auth"]["size"], 172, "{found:#}");
    assert_eq!(found["mok_auth"]["attr"], 7, "{found:#}");
    run(Command::new(virt_firmware_python().with_file_name("virt-fw-vars")).arg("--inplace").arg(vars).args(["-d", "MokNew", "-d", "MokAuth"]));
}

/// kiln's boot entry for `disk` is first in BootOrder, the only one with its `title`: shim's
/// path on the ESP, HD() as sfdisk reads the disk's ESP (number, start, size, GUID). Returns the
/// entry's name (`Boot####`) and the ESP's partition number.
pub fn assert_boot_entry_first(vars: &Path, disk: &Path, title: &str, file: &str) -> (String, usize) {
    let found = read_vars(vars);
    let table: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(disk))).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let (esp_nr, esp) = parts.iter().enumerate().find(|(_, p)| p["type"] == ESP_TYPE).map(|(i, p)| (i + 1, p)).expect("the installed disk has an ESP");
    let first = found["boot_order"][0].as_str().unwrap_or_else(|| panic!("BootOrder is empty: {found:#}"));
    let entry = &found["entries"][first];
    assert_eq!(entry["title"], title, "the first entry is not kiln's: {found:#}");
    assert_eq!(entry["file"], file, "{found:#}");
    let hd = &entry["hd"];
    assert_eq!(hd["nr"].as_u64(), Some(esp_nr as u64), "{found:#}\n{table:#}");
    assert_eq!(hd["start"], esp["start"], "{found:#}\n{table:#}");
    assert_eq!(hd["size"], esp["size"], "{found:#}\n{table:#}");
    assert_eq!(hd["guid"].as_str().map(str::to_uppercase), esp["uuid"].as_str().map(str::to_uppercase), "{found:#}\n{table:#}");
    let same_title = found["entries"].as_object().unwrap().values().filter(|e| e["title"] == title).count();
    assert_eq!(same_title, 1, "one entry with kiln's label: {found:#}");
    (first.to_string(), esp_nr)
}

/// The firmware started `entry` (OVMF prints `BdsDxe: starting Boot#### "title"` for the
/// entry it boots, which is what BootCurrent holds) from the ESP, partition `esp_nr`.
pub fn assert_started_entry(console_log: &Path, entry: &str, title: &str, esp_nr: usize) {
    let console = String::from_utf8_lossy(&std::fs::read(console_log).unwrap()).into_owned();
    let started = console.lines().find_map(|l| l.split("BdsDxe: starting ").nth(1)).unwrap_or_default();
    assert!(
        started.starts_with(&format!("{entry} \"{title}\" from HD({esp_nr},GPT,")),
        "the firmware did not start kiln's entry {entry} first: {started:?} (console: {})",
        console_log.display()
    );
}
