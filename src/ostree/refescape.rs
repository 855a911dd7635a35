//! ostree-ext's escaping of arbitrary strings (image references, digests) into ref names:
//! ASCII letters and digits pass, `-` passes, `/` passes between an alphanumeric and more
//! text, `_` becomes `__`, anything else `_<HEX>_` of its code point.

use anyhow::{bail, Result};

pub fn escape_for_ref(s: &str) -> Result<String> {
    if s.is_empty() {
        bail!("an empty string cannot name an ostree ref");
    }
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    let mut previous_alnum = false;
    while let Some(c) = chars.next() {
        if c == '\0' {
            bail!("a NUL byte cannot be part of an ostree ref");
        }
        let alnum = c.is_ascii_alphanumeric();
        match c {
            c if alnum => out.push(c),
            '/' if previous_alnum && chars.peek().is_some() => out.push('/'),
            '-' => out.push('-'),
            '_' => out.push_str("__"),
            o => out.push_str(&format!("_{:02X}_", o as u32)),
        }
        previous_alnum = alnum;
    }
    Ok(out)
}

pub fn prefix_escape_for_ref(prefix: &str, s: &str) -> Result<String> {
    Ok(format!("{prefix}/{}", escape_for_ref(s)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_ostree_ext() {
        // ostree-ext's own documented example.
        assert_eq!(
            prefix_escape_for_ref("container", "registry:quay.io/coreos/fedora:latest").unwrap(),
            "container/registry_3A_quay_2E_io/coreos/fedora_3A_latest"
        );
        assert_eq!(escape_for_ref("sha256:ab").unwrap(), "sha256_3A_ab");
        assert_eq!(escape_for_ref("a//b_c").unwrap(), "a/_2F_b__c");
        assert_eq!(escape_for_ref("docker://x").unwrap(), "docker_3A__2F__2F_x");
        assert!(escape_for_ref("").is_err());
    }
}
