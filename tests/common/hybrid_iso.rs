//! Checks of a hybrid ISO (El Torito BIOS + UEFI, MBR + GPT) through xorriso's reports.

use std::path::Path;
use std::process::Command;

use super::run;

pub fn sha(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path)).split_whitespace().next().unwrap().to_string()
}

/// `xorriso -indev ISO REPORT plain`, its padded columns reduced to one space between words.
pub fn xorriso(iso: &Path, report: &str) -> String {
    let out = Command::new("xorriso").arg("-indev").arg(iso).args([report, "plain"]).output().unwrap();
    assert!(out.status.success(), "xorriso {report}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n").collect()
}

/// Two El Torito entries (BIOS: GRUB's El Torito core, no emulation, 4 sectors, boot-info
/// table; UEFI) and a GRUB hybrid MBR with a GPT naming the ISO 9660 and EFI partitions.
/// Returns the system area report for further checks.
pub fn assert_hybrid_boot(iso: &Path) -> String {
    let el_torito = xorriso(iso, "-report_el_torito");
    let lines: Vec<&str> = el_torito.lines().filter(|l| l.starts_with("El Torito boot img :")).collect();
    assert_eq!(lines.len(), 2, "{el_torito}");
    // "El Torito boot img : N Pltf B Emul Ld_seg Hdpt Ldsiz LBA"
    let fields = |l: &str| l.split_once(':').unwrap().1.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(fields(lines[0])[..7], ["1", "BIOS", "y", "none", "0x0000", "0x00", "4"], "{el_torito}");
    assert_eq!(fields(lines[1])[..4], ["2", "UEFI", "y", "none"], "{el_torito}");
    assert!(el_torito.contains("El Torito img path : 1 /boot/grub/i386-pc/eltorito.img"), "{el_torito}");
    assert!(el_torito.contains("El Torito img opts : 1 boot-info-table grub2-boot-info"), "{el_torito}");
    let area = xorriso(iso, "-report_system_area");
    for want in ["System area summary: MBR protective-msdos-label grub2-mbr", "GPT partname local : 1 ISO9660", "GPT partname local : 2 EFI"] {
        assert!(area.contains(want), "no {want:?} in:\n{area}");
    }
    area
}
