//! The build config (`--config config.toml|config.json`, `-` = JSON on stdin): the blueprint
//! bootc-image-builder users already have, read strictly. Unknown keys are errors, and so are
//! the keys kiln refuses on purpose (`refused.rs`), each naming the key path, the file, line and
//! column, and what to do instead.
//!
//! The result is one plain [`BuildConfig`] the stages take: the bake now, `install to-disk` and
//! the installer ISO later. It does not depend on the bake.

mod refused;
pub mod schema;

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};

pub use schema::Owner;
use schema::{Blueprint, Size};

/// Everything a build config asks for, checked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BuildConfig {
    /// Where it was read from (for messages).
    pub source: String,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    /// Kernel arguments appended after the image's (`[customizations.kernel] append`).
    pub kernel_append: Vec<String>,
    pub disk: Option<DiskConfig>,
    pub files: Vec<FileNode>,
    pub directories: Vec<DirNode>,
    pub installer: Option<Installer>,
    pub iso: Option<IsoLabels>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: Option<Password>,
    /// SSH public keys (authorized_keys lines).
    pub keys: Vec<String>,
    /// Supplementary groups (replacing an existing user's, as usermod --groups does).
    pub groups: Option<Vec<String>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub description: Option<String>,
    /// Account expiry, days since 1970-01-01.
    pub expire_date: Option<i64>,
    pub force_password_reset: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// To be hashed (SHA-512 crypt).
    Plain(String),
    /// Already a crypt(3) hash, kept as it is.
    Crypted(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: Option<u32>,
}

/// The disk the config asks for: mountpoints with minimum sizes added to the image's table
/// (`[[customizations.filesystem]]`), or a whole table (`[customizations.disk]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskConfig {
    Filesystems(Vec<MountSize>),
    Partitions(DiskTable),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSize {
    pub mountpoint: String,
    pub min_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskTable {
    /// The whole disk's minimum size.
    pub min_size: Option<u64>,
    pub partitions: Vec<PartitionConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionConfig {
    pub min_size: u64,
    /// GPT type GUID; chosen from the mountpoint when not given.
    pub part_type: Option<String>,
    /// GPT partition name.
    pub part_label: Option<String>,
    /// GPT partition GUID.
    pub part_uuid: Option<String>,
    pub content: PartitionContent,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PartitionContent {
    /// A filesystem (`fs_type` None = the root's type) mounted at `mountpoint`.
    Filesystem { mountpoint: String, fs_type: Option<String>, label: Option<String> },
    Swap { label: Option<String> },
    /// A btrfs volume whose subvolumes are mounted.
    Btrfs { subvolumes: Vec<(String, String)> },
    /// No filesystem (`fs_type = "none"`).
    #[default]
    Empty,
}

/// A file to write (`[[customizations.files]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNode {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
    pub user: Owner,
    pub group: Owner,
}

/// A directory to make (`[[customizations.directories]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirNode {
    pub path: String,
    pub mode: u32,
    pub user: Owner,
    pub group: Owner,
    pub ensure_parents: bool,
}

/// What the installer ISO (issue 13) does; carried, not used by the bake.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Installer {
    pub unattended: bool,
    /// A device path, or `auto`.
    pub target_disk: Option<String>,
    pub wipe: bool,
    /// Kernel arguments of the installer's own boot.
    pub kargs: Vec<String>,
    pub filesystem: Option<String>,
    /// Enroll the image's akmods certificates (`auto`).
    pub enroll_mok: bool,
    pub mok_password: Option<String>,
    pub finish: Finish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Finish {
    #[default]
    Poweroff,
    Reboot,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IsoLabels {
    pub volume_id: Option<String>,
    pub application_id: Option<String>,
    pub publisher: Option<String>,
}

/// Reads a build config: `-` is JSON on stdin, otherwise TOML or JSON by extension.
pub fn load(path: &str) -> Result<BuildConfig> {
    if path == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("cannot read the build config from stdin")?;
        return parse(&text, Format::Json, "<stdin>");
    }
    let format = match Path::new(path).extension().and_then(|e| e.to_str()) {
        Some("toml") => Format::Toml,
        Some("json") => Format::Json,
        _ => bail!("build config {path}: name it *.toml or *.json (the extension says how to read it), or pass - for JSON on stdin"),
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the build config {path}"))?;
    parse(&text, format, path)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

/// Parses and checks a build config's text; `name` says where it came from in messages.
pub fn parse(text: &str, format: Format, name: &str) -> Result<BuildConfig> {
    let bp = match format {
        Format::Toml => {
            let de = toml::Deserializer::new(text);
            serde_path_to_error::deserialize::<_, Blueprint>(de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let (line, col) = inner.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
                located(name, line, col, &path, inner.message())
            })?
        }
        Format::Json => {
            // bib's JSON from before 2024-05 wraps the blueprint: {"blueprint": {…}}.
            let legacy = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.as_object().map(|o| o.len() == 1 && o.contains_key("blueprint")))
                .unwrap_or(false);
            let mut de = serde_json::Deserializer::from_str(text);
            let result = if legacy {
                serde_path_to_error::deserialize::<_, schema::Legacy>(&mut de).map(|l| l.blueprint)
            } else {
                serde_path_to_error::deserialize::<_, Blueprint>(&mut de)
            };
            let bp = result.map_err(|e| {
                let path = e.path().to_string();
                let path = if legacy { path.strip_prefix("blueprint.").unwrap_or(&path).to_string() } else { path };
                let inner = e.into_inner();
                let msg = inner.to_string();
                // serde_json appends " at line L column C"; the location is given in front.
                let msg = msg.rsplit_once(" at line ").map_or(msg.as_str(), |(m, _)| m);
                located(name, inner.line(), inner.column(), &path, msg)
            })?;
            de.end().map_err(|e| located(name, e.line(), e.column(), "", "extra data after the configuration object"))?;
            bp
        }
    };
    convert(bp, name).with_context(|| format!("build config {name}"))
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The error for a key: refused keys get the table's message, unknown keys the known ones.
fn located(file: &str, line: usize, col: usize, path: &str, msg: &str) -> anyhow::Error {
    let at = if line > 0 { format!("{file}:{line}:{col}") } else { file.to_string() };
    if msg.contains(schema::REFUSED_MARK) {
        let text = refused::message(&dotted(path)).unwrap_or("kiln does not support this key");
        return anyhow::anyhow!("{at}: {path}: {text}");
    }
    let msg = msg.lines().last().unwrap_or(msg).trim();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (_, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let full = path;
        let known = expected.trim_start_matches(", expected ").replace("one of ", "");
        return anyhow::anyhow!("{at}: {full}: unknown key (known keys here: {known}); check the spelling against bootc-image-builder's documentation");
    }
    if path.is_empty() || path == "." {
        anyhow::anyhow!("{at}: {msg}")
    } else {
        anyhow::anyhow!("{at}: {path}: {msg}")
    }
}

/// `customizations.user[0].name` → `customizations.user.0.name` (how the refused table
/// spells paths).
fn dotted(path: &str) -> String {
    path.replace('[', ".").replace(']', "")
}

/// Checks the parsed blueprint against what kiln does and turns it into the plain config.
fn convert(bp: Blueprint, name: &str) -> Result<BuildConfig> {
    let c = bp.customizations.unwrap_or_default();
    let mut cfg = BuildConfig { source: name.to_string(), ..BuildConfig::default() };

    // Users: the old sshkey form first, so a [[customizations.user]] of the same name wins.
    let mut names = BTreeSet::new();
    for (i, k) in c.sshkey.unwrap_or_default().into_iter().enumerate() {
        check_name(&k.user).with_context(|| format!("customizations.sshkey[{i}].user"))?;
        cfg.users.push(User { name: k.user, keys: vec![k.key], ..User::default() });
    }
    for (i, u) in c.user.unwrap_or_default().into_iter().enumerate() {
        let at = format!("customizations.user[{i}]");
        check_name(&u.name).with_context(|| format!("{at}.name"))?;
        if !names.insert(u.name.clone()) {
            bail!("{at}.name: user {:?} is listed twice", u.name);
        }
        for g in u.groups.iter().flatten() {
            check_name(g).with_context(|| format!("{at}.groups: {g:?}"))?;
        }
        if let Some(h) = &u.home {
            check_path(h).with_context(|| format!("{at}.home"))?;
        }
        let password = u.password.filter(|p| !p.is_empty()).map(|p| {
            if is_crypted(&p) {
                Password::Crypted(p)
            } else {
                Password::Plain(p)
            }
        });
        let mut keys = Vec::new();
        if let Some(k) = u.key {
            keys.extend(k.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
        }
        let user = User {
            name: u.name,
            password,
            keys,
            groups: u.groups,
            uid: u.uid,
            gid: u.gid,
            home: u.home.map(|h| h.trim_end_matches('/').to_string()).filter(|h| !h.is_empty()),
            shell: u.shell,
            description: u.description,
            expire_date: u.expiredate,
            force_password_reset: u.force_password_reset.unwrap_or(false),
        };
        // An sshkey entry for the same user is merged into it.
        match cfg.users.iter_mut().find(|x| x.name == user.name) {
            Some(existing) => {
                let keys = std::mem::take(&mut existing.keys);
                *existing = User { keys: keys.into_iter().chain(user.keys.clone()).collect(), ..user };
            }
            None => cfg.users.push(user),
        }
    }
    let mut gnames = BTreeSet::new();
    let mut gids = BTreeSet::new();
    for (i, g) in c.group.unwrap_or_default().into_iter().enumerate() {
        let at = format!("customizations.group[{i}]");
        check_name(&g.name).with_context(|| format!("{at}.name"))?;
        if !gnames.insert(g.name.clone()) {
            bail!("{at}.name: group {:?} is listed twice", g.name);
        }
        if let Some(gid) = g.gid {
            if !gids.insert(gid) {
                bail!("{at}.gid: gid {gid} is given to two groups");
            }
        }
        cfg.groups.push(Group { name: g.name, gid: g.gid });
    }

    if let Some(k) = c.kernel {
        cfg.kernel_append = split_kargs(k.append.as_deref().unwrap_or("")).context("customizations.kernel.append")?;
    }

    cfg.disk = match (c.filesystem, c.disk) {
        (Some(fs), Some(_)) if !fs.is_empty() => bail!(
            "customizations.filesystem and customizations.disk cannot be combined (as in bootc-image-builder): describe the whole table with [customizations.disk], or only mountpoint sizes with [[customizations.filesystem]]"
        ),
        (Some(fs), _) if !fs.is_empty() => Some(DiskConfig::Filesystems(filesystems(fs)?)),
        (_, Some(d)) => Some(DiskConfig::Partitions(disk_table(d)?)),
        _ => None,
    };

    let mut seen = BTreeSet::new();
    for (i, d) in c.directories.unwrap_or_default().into_iter().enumerate() {
        let at = format!("customizations.directories[{i}]");
        check_node_path(&d.path, false).with_context(|| format!("{at}.path"))?;
        if !seen.insert(d.path.clone()) {
            bail!("{at}.path: {} is given twice", d.path);
        }
        cfg.directories.push(DirNode {
            mode: parse_mode(d.mode.as_deref(), 0o755).with_context(|| format!("{at}.mode"))?,
            user: d.user.unwrap_or(Owner::Id(0)),
            group: d.group.unwrap_or(Owner::Id(0)),
            ensure_parents: d.ensure_parents.unwrap_or(false),
            path: d.path,
        });
    }
    for (i, f) in c.files.unwrap_or_default().into_iter().enumerate() {
        let at = format!("customizations.files[{i}]");
        check_node_path(&f.path, true).with_context(|| format!("{at}.path"))?;
        if !seen.insert(f.path.clone()) {
            bail!("{at}.path: {} is given twice", f.path);
        }
        cfg.files.push(FileNode {
            mode: parse_mode(f.mode.as_deref(), 0o644).with_context(|| format!("{at}.mode"))?,
            user: f.user.unwrap_or(Owner::Id(0)),
            group: f.group.unwrap_or(Owner::Id(0)),
            data: f.data.unwrap_or_default().into_bytes(),
            path: f.path,
        });
    }
    // A file cannot be the parent of another file or directory.
    for f in &cfg.files {
        let prefix = format!("{}/", f.path);
        if let Some(child) = seen.iter().find(|p| p.starts_with(&prefix)) {
            bail!("customizations.files: {} is a file, so {child} cannot be inside it", f.path);
        }
    }

    if let Some(inst) = c.installer {
        cfg.installer = Some(installer(inst)?);
    }
    if let Some(iso) = c.iso {
        if let Some(v) = &iso.volume_id {
            if v.is_empty() || v.len() > 32 || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                bail!("customizations.iso.volume_id: {v:?} must be 1 to 32 letters, digits, - or _");
            }
        }
        cfg.iso = Some(IsoLabels { volume_id: iso.volume_id, application_id: iso.application_id, publisher: iso.publisher });
    }
    Ok(cfg)
}

/// crypt(3) hashes kept as they are (bib's list, plus yescrypt and the older schemes).
fn is_crypted(p: &str) -> bool {
    ["$1$", "$2a$", "$2b$", "$2y$", "$5$", "$6$", "$7$", "$y$", "$gy$"].iter().any(|x| p.starts_with(x))
}

/// A user or group name as shadow's useradd accepts it.
fn check_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 32
        && !n.starts_with('-')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || c == '$')
        && !n.chars().all(|c| c.is_ascii_digit());
    if !ok {
        bail!("{n:?} is not a valid name (letters, digits, '.', '_', '-'; not all digits; at most 32 characters)");
    }
    Ok(())
}

fn check_path(p: &str) -> Result<()> {
    if !p.starts_with('/') {
        bail!("{p:?} must be an absolute path");
    }
    let clean = clean_path(p);
    if clean != p {
        bail!("{p:?} must be canonical (did you mean {clean:?}?)");
    }
    Ok(())
}

fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

/// Where files and directories may go: bib's ostree policy (`/etc`, and through their links
/// into /var `/root`, `/usr/local/bin`, `/usr/local/sbin`), plus `/var` itself; the account
/// databases and fstab are kiln's to write.
fn check_node_path(p: &str, file: bool) -> Result<()> {
    check_path(p)?;
    const ALLOWED: &[&str] = &["/etc", "/var", "/root", "/usr/local/bin", "/usr/local/sbin"];
    const DENIED: &[&str] = &["/etc/fstab", "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/var/run", "/var/lock", "/var/tmp"];
    let under = |base: &str| p == base || p.starts_with(&format!("{base}/"));
    if DENIED.iter().any(|d| under(d)) {
        bail!("{p} is written by kiln itself (users, groups and mounts come from their own customizations) or is not persistent: choose another path");
    }
    if !ALLOWED.iter().any(|a| under(a) && (p != *a || !file)) {
        bail!(
            "{p} is not writable on a bootc system at bake time: files and directories go under /etc, /var, /root, /usr/local/bin or /usr/local/sbin (the rest of / is the read-only image)"
        );
    }
    Ok(())
}

/// An octal mode string ("0644", "755"), as the blueprint gives it.
fn parse_mode(m: Option<&str>, default: u32) -> Result<u32> {
    let Some(m) = m else { return Ok(default) };
    let digits = m.strip_prefix('0').filter(|r| r.len() == 3).unwrap_or(m);
    if digits.len() != 3 || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        bail!("{m:?} is not a mode: give three octal digits, optionally after a 0 (e.g. \"0644\")");
    }
    Ok(u32::from_str_radix(digits, 8)?)
}

/// Splits a kernel command line into arguments, keeping double-quoted values together.
pub fn split_kargs(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        bail!("{s:?} has an unterminated double quote");
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// bootc-image-builder's mountpoint policy for `[[customizations.filesystem]]`: `/` (the root's
/// minimum size), `/boot`, and directories under /var but not /var itself nor the ones bootc
/// links elsewhere or owns.
fn check_mountpoint(m: &str) -> Result<()> {
    check_path(m)?;
    const DENIED: &[&str] = &["/var/home", "/var/lock", "/var/mail", "/var/mnt", "/var/roothome", "/var/run", "/var/srv", "/var/usrlocal"];
    let under = |base: &str| m == base || m.starts_with(&format!("{base}/"));
    if m == "/" || m == "/boot" {
        return Ok(());
    }
    if m == "/var" {
        bail!("mountpoint /var is not allowed: /var is the deployment's state directory; give directories under it (e.g. /var/lib/data) their own partitions");
    }
    if let Some(d) = DENIED.iter().find(|d| under(d)) {
        bail!("mountpoint {m} is not allowed: {d} is managed by bootc (a link or a place of its own); choose another directory under /var");
    }
    if !under("/var") {
        bail!("mountpoint {m} is not allowed: a bootc disk may size /, add /boot, or add partitions for directories under /var");
    }
    Ok(())
}

fn filesystems(fs: Vec<schema::Filesystem>) -> Result<Vec<MountSize>> {
    let mut out: Vec<MountSize> = Vec::new();
    for (i, f) in fs.into_iter().enumerate() {
        let at = format!("customizations.filesystem[{i}]");
        check_mountpoint(&f.mountpoint).with_context(|| format!("{at}.mountpoint"))?;
        let size = match (f.minsize, f.size) {
            (Some(_), Some(_)) => bail!("{at}: size and minsize cannot both be set (size is the old name of minsize)"),
            (Some(Size(s)), None) | (None, Some(Size(s))) => s,
            (None, None) => bail!("{at}.minsize: give the partition's minimum size (e.g. \"10 GiB\")"),
        };
        if size == 0 {
            bail!("{at}.minsize must be greater than 0");
        }
        if out.iter().any(|m| m.mountpoint == f.mountpoint) {
            bail!("{at}.mountpoint: {} is listed twice", f.mountpoint);
        }
        out.push(MountSize { mountpoint: f.mountpoint, min_size: size });
    }
    Ok(out)
}

fn check_guid(g: &str) -> Result<()> {
    uuid::Uuid::try_parse(g).map(|_| ()).map_err(|_| anyhow::anyhow!("{g:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"))
}

fn disk_table(d: schema::Disk) -> Result<DiskTable> {
    match d.table_type.as_deref() {
        None | Some("gpt") => {}
        Some("dos") => bail!("customizations.disk.type: kiln makes GPT disks only (UEFI and BIOS both boot them): remove type or set \"gpt\""),
        Some(t) => bail!("customizations.disk.type: unknown partition table type {t:?} (gpt or dos)"),
    }
    if d.start_offset.is_some() {
        bail!("customizations.disk.start_offset: kiln starts the first partition at 1 MiB; remove this key");
    }
    if let Some(s) = d.sector_size.filter(|s| *s != 512) {
        bail!("customizations.disk.sector_size: kiln makes 512-byte-sector disk images, not {s}");
    }
    let mut table = DiskTable { min_size: d.minsize.map(|s| s.0), partitions: Vec::new() };
    let mut mountpoints = BTreeSet::new();
    let mut add_mount = |m: &str, at: &str| -> Result<()> {
        check_path(m).with_context(|| at.to_string())?;
        if !mountpoints.insert(m.to_string()) {
            bail!("{at}: mountpoint {m} is used twice");
        }
        Ok(())
    };
    for (i, p) in d.partitions.unwrap_or_default().into_iter().enumerate() {
        let at = format!("customizations.disk.partitions[{i}]");
        let kind = p.kind.as_deref().unwrap_or("plain");
        let min_size = p.minsize.with_context(|| format!("{at}.minsize: give the partition's minimum size (e.g. \"2 GiB\")"))?.0;
        for (key, v) in [("part_type", &p.part_type), ("part_uuid", &p.part_uuid)] {
            if let Some(g) = v {
                check_guid(g).with_context(|| format!("{at}.{key}"))?;
            }
        }
        if let Some(l) = &p.part_label {
            if l.encode_utf16().count() > 36 {
                bail!("{at}.part_label: {l:?} is longer than GPT's 36 characters");
            }
        }
        let wrong = |key: &str, set: bool| -> Result<()> {
            if set {
                bail!("{at}.{key}: not a key of a {kind:?} partition");
            }
            Ok(())
        };
        let content = match kind {
            "plain" => {
                wrong("subvolumes", p.subvolumes.is_some())?;
                wrong("name", p.name.is_some())?;
                wrong("logical_volumes", p.logical_volumes.is_some())?;
                match p.fs_type.as_deref() {
                    Some("swap") | Some("none") if p.mountpoint.as_deref().is_some_and(|m| !m.is_empty()) => {
                        bail!("{at}.mountpoint: a {} partition has no mountpoint", p.fs_type.unwrap())
                    }
                    Some("swap") => PartitionContent::Swap { label: p.label },
                    Some("none") => PartitionContent::Empty,
                    fs => {
                        if let Some(fs) = fs {
                            if !["ext4", "xfs", "vfat", "btrfs"].contains(&fs) {
                                bail!("{at}.fs_type: unknown filesystem type {fs:?} (ext4, xfs, vfat, btrfs, swap or none)");
                            }
                        }
                        let m = p.mountpoint.with_context(|| format!("{at}.mountpoint: a filesystem partition needs a mountpoint"))?;
                        add_mount(&m, &format!("{at}.mountpoint"))?;
                        check_disk_mountpoint(&m, fs).with_context(|| format!("{at}.mountpoint"))?;
                        PartitionContent::Filesystem { mountpoint: m, fs_type: fs.map(String::from), label: p.label }
                    }
                }
            }
            "btrfs" => {
                wrong("mountpoint", p.mountpoint.is_some())?;
                wrong("fs_type", p.fs_type.is_some())?;
                wrong("label", p.label.is_some())?;
                wrong("name", p.name.is_some())?;
                wrong("logical_volumes", p.logical_volumes.is_some())?;
                let subs = p.subvolumes.unwrap_or_default();
                if subs.is_empty() {
                    bail!("{at}.subvolumes: a btrfs volume needs subvolumes");
                }
                let mut names = BTreeSet::new();
                let mut out = Vec::new();
                for (j, s) in subs.into_iter().enumerate() {
                    let sat = format!("{at}.subvolumes[{j}]");
                    if s.name.is_empty() || s.name.starts_with('/') || !names.insert(s.name.clone()) {
                        bail!("{sat}.name: {:?} must be a unique, non-empty relative name", s.name);
                    }
                    add_mount(&s.mountpoint, &format!("{sat}.mountpoint"))?;
                    check_disk_mountpoint(&s.mountpoint, Some("btrfs")).with_context(|| format!("{sat}.mountpoint"))?;
                    out.push((s.name, s.mountpoint));
                }
                PartitionContent::Btrfs { subvolumes: out }
            }
            "lvm" => bail!(
                "{at}.type: LVM is not supported: kiln writes plain GPT partitions (and btrfs subvolumes); give each mountpoint a plain partition (LVM can be set up on the running system)"
            ),
            k => bail!("{at}.type: unknown partition type {k:?} (plain, btrfs or lvm)"),
        };
        table.partitions.push(PartitionConfig { min_size, part_type: p.part_type, part_label: p.part_label, part_uuid: p.part_uuid, content });
    }
    Ok(table)
}

/// Mountpoints a `[customizations.disk]` partition may have on a bootc disk. bib checks no
/// policy here (its manifest test mounts a partition on /var); kiln takes `/`, `/boot`,
/// `/boot/efi`, and /var or anything under it but the links into /run: elsewhere the tree is
/// the read-only image, or a link a mount cannot cover.
fn check_disk_mountpoint(m: &str, fs: Option<&str>) -> Result<()> {
    let under = |base: &str| m == base || m.starts_with(&format!("{base}/"));
    match m {
        "/boot/efi" if fs.is_some_and(|f| f != "vfat") => bail!("/boot/efi must be vfat"),
        "/boot" if fs.is_some_and(|f| !["ext4", "xfs"].contains(&f)) => bail!("/boot must be ext4 or xfs"),
        "/" | "/boot" | "/boot/efi" => Ok(()),
        _ if fs == Some("vfat") => bail!("only /boot/efi may be vfat"),
        _ if under("/var/run") || under("/var/lock") => bail!("mountpoint {m} is not allowed: it is a link into /run (tmpfs)"),
        _ if under("/var") => Ok(()),
        _ => bail!("mountpoint {m} is not allowed: on a bootc disk, partitions are mounted at /, /boot, /boot/efi, /var or under /var (the rest is the read-only image)"),
    }
}

fn installer(i: schema::Installer) -> Result<Installer> {
    if let Some(t) = &i.target_disk {
        if t != "auto" && !t.starts_with("/dev/") {
            bail!("customizations.installer.target-disk: {t:?} must be a device path (/dev/…) or \"auto\"");
        }
    }
    if let Some(fs) = &i.filesystem {
        if !["ext4", "xfs", "btrfs"].contains(&fs.as_str()) {
            bail!("customizations.installer.filesystem: {fs:?} must be ext4, xfs or btrfs");
        }
    }
    let finish = match i.finish.as_deref() {
        None | Some("poweroff") => Finish::Poweroff,
        Some("reboot") => Finish::Reboot,
        Some(f) => bail!("customizations.installer.finish: {f:?} must be \"poweroff\" or \"reboot\""),
    };
    if let Some(p) = &i.mok_password {
        crate::efi::mok::check_password(p).context("customizations.installer.mok-password")?;
    }
    if i.unattended == Some(true) && i.target_disk.is_none() {
        bail!("customizations.installer: an unattended install needs target-disk (a device path, or \"auto\" for the only fixed disk large enough)");
    }
    Ok(Installer {
        unattended: i.unattended.unwrap_or(false),
        target_disk: i.target_disk,
        wipe: i.wipe.unwrap_or(false),
        kargs: i.kargs.unwrap_or_default(),
        filesystem: i.filesystem,
        enroll_mok: i.enroll_mok.unwrap_or(false),
        mok_password: i.mok_password.clone(),
        finish,
    })
}

#[cfg(test)]
mod tests;
