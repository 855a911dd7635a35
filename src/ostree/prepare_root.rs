//! The image's `ostree/prepare-root.conf`, read as ostree and bootc read it: which composefs
//! mode `ostree-prepare-root` boots the deployment with, and so whether the objects need
//! fs-verity.
//!
//! Files: `/usr/lib/ostree/prepare-root.conf`, then `/etc/ostree/prepare-root.conf` (in a
//! commit, `/usr/etc/…`); ostree loads both into one GKeyFile, each load replacing the last
//! (`otcore_load_config`), so `/etc`'s wins when present, and an unparsable one fails the boot
//! either way. The syntax is GLib's key file (`g_key_file_load_from_data`); the value of
//! `[composefs] enabled` is taken raw (`g_key_file_get_value`) and parsed as
//! `otcore_load_rootfs_config` does: `signed`, `verity`, else a tristate (`yes`/`true`/`1`,
//! `no`/`false`/`0`, `maybe`); absent means no (ostree ≥ 2025.1). The kernel argument
//! `ostree.prepare-root.composefs=` overrides it at boot, except that it never lifts the
//! fs-verity requirement.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

pub const USR_LIB: &str = "usr/lib/ostree/prepare-root.conf";
pub const ETC: &str = "etc/ostree/prepare-root.conf";
/// `/etc`'s file as an ostree commit holds it.
pub const USR_ETC: &str = "usr/etc/ostree/prepare-root.conf";
const KARG: &str = "ostree.prepare-root.composefs=";

/// `[composefs] enabled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enabled {
    No,
    Maybe,
    Yes,
    /// Yes, and every object must have fs-verity.
    Verity,
    /// Verity, and the image's digest signed by a key in the initramfs.
    Signed,
}

impl Enabled {
    pub fn as_str(self) -> &'static str {
        match self {
            Enabled::No => "no",
            Enabled::Maybe => "maybe",
            Enabled::Yes => "yes",
            Enabled::Verity => "verity",
            Enabled::Signed => "signed",
        }
    }

    fn parse(value: &str) -> Option<Enabled> {
        Some(match value {
            "signed" => Enabled::Signed,
            "verity" => Enabled::Verity,
            "yes" | "true" | "1" => Enabled::Yes,
            "no" | "false" | "0" => Enabled::No,
            "maybe" => Enabled::Maybe,
            _ => return None,
        })
    }
}

/// The composefs configuration the image boots with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareRoot {
    pub enabled: Enabled,
    /// Where `enabled` was set (`/usr/lib/ostree/prepare-root.conf:2`), if anywhere.
    pub origin: Option<String>,
}

/// The paths (image or commit convention, no leading slash) this module reads.
pub fn wanted(path: &str) -> bool {
    [USR_LIB, ETC, USR_ETC].contains(&path)
}

/// Reads the configuration from the image's files (by path, image or commit convention).
/// Errors name the file and line, as ostree-prepare-root would fail on them at boot.
pub fn read(files: &BTreeMap<String, Vec<u8>>) -> Result<PrepareRoot> {
    let mut config = PrepareRoot { enabled: Enabled::No, origin: None };
    let etc = files.get(ETC).or_else(|| files.get(USR_ETC));
    for (name, bytes) in [("/usr/lib/ostree/prepare-root.conf", files.get(USR_LIB)), ("/etc/ostree/prepare-root.conf", etc)] {
        let Some(bytes) = bytes else { continue };
        let keyfile = KeyFile::parse(bytes).map_err(|e| anyhow::anyhow!("the image's {name}: {e}; ostree-prepare-root would fail to boot it"))?;
        // Each file replaces the previous one entirely.
        config = PrepareRoot { enabled: Enabled::No, origin: None };
        if let Some((line, value)) = keyfile.get("composefs", "enabled") {
            let Some(enabled) = Enabled::parse(value) else {
                bail!(
                    "the image's {name}, line {line}: [composefs] enabled = {value:?} is not one of yes, true, 1, no, false, 0, maybe, verity, signed; ostree-prepare-root would fail to boot it"
                );
            };
            config = PrepareRoot { enabled, origin: Some(format!("{name}:{line}")) };
        }
    }
    Ok(config)
}

/// What composefs does at boot: the configuration with the `ostree.prepare-root.composefs=`
/// kernel argument applied (the last one wins), as `otcore_load_rootfs_config` applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    /// No, maybe or yes.
    pub composefs: Enabled,
    pub require_verity: bool,
    pub signed: bool,
    /// Where the mode comes from, for messages ("the image's /usr/lib/…:2 sets …").
    pub why: String,
}

/// How the image's initramfs will mount the deployment, from the image's files (see [`read`])
/// and the kernel arguments; refused where kiln cannot make a disk that boots that way.
pub fn at_boot(files: &BTreeMap<String, Vec<u8>>, kargs: &[String]) -> Result<Boot> {
    let boot = read(files)?.at_boot(kargs)?;
    if boot.signed {
        bail!(
            "{}: the initramfs then mounts only a composefs image whose digest is signed with the private key matching its public key, and kiln cannot sign images. \
             To bake it anyway, pass --karg ostree.prepare-root.composefs=1 (composefs with fs-verity, no signature check) or --karg ostree.prepare-root.composefs=0 (no composefs)",
            boot.why
        );
    }
    Ok(boot)
}

impl Boot {
    /// Whether the boot needs fs-verity on the image and every object.
    pub fn needs_verity(&self) -> bool {
        self.composefs != Enabled::No && self.require_verity
    }
}

impl PrepareRoot {
    pub fn at_boot(&self, kargs: &[String]) -> Result<Boot> {
        let (mut composefs, require_verity, mut signed) = match self.enabled {
            Enabled::Signed => (Enabled::Yes, true, true),
            Enabled::Verity => (Enabled::Yes, true, false),
            e => (e, false, false),
        };
        let mut require_verity = require_verity;
        let mut why = match &self.origin {
            Some(o) => format!("the image's {o} sets [composefs] enabled = {}", self.enabled.as_str()),
            None => "[composefs] enabled is not set".to_string(),
        };
        if let Some(v) = kargs.iter().rev().find_map(|k| k.strip_prefix(KARG)) {
            match Enabled::parse(v) {
                Some(Enabled::Signed) => {
                    (composefs, require_verity, signed) = (Enabled::Yes, true, true);
                    why = format!("the kernel argument {KARG}{v}");
                }
                Some(e @ (Enabled::Yes | Enabled::No | Enabled::Maybe)) => (composefs, signed) = (e, false),
                _ => bail!("the kernel argument {KARG}{v} is not one of yes, true, 1, no, false, 0, maybe, signed; ostree-prepare-root would fail to boot"),
            }
        }
        Ok(Boot { composefs, require_verity, signed, why })
    }
}

/// A GLib key file, as `g_key_file_load_from_data` reads one (flags none): values by group
/// and key, with the line each was read from.
struct KeyFile {
    groups: BTreeMap<String, BTreeMap<String, (usize, String)>>,
}

impl KeyFile {
    fn parse(bytes: &[u8]) -> std::result::Result<KeyFile, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("is not UTF-8 ({e})"))?;
        let mut groups: BTreeMap<String, BTreeMap<String, (usize, String)>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let line = line.trim_start_matches(|c: char| c.is_ascii_whitespace());
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                if let Some(end) = rest.find(']') {
                    if rest[end + 1..].trim_start_matches([' ', '\t']).is_empty() {
                        let name = &rest[..end];
                        if name.is_empty() || name.contains('[') || name.chars().any(|c| c.is_control()) {
                            return Err(format!("line {n}: invalid group name {name:?}"));
                        }
                        groups.entry(name.to_string()).or_default();
                        current = Some(name.to_string());
                        continue;
                    }
                }
            }
            let Some(eq) = line.find('=').filter(|&p| p > 0) else {
                return Err(format!("line {n}: {line:?} is not a key = value pair, a [group] or a # comment"));
            };
            let Some(group) = &current else {
                return Err(format!("line {n}: a key before any [group]"));
            };
            let key = line[..eq].trim_end_matches(|c: char| c.is_ascii_whitespace());
            if !valid_key(key) {
                return Err(format!("line {n}: invalid key name {key:?}"));
            }
            // Leading whitespace goes, trailing whitespace stays part of the value.
            let value = line[eq + 1..].trim_start_matches(|c: char| c.is_ascii_whitespace());
            groups.get_mut(group).unwrap().insert(key.to_string(), (n, value.to_string()));
        }
        Ok(KeyFile { groups })
    }

    fn get(&self, group: &str, key: &str) -> Option<(usize, &str)> {
        self.groups.get(group)?.get(key).map(|(n, v)| (*n, v.as_str()))
    }
}

/// g_key_file_is_key_name: no '=', '[' or ']' (but for a `[locale]` suffix), no leading or
/// trailing space.
fn valid_key(key: &str) -> bool {
    let (name, locale) = match key.find('[') {
        Some(p) => (&key[..p], Some(&key[p + 1..])),
        None => (key, None),
    };
    if name.is_empty() || name.contains(['=', ']']) || name.starts_with(' ') || name.ends_with(' ') {
        return false;
    }
    match locale {
        None => true,
        Some(l) => l.strip_suffix(']').is_some_and(|l| l.chars().all(|c| c.is_alphanumeric() || "-_.@".contains(c))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        list.iter().map(|(p, c)| (p.to_string(), c.as_bytes().to_vec())).collect()
    }

    #[test]
    fn modes() {
        for (text, mode) in [
            ("[composefs]\nenabled = yes\n[sysroot]\nreadonly = true\n", Enabled::Yes),
            ("[composefs]\nenabled=true", Enabled::Yes),
            ("  # comment\n[composefs]  \n  enabled   =   1\r\n", Enabled::Yes),
            ("[composefs]\nenabled = maybe\n", Enabled::Maybe),
            ("[composefs]\nenabled = verity\n", Enabled::Verity),
            ("[composefs]\nenabled = signed\nkeypath = /etc/k\n", Enabled::Signed),
            ("[composefs]\nenabled = no\n", Enabled::No),
            ("[sysroot]\nreadonly = true\n", Enabled::No),
            ("[composefs]\nenabled = yes\nenabled = no\n", Enabled::No),
        ] {
            assert_eq!(read(&files(&[(USR_LIB, text)])).unwrap().enabled, mode, "{text:?}");
        }
        assert_eq!(read(&files(&[])).unwrap(), PrepareRoot { enabled: Enabled::No, origin: None });
    }

    #[test]
    fn etc_replaces_usr_lib() {
        let f = files(&[(USR_LIB, "[composefs]\nenabled = yes\n"), (USR_ETC, "[root]\ntransient = false\n")]);
        assert_eq!(read(&f).unwrap().enabled, Enabled::No);
        let f = files(&[(USR_LIB, "[composefs]\nenabled = yes\n"), (ETC, "\n[composefs]\nenabled = verity\n")]);
        assert_eq!(read(&f).unwrap(), PrepareRoot { enabled: Enabled::Verity, origin: Some("/etc/ostree/prepare-root.conf:3".into()) });
    }

    #[test]
    fn errors_name_file_and_line() {
        for (text, want) in [
            ("[composefs]\nenabled = yes \n", "prepare-root.conf, line 2: [composefs] enabled = \"yes \""),
            ("[composefs]\nenabled = on\n", "line 2: [composefs] enabled = \"on\""),
            ("[composefs]\nthis is not a key\n", "line 2:"),
            ("enabled = yes\n", "line 1: a key before any [group]"),
            ("[composefs\nenabled = yes\n", "line 1:"),
            ("[composefs]\n = yes\n", "line 2:"),
        ] {
            let e = read(&files(&[(USR_LIB, text)])).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("/usr/lib/ostree/prepare-root.conf"), "{text:?}: {e}");
        }
        // A broken /usr/lib file fails the boot even when /etc has a good one.
        let f = files(&[(USR_LIB, "garbage\n"), (USR_ETC, "[composefs]\nenabled = yes\n")]);
        assert!(read(&f).is_err());
    }

    #[test]
    fn kernel_argument_overrides_but_keeps_verity() {
        let cfg = |e| PrepareRoot { enabled: e, origin: None };
        let k = |s: &str| vec![s.to_string()];
        assert!(cfg(Enabled::Verity).at_boot(&[]).unwrap().needs_verity());
        assert!(cfg(Enabled::Verity).at_boot(&k("ostree.prepare-root.composefs=1")).unwrap().needs_verity());
        assert!(!cfg(Enabled::Verity).at_boot(&k("ostree.prepare-root.composefs=0")).unwrap().needs_verity());
        let b = cfg(Enabled::Signed).at_boot(&k("ostree.prepare-root.composefs=yes")).unwrap();
        assert!(!b.signed && b.needs_verity());
        let b = cfg(Enabled::Yes).at_boot(&k("ostree.prepare-root.composefs=signed")).unwrap();
        assert!(b.signed);
        assert!(!cfg(Enabled::Yes).at_boot(&[]).unwrap().needs_verity());
        assert!(cfg(Enabled::Yes).at_boot(&k("ostree.prepare-root.composefs=verity")).is_err());
    }

    #[test]
    fn signed_is_refused_unless_a_kernel_argument_lifts_it() {
        let f = files(&[(USR_LIB, "[composefs]\nenabled = signed\n")]);
        let e = at_boot(&f, &[]).unwrap_err().to_string();
        assert!(e.starts_with("the image's /usr/lib/ostree/prepare-root.conf:2 sets [composefs] enabled = signed:") && e.contains("cannot sign"), "{e}");
        let b = at_boot(&f, &["ostree.prepare-root.composefs=1".to_string()]).unwrap();
        assert!(b.needs_verity() && !b.signed);
        assert!(!at_boot(&f, &["ostree.prepare-root.composefs=0".to_string()]).unwrap().needs_verity());
        let f = files(&[(USR_LIB, "[composefs]\nenabled = yes\n")]);
        let e = at_boot(&f, &["ostree.prepare-root.composefs=signed".to_string()]).unwrap_err().to_string();
        assert!(e.starts_with("the kernel argument ostree.prepare-root.composefs=signed:"), "{e}");
    }
}
