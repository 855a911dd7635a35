//! Kernel arguments and root filesystem type from the image's bootc configuration, read as
//! bootc reads them: `usr/lib/bootc/install/*.toml` (and `etc/bootc/install/`, which overrides
//! a file of the same name), then `usr/lib/bootc/kargs.d/*.toml`, each in file-name order,
//! honouring `match-architectures`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

pub const INSTALL_DIRS: &[&str] = &["usr/lib/bootc/install", "etc/bootc/install", "usr/etc/bootc/install"];
pub const KARGS_D: &str = "usr/lib/bootc/kargs.d";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallToplevel {
    install: Option<InstallSection>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct InstallSection {
    root_fs_type: Option<String>,
    filesystem: Option<Filesystems>,
    kargs: Option<Vec<String>>,
    match_architectures: Option<Vec<String>>,
    block: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Filesystems {
    root: Option<RootFs>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootFs {
    #[serde(rename = "type")]
    fstype: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct KargsD {
    kargs: Vec<String>,
    match_architectures: Option<Vec<String>>,
}

/// The merged install configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InstallConfig {
    pub root_fs_type: Option<String>,
    pub kargs: Vec<String>,
}

/// The `*.toml` files of `dir` among `files` (path → content), by file name; a later
/// directory of `dirs` overrides a same-named file of an earlier one.
fn toml_files<'a>(files: &'a BTreeMap<String, Vec<u8>>, dirs: &[&str]) -> Vec<(&'a str, &'a [u8])> {
    let mut by_name: BTreeMap<&str, (&str, &[u8])> = BTreeMap::new();
    for dir in dirs {
        let prefix = format!("{dir}/");
        for (path, content) in files {
            if let Some(name) = path.strip_prefix(&prefix) {
                if !name.contains('/') && name.ends_with(".toml") {
                    by_name.insert(name, (path.as_str(), content.as_slice()));
                }
            }
        }
    }
    by_name.into_values().collect()
}

/// Merges the install configuration files as bootc does: later files override the root
/// filesystem type and extend the kargs; a file for other architectures is skipped.
pub fn install_config(files: &BTreeMap<String, Vec<u8>>, arch: &str) -> Result<InstallConfig> {
    let mut out = InstallConfig::default();
    for (path, content) in toml_files(files, INSTALL_DIRS) {
        let text = std::str::from_utf8(content).with_context(|| format!("/{path} is not UTF-8"))?;
        let parsed: InstallToplevel =
            toml::from_str(text).with_context(|| format!("/{path} in the image is not a valid bootc install configuration"))?;
        let Some(install) = parsed.install else { continue };
        if install.match_architectures.as_ref().is_some_and(|a| !a.iter().any(|x| x == arch)) {
            continue;
        }
        let _ = install.block;
        if let Some(t) = install.filesystem.and_then(|f| f.root).and_then(|r| r.fstype).or(install.root_fs_type) {
            out.root_fs_type = Some(t);
        }
        out.kargs.extend(install.kargs.unwrap_or_default());
    }
    Ok(out)
}

/// The kargs of `usr/lib/bootc/kargs.d/*.toml`, in file-name order.
pub fn kargs_d(files: &BTreeMap<String, Vec<u8>>, arch: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (path, content) in toml_files(files, &[KARGS_D]) {
        let text = std::str::from_utf8(content).with_context(|| format!("/{path} is not UTF-8"))?;
        let parsed: KargsD = toml::from_str(text).with_context(|| {
            format!("/{path} in the image is not a valid kargs.d file (expected kargs = [\"…\"] and optionally match-architectures = [\"…\"])")
        })?;
        if parsed.match_architectures.as_ref().is_some_and(|a| !a.iter().any(|x| x == arch)) {
            continue;
        }
        out.extend(parsed.kargs);
    }
    Ok(out)
}

/// True for the paths this module reads (what a scan of the image must keep).
pub fn wanted(path: &str) -> bool {
    INSTALL_DIRS.iter().chain([KARGS_D].iter()).any(|d| path.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        list.iter().map(|(p, c)| (p.to_string(), c.as_bytes().to_vec())).collect()
    }

    #[test]
    fn install_configs_merge_in_name_order_and_by_architecture() {
        let f = files(&[
            ("usr/lib/bootc/install/00-base.toml", "[install]\nroot-fs-type = \"xfs\"\nkargs = [\"a=1\"]\n"),
            ("usr/lib/bootc/install/10-more.toml", "[install.filesystem.root]\ntype = \"ext4\"\n[install]\nkargs=[\"b\"]\n"),
            ("usr/lib/bootc/install/20-arm.toml", "[install]\nmatch-architectures = [\"aarch64\"]\nkargs = [\"arm\"]\n"),
        ]);
        let c = install_config(&f, "x86_64").unwrap();
        assert_eq!(c, InstallConfig { root_fs_type: Some("ext4".into()), kargs: vec!["a=1".into(), "b".into()] });
    }

    #[test]
    fn kargs_d_in_order_and_errors_name_the_file() {
        let f = files(&[
            ("usr/lib/bootc/kargs.d/20-b.toml", "kargs = [\"b\"]\n"),
            ("usr/lib/bootc/kargs.d/10-a.toml", "kargs = [\"a\"]\nmatch-architectures = [\"x86_64\"]\n"),
            ("usr/lib/bootc/kargs.d/30-arm.toml", "kargs = [\"arm\"]\nmatch-architectures = [\"aarch64\"]\n"),
        ]);
        assert_eq!(kargs_d(&f, "x86_64").unwrap(), vec!["a", "b"]);
        let bad = files(&[("usr/lib/bootc/kargs.d/50-bad.toml", "kargs = \"not a list\"\n")]);
        let err = format!("{:#}", kargs_d(&bad, "x86_64").unwrap_err());
        assert!(err.contains("/usr/lib/bootc/kargs.d/50-bad.toml"), "{err}");
    }
}
