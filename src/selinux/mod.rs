//! SELinux file labels as an image's own policy assigns them, computed the way ostree and
//! bootc get them from libselinux 3.11 (`selabel_lookup_raw` on the policy's
//! `contexts/files/file_contexts`), without libselinux and without running anything from
//! the image.
//!
//! The policy is found as ostree's `SePolicy::new_at` finds it: `etc/selinux/config`, else
//! `usr/etc/selinux/config` (in an ostree commit `/etc` is `/usr/etc`; ostree switches to
//! `usr/etc` when the `etc/selinux` directory is missing, kiln when its `config` is, which
//! differs only for an image with an `etc/selinux` that has no config); labelling is on only
//! when `SELINUX=` starts with `enforcing` or `permissive`; `SELINUXTYPE=` names the policy
//! directory beside the config. Its `contexts/files/` holds `file_contexts` (required),
//! `.homedirs` and `.local` (optional inputs, in rising priority), `.subs` and `.subs_dist`
//! (path aliases).
//!
//! `.bin` files are not read: libselinux prefers `X.bin` over `X` when it is not older (always
//! the case in an ostree commit, where every mtime is 0), but the `.bin` is compiled from `X`
//! by the same `semodule` run, so the text carries the same specs. An input that exists only
//! as `.bin` is an error rather than silently skipped.
//!
//! `pattern` compiles the regexes (PCRE2 semantics), `file_contexts` parses the files,
//! `labeler` does the lookups with libselinux's index.

pub mod file_contexts;
pub mod labeler;
pub mod pattern;

use std::collections::BTreeMap;

use anyhow::{bail, Result};

pub use file_contexts::Kind;
pub use labeler::Labeler;

/// Where an image keeps its SELinux configuration, in the order ostree looks.
const SELINUX_DIRS: &[&str] = &["etc/selinux", "usr/etc/selinux"];
/// The inputs of a policy's file labels, after `file_contexts`, with their input numbers.
const OPTIONAL_INPUTS: &[(&str, u8)] = &[(".homedirs", 1), (".local", 2)];
const FILE_CONTEXTS: &str = "contexts/files/file_contexts";

/// Whether the image file at `path` (relative, as `etc/selinux/config`) is one policy
/// discovery may read: for scans that keep only the files a later step needs.
pub fn wanted(path: &str) -> bool {
    SELINUX_DIRS.iter().any(|d| {
        path.strip_prefix(d).and_then(|r| r.strip_prefix('/')).is_some_and(|r| {
            r == "config"
                || r.split_once('/').is_some_and(|(_, f)| {
                    f.strip_prefix(FILE_CONTEXTS).is_some_and(|s| matches!(s, "" | ".homedirs" | ".local" | ".subs" | ".subs_dist"))
                })
        })
    })
}

/// An image's SELinux policy, as far as labelling files goes.
pub struct Policy {
    name: String,
    mode: String,
    dir: String,
    labeler: Labeler,
}

impl Policy {
    /// Finds and loads the policy of an image whose files `read` returns (path relative to the
    /// image root, as `etc/selinux/config` → bytes, None when absent). `list` gives the names in
    /// a directory (only used to say which policies exist when `SELINUXTYPE` names a missing
    /// one). Ok(None): the image has no SELinux config, or it disables SELinux.
    pub fn load(read: &dyn Fn(&str) -> Option<Vec<u8>>, list: &dyn Fn(&str) -> Vec<String>) -> Result<Option<Policy>> {
        let Some((selinux_dir, config)) = SELINUX_DIRS.iter().find_map(|d| read(&format!("{d}/config")).map(|c| (*d, c))) else {
            return Ok(None);
        };
        let config_path = format!("{selinux_dir}/config");
        let Some((mode, name)) = parse_config(&config) else { return Ok(None) };
        let Some(name) = name else {
            bail!("{config_path}: SELINUX={mode} but no SELINUXTYPE= line: the image's SELinux config names no policy");
        };
        let dir = format!("{selinux_dir}/{name}");
        let fc = format!("{dir}/{FILE_CONTEXTS}");
        let exists = |fc: &str| read(fc).is_some() || read(&format!("{fc}.bin")).is_some();
        if !exists(&fc) {
            let mut have: Vec<String> = list(selinux_dir)
                .into_iter()
                .filter(|p| exists(&format!("{selinux_dir}/{p}/{FILE_CONTEXTS}")))
                .collect();
            have.sort();
            let have = if have.is_empty() { "no policy with file contexts".to_string() } else { format!("policies {}", have.join(", ")) };
            bail!("{config_path}: SELINUXTYPE={name} but the image has no {fc}; it has {have}: fix SELINUXTYPE or install that policy in the image");
        }
        let labeler = Labeler::load(&fc, read)?;
        // ostree refuses a policy that cannot label `/`.
        if labeler.lookup(b"/", libc::S_IFDIR | 0o755).is_none() {
            bail!("{fc}: the policy gives no label to / (ostree refuses such a policy)");
        }
        Ok(Some(Policy { name: name.to_string(), mode, dir, labeler }))
    }

    /// [`Policy::load`] over files already read from the image (path → content, as
    /// `tree::scan` keeps them with [`wanted`]).
    pub fn from_files(files: &BTreeMap<String, Vec<u8>>) -> Result<Option<Policy>> {
        let list = |dir: &str| -> Vec<String> {
            let prefix = format!("{dir}/");
            let mut names: Vec<String> = files
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(k, _)| k[prefix.len()..].split('/').next().map(str::to_string))
                .collect();
            names.dedup();
            names
        };
        Policy::load(&|p| files.get(p).cloned(), &list)
    }

    /// [`Policy::load`] over an unpacked image tree on disk.
    pub fn from_dir(root: &std::path::Path) -> Result<Option<Policy>> {
        let read = |p: &str| std::fs::read(root.join(p)).ok();
        let list = |d: &str| -> Vec<String> {
            std::fs::read_dir(root.join(d))
                .map(|it| it.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        };
        Policy::load(&read, &list)
    }

    /// `SELINUXTYPE`, e.g. `targeted`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `enforcing` or `permissive`, as the config says.
    pub fn mode(&self) -> &str {
        &self.mode
    }

    /// The policy's directory in the image (`etc/selinux/<name>`).
    pub fn dir(&self) -> &str {
        &self.dir
    }

    pub fn labeler(&self) -> &Labeler {
        &self.labeler
    }
}

/// `SELINUX=` and `SELINUXTYPE=` as ostree reads them (lines starting with the key, the last
/// one wins; the type is trimmed). None when SELinux is not enforcing or permissive.
fn parse_config(config: &[u8]) -> Option<(String, Option<String>)> {
    let text = String::from_utf8_lossy(config);
    let mut mode = None;
    let mut name = None;
    for line in text.split('\n') {
        if let Some(t) = line.strip_prefix("SELINUXTYPE=") {
            name = Some(t.trim().to_string());
        } else if let Some(m) = line.strip_prefix("SELINUX=") {
            // No trimming: ostree compares the start of the value, ignoring case.
            mode = ["enforcing", "permissive"]
                .into_iter()
                .find(|k| m.get(..k.len()).is_some_and(|v| v.eq_ignore_ascii_case(k)))
                .map(str::to_string);
        }
    }
    let name = name.filter(|n| !n.is_empty());
    mode.map(|m| (m, name))
}

impl Labeler {
    /// Loads the file labels of `fc` (a `file_contexts` path as `read` takes it) and of its
    /// `.homedirs`, `.local`, `.subs` and `.subs_dist` beside it, as libselinux's file backend
    /// does (`selabel_open` with `SELABEL_OPT_PATH`).
    pub fn load(fc: &str, read: &dyn Fn(&str) -> Option<Vec<u8>>) -> Result<Labeler> {
        let Some(base) = read(fc) else {
            if read(&format!("{fc}.bin")).is_some() {
                bail!("{fc} exists only compiled ({fc}.bin): kiln reads the text form, which semodule writes beside it");
            }
            bail!("{fc} is missing");
        };
        let mut inputs = vec![labeler::Input { name: fc, number: 0, specs: file_contexts::parse(fc, &base)? }];
        let names: Vec<String> = OPTIONAL_INPUTS.iter().map(|(s, _)| format!("{fc}{s}")).collect();
        for ((_, number), path) in OPTIONAL_INPUTS.iter().zip(&names) {
            match read(path) {
                Some(text) => inputs.push(labeler::Input { name: path, number: *number, specs: file_contexts::parse(path, &text)? }),
                None if read(&format!("{path}.bin")).is_some() => {
                    bail!("{path} exists only compiled ({path}.bin): kiln reads the text form, which semodule writes beside it")
                }
                None => {}
            }
        }
        let subs = |suffix: &str| read(&format!("{fc}{suffix}")).map(|t| file_contexts::parse_subs(&t)).unwrap_or_default();
        Labeler::new(inputs, subs(".subs"), subs(".subs_dist"))
    }

    /// The `security.selinux` value ostree stores for `path` (the context and a trailing NUL),
    /// looked up as `ostree_sepolicy_get_label` does (which asks for `/mnt` in place of
    /// `/proc`); None when the policy gives no label.
    pub fn xattr_value(&self, path: &[u8], mode: u32) -> Option<Vec<u8>> {
        let path = if path == b"/proc" { b"/mnt" } else { path };
        self.lookup(path, mode).map(|c| [c.as_bytes(), b"\0"].concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Result<Option<Policy>> {
        let files: BTreeMap<String, Vec<u8>> = files.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        Policy::from_files(&files)
    }

    const FC: &str = "/ system_u:object_r:root_t:s0\n/proc -d system_u:object_r:proc_t:s0\n/mnt -d system_u:object_r:mnt_t:s0\n";

    #[test]
    fn discovery_follows_ostree() {
        assert!(load(&[]).unwrap().is_none());
        assert!(load(&[("etc/selinux/config", "SELINUX=disabled\nSELINUXTYPE=targeted\n")]).unwrap().is_none());
        let p = load(&[
            ("usr/etc/selinux/config", "# x\nSELINUX=Permissive # yes\nSELINUXTYPE= targeted \r\n"),
            ("usr/etc/selinux/targeted/contexts/files/file_contexts", FC),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((p.name(), p.mode(), p.dir()), ("targeted", "permissive", "usr/etc/selinux/targeted"));
        assert_eq!(p.labeler().spec_count(), 3);
        assert_eq!(p.labeler().xattr_value(b"/proc", libc::S_IFDIR).unwrap(), b"system_u:object_r:mnt_t:s0\0");
    }

    #[test]
    fn a_missing_policy_type_names_what_the_image_has() {
        let e = load(&[
            ("etc/selinux/config", "SELINUX=enforcing\nSELINUXTYPE=mls\n"),
            ("etc/selinux/targeted/contexts/files/file_contexts", FC),
            ("etc/selinux/semanage.conf", ""),
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("SELINUXTYPE=mls") && e.contains("etc/selinux/mls/contexts/files/file_contexts") && e.contains("policies targeted"), "{e}");
    }

    #[test]
    fn wanted_files() {
        assert!(wanted("etc/selinux/config"));
        assert!(wanted("usr/etc/selinux/targeted/contexts/files/file_contexts.subs_dist"));
        assert!(!wanted("etc/selinux/targeted/contexts/files/file_contexts.bin"));
        assert!(!wanted("etc/selinux/targeted/policy/policy.33"));
    }
}
