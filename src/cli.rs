//! The command line: parses arguments and hands each command to its stage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::image::OpenOptions;
use crate::inspect;
use crate::progress::{Progress, ProgressMode};

#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = "Bake bootable container images into disk images and install them")]
pub struct Cli {
    /// How to report progress: bars on a terminal, plain lines otherwise, or JSON events.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build disk images (raw, qcow2, vmdk, ova, vhd, gce, ami…) from a bootable container image.
    Bake(BakeArgs),
    /// Install a bootable container image onto a disk or a mounted filesystem.
    #[command(subcommand)]
    Install(InstallCommand),
    /// Look at and unpack container images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Convert an existing raw disk image into other formats.
    Convert(ConvertArgs),
}

/// Options every command that reads an image shares.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Architecture to pick from a multi-platform image (default: this machine's).
    #[arg(long)]
    pub target_arch: Option<String>,
    /// Skip TLS certificate verification for registries (a local registry).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_verify: bool,
}

#[derive(Args, Debug)]
pub struct BakeArgs {
    /// The image: oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, docker://REF,
    /// containers-storage:REF, or a bare registry reference.
    pub image: String,
    /// Output types, repeatable or comma-separated: raw, qcow2, vmdk, vhd, gce, ova.
    #[arg(long = "type", value_delimiter = ',', default_value = "qcow2")]
    pub types: Vec<String>,
    /// Directory the outputs are written under.
    #[arg(long, default_value = "output")]
    pub output: PathBuf,
    /// Root filesystem type (default: the image's install configuration).
    #[arg(long)]
    pub rootfs: Option<String>,
    /// Partition layout: a name from layouts/ or a TOML file.
    #[arg(long)]
    pub layout: Option<String>,
    /// Disk size (e.g. 10G); default: sized from the content.
    #[arg(long)]
    pub size: Option<String>,
    /// Extra kernel argument, repeatable.
    #[arg(long = "karg")]
    pub kargs: Vec<String>,
    /// The image reference the installed system updates from.
    #[arg(long)]
    pub target_imgref: Option<String>,
    /// The ostree stateroot.
    #[arg(long, default_value = "default")]
    pub stateroot: String,
    /// Derive GUIDs, UUIDs and timestamps from this seed: same seed, same bytes.
    #[arg(long)]
    pub seed: Option<String>,
    /// Replace outputs that already exist.
    #[arg(long)]
    pub force: bool,
    /// Leave SELinux labels off although the image has a policy, and boot with `selinux=0`
    /// (bootc's option of the same name).
    #[arg(long)]
    pub disable_selinux: bool,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub ova: OvaArgs,
}

/// What an OVA's descriptor says about the virtual machine.
#[derive(Args, Debug, Clone)]
pub struct OvaArgs {
    /// The virtual machine's name in the OVA.
    #[arg(long, default_value = "kiln")]
    pub ova_name: String,
    #[arg(long, default_value_t = 2)]
    pub ova_cpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 4096)]
    pub ova_memory: u64,
    /// vSphere virtual hardware version (vmx-N).
    #[arg(long, default_value_t = 17)]
    pub ova_hw_version: u32,
    /// Firmware the virtual machine boots with.
    #[arg(long, value_parser = ["efi", "bios"], default_value = "efi")]
    pub ova_firmware: String,
    /// Turn UEFI secure boot on.
    #[arg(long)]
    pub ova_secure_boot: bool,
}

impl OvaArgs {
    pub fn options(&self) -> crate::output::OvaOptions {
        crate::output::OvaOptions {
            name: self.ova_name.clone(),
            cpus: self.ova_cpus,
            memory_mib: self.ova_memory,
            hw_version: self.ova_hw_version,
            firmware: self.ova_firmware.clone(),
            secure_boot: self.ova_secure_boot,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum InstallCommand {
    /// Install onto a whole block device, partitioning it.
    ToDisk {
        device: PathBuf,
        image: String,
        /// Wipe existing partitions and data on the device.
        #[arg(long)]
        wipe: bool,
    },
    /// Install into an already mounted filesystem tree.
    ToFilesystem { path: PathBuf, image: String },
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Show an image's digest, architecture, labels, layers and bootability.
    Inspect {
        image: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Apply an image's layers into DIR, as `umoci raw unpack` would.
    Unpack {
        image: String,
        dir: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
    },
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The raw disk image to convert.
    pub raw: PathBuf,
    /// Output types, repeatable or comma-separated.
    #[arg(long = "type", value_delimiter = ',', required = true)]
    pub types: Vec<String>,
    /// Directory the outputs are written under.
    #[arg(long, default_value = "output")]
    pub output: PathBuf,
    #[command(flatten)]
    pub ova: OvaArgs,
}

/// Firmware a disk is made to boot with.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Uefi,
    Bios,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let progress = Progress::new(cli.progress);
    match cli.command {
        Command::Bake(args) => crate::bake::run(&args, &progress),
        Command::Install(_) => not_yet("install", "a later issue"),
        Command::Image(ImageCommand::Inspect { image, json, source }) => {
            let report = inspect::inspect(&image, &source.open_options(), &progress)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                inspect::print_inspect(&report);
            }
            Ok(())
        }
        Command::Image(ImageCommand::Unpack { image, dir, source }) => {
            inspect::unpack(&image, &dir, &source.open_options(), &progress)
        }
        Command::Convert(args) => {
            crate::interrupt::install();
            crate::output::convert(&args.raw, &args.types, &args.output, &args.ova.options(), &progress)
        }
    }
}

impl SourceArgs {
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions { tls_verify: self.tls_verify, ..OpenOptions::default() }.with_arch(self.target_arch.as_deref())
    }
}

fn not_yet(command: &str, when: &str) -> anyhow::Result<()> {
    anyhow::bail!("`kiln {command}` is not built yet (it arrives with {when})")
}
