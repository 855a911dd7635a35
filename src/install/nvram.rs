//! The firmware variables `install to-disk` writes on the machine it runs on, once the disk is
//! complete (bootc's `--update-firmware` through bootupd, and `mokutil --import`, without
//! either tool): a boot entry for the image's shim, first in `BootOrder`, and, when asked, a
//! request to enroll the image's kernel-module signing certificate as a MOK. Research:
//! `install-and-iso.md` §3, `aarch64-asahi-nvidia.md` §5.
//!
//! A disk that is not the running machine's (a loop device's file) gets neither: the entry
//! would point at a disk this machine does not have.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bake::Baked;
use crate::disk::Role;
use crate::efi::load_option::{self, HardDrive};
use crate::efi::{mok, Efivars, GLOBAL_GUID, NV_BS_RT};
use crate::progress::Progress;

/// Which certificates to ask MokManager to enroll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnrollMok {
    /// The image's `/etc/pki/akmods/certs/*.der`.
    Auto,
    /// A DER file on this machine.
    File(PathBuf),
}

impl std::str::FromStr for EnrollMok {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "auto" { EnrollMok::Auto } else { EnrollMok::File(s.into()) })
    }
}

/// What to write, and where the variables are.
#[derive(Clone, Debug)]
pub struct FirmwareConfig {
    pub efivars: PathBuf,
    pub boot_entry: bool,
    pub enroll_mok: Option<EnrollMok>,
    pub mok_password: String,
}

impl FirmwareConfig {
    /// Checks what can be checked before the disk is written: a certificate file exists and
    /// is DER, the password is one MokManager can take, the variables can be written (for a
    /// disk of this machine's: not `is_loop`).
    pub fn check(&self, is_loop: bool) -> Result<()> {
        if let Some(m) = &self.enroll_mok {
            mok::check_password(&self.mok_password)?;
            if let Some(reason) = Efivars::new(&self.efivars).unwritable_reason().filter(|_| !is_loop) {
                bail!("--enroll-mok: cannot write the MOK request: {reason}");
            }
            if let EnrollMok::File(path) = m {
                mok::check_certificate(&read_certificate(path)?, &path.display().to_string())?;
            }
        }
        Ok(())
    }
}

fn read_certificate(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("--enroll-mok: cannot read {}", path.display()))
}

/// What was written.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Written {
    /// `Boot####`.
    pub boot_entry: Option<String>,
    /// The certificates whose enrollment was requested.
    pub mok_requested: Vec<String>,
}

/// Writes the firmware variables for the installed disk (`disk_name`, of `sector_size`-byte
/// logical blocks); `is_loop`: the disk is a loop device's file, not this machine's.
pub fn write(config: &FirmwareConfig, baked: &Baked, disk_name: &str, sector_size: u64, is_loop: bool, progress: &Progress) -> Result<Written> {
    let mut written = Written::default();
    if !config.boot_entry && config.enroll_mok.is_none() {
        return Ok(written);
    }
    if is_loop {
        progress.info(&format!("{disk_name} is a loop device: no firmware boot entry or MOK request written (they would name a disk this machine does not have)"));
        return Ok(written);
    }
    let vars = Efivars::new(&config.efivars);
    if let Some(reason) = vars.unwritable_reason() {
        if config.enroll_mok.is_some() {
            bail!("--enroll-mok: cannot write the MOK request: {reason}");
        }
        progress.info(&format!("no firmware boot entry written: {reason}; the disk boots through the removable path (EFI/BOOT)"));
        return Ok(written);
    }
    if let Some(m) = &config.enroll_mok {
        let certs = match m {
            EnrollMok::File(path) => vec![(path.display().to_string(), read_certificate(path)?)],
            EnrollMok::Auto if baked.system.firmware.akmods_certs.is_empty() => {
                bail!("--enroll-mok auto: the image has no /{}/*.der (Universal Blue and Immutablue images ship their akmods key there); pass --enroll-mok PATH.der", crate::efi::image::AKMODS_CERTS)
            }
            EnrollMok::Auto => baked.system.firmware.akmods_certs.clone(),
        };
        let r = mok::request_enrollment(&vars, &certs, &config.mok_password)?;
        for name in &r.skipped {
            progress.info(&format!("MOK: {name} is already enrolled or requested"));
        }
        if !r.new.is_empty() {
            progress.info(&format!("MOK: enrollment of {} requested: on the next boot, choose \"Enroll MOK\" in MokManager and type the password", r.new.join(", ")));
        }
        written.mok_requested = r.new;
    }
    if config.boot_entry {
        let entry = boot_entry(baked, sector_size)?;
        let number = write_boot_entry(&vars, &entry)?;
        progress.info(&format!("firmware boot entry {} \"{}\" written: {} on partition {}, first in BootOrder", load_option::boot_variable(number), entry.label, entry.loader, entry.esp.number));
        written.boot_entry = Some(load_option::boot_variable(number));
    }
    Ok(written)
}

/// A boot entry: the label, the ESP and the loader on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    pub label: String,
    pub esp: HardDrive,
    /// `\EFI\<vendor>\shimx64.efi`.
    pub loader: String,
}

fn boot_entry(baked: &Baked, sector_size: u64) -> Result<BootEntry> {
    let esp = baked.plan.part(Role::Esp).context("the disk has no ESP: no firmware boot entry")?;
    let loader = baked.system.bootloader.uefi_loader.as_ref().context("no UEFI bootloader was installed: no firmware boot entry")?;
    Ok(BootEntry {
        label: baked.system.firmware.product_name.clone(),
        esp: HardDrive { number: esp.number, start: esp.offset / sector_size, size: esp.size / sector_size, guid: crate::efi::guid_bytes(&esp.guid)? },
        loader: format!("\\{}", loader.replace('/', "\\")),
    })
}

/// Writes `entry` as a new `Boot####` first in `BootOrder`, then deletes the entries with the
/// same label (compared as bootupd does, ignoring case), as `efibootmgr --create` after
/// bootupd's `clear_efi_target`; returns the new entry's number.
pub fn write_boot_entry(vars: &Efivars, entry: &BootEntry) -> Result<u16> {
    let option = load_option::load_option(&entry.label, &entry.esp, &entry.loader)?;
    let existing: Vec<u16> = vars.names(GLOBAL_GUID)?.iter().filter_map(|n| load_option::boot_number(n)).collect();
    let mut same_label = Vec::new();
    for &n in &existing {
        let old = vars.get(&load_option::boot_variable(n), GLOBAL_GUID)?;
        if old.and_then(|v| load_option::description(&v.data)).is_some_and(|d| d.eq_ignore_ascii_case(&entry.label)) {
            same_label.push(n);
        }
    }
    let number = (0..=u16::MAX).find(|n| !existing.contains(n)).context("every Boot#### number is taken")?;
    vars.set(&load_option::boot_variable(number), GLOBAL_GUID, NV_BS_RT, &option).context("writing the firmware boot entry")?;
    let order = vars.get("BootOrder", GLOBAL_GUID)?.map(|v| load_option::parse_boot_order(&v.data)).unwrap_or_default();
    let new_order: Vec<u16> = std::iter::once(number).chain(order.into_iter().filter(|n| *n != number && !same_label.contains(n))).collect();
    vars.set("BootOrder", GLOBAL_GUID, NV_BS_RT, &load_option::boot_order_bytes(&new_order)).context("writing BootOrder")?;
    for n in same_label {
        vars.delete(&load_option::boot_variable(n), GLOBAL_GUID)?;
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_first_and_same_label_replaced() {
        let dir = std::env::temp_dir().join(format!("kiln-nvram-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vars = Efivars::new(&dir);
        let hd = HardDrive { number: 2, start: 4096, size: 1048576, guid: [7; 16] };
        let other = load_option::load_option("UEFI Misc Device", &hd, "\\EFI\\BOOT\\BOOTX64.EFI").unwrap();
        let stale = load_option::load_option("debian gnu/linux", &hd, "\\EFI\\debian\\shimx64.efi").unwrap();
        vars.set("Boot0000", GLOBAL_GUID, NV_BS_RT, &other).unwrap();
        vars.set("Boot0001", GLOBAL_GUID, NV_BS_RT, &stale).unwrap();
        vars.set("BootOrder", GLOBAL_GUID, NV_BS_RT, &load_option::boot_order_bytes(&[0, 1])).unwrap();
        let entry = BootEntry { label: "Debian GNU/Linux".into(), esp: hd.clone(), loader: "\\EFI\\debian\\shimx64.efi".into() };
        assert_eq!(write_boot_entry(&vars, &entry).unwrap(), 2);
        let written = vars.get("Boot0002", GLOBAL_GUID).unwrap().unwrap();
        assert_eq!(written.attributes, 7);
        assert_eq!(written.data, load_option::load_option("Debian GNU/Linux", &hd, "\\EFI\\debian\\shimx64.efi").unwrap());
        assert_eq!(load_option::parse_boot_order(&vars.get("BootOrder", GLOBAL_GUID).unwrap().unwrap().data), [2, 0]);
        assert!(vars.get("Boot0001", GLOBAL_GUID).unwrap().is_none(), "the same-label entry is gone");
        assert!(vars.get("Boot0000", GLOBAL_GUID).unwrap().is_some());
        // Again: the number freed is reused, the previous entry replaced.
        assert_eq!(write_boot_entry(&vars, &entry).unwrap(), 1);
        assert_eq!(load_option::parse_boot_order(&vars.get("BootOrder", GLOBAL_GUID).unwrap().unwrap().data), [1, 0]);
        assert_eq!(vars.names(GLOBAL_GUID).unwrap(), ["Boot0000", "Boot0001", "BootOrder"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
