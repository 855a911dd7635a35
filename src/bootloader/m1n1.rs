//! Apple Silicon's m1n1 stage 2, `m1n1/boot.bin` on the ESP, made from the image's files as
//! asahi-scripts' `update-m1n1` makes it on the installed system: m1n1, then the device trees
//! of the Apple Macs (m1n1 picks the one of the machine it runs on), then U-Boot gzipped (its
//! image format does not say where it ends), then m1n1's variables as `name=value` lines.
//! m1n1's stage 1, which the Asahi installer puts in the OS's stub partition, loads this file
//! from the ESP; U-Boot then offers UEFI and starts `EFI/BOOT/BOOTAA64.EFI`.

use std::io::Write;

use anyhow::{bail, Context, Result};

use super::image_files::{join, ImageRoot};
use super::platform::M1n1Platform;
use super::EspWriter;

/// Where it goes on the ESP (the installer's `next_object`).
pub const BOOT_BIN: &str = "m1n1/boot.bin";

/// The assembled file and what it was made of (image paths without a leading `/`).
#[derive(Clone, Debug)]
pub struct BootBin {
    pub bytes: Vec<u8>,
    pub m1n1: String,
    pub device_trees: Vec<String>,
    pub u_boot: String,
    /// m1n1's variables, one `name=value` each.
    pub variables: Vec<String>,
    /// Lines of m1n1's configuration that are not variables m1n1 takes (left out).
    pub ignored: Vec<String>,
}

/// Assembles `m1n1/boot.bin` from the image at `image` (a deployment), whose kernel is `kver`.
/// An image without m1n1, U-Boot or the Macs' device trees is an error naming what is missing
/// and where it was looked for.
pub fn assemble(image: &ImageRoot, kver: &str, p: &M1n1Platform) -> Result<BootBin> {
    let m1n1 = first_file(image, &p.m1n1)?;
    let u_boot = first_file(image, &p.u_boot)?;
    let dtb_dirs: Vec<String> = p.dtb_dirs.iter().map(|d| d.replace("@KVER@", kver)).collect();
    let device_trees = device_trees(image, &dtb_dirs, &p.dtbs)?;
    let mut missing = Vec::new();
    if m1n1.is_none() {
        missing.push(format!("m1n1 (none of {})", slash_list(&p.m1n1)));
    }
    if u_boot.is_none() {
        missing.push(format!("U-Boot for Apple machines (none of {})", slash_list(&p.u_boot)));
    }
    if device_trees.is_empty() {
        missing.push(format!("the Macs' device trees ({} in none of {})", p.dtbs.join(", "), slash_list(&dtb_dirs)));
    }
    let (Some(m1n1), Some(u_boot), false) = (m1n1, u_boot, device_trees.is_empty()) else {
        bail!(
            "the image lacks what Apple Silicon boots from (m1n1/boot.bin): {}; install its distribution's packages in the image (Fedora: m1n1, uboot-images-armv8 and an Asahi kernel; Debian: m1n1, u-boot-asahi)",
            missing.join("; ")
        );
    };
    let (variables, ignored) = variables(image, &p.config, &p.config_keys)?;

    let mut bytes = image.read(&m1n1)?;
    for dtb in &device_trees {
        bytes.extend(image.read(dtb)?);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&image.read(&u_boot)?)?;
    bytes.extend(gz.finish()?);
    for v in &variables {
        bytes.extend(v.as_bytes());
        bytes.push(b'\n');
    }
    Ok(BootBin { bytes, m1n1, device_trees, u_boot, variables, ignored })
}

/// Writes `m1n1/boot.bin` onto the ESP.
pub fn install(boot_bin: &BootBin, esp: &mut dyn EspWriter) -> Result<()> {
    let (dir, _) = BOOT_BIN.rsplit_once('/').expect("a path with a directory");
    esp.create_dir_all(dir)?;
    esp.write_file(BOOT_BIN, &boot_bin.bytes).with_context(|| format!("writing {BOOT_BIN} to the ESP"))
}

/// The boot picker icon: `<dir>/<os_id>.icns`, as (file name, bytes), when the image has one.
pub fn icon(image: &ImageRoot, p: &M1n1Platform, os_id: &str) -> Result<Option<(String, Vec<u8>)>> {
    let name = format!("{os_id}.icns");
    let path = join(&p.icon_dir, &name);
    match image.metadata(&path)? {
        Some(m) if m.is_file() => Ok(Some((name, image.read(&path)?))),
        _ => Ok(None),
    }
}

fn first_file(image: &ImageRoot, candidates: &[String]) -> Result<Option<String>> {
    for c in candidates {
        if image.metadata(c)?.is_some_and(|m| m.is_file()) {
            return Ok(Some(c.clone()));
        }
    }
    Ok(None)
}

/// The device trees of the first directory that has any: for each pattern in order, the
/// matching files in byte order (as the shell expands update-m1n1's globs in the C locale).
fn device_trees(image: &ImageRoot, dirs: &[String], patterns: &[String]) -> Result<Vec<String>> {
    for dir in dirs {
        if !image.is_dir(dir)? {
            continue;
        }
        let entries = image.list_dir(dir)?;
        let mut found = Vec::new();
        for pattern in patterns {
            for e in entries.iter().filter(|e| !e.is_dir && glob_match(pattern, &e.name)) {
                if !found.contains(&e.path) {
                    found.push(e.path.clone());
                }
            }
        }
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Ok(Vec::new())
}

/// m1n1's variables from its configuration file: lines starting with one of `keys` and holding
/// a `=`; comments and blank lines are skipped, other lines returned as ignored.
fn variables(image: &ImageRoot, config: &str, keys: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let (mut taken, mut ignored) = (Vec::new(), Vec::new());
    if !image.metadata(config)?.is_some_and(|m| m.is_file()) {
        return Ok((taken, ignored));
    }
    let text = String::from_utf8_lossy(&image.read(config)?).into_owned();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains('=') && keys.iter().any(|k| line.starts_with(k.as_str())) {
            taken.push(line.to_string());
        } else {
            ignored.push(line.to_string());
        }
    }
    Ok((taken, ignored))
}

/// Shell-style matching with `*` (any characters) as the only special character.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == name;
    }
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

fn slash_list(paths: &[String]) -> String {
    paths.iter().map(|p| format!("/{p}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("t6*.dtb", "t6000-j314s.dtb"));
        assert!(glob_match("t81*.dtb", "t8112-j413.dtb"));
        assert!(!glob_match("t81*.dtb", "t8015-d22.dtb"));
        assert!(!glob_match("t6*.dtb", "t6000.dtbo"));
        assert!(glob_match("a*b*c", "a-b-c"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("exact", "exact"));
    }

    /// boot.bin is m1n1 ‖ the matching trees in order ‖ gzip(U-Boot) ‖ variables; an image
    /// without the parts names each and where it was looked for.
    #[test]
    fn assembles_in_update_m1n1s_order_and_names_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("kiln-m1n1-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let put = |p: &str, data: &[u8]| {
            let f = dir.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, data).unwrap();
        };
        let platform: crate::platform::Platform = crate::platform::Platform::for_oci_arch("arm64").unwrap();
        let p = platform.bootloader.m1n1.unwrap();
        let image = ImageRoot::new(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let err = assemble(&image, "6.1.0-a", &p).unwrap_err().to_string();
        for part in ["m1n1 (none of /usr/lib/asahi-boot/m1n1.bin", "U-Boot", "/usr/lib/modules/6.1.0-a/dtb/apple", "t6*.dtb"] {
            assert!(err.contains(part), "{err}");
        }
        put("usr/lib/m1n1/m1n1.bin", b"M1N1");
        put("usr/lib/u-boot/apple_m1/u-boot-nodtb.bin", b"UBOOT");
        put("usr/lib/modules/6.1.0-a/dtb/apple/t8103-j274.dtb", b"A");
        put("usr/lib/modules/6.1.0-a/dtb/apple/t6000-j314s.dtb", b"B");
        put("usr/lib/modules/6.1.0-a/dtb/apple/t8015-d22.dtb", b"X");
        put("etc/m1n1.conf", b"# comment\ndisplay=120\nchosen.foo=bar\nbogus=1\n");
        let b = assemble(&image, "6.1.0-a", &p).unwrap();
        assert_eq!(b.device_trees, ["usr/lib/modules/6.1.0-a/dtb/apple/t6000-j314s.dtb", "usr/lib/modules/6.1.0-a/dtb/apple/t8103-j274.dtb"]);
        assert_eq!((b.variables.clone(), b.ignored.clone()), (vec!["display=120".to_string(), "chosen.foo=bar".to_string()], vec!["bogus=1".to_string()]));
        assert_eq!(&b.bytes[..6], b"M1N1BA");
        assert!(b.bytes.ends_with(b"display=120\nchosen.foo=bar\n"));
        let gz = &b.bytes[6..b.bytes.len() - 27];
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut out).unwrap();
        assert_eq!(out, b"UBOOT");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
