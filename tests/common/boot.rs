//! Boot harness: boots a disk image under QEMU (TCG; KVM is unreliable on these machines) in
//! UEFI (OVMF) or BIOS (SeaBIOS) mode, never modifying the image (`snapshot=on`), and returns
//! the report the test image's boot probe prints on the second serial port.
//!
//! aarch64 disks boot on QEMU's `virt` machine with AAVMF (UEFI only): the console on its PL011,
//! the probe's report on a PCI 16550 added for it (the guest's ttyS0).
//!
//! Self-contained (std only) so that tests and the demo (`examples/boot-probe.rs`) share it.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Secure Boot: the firmware that enforces it (SMM-protected variables) and a store with
/// Microsoft's keys enrolled, the ones a distribution's shim is signed with.
const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
/// Bookworm's template is blank (the firmware formats it on first boot); a copy is made per
/// boot: a variable store from a boot with other devices can send AAVMF to its shell.
const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
/// The aarch64 machine: `virt` with a CPU that TCG emulates fast (and that has 16 KiB pages).
/// One vCPU: with two, TCG's arm64 guests now and then hang in the kernel (a soft lockup in
/// process teardown, seen in CI and here on the btrfs boot), which one vCPU cannot meet.
const AARCH64_MACHINE: [&str; 6] = ["-machine", "virt", "-cpu", "neoverse-n1", "-smp", "1"];
/// The x86_64 machine: one vCPU of QEMU's baseline model. Measured with two guests at once on
/// two cores (as the test suite runs them), a test disk's UEFI boot took 160 s with `-cpu max
/// -smp 2`, 126 s with one vCPU and 85–122 s with `qemu64`: TCG emulates `max`'s extensions
/// (AVX2 code the kernel picks for crypto and RAID, 5-level paging) slowly, and a second vCPU
/// per guest only oversubscribes the host. The test images are Debian's, built for baseline
/// x86_64.
const X86_64_MACHINE: [&str; 6] = ["-machine", "q35", "-cpu", "qemu64", "-smp", "1"];
/// What a guest kernel prints when the emulator, not the image, broke it (see `Boot::boot`):
/// TCG breaking the kernel's live code patching, or a vCPU stuck in the kernel.
const TCG_FAULTS: [&str; 2] = ["Oops: int3", "watchdog: BUG: soft lockup"];
const EMULATOR_FAULT: &str = "an emulator fault, not the image's";
const MEMORY_MIB: u32 = 1536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Uefi,
    Bios,
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Firmware::Uefi => "UEFI",
            Firmware::Bios => "BIOS (SeaBIOS)",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The firmware as messages name it.
    fn describe(self, firmware: Firmware) -> &'static str {
        match (self, firmware) {
            (Arch::X86_64, Firmware::Uefi) => "UEFI (OVMF)",
            (Arch::X86_64, Firmware::Bios) => "BIOS (SeaBIOS)",
            (Arch::Aarch64, Firmware::Uefi) => "aarch64 UEFI (AAVMF)",
            (Arch::Aarch64, Firmware::Bios) => "aarch64 BIOS (none exists)",
        }
    }
}

/// How long a boot may take to report: `KILN_BOOT_TIMEOUT` seconds, else `default`.
fn boot_timeout(default: u64) -> Duration {
    Duration::from_secs(std::env::var("KILN_BOOT_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(default))
}

/// The device tree QEMU gives the aarch64 machine the harness boots (with its default memory),
/// written to `out`: what a test ships as an image's `devicetree`.
pub fn aarch64_machine_dtb(out: &Path) -> Result<(), String> {
    let status = Command::new("qemu-system-aarch64")
        .args(["-accel", "tcg"])
        .arg("-machine")
        .arg(format!("virt,dumpdtb={}", out.display()))
        .args(&AARCH64_MACHINE[2..])
        .args(["-m", &MEMORY_MIB.to_string(), "-display", "none"])
        .output()
        .map_err(|e| format!("cannot run qemu-system-aarch64: {e}"))?;
    if !out.exists() {
        return Err(format!("qemu-system-aarch64 wrote no device tree: {}", String::from_utf8_lossy(&status.stderr)));
    }
    Ok(())
}

/// What the probe reported: facts (`info`) and one pass/fail line per expectation.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub info: Vec<(String, String)>,
    pub checks: BTreeMap<String, Check>,
    /// The serial console log, kept for people reading failures.
    pub console_log: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub pass: bool,
    pub detail: String,
}

impl ProbeReport {
    pub fn info(&self, key: &str) -> Option<&str> {
        self.info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn info_all(&self, key: &str) -> Vec<&str> {
        self.info.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    pub fn failed(&self) -> Vec<&str> {
        self.checks.iter().filter(|(_, c)| !c.pass).map(|(n, _)| n.as_str()).collect()
    }

    /// Asserts that exactly the checks in `expected_failures` fail and every other check
    /// passes; a check named in `expected_failures` that passes is an error too (a probe that
    /// cannot fail proves nothing). Panics with the whole report otherwise.
    pub fn assert_outcome(&self, expected_failures: &[&str]) {
        for name in expected_failures {
            assert!(
                self.checks.contains_key(*name),
                "probe has no check named {name}\n{self}"
            );
        }
        let failed = self.failed();
        let unexpected: Vec<_> = failed.iter().filter(|n| !expected_failures.contains(n)).collect();
        let passed_but_expected: Vec<_> =
            expected_failures.iter().filter(|n| !failed.contains(n)).collect();
        assert!(
            unexpected.is_empty() && passed_but_expected.is_empty(),
            "probe outcome differs from the expected one:\n  failed but should pass: {unexpected:?}\n  \
             passed but expected to fail: {passed_but_expected:?}\n{self}"
        );
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (k, v) in &self.info {
            writeln!(f, "  {k}: {v}")?;
        }
        for (name, c) in &self.checks {
            writeln!(f, "  [{}] {name}: {}", if c.pass { "pass" } else { "FAIL" }, c.detail)?;
        }
        write!(f, "  (console log: {})", self.console_log.display())
    }
}

/// Why a boot produced no report. The message names the firmware and carries the tail of the
/// serial console log.
#[derive(Debug)]
pub struct BootError(pub String);

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BootError {}

pub struct Boot<'a> {
    pub image: &'a Path,
    pub firmware: Firmware,
    pub arch: Arch,
    /// Where the console and probe logs are kept (created if missing).
    pub log_dir: PathBuf,
    /// A name for the logs, e.g. the test's name.
    pub name: String,
    pub timeout: Duration,
    pub memory_mib: u32,
    /// The disk's logical (and physical) sector size as the guest sees it when not 512
    /// (4096: a 4Kn disk, as Apple's NVMe).
    pub logical_block_size: Option<u32>,
    /// More disks, after the image (vdb, vdc…): a path, and whether the guest's writes go
    /// into it (otherwise they are dropped, as the image's are).
    pub extra_disks: Vec<(PathBuf, bool)>,
    /// UEFI: the variable store to boot with and keep (made from OVMF's template when
    /// missing), for a test that reads what was written to it or boots again with it. By
    /// default each boot has a fresh copy, removed afterwards.
    pub vars: Option<PathBuf>,
    /// An ISO attached as an IDE CD, booted after the image (the image gets boot index 1,
    /// the CD 2: an empty image falls through to the CD).
    pub cdrom: Option<PathBuf>,
    /// An image attached as a USB stick (xHCI mass storage, read-only), booted after the
    /// image as `cdrom` is (under UEFI; under BIOS before it, see `boot_once`).
    pub usb: Option<PathBuf>,
    /// UEFI with Secure Boot enforced and Microsoft's keys enrolled.
    pub secure_boot: bool,
    /// The guest's writes to the image go into it (an installer's target), rather than being
    /// dropped.
    pub image_writable: bool,
    /// What to do when the serial console shows a text, in order: each action waits for its
    /// text after the previous one's.
    pub on_console: Vec<(String, ConsoleAction)>,
}

/// What the harness does once the console shows a text (`Boot::on_console`).
pub enum ConsoleAction {
    /// Types a line on the console (a newline is added).
    Type(String),
    /// Runs a QMP command on the machine (JSON), e.g. unplugging a device.
    Qmp(String),
}

/// The QEMU device id of the USB stick (`Boot::usb`), to unplug it.
pub const USB_DEVICE_ID: &str = "stick";

impl<'a> Boot<'a> {
    pub fn new(image: &'a Path, firmware: Firmware, name: &str) -> Self {
        let timeout = boot_timeout(420);
        let log_dir = std::env::var_os("KILN_BOOT_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("kiln-boot-logs"));
        Boot { image, firmware, arch: Arch::X86_64, logical_block_size: None, log_dir, name: name.to_string(), timeout, memory_mib: MEMORY_MIB, extra_disks: Vec::new(), vars: None, cdrom: None, usb: None, secure_boot: false, image_writable: false, on_console: Vec::new() }
    }

    /// An aarch64 disk (UEFI, on `virt`).
    pub fn aarch64(image: &'a Path, name: &str) -> Self {
        // Slower than x86_64: one vCPU, and arm64 emulated on x86_64.
        Boot { arch: Arch::Aarch64, timeout: boot_timeout(600), ..Boot::new(image, Firmware::Uefi, name) }
    }

    /// Boots the image and waits for the probe's report (or the timeout).
    pub fn run(&self) -> Result<ProbeReport, BootError> {
        match self.boot(None)? {
            Outcome::Report(r) => Ok(r),
            Outcome::Console(_) => unreachable!("no console text was awaited"),
        }
    }

    /// Boots the image and waits until its serial console shows `text`, for a boot that is
    /// meant to stop on the way (in the initramfs, say); returns the console's last lines.
    /// A probe report (the system came up) or the timeout is an error.
    pub fn until_console(&self, text: &str) -> Result<String, BootError> {
        match self.boot(Some(text))? {
            Outcome::Console(tail) => Ok(tail),
            Outcome::Report(r) => Err(BootError(format!("{} boot of {}: the system came up instead of showing {text:?}:\n{r}", self.arch.describe(self.firmware), self.image.display()))),
        }
    }

    /// Boots once more when the guest kernel died of an emulator fault (QEMU's TCG running
    /// the kernel's live code patching on two vCPUs: "Oops: int3", seen once in a CI run, in
    /// a SeaBIOS boot of sid's 7.2 kernel; a soft lockup); any other failure is the boot's result.
    fn boot(&self, console_text: Option<&str>) -> Result<Outcome, BootError> {
        match self.boot_once(console_text) {
            Err(BootError(m)) if m.contains(EMULATOR_FAULT) => {
                eprintln!("{m}\nbooting once more");
                self.boot_once(console_text)
            }
            outcome => outcome,
        }
    }

    fn boot_once(&self, console_text: Option<&str>) -> Result<Outcome, BootError> {
        let err = |m: String| BootError(format!("{} boot of {}: {m}", self.arch.describe(self.firmware), self.image.display()));
        fs::create_dir_all(&self.log_dir).map_err(|e| err(format!("log dir: {e}")))?;
        let fw = match self.firmware {
            Firmware::Uefi => "uefi",
            Firmware::Bios => "bios",
        };
        let console = self.log_dir.join(format!("{}-{fw}.console.log", self.name));
        let probe = self.log_dir.join(format!("{}-{fw}.probe.log", self.name));
        let vars = self.vars.clone().unwrap_or_else(|| self.log_dir.join(format!("{}-{fw}.OVMF_VARS.fd", self.name)));
        for f in [&console, &probe] {
            let _ = fs::remove_file(f);
        }
        if !self.image.exists() {
            return Err(err("image does not exist".into()));
        }

        let (qemu, code, vars_template) = match (self.arch, self.secure_boot) {
            (Arch::X86_64, false) => ("qemu-system-x86_64", OVMF_CODE, OVMF_VARS),
            (Arch::X86_64, true) => ("qemu-system-x86_64", OVMF_CODE_SECBOOT, OVMF_VARS_MS),
            (Arch::Aarch64, _) => ("qemu-system-aarch64", AAVMF_CODE, AAVMF_VARS),
        };
        if self.secure_boot && (self.arch != Arch::X86_64 || self.firmware != Firmware::Uefi) {
            return Err(err("Secure Boot is an x86_64 UEFI boot here".into()));
        }
        if self.arch == Arch::Aarch64 && self.firmware == Firmware::Bios {
            return Err(err("aarch64 machines have no BIOS".into()));
        }
        let mut cmd = Command::new(qemu);
        cmd.args(["-accel", "tcg"]);
        match self.arch {
            // The Secure Boot firmware keeps its variables in SMM, out of the OS's reach.
            Arch::X86_64 if self.secure_boot => cmd.args(["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]).args(&X86_64_MACHINE[2..]),
            Arch::X86_64 => cmd.args(X86_64_MACHINE),
            Arch::Aarch64 => cmd.args(AARCH64_MACHINE),
        };
        cmd.args(["-m", &self.memory_mib.to_string()])
            // No -no-reboot: shim's fallback loader (fbx64.efi) resets once after it has
            // written the firmware boot entry, as on real hardware.
            .args(["-nographic", "-monitor", "none", "-nic", "none"]);
        // SeaBIOS boots only the first of the hard disks (drive 0x80), a USB stick being one:
        // under BIOS the stick comes first, as a user picks it in the boot menu.
        let stick_first = self.usb.is_some() && self.firmware == Firmware::Bios;
        cmd
            .arg("-drive")
            .arg(format!(
                "file={},format={},if=none,id=disk0{}",
                self.image.display(),
                format_of(self.image),
                if self.image_writable { "" } else { ",snapshot=on" }
            ))
            .arg("-device")
            .arg(match self.logical_block_size {
                Some(n) => format!("virtio-blk-pci,drive=disk0,logical_block_size={n},physical_block_size={n}"),
                None => "virtio-blk-pci,drive=disk0".to_string(),
            } + match (self.cdrom.is_some() || self.usb.is_some(), stick_first) {
                (false, _) => "",
                (true, false) => ",bootindex=1",
                (true, true) => ",bootindex=2",
            });
        if let Some(iso) = &self.cdrom {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=none,id=cd0,readonly=on", iso.display()))
                .arg("-device")
                .arg("ide-cd,drive=cd0,bootindex=2");
        }
        if let Some(stick) = &self.usb {
            cmd.args(["-device", "qemu-xhci,id=xhci"])
                .arg("-drive")
                .arg(format!("file={},format=raw,if=none,id=usb0,readonly=on", stick.display()))
                .arg("-device")
                .arg(format!("usb-storage,bus=xhci.0,drive=usb0,bootindex={},id={USB_DEVICE_ID}", if stick_first { 1 } else { 2 }));
        }
        for (i, (disk, writable)) in self.extra_disks.iter().enumerate() {
            cmd.arg("-drive")
                .arg(format!("file={},format={},if=none,id=extra{i}{}", disk.display(), format_of(disk), if *writable { "" } else { ",snapshot=on" }))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=extra{i}"));
        }
        // A console the test acts on is a socket QEMU waits on (nothing is lost before the
        // harness connects); the harness copies what it reads into the console log. QMP gets
        // a socket of its own.
        let socket = |what: &str| std::env::temp_dir().join(format!("kiln-{what}-{}-{}.sock", std::process::id(), self.name));
        let (socket, qmp) = (socket("console"), socket("qmp"));
        if self.on_console.is_empty() {
            cmd.arg("-serial").arg(format!("file:{}", console.display()));
        } else {
            for s in [&socket, &qmp] {
                let _ = fs::remove_file(s);
            }
            cmd.arg("-chardev").arg(format!("socket,id=console,path={},server=on,wait=on", socket.display())).args(["-serial", "chardev:console"]);
            cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", qmp.display()));
        }
        match self.arch {
            Arch::X86_64 => cmd.arg("-serial").arg(format!("file:{}", probe.display())),
            // virt has one PL011 (QEMU 7.2): the probe gets a PCI 16550, after the disk so
            // that the disk keeps its PCI slot.
            Arch::Aarch64 => cmd
                .arg("-chardev")
                .arg(format!("file,id=probe,path={}", probe.display()))
                .args(["-device", "pci-serial,chardev=probe"]),
        };
        if self.firmware == Firmware::Uefi {
            // A private copy of the variable store: the image's shim fallback writes boot
            // entries there, and each boot must start from the same firmware state.
            if self.vars.is_none() || !vars.exists() {
                fs::copy(vars_template, &vars).map_err(|e| err(format!("copy {vars_template}: {e}")))?;
            }
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| err(format!("cannot start {qemu}: {e}")))?;
        let mut vm = KillOnDrop(child);
        let mut typing = match self.on_console.is_empty() {
            true => None,
            false => Some(connect_console(&socket, &console, &mut vm.0).map_err(|m| err(format!("the console socket {}: {m}", socket.display())))?),
        };
        // The actions done so far, and where the console text after the last one's starts.
        let (mut acted, mut seen_end) = (0, 0);

        let started = Instant::now();
        let outcome = loop {
            if let Some(report) = parse_report(&read_lossy(&probe)) {
                break Ok(Outcome::Report(report));
            }
            let console_text_now = strip_escapes(&read_lossy(&console));
            if let (Some(stream), Some((text, action))) = (typing.as_mut(), self.on_console.get(acted)) {
                if let Some(at) = console_text_now.get(seen_end..).and_then(|t| t.find(text.as_str())) {
                    use std::io::Write;
                    let done = match action {
                        ConsoleAction::Type(line) => stream.write_all(format!("{line}\n").as_bytes()).map_err(|e| format!("cannot type {line:?} on the console: {e}")),
                        ConsoleAction::Qmp(command) => qmp_command(&qmp, command),
                    };
                    if let Err(m) = done {
                        break Err(m);
                    }
                    eprintln!("{}: after {text:?}: {action:?}", self.name);
                    (acted, seen_end) = (acted + 1, seen_end + at + text.len());
                }
            }
            if let Some(text) = console_text {
                if console_text_now.contains(text) {
                    break Ok(Outcome::Console(tail(&console, 40)));
                }
            }
            if let Some(fault) = TCG_FAULTS.iter().find(|f| console_text_now.contains(*f)) {
                break Err(format!("the guest kernel printed {fault:?}: {EMULATOR_FAULT}"));
            }
            match vm.0.try_wait() {
                Ok(Some(status)) => {
                    // The probe writes its report before powering off; read it once more.
                    if let Some(r) = parse_report(&read_lossy(&probe)) {
                        break Ok(Outcome::Report(r));
                    }
                    let mut stderr = String::new();
                    if let Some(mut e) = vm.0.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut stderr);
                    }
                    break Err(format!("QEMU exited ({status}) without a probe report. {stderr}"));
                }
                Ok(None) => {}
                Err(e) => break Err(format!("waiting for QEMU: {e}")),
            }
            if started.elapsed() > self.timeout {
                break Err(format!("no probe report within {}s", self.timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        // Give the guest a moment to power off by itself, then stop it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(outcome, Ok(Outcome::Report(_))) && Instant::now() < deadline {
            if matches!(vm.0.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(vm);
        drop(typing);
        for s in [&socket, &qmp] {
            let _ = fs::remove_file(s);
        }
        if self.vars.is_none() {
            let _ = fs::remove_file(&vars);
        }
        match outcome {
            Ok(Outcome::Report(mut report)) => {
                // What each boot costs (CI time is dominated by them).
                eprintln!("{}: {} boot reported after {}s", self.name, self.arch.describe(self.firmware), started.elapsed().as_secs());
                report.console_log = console;
                Ok(Outcome::Report(report))
            }
            Ok(console) => Ok(console),
            Err(m) => Err(err(format!(
                "{m}\n--- last lines of the serial console ({}) ---\n{}",
                console.display(),
                tail(&console, 40)
            ))),
        }
    }
}

/// Connects to the console socket QEMU listens on (it waits for this before starting the
/// guest) and copies what the guest writes into the `log` file from a thread; returns the
/// stream to type on.
fn connect_console(socket: &Path, log: &Path, qemu: &mut Child) -> Result<std::os::unix::net::UnixStream, String> {
    let started = Instant::now();
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) => {
                if let Ok(Some(status)) = qemu.try_wait() {
                    return Err(format!("QEMU exited ({status}) before listening"));
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return Err(format!("cannot connect: {e}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    let mut file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    // Ends when QEMU closes the socket.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut file));
    Ok(stream)
}

impl fmt::Debug for ConsoleAction {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ConsoleAction::Type(line) => write!(f, "typed {line:?}"),
            ConsoleAction::Qmp(command) => write!(f, "ran {command}"),
        }
    }
}

/// Runs one QMP command on the machine listening on `socket`: the greeting, the capabilities
/// handshake, then the command; an error reply is an error.
fn qmp_command(socket: &Path, command: &str) -> Result<(), String> {
    use std::io::{BufRead, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("QMP {}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let mut reader = std::io::BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    // Each command's reply is the next line with "return" or "error" (events come between).
    let mut reply = |sent: Option<&str>| -> Result<String, String> {
        if let Some(c) = sent {
            writer.write_all(format!("{c}\n").as_bytes()).map_err(|e| format!("QMP: {e}"))?;
        }
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return Err("QMP: the socket closed".into()),
                Ok(_) if sent.is_none() || line.contains("\"return\"") || line.contains("\"error\"") => return Ok(line),
                Ok(_) => {}
                Err(e) => return Err(format!("QMP: {e}")),
            }
        }
    };
    reply(None)?;
    for c in [r#"{"execute": "qmp_capabilities"}"#, command] {
        let r = reply(Some(c))?;
        if r.contains("\"error\"") {
            return Err(format!("QMP {c}: {}", r.trim()));
        }
    }
    Ok(())
}

enum Outcome {
    Report(ProbeReport),
    /// The awaited console text appeared; the console's last lines.
    Console(String),
}

/// Parses the probe's report (format version 1, see scripts/test-image/probe/kiln-probe).
/// None until the end marker has been written.
pub fn parse_report(log: &str) -> Option<ProbeReport> {
    let begin = log.find("KILN-PROBE-BEGIN 1")?;
    let body = &log[begin..];
    let end = body.find("KILN-PROBE-END")?;
    let mut report = ProbeReport::default();
    for line in body[..end].lines().skip(1) {
        let line = line.trim_end_matches('\r');
        let mut words = line.splitn(2, ' ');
        match (words.next(), words.next()) {
            (Some("info"), Some(rest)) => {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                report.info.push((k.to_string(), v.to_string()));
            }
            (Some("check"), Some(rest)) => {
                let mut parts = rest.splitn(3, ' ');
                let name = parts.next().unwrap_or_default().to_string();
                let pass = parts.next() == Some("pass");
                let detail = parts.next().unwrap_or_default().to_string();
                report.checks.insert(name, Check { pass, detail });
            }
            _ => {}
        }
    }
    Some(report)
}

fn format_of(image: &Path) -> &'static str {
    match image.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => "qcow2",
        Some("vmdk") => "vmdk",
        Some("vhd") => "vpc",
        _ => "raw",
    }
}

/// The firmware writes non-UTF-8 box-drawing bytes to the serial ports.
fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = read_lossy(path);
    // GRUB and the firmware paint the screen with escape sequences; keep the text readable.
    let clean: String = strip_escapes(&text);
    let all: Vec<&str> = clean.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                while let Some(&n) = chars.peek() {
                    chars.next();
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}
