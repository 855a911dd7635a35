//! `@KEY@` substitution for the config templates in `bootloader/`.

use anyhow::{bail, Result};

/// Replaces each `@KEY@` of `template` with its value. A `@KEY@` without a value is an error,
/// so a template and its caller cannot drift apart silently; values are not rescanned.
pub fn render(template: &str, values: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('@') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let key_len = after.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')).unwrap_or(after.len());
        if key_len > 0 && after[key_len..].starts_with('@') {
            let key = &after[..key_len];
            let Some((_, value)) = values.iter().find(|(k, _)| *k == key) else {
                bail!("template placeholder @{key}@ has no value");
            };
            out.push_str(value);
            rest = &after[key_len + 1..];
        } else {
            out.push('@');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_refuses_unknown_keys() {
        assert_eq!(render("a @X@ b @Y@@X@", &[("X", "1"), ("Y", "@X@")]).unwrap(), "a 1 b @X@1");
        assert_eq!(render("mail@example.com @ 2", &[]).unwrap(), "mail@example.com @ 2");
        assert!(render("@MISSING@", &[]).is_err());
    }
}
