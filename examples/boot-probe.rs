//! Boots a disk image made from the test image under QEMU and prints the boot probe's report.
//! The demo uses it; tests use the same harness (tests/common/boot.rs).
//!
//! usage: boot-probe DISK [uefi|bios|aarch64]...     (default: uefi bios; aarch64: an arm64
//! disk, UEFI on QEMU's virt machine)

#[allow(dead_code)]
#[path = "../tests/common/boot.rs"]
mod boot;

use boot::{Arch, Boot, Firmware};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(disk) = args.next().map(PathBuf::from) else {
        eprintln!("usage: boot-probe DISK [uefi|bios|aarch64]...");
        return ExitCode::from(2);
    };
    let mut modes: Vec<(Arch, Firmware)> = Vec::new();
    for a in args {
        match a.as_str() {
            "uefi" => modes.push((Arch::X86_64, Firmware::Uefi)),
            "bios" => modes.push((Arch::X86_64, Firmware::Bios)),
            "aarch64" => modes.push((Arch::Aarch64, Firmware::Uefi)),
            other => {
                eprintln!("unknown firmware {other:?}: use uefi, bios or aarch64");
                return ExitCode::from(2);
            }
        }
    }
    if modes.is_empty() {
        modes = vec![(Arch::X86_64, Firmware::Uefi), (Arch::X86_64, Firmware::Bios)];
    }
    let mut ok = true;
    for (arch, fw) in modes {
        println!("== booting {} with {fw} (QEMU, software emulation: about a minute)", disk.display());
        match (Boot { arch, ..Boot::new(&disk, fw, "demo") }).run() {
            Ok(report) => {
                println!("{report}");
                let failed = report.failed();
                if failed.is_empty() {
                    println!("== {fw}: all {} probe checks passed", report.checks.len());
                } else {
                    println!("== {fw}: failed checks: {failed:?}");
                    ok = false;
                }
            }
            Err(e) => {
                println!("{e}");
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
