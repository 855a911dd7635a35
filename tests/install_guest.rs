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

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::boot::{Boot, Firmware};
use common::{efivars, run, test_image, Scratch};

const UNIT: &str = "kiln-guest-install.service";
const DONE: &str = "KILN-GUEST-INSTALL rc=";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

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
ExecStart=/bin/sh -c 'mkdir -p /run/job && mount -o ro /dev/vdb /run/job && /run/job/kiln install to-disk --progress plain --wipe --enroll-mok /run/job/test-mok.der /dev/vdc oci-archive:/run/job/image.oci-archive; echo "{DONE}$$?"'
'''
"#
    )
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
    let der = efivars::test_certificate(&job);
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
    let found = efivars::read_vars(&vars);
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

    // Without the request (shim would wait in MokManager for someone to type the password),
    // the installed disk boots alone through kiln's entry.
    efivars::assert_mok_request_and_remove_it(&vars, &der);
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
