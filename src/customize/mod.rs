//! The deployment finished as the build config asks: groups and users merged into the image's
//! account databases, their homes under the stateroot's /var with `authorized_keys`, the
//! config's directories and files, and root's SSH keys as bootc's tmpfiles.d drop-in. Nothing
//! from the image runs; every write goes through [`root::SystemRoot::put`].
//!
//! The order is the osbuild pipeline's for bootc disks: groups, users (and homes), directories,
//! files.

pub mod accounts;
pub mod crypt;
pub mod root;

use anyhow::{bail, Context, Result};
use base64::Engine;

use crate::config::{BuildConfig, Owner, Password};
use accounts::{Accounts, HomeDir};
use root::{Content, SystemRoot};

pub struct Options<'a> {
    /// Salt bytes for a purpose (seeded for reproducible disks).
    pub salt: &'a dyn Fn(&str) -> Vec<u8>,
    /// The day passwords are set, in days since 1970-01-01 (shadow's lastchg), if known.
    pub days: Option<i64>,
    /// `--root-ssh-authorized-keys`: the content of an authorized_keys file for root.
    pub root_ssh_keys: Option<&'a str>,
}

/// Applies `cfg` to the installed system at `root`. Image-dependent mistakes (a uid the image
/// uses, a group it lacks) are found before anything is written.
pub fn apply(cfg: &BuildConfig, root: &SystemRoot, opts: &Options) -> Result<()> {
    let mut acc = Accounts::load(root)?;
    for (i, g) in cfg.groups.iter().enumerate() {
        acc.add_group(g, &format!("customizations.group[{i}]"))?;
    }
    let mut homes = Vec::new();
    for (i, u) in cfg.users.iter().enumerate() {
        let hash = match &u.password {
            Some(Password::Crypted(h)) => Some(h.clone()),
            Some(Password::Plain(p)) => Some(crypt::sha512_crypt(p.as_bytes(), &crypt::salt_from_bytes(&(opts.salt)(&format!("password of {}", u.name))))),
            None => None,
        };
        homes.push(acc.apply_user(u, hash, opts.days, &format!("customizations.user[{i}]"))?);
    }
    // Owners of files and directories, checked before writing.
    let owner = |o: &Owner, group: bool, at: &str| -> Result<u32> {
        match o {
            Owner::Id(id) => Ok(*id),
            Owner::Name(n) => {
                let id = if group { acc.gid(n) } else { acc.uid(n) };
                id.with_context(|| format!("{at}: there is no {} {n:?} in the image or the config", if group { "group" } else { "user" }))
            }
        }
    };
    let mut dirs = Vec::new();
    for (i, d) in cfg.directories.iter().enumerate() {
        let at = format!("customizations.directories[{i}]");
        root.locate(&d.path).with_context(|| format!("{at}.path"))?;
        dirs.push((d, owner(&d.user, false, &format!("{at}.user"))?, owner(&d.group, true, &format!("{at}.group"))?));
    }
    let mut files = Vec::new();
    for (i, f) in cfg.files.iter().enumerate() {
        let at = format!("customizations.files[{i}]");
        root.locate(&f.path).with_context(|| format!("{at}.path"))?;
        files.push((f, owner(&f.user, false, &format!("{at}.user"))?, owner(&f.group, true, &format!("{at}.group"))?));
    }
    for h in &homes {
        root.locate(&h.path).with_context(|| format!("the home of user {} ({})", h.user, h.path))?;
    }

    acc.write(root)?;
    for h in &homes {
        make_home(root, h)?;
    }
    for (d, uid, gid) in dirs {
        if d.ensure_parents {
            make_parents(root, &d.path)?;
        }
        root.put(&d.path, Content::Dir, d.mode, uid, gid).with_context(|| format!("directory {} of the build config", d.path))?;
    }
    for (f, uid, gid) in files {
        make_parents(root, &f.path)?;
        root.put(&f.path, Content::File(&f.data), f.mode, uid, gid).with_context(|| format!("file {} of the build config", f.path))?;
    }
    if let Some(keys) = opts.root_ssh_keys {
        root_ssh_keys(root, keys)?;
    }
    Ok(())
}

/// Missing parent directories of `path` (0755, root's).
fn make_parents(root: &SystemRoot, path: &str) -> Result<()> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for n in 1..parts.len() {
        let p = format!("/{}", parts[..n].join("/"));
        if !root.is_dir(&p)? {
            root.put(&p, Content::Dir, 0o755, 0, 0)?;
        }
    }
    Ok(())
}

/// A user's home as useradd -m makes it (HOME_MODE, /etc/skel copied), and
/// `~/.ssh/authorized_keys` (0600 in a 0700 directory) with the user's keys appended.
fn make_home(root: &SystemRoot, h: &HomeDir) -> Result<()> {
    if !root.is_dir(&h.path)? {
        make_parents(root, &h.path)?;
        root.put(&h.path, Content::Dir, h.mode, h.uid, h.gid)?;
        copy_skel(root, "/etc/skel", &h.path, h.uid, h.gid)?;
    }
    if h.keys.is_empty() {
        return Ok(());
    }
    let ssh = format!("{}/.ssh", h.path);
    if !root.is_dir(&ssh)? {
        root.put(&ssh, Content::Dir, 0o700, h.uid, h.gid)?;
    }
    let file = format!("{ssh}/authorized_keys");
    let mut text = root.read(&file)?.unwrap_or_default();
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    for k in &h.keys {
        text.extend_from_slice(k.as_bytes());
        text.push(b'\n');
    }
    root.put(&file, Content::File(&text), 0o600, h.uid, h.gid)
}

/// The image's /etc/skel into a new home (files and directories; links are skipped).
fn copy_skel(root: &SystemRoot, skel: &str, home: &str, uid: u32, gid: u32) -> Result<()> {
    let Ok(dir) = root.locate(skel) else { return Ok(()) };
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let (from, to) = (format!("{skel}/{name}"), format!("{home}/{name}"));
        let Ok(md) = e.path().symlink_metadata() else { continue };
        let mode = std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o7777;
        if md.is_dir() {
            root.put(&to, Content::Dir, mode, uid, gid)?;
            copy_skel(root, &from, &to, uid, gid)?;
        } else if md.is_file() {
            let data = std::fs::read(e.path()).with_context(|| format!("cannot read {from} of the image"))?;
            root.put(&to, Content::File(&data), mode, uid, gid)?;
        }
    }
    Ok(())
}

/// `--root-ssh-authorized-keys`, as bootc writes it: a tmpfiles.d line that (re)creates root's
/// authorized_keys at boot when missing, so the key survives an /etc merge on upgrade and a
/// /root on tmpfs. Root's home is resolved through the image's links, as bootc does.
fn root_ssh_keys(root: &SystemRoot, keys: &str) -> Result<()> {
    if keys.trim().is_empty() {
        bail!("--root-ssh-authorized-keys: the file has no keys");
    }
    let home = root.resolve_path("/root")?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(keys.as_bytes());
    let line = format!("f~ {home}/.ssh/authorized_keys 600 root root - {b64}\n");
    make_parents(root, "/etc/tmpfiles.d/x")?;
    root.put("/etc/tmpfiles.d/bootc-root-ssh.conf", Content::File(line.as_bytes()), 0o644, 0, 0)
}
