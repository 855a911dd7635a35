//! `kiln install to-disk` as on bare metal: inside a QEMU guest (OVMF, a variable store of its
//! own) booted from a kiln-baked test disk, with a real kernel and udev making the partition
//! nodes. A second disk brings kiln, the test image (oci-archive) and a test certificate; the
//! third, empty, is installed to. Then, on the host:
//! - virt-fw-vars (virt-firmware, not kiln's code) reads the variable store: kiln's boot entry
//!   (label, HD() of the third disk's ESP as sfdisk reads it, shim's path) first in BootOrder,
//!   and the MOK request (MokNew holding the certificate, owned by shim's GUID; MokAuth);
//! - the request is removed (shim would stop in MokManager), and the third disk boots alone
//!   with that store: every probe check passes, and the firmware's log shows it started
//!   kiln's entry (OVMF prints `BdsDxe: starting Boot#### "label"` for the entry it boots,
//!   which is what BootCurrent holds).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::boot::{Boot, Firmware};
use common::{run, test_image, Scratch};

const UNIT: &str = "kiln-guest-install.service";
const DONE: &str = "KILN-GUEST-INSTALL rc=";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const SHIM_GUID: &str = "605dab50-e046-4300-abb6-3dd810dd8b23";
const X509_GUID: &str = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";

/// The guest's job: mount the second disk, install onto the third, report the exit status on
/// the console. Ordered before the probe, which powers the guest off.
fn guest_config() -> String {
    format!(
        r#"[customizations.kernel]
append = "systemd.wants={UNIT}"

[[customizations.files]]
path = "/etc/systemd/system/{UNIT}"
data = '''
[Unit]
Description=kiln test: install the test image onto /dev/vdc
Requires=dev-vdb.device dev-vdc.device
After=dev-vdb.device dev-vdc.device systemd-udev-settle.service
Before=kiln-probe.service

[Service]
Type=oneshot
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/bin/sh -c 'mkdir -p /run/job && mount -o ro /dev/vdb /run/job && /run/job/kiln install to-disk --progress plain --wipe --enroll-mok /run/job/test.der /dev/vdc oci-archive:/run/job/image.oci-archive; echo "{DONE}$$?"'
'''
"#
    )
}

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

fn read_vars(vars: &Path) -> serde_json::Value {
    let out = run(Command::new(virt_firmware_python()).arg("-c").arg(READ_VARS).arg(vars));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("virt-firmware's output: {e}\n{out}"))
}

fn console_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned()
}

#[test]
fn to_disk_in_a_uefi_guest_writes_the_boot_entry_and_the_mok_request() {
    let s = Scratch::new("install-guest");
    let image = test_image();

    // The job disk: kiln, the test image, a certificate (openssl's).
    let job = s.path().join("job");
    std::fs::create_dir(&job).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_kiln"), job.join("kiln")).unwrap();
    let archive = job.join("image.oci-archive");
    if std::fs::hard_link(image.join("image.oci-archive"), &archive).is_err() {
        std::fs::copy(image.join("image.oci-archive"), &archive).unwrap();
    }
    let der = job.join("test.der");
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=kiln guest MOK test/", "-outform", "DER"])
        .arg("-keyout")
        .arg(s.path().join("test.key"))
        .arg("-out")
        .arg(&der));
    let job_disk = s.path().join("job.raw");
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&job).arg(&job_disk).arg("600M"));

    // The guest's own disk, baked with the job's unit; the empty third disk.
    let config = s.path().join("guest.toml");
    std::fs::write(&config, guest_config()).unwrap();
    let image_ref = format!("oci:{}:latest", image.join("oci").display());
    let guest_disk = common::bake_raw(&s, &image_ref, &["--config", config.to_str().unwrap()]);
    let target = s.path().join("target.raw");
    run(Command::new("truncate").args(["-s", "4G"]).arg(&target));
    let vars = s.path().join("OVMF_VARS.fd");

    // Boot 1: the guest installs (slow under TCG: a whole install in an emulated CPU).
    let mut installer = Boot::new(&guest_disk, Firmware::Uefi, "install-guest-installer");
    installer.timeout = installer.timeout.max(Duration::from_secs(2400));
    installer.memory_mib = 2048;
    installer.extra_disks = vec![(job_disk.clone(), false), (target.clone(), true)];
    installer.vars = Some(vars.clone());
    let report = installer.run().unwrap_or_else(|e| panic!("{e}"));
    let console = console_text(&report.console_log);
    let rc = console.rsplit(DONE).next().filter(|_| console.contains(DONE)).map(|t| t.chars().take_while(char::is_ascii_digit).collect::<String>());
    assert_eq!(rc.as_deref(), Some("0"), "kiln install in the guest failed (console: {})\n{report}", report.console_log.display());

    // The variable store, read by virt-firmware; the ESP, read by sfdisk.
    let found = read_vars(&vars);
    println!("variables after the install: {found:#}");
    let table: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&target))).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let (esp_nr, esp) = parts.iter().enumerate().find(|(_, p)| p["type"] == ESP_TYPE).map(|(i, p)| (i + 1, p)).expect("the installed disk has an ESP");
    let first = found["boot_order"][0].as_str().expect("BootOrder is not empty");
    let entry = &found["entries"][first];
    assert_eq!(entry["title"], "Debian GNU/Linux", "the first entry is not kiln's: {found:#}");
    assert_eq!(entry["file"], "\\EFI\\debian\\shimx64.efi", "{found:#}");
    let hd = &entry["hd"];
    assert_eq!(hd["nr"].as_u64(), Some(esp_nr as u64), "{found:#}\n{table:#}");
    assert_eq!(hd["start"], esp["start"], "{found:#}\n{table:#}");
    assert_eq!(hd["size"], esp["size"], "{found:#}\n{table:#}");
    assert_eq!(hd["guid"].as_str().map(str::to_uppercase), esp["uuid"].as_str().map(str::to_uppercase), "{found:#}\n{table:#}");
    let same_title = found["entries"].as_object().unwrap().values().filter(|e| e["title"] == "Debian GNU/Linux").count();
    assert_eq!(same_title, 1, "one entry with kiln's label: {found:#}");

    let request = found["mok_new"].as_array().expect("MokNew is set");
    assert_eq!(request.len(), 1, "{found:#}");
    assert_eq!(request[0]["type"], X509_GUID, "{found:#}");
    let sigs = request[0]["sigs"].as_array().unwrap();
    assert_eq!(sigs.len(), 1, "{found:#}");
    assert_eq!(sigs[0]["owner"], SHIM_GUID, "{found:#}");
    assert_eq!(sigs[0]["data"].as_str(), Some(hex::encode(std::fs::read(&der).unwrap()).as_str()), "MokNew does not hold the certificate");
    assert_eq!(found["mok_auth"]["size"], 172, "{found:#}");
    assert_eq!(found["mok_auth"]["attr"], 7, "{found:#}");

    // Without the request (shim would wait in MokManager for someone to type the password),
    // the installed disk boots alone through kiln's entry.
    run(Command::new(virt_firmware_python().with_file_name("virt-fw-vars")).arg("--inplace").arg(&vars).args(["-d", "MokNew", "-d", "MokAuth"]));
    let mut installed = Boot::new(&target, Firmware::Uefi, "install-guest-installed");
    installed.vars = Some(vars.clone());
    let report = installed.run().unwrap_or_else(|e| panic!("{e}"));
    println!("the installed disk:\n{report}");
    report.assert_outcome(&[]);
    let console = console_text(&report.console_log);
    let started = console.lines().find_map(|l| l.split("BdsDxe: starting ").nth(1)).unwrap_or_default();
    assert!(
        started.starts_with(&format!("{first} \"Debian GNU/Linux\" from HD({esp_nr},GPT,")),
        "the firmware did not start kiln's entry {first} first: {started:?} (console: {})",
        report.console_log.display()
    );
}
