//! The build config file as bootc-image-builder reads it: an osbuild "blueprint"
//! (`osbuild/blueprint pkg/blueprint/*.go`), in TOML or JSON. Every table refuses keys it does
//! not know; keys kiln knows but will not honour deserialize into [`Refused`], which fails with
//! a marker the loader turns into the message of `refused::REFUSED` for that key path.

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

/// Error text that marks a refused key (replaced by the table's message for its path).
pub const REFUSED_MARK: &str = "kiln:refused";

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct Blueprint {
    pub name: Option<String>,
    pub description: Option<String>,
    pub version: Option<String>,
    // Package-level keys: an image is built by its Containerfile, not at bake time. Empty
    // lists (which blueprint tools write out) ask for nothing and are accepted.
    pub packages: Option<EmptyOnly>,
    pub modules: Option<EmptyOnly>,
    pub enabled_modules: Option<EmptyOnly>,
    pub groups: Option<EmptyOnly>,
    pub containers: Option<EmptyOnly>,
    pub distro: Option<Refused>,
    pub architecture: Option<Refused>,
    pub customizations: Option<Customizations>,
}

/// bib's JSON before 2024-05: the blueprint under a `blueprint` key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Legacy {
    pub blueprint: Blueprint,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct Customizations {
    pub user: Option<Vec<User>>,
    pub group: Option<Vec<Group>>,
    /// The old form of a user's key: `[[customizations.sshkey]] user, key`.
    pub sshkey: Option<Vec<SshKey>>,
    pub kernel: Option<Kernel>,
    pub filesystem: Option<Vec<Filesystem>>,
    pub disk: Option<Disk>,
    pub files: Option<Vec<File>>,
    pub directories: Option<Vec<Directory>>,
    pub installer: Option<Installer>,
    pub iso: Option<Iso>,
    pub hostname: Option<Refused>,
    pub timezone: Option<Refused>,
    pub locale: Option<Refused>,
    pub firewall: Option<Refused>,
    pub services: Option<Refused>,
    pub installation_device: Option<Refused>,
    pub partitioning_mode: Option<Refused>,
    pub fdo: Option<Refused>,
    pub openscap: Option<Refused>,
    pub ignition: Option<Refused>,
    pub repositories: Option<Refused>,
    pub fips: Option<Refused>,
    pub rpm: Option<Refused>,
    pub rhsm: Option<Refused>,
    pub cacerts: Option<Refused>,
    #[serde(rename = "containers-storage")]
    pub containers_storage: Option<Refused>,
    pub firstboot: Option<Refused>,
    pub dnf: Option<Refused>,
    pub sshd: Option<Refused>,
    pub bootloader: Option<Refused>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub description: Option<String>,
    pub password: Option<String>,
    pub key: Option<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub groups: Option<Vec<String>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub expiredate: Option<i64>,
    pub force_password_reset: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub gid: Option<u32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SshKey {
    pub user: String,
    pub key: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub append: Option<String>,
    /// Which kernel package: the image has its kernel.
    pub name: Option<Refused>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub mountpoint: String,
    pub minsize: Option<Size>,
    /// The old name of `minsize`.
    pub size: Option<Size>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    #[serde(rename = "type")]
    pub table_type: Option<String>,
    pub minsize: Option<Size>,
    pub start_offset: Option<Size>,
    pub sector_size: Option<u64>,
    pub partitions: Option<Vec<Partition>>,
}

/// One `[[customizations.disk.partitions]]`: the fields of all three kinds (`plain`, `btrfs`,
/// `lvm`); which may be set depends on `type` and is checked after parsing.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub minsize: Option<Size>,
    pub part_type: Option<String>,
    pub part_label: Option<String>,
    pub part_uuid: Option<String>,
    // plain
    pub mountpoint: Option<String>,
    pub label: Option<String>,
    pub fs_type: Option<String>,
    // btrfs
    pub subvolumes: Option<Vec<Subvolume>>,
    // lvm
    pub name: Option<String>,
    pub logical_volumes: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Subvolume {
    pub name: String,
    pub mountpoint: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: String,
    pub user: Option<Owner>,
    pub group: Option<Owner>,
    pub mode: Option<String>,
    pub data: Option<String>,
    pub uri: Option<Refused>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub path: String,
    pub user: Option<Owner>,
    pub group: Option<Owner>,
    pub mode: Option<String>,
    pub ensure_parents: Option<bool>,
}

/// The installer ISO's settings (issue 13). bib's Anaconda keys are refused: kiln's installer
/// is not Anaconda.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Installer {
    pub unattended: Option<bool>,
    pub target_disk: Option<String>,
    pub wipe: Option<bool>,
    pub kargs: Option<Vec<String>>,
    pub filesystem: Option<String>,
    pub enroll_mok: Option<bool>,
    pub mok_password: Option<String>,
    pub finish: Option<String>,
    pub sudo_nopasswd: Option<Refused>,
    pub kickstart: Option<Refused>,
    pub modules: Option<Refused>,
    pub bootloader: Option<Refused>,
    pub payload: Option<Refused>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Iso {
    pub volume_id: Option<String>,
    pub application_id: Option<String>,
    pub publisher: Option<String>,
}

/// A key kiln knows and refuses: any value fails with [`REFUSED_MARK`].
#[derive(Debug)]
pub struct Refused;

impl<'de> Deserialize<'de> for Refused {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d)?;
        Err(de::Error::custom(REFUSED_MARK))
    }
}

/// A list kiln accepts only empty.
#[derive(Debug)]
pub struct EmptyOnly;

impl<'de> Deserialize<'de> for EmptyOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EmptyOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EmptyOnly, A::Error> {
                match seq.next_element::<IgnoredAny>()? {
                    None => Ok(EmptyOnly),
                    Some(_) => Err(de::Error::custom(REFUSED_MARK)),
                }
            }
        }
        d.deserialize_seq(V)
    }
}

/// A file's owner: a name or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Name(String),
    Id(u32),
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Owner;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a user or group name, or a numeric id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Owner, E> {
                Ok(Owner::Name(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Owner, E> {
                u32::try_from(v).map(Owner::Id).map_err(|_| E::custom(format!("id {v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Owner, E> {
                u32::try_from(v).map(Owner::Id).map_err(|_| E::custom(format!("id {v} is not a valid id")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Owner, E> {
                if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
                    Ok(Owner::Id(v as u32))
                } else {
                    Err(E::custom(format!("id {v} is not a whole number")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A size: bytes as a number, or a string with a unit as osbuild's `datasizes.Parse` takes it
/// ("10 GiB", "512MiB", "1.5 GB", "4096").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<u64, String> {
        let t = s.trim();
        let num_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(num_end);
        if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1 {
            return Err(format!("{s:?} is not a size (a number of bytes, or e.g. \"10 GiB\", \"512 MiB\")"));
        }
        let mult: u64 = match unit.trim_start() {
            "" => 1,
            "kB" => 1000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            "TB" => 1_000_000_000_000,
            "TiB" => 1 << 40,
            u => return Err(format!("{s:?}: unknown unit {u:?} (use kB, KiB, MB, MiB, GB, GiB, TB or TiB)")),
        };
        if mult == 1 && num.contains('.') {
            return Err(format!("{s:?}: a number of bytes must be whole"));
        }
        let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
        let bytes = (v * mult as f64).round();
        if bytes > u64::MAX as f64 {
            return Err(format!("{s:?} is too large"));
        }
        Ok(bytes as u64)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"10 GiB\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map(Size).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v).map(Size).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
                if v < 0.0 {
                    return Err(E::custom("a size cannot be negative"));
                }
                Ok(Size(v as u64))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::Size;

    #[test]
    fn sizes_as_osbuild_parses_them() {
        assert_eq!(Size::parse("10 GiB"), Ok(10 << 30));
        assert_eq!(Size::parse("512MiB"), Ok(512 << 20));
        assert_eq!(Size::parse("1.5 GiB"), Ok(3 << 29));
        assert_eq!(Size::parse("2 GB"), Ok(2_000_000_000));
        assert_eq!(Size::parse("4096"), Ok(4096));
        assert!(Size::parse("1.5").is_err());
        assert!(Size::parse("10 G").is_err());
        assert!(Size::parse("GiB").is_err());
    }
}
