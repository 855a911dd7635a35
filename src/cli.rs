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
    /// Upload an existing raw disk image to a cloud and register it there.
    #[command(subcommand)]
    Upload(UploadCommand),
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
    /// Output types, repeatable or comma-separated: raw, qcow2, vmdk, vhd, gce, ova, iso (an
    /// installer ISO; see the --iso-… options), ami (an AMI registered in AWS; see the
    /// --aws-… options).
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
    /// Build config (bootc-image-builder's config.toml or config.json; - reads JSON from
    /// stdin): users, groups, kernel arguments, partitions, files.
    #[arg(long)]
    pub config: Option<String>,
    /// An authorized_keys file for root, installed as bootc does (a tmpfiles.d drop-in).
    #[arg(long)]
    pub root_ssh_authorized_keys: Option<PathBuf>,
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
    /// `--type iso`: the disk the installer installs to (a path such as /dev/vda, or `auto`:
    /// the only fixed disk large enough that is not the ISO); default: it lists the disks on
    /// the console and asks which one (and to confirm erasing one that holds data).
    #[arg(long, value_name = "auto|DEVICE")]
    pub iso_target_disk: Option<String>,
    /// `--type iso`: the installer reboots once the system is installed (default: it powers
    /// off, so the medium can be removed first).
    #[arg(long)]
    pub iso_reboot: bool,
    /// `--type iso`: the installer asks shim's MokManager to enroll a certificate on the
    /// installed machine's next boot (UEFI only), as `install to-disk --enroll-mok` does:
    /// `auto` takes the image's /etc/pki/akmods/certs/*.der; a DER file is carried on the ISO.
    #[arg(long, value_name = "auto|PATH.der")]
    pub iso_enroll_mok: Option<crate::install::nvram::EnrollMok>,
    /// `--type iso`: the password MokManager asks for to enroll (default: the config's
    /// `mok-password`, else Universal Blue's). The ISO carries it in the clear: it only
    /// confirms the enrollment at the machine's console.
    #[arg(long)]
    pub iso_mok_password: Option<String>,
    /// `install to-disk --root-size`: the root partition's size, the rest of the disk left
    /// unallocated (a bake sizes its disk instead).
    #[arg(skip)]
    pub root_size: Option<u64>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub ova: OvaArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
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

/// Where and how an AMI is made (`--type ami`, `kiln upload aws`).
#[derive(Args, Debug, Clone)]
pub struct AwsArgs {
    /// Region to upload to; repeat for copies in more regions (default: AWS_REGION,
    /// AWS_DEFAULT_REGION, or the profile's region).
    #[arg(long = "aws-region")]
    pub aws_regions: Vec<String>,
    /// Profile in the shared AWS config and credentials files (default: AWS_PROFILE, then
    /// the environment's keys, web identity, `default`, container, instance metadata).
    #[arg(long)]
    pub aws_profile: Option<String>,
    /// One endpoint URL for every AWS service (tests, private endpoints); default:
    /// AWS_ENDPOINT_URL, else AWS's regional endpoints.
    #[arg(long)]
    pub aws_endpoint: Option<String>,
    /// How the snapshot is made: EBS direct APIs, or an S3 upload and ImportSnapshot.
    #[arg(long, value_parser = ["ebs-direct", "import-snapshot"], default_value = "ebs-direct")]
    pub aws_upload: String,
    /// The S3 bucket for --aws-upload import-snapshot.
    #[arg(long)]
    pub aws_bucket: Option<String>,
    /// The AMI's name (default: the image's name and version).
    #[arg(long)]
    pub aws_ami_name: Option<String>,
    #[arg(long)]
    pub aws_description: Option<String>,
    /// Boot mode (default: uefi-preferred for x86_64 disks that boot both ways, uefi for arm64).
    #[arg(long, value_parser = ["uefi", "legacy-bios", "uefi-preferred"])]
    pub aws_boot_mode: Option<String>,
    /// Instance metadata service versions the AMI allows (v2: IMDSv2 only).
    #[arg(long, value_parser = ["v1", "v2"], default_value = "v2")]
    pub aws_imds: String,
    /// NitroTPM (TPM 2.0); UEFI only.
    #[arg(long)]
    pub aws_tpm: bool,
    /// Root volume size in GiB (default: the disk's size, rounded up).
    #[arg(long)]
    pub aws_volume_size: Option<u64>,
    /// A tag KEY=VALUE on the AMI and its snapshots, repeatable.
    #[arg(long = "aws-tag", value_parser = parse_tag)]
    pub aws_tags: Vec<(String, String)>,
    /// An account id allowed to launch the AMI (and create volumes from its snapshot), repeatable.
    #[arg(long = "aws-share-with")]
    pub aws_share_with: Vec<String>,
    /// Make the AMI and its snapshots public.
    #[arg(long)]
    pub aws_public: bool,
    /// Replace an AMI of the same name (deregistered, its snapshots deleted).
    #[arg(long)]
    pub aws_replace: bool,
    /// Keep what was created when something fails (default: delete it).
    #[arg(long)]
    pub aws_keep_on_error: bool,
    /// Encrypt the snapshot with the account's default EBS key.
    #[arg(long)]
    pub aws_encrypted: bool,
    /// Encrypt the snapshot with this KMS key (ARN); implies --aws-encrypted.
    #[arg(long)]
    pub aws_kms_key: Option<String>,
    /// Blocks uploaded in parallel (memory: this × 512 KiB).
    #[arg(long, default_value_t = 32)]
    pub aws_upload_threads: usize,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

impl AwsArgs {
    pub fn config(&self) -> anyhow::Result<crate::cloud::aws::Config> {
        use crate::cloud::aws::{Config, Session, UploadMethod};
        let regions = if self.aws_regions.is_empty() {
            Session::default_region(self.aws_profile.as_deref()).into_iter().collect()
        } else {
            self.aws_regions.clone()
        };
        let method = match self.aws_upload.as_str() {
            "import-snapshot" => UploadMethod::ImportSnapshot { bucket: self.aws_bucket.clone().unwrap_or_default() },
            _ if self.aws_bucket.is_some() => anyhow::bail!("--aws-bucket is for --aws-upload import-snapshot (EBS direct uploads need no bucket)"),
            _ => UploadMethod::Ebs,
        };
        Ok(Config {
            regions,
            profile: self.aws_profile.clone(),
            endpoint: self.aws_endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok().filter(|u| !u.is_empty())),
            method,
            name: self.aws_ami_name.clone(),
            description: self.aws_description.clone(),
            boot_mode: self.aws_boot_mode.clone(),
            imds_v1: self.aws_imds == "v1",
            tpm: self.aws_tpm,
            volume_size_gib: self.aws_volume_size,
            tags: self.aws_tags.clone(),
            share_with: self.aws_share_with.clone(),
            public: self.aws_public,
            replace: self.aws_replace,
            keep_on_error: self.aws_keep_on_error,
            encrypted: self.aws_encrypted || self.aws_kms_key.is_some(),
            kms_key: self.aws_kms_key.clone(),
            threads: self.aws_upload_threads.max(1),
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum UploadCommand {
    /// Upload a raw disk with the EBS direct APIs (or S3 + ImportSnapshot) and register an AMI.
    Aws {
        /// The raw disk image (a GPT disk, as `kiln bake --type raw` makes).
        raw: PathBuf,
        /// The disk's architecture (default: its GPT root partition's type).
        #[arg(long)]
        arch: Option<String>,
        #[command(flatten)]
        aws: AwsArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum InstallCommand {
    /// Install onto a whole disk, partitioning it (everything on it is lost).
    ToDisk(ToDiskArgs),
    /// Install onto mounted filesystems: ROOT, a separate /boot at ROOT/boot if mounted there,
    /// the ESP mounted at ROOT/boot/efi or else the ESP partition of ROOT's disk.
    ToFilesystem(ToFilesystemArgs),
    /// The installer ISO's job (run by its kiln-install.service): find the medium, install
    /// its payload onto the disk its settings name, power off.
    #[command(hide = true)]
    FromIso,
}

/// `kiln install to-filesystem`, with bootc's semantics.
#[derive(Args, Debug)]
pub struct ToFilesystemArgs {
    /// Where the target's root filesystem is mounted (it must be empty).
    pub root: PathBuf,
    /// The image, as for `kiln bake`.
    pub image: String,
    /// wipe: delete what the root (and /boot) filesystems hold first; alongside: keep the
    /// files there (another system's) and empty only /boot and the ESP.
    #[arg(long, value_enum)]
    pub replace: Option<Replace>,
    /// How the installed system names its root filesystem (`root=` and fstab), e.g.
    /// `LABEL=root`; default `UUID=` of the filesystem at ROOT; empty: no `root=` at all.
    #[arg(long, value_name = "SPEC")]
    pub root_mount_spec: Option<String>,
    /// How the installed system names /boot (`boot=` and its fstab line); default `UUID=` of
    /// the filesystem mounted at ROOT/boot.
    #[arg(long, value_name = "SPEC")]
    pub boot_mount_spec: Option<String>,
    #[command(flatten)]
    pub deployment: InstallDeploymentArgs,
}

/// What both install commands take for the deployment, as `kiln bake` does.
#[derive(Args, Debug)]
pub struct InstallDeploymentArgs {
    /// Extra kernel argument, repeatable.
    #[arg(long = "karg")]
    pub kargs: Vec<String>,
    /// The image reference the installed system updates from.
    #[arg(long)]
    pub target_imgref: Option<String>,
    /// The ostree stateroot.
    #[arg(long, default_value = "default")]
    pub stateroot: String,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    Wipe,
    Alongside,
}

/// `kiln install to-disk`: bootc's option names and meanings where bootc has the option.
#[derive(Args, Debug)]
pub struct ToDiskArgs {
    /// The whole disk: /dev/sda, /dev/nvme0n1, /dev/disk/by-id/…, or a loop device attached
    /// with partition scanning.
    pub device: PathBuf,
    /// The image, as for `kiln bake`.
    pub image: String,
    /// Erase the partition table, filesystems and other signatures the disk has.
    #[arg(long)]
    pub wipe: bool,
    /// Root filesystem type: ext4, xfs or btrfs (default: the image's install configuration).
    #[arg(long)]
    pub filesystem: Option<String>,
    /// Partition layout: a name from layouts/ or a TOML file (default: bootc).
    #[arg(long)]
    pub layout: Option<String>,
    /// Size of the root partition: a number of MiB, or with a unit (20G, 512M, 1T); the rest
    /// of the disk is left unallocated (default: the root takes it).
    #[arg(long)]
    pub root_size: Option<String>,
    /// Keep what was written when the install fails (default: leave an empty partition table).
    #[arg(long)]
    pub preserve_on_error: bool,
    /// Write no firmware boot entry (by default one for the image's shim goes first in the
    /// running machine's BootOrder, when it booted through UEFI).
    #[arg(long)]
    pub no_nvram: bool,
    /// Ask shim's MokManager to enroll a certificate on the next boot, as `mokutil --import`
    /// does: `auto` takes the image's /etc/pki/akmods/certs/*.der (Universal Blue, Immutablue).
    #[arg(long, value_name = "auto|PATH.der")]
    pub enroll_mok: Option<crate::install::nvram::EnrollMok>,
    /// The password MokManager asks for to enroll (default: Universal Blue's).
    #[arg(long, default_value = crate::efi::mok::DEFAULT_PASSWORD)]
    pub mok_password: String,
    #[command(flatten)]
    pub deployment: InstallDeploymentArgs,
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
    crate::memory::share_one_heap();
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
        Command::Install(InstallCommand::ToDisk(args)) => crate::install::to_disk(&args, &progress),
        Command::Install(InstallCommand::ToFilesystem(args)) => crate::install::to_filesystem::to_filesystem(&args, &progress),
        Command::Install(InstallCommand::FromIso) => crate::install::from_iso::run(&progress),
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
        Command::Upload(UploadCommand::Aws { raw, arch, aws }) => {
            crate::interrupt::install();
            crate::cloud::upload_aws(&raw, arch.as_deref(), aws.config()?, &progress)
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
