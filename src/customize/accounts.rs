//! Users and groups merged into the image's account databases (`/etc/passwd`, `shadow`,
//! `group`, `gshadow`, `subuid`, `subgid`) as shadow's useradd, groupadd and usermod would
//! change them, without running them: ids allocated from the image's `login.defs` ranges, the
//! image's own accounts (also those in `/usr/lib/passwd` and `/usr/lib/group`, which
//! nss-altfiles images keep read-only) never renumbered, and a clash refused.

use anyhow::{bail, Context, Result};

use super::root::{Content, SystemRoot};
use crate::config;

/// One colon-separated database, lines kept in order (comments and blank lines as they are).
#[derive(Debug, Default, Clone)]
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn parse(text: &str, fields: usize) -> Table {
        let rows = text
            .lines()
            .map(|l| {
                if l.starts_with('#') || l.trim().is_empty() || l.starts_with('+') || l.starts_with('-') {
                    vec![l.to_string()]
                } else {
                    let mut f: Vec<String> = l.split(':').map(String::from).collect();
                    if f.len() < fields {
                        f.resize(fields, String::new());
                    }
                    f
                }
            })
            .collect();
        Table { rows }
    }

    fn entries(&self) -> impl Iterator<Item = &Vec<String>> {
        self.rows.iter().filter(|r| r.len() > 1)
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.rows.iter().position(|r| r.len() > 1 && r[0] == name)
    }

    fn ids(&self, field: usize) -> impl Iterator<Item = u32> + '_ {
        self.entries().filter_map(move |r| r[field].parse().ok())
    }

    fn render(&self) -> String {
        self.rows.iter().map(|r| r.join(":") + "\n").collect()
    }
}

/// The `login.defs` values useradd reads.
#[derive(Debug, Clone)]
pub struct LoginDefs {
    pub uid_min: u32,
    pub uid_max: u32,
    pub gid_min: u32,
    pub gid_max: u32,
    pub sub_uid_min: u32,
    pub sub_uid_count: u32,
    pub home_mode: u32,
    pub pass_min: String,
    pub pass_max: String,
    pub pass_warn: String,
}

impl LoginDefs {
    pub fn parse(text: &str) -> LoginDefs {
        let get = |key: &str| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| {
                    let mut it = l.split_whitespace();
                    (it.next() == Some(key)).then(|| it.next().map(String::from)).flatten()
                })
        };
        let num = |key: &str, default: u32| get(key).and_then(|v| parse_num(&v)).unwrap_or(default);
        let umask = num("UMASK", 0o022);
        LoginDefs {
            uid_min: num("UID_MIN", 1000),
            uid_max: num("UID_MAX", 60000),
            gid_min: num("GID_MIN", 1000),
            gid_max: num("GID_MAX", 60000),
            sub_uid_min: num("SUB_UID_MIN", 100000),
            sub_uid_count: num("SUB_UID_COUNT", 65536),
            home_mode: num("HOME_MODE", 0o777 & !umask),
            pass_min: get("PASS_MIN_DAYS").unwrap_or_default(),
            pass_max: get("PASS_MAX_DAYS").unwrap_or_default(),
            pass_warn: get("PASS_WARN_AGE").unwrap_or_default(),
        }
    }
}

/// Decimal, or octal with a leading 0 (as login.defs writes modes).
fn parse_num(v: &str) -> Option<u32> {
    if v.len() > 1 && v.starts_with('0') {
        u32::from_str_radix(&v[1..], 8).ok()
    } else {
        v.parse().ok()
    }
}

/// A home directory to make or complete once the databases are written.
#[derive(Debug, Clone)]
pub struct HomeDir {
    pub user: String,
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub keys: Vec<String>,
}

pub struct Accounts {
    passwd: Table,
    shadow: Table,
    group: Table,
    gshadow: Table,
    subuid: Option<Table>,
    subgid: Option<Table>,
    /// The image's read-only databases (nss-altfiles).
    lib_passwd: Table,
    lib_group: Table,
    defs: LoginDefs,
    default_home: String,
    default_shell: String,
    /// Which tables changed (only those are written).
    changed: [bool; 6],
}

const PASSWD: usize = 0;
const SHADOW: usize = 1;
const GROUP: usize = 2;
const GSHADOW: usize = 3;
const SUBUID: usize = 4;
const SUBGID: usize = 5;
const FILES: [&str; 6] = ["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/subuid", "/etc/subgid"];

impl Accounts {
    pub fn load(root: &SystemRoot) -> Result<Accounts> {
        let text = |p: &str| -> Result<Option<String>> { Ok(root.read(p)?.map(|b| String::from_utf8_lossy(&b).into_owned())) };
        let table = |p: &str, n: usize| -> Result<Table> { Ok(Table::parse(&text(p)?.unwrap_or_default(), n)) };
        let useradd = text("/etc/default/useradd")?.unwrap_or_default();
        let default = |key: &str| useradd.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=').map(|v| v.trim().trim_matches('"').to_string()));
        Ok(Accounts {
            passwd: table("/etc/passwd", 7)?,
            shadow: table("/etc/shadow", 9)?,
            group: table("/etc/group", 4)?,
            gshadow: table("/etc/gshadow", 4)?,
            subuid: text("/etc/subuid")?.map(|t| Table::parse(&t, 3)),
            subgid: text("/etc/subgid")?.map(|t| Table::parse(&t, 3)),
            lib_passwd: table("/usr/lib/passwd", 7)?,
            lib_group: table("/usr/lib/group", 4)?,
            defs: LoginDefs::parse(&text("/etc/login.defs")?.unwrap_or_default()),
            default_home: default("HOME").filter(|h| h.starts_with('/')).unwrap_or_else(|| "/home".into()),
            default_shell: default("SHELL").filter(|s| s.starts_with('/')).unwrap_or_else(|| "/bin/sh".into()),
            changed: [false; 6],
        })
    }

    fn all_uids(&self) -> Vec<u32> {
        self.passwd.ids(2).chain(self.lib_passwd.ids(2)).collect()
    }

    fn all_gids(&self) -> Vec<u32> {
        self.group.ids(2).chain(self.lib_group.ids(2)).collect()
    }

    /// The uid of a user the installed system knows.
    pub fn uid(&self, name: &str) -> Option<u32> {
        [&self.passwd, &self.lib_passwd].iter().find_map(|t| t.find(name).and_then(|i| t.rows[i][2].parse().ok()))
    }

    pub fn gid(&self, name: &str) -> Option<u32> {
        [&self.group, &self.lib_group].iter().find_map(|t| t.find(name).and_then(|i| t.rows[i][2].parse().ok()))
    }

    fn group_name(&self, gid: u32) -> Option<String> {
        [&self.group, &self.lib_group].iter().find_map(|t| t.entries().find(|r| r[2] == gid.to_string()).map(|r| r[0].clone()))
    }

    /// useradd's choice: one above the highest id in use in [min, max], else the lowest free.
    fn allocate(used: &[u32], min: u32, max: u32, prefer: Option<u32>) -> Result<u32> {
        if let Some(p) = prefer.filter(|p| !used.contains(p) && (min..=max).contains(p)) {
            return Ok(p);
        }
        let top = used.iter().copied().filter(|i| (min..=max).contains(i)).max();
        match top {
            None => Ok(min),
            Some(t) if t < max => Ok(t + 1),
            Some(_) => (min..=max).find(|i| !used.contains(i)).with_context(|| format!("no free id left between {min} and {max} (login.defs)")),
        }
    }

    /// `[[customizations.group]]`: an existing group is kept (its gid must agree), a new one
    /// added.
    pub fn add_group(&mut self, g: &config::Group, at: &str) -> Result<()> {
        if let Some(existing) = self.gid(&g.name) {
            if g.gid.is_some_and(|want| want != existing) {
                bail!("{at}: group {:?} exists in the image with gid {existing}, not {}: remove gid, or choose another name", g.name, g.gid.unwrap());
            }
            return Ok(());
        }
        let gid = match g.gid {
            Some(gid) => {
                if let Some(other) = self.group_name(gid) {
                    bail!("{at}: gid {gid} of group {:?} is the image's group {other:?}: choose another gid, or leave it out to have one allocated", g.name);
                }
                gid
            }
            None => Self::allocate(&self.all_gids(), self.defs.gid_min, self.defs.gid_max, None)?,
        };
        self.new_group(&g.name, gid);
        Ok(())
    }

    fn new_group(&mut self, name: &str, gid: u32) {
        self.group.rows.push(vec![name.into(), "x".into(), gid.to_string(), String::new()]);
        self.gshadow.rows.push(vec![name.into(), "!".into(), String::new(), String::new()]);
        self.changed[GROUP] = true;
        self.changed[GSHADOW] = true;
    }

    fn check_groups(&self, groups: &[String], at: &str) -> Result<()> {
        for g in groups {
            if self.group.find(g).is_none() {
                if self.lib_group.find(g).is_some() {
                    bail!("{at}.groups: group {g:?} is in the image's read-only /usr/lib/group, so members cannot be added to it: add the user to it in the image");
                }
                bail!("{at}.groups: there is no group {g:?} in the image: add it with [[customizations.group]] or remove it");
            }
        }
        Ok(())
    }

    /// Sets `user`'s supplementary groups to `groups` (usermod --groups: replaced, not added).
    fn set_memberships(&mut self, user: &str, groups: &[String]) {
        for table in [&mut self.group, &mut self.gshadow] {
            for row in table.rows.iter_mut().filter(|r| r.len() >= 4) {
                let mut members: Vec<String> = row[3].split(',').filter(|m| !m.is_empty()).map(String::from).collect();
                let was = members.contains(&user.to_string());
                let want = groups.contains(&row[0]);
                if was != want {
                    if want {
                        members.push(user.to_string());
                    } else {
                        members.retain(|m| m != user);
                    }
                    row[3] = members.join(",");
                }
            }
        }
        self.changed[GROUP] = true;
        self.changed[GSHADOW] = !self.gshadow.rows.is_empty();
    }

    /// `[[customizations.user]]`, as the osbuild users stage does it: usermod for an existing
    /// user, useradd for a new one. `hash` is the shadow password field to set; `days` the
    /// date of the change (days since 1970-01-01) if known. Returns the home directory to make.
    pub fn apply_user(&mut self, u: &config::User, hash: Option<String>, days: Option<i64>, at: &str) -> Result<HomeDir> {
        if self.passwd.find(&u.name).is_none() && self.lib_passwd.find(&u.name).is_some() {
            bail!("{at}: user {:?} is in the image's read-only /usr/lib/passwd: change it in the image", u.name);
        }
        self.check_groups(u.groups.as_deref().unwrap_or_default(), at)?;
        let gid = match u.gid {
            Some(gid) if self.group_name(gid).is_none() => {
                bail!("{at}.gid: there is no group with gid {gid} in the image: add it with [[customizations.group]] or remove gid")
            }
            g => g,
        };
        let row = match self.passwd.find(&u.name) {
            Some(i) => {
                let existing: u32 = self.passwd.rows[i][2].parse().unwrap_or(u32::MAX);
                if u.uid.is_some_and(|want| want != existing) {
                    bail!("{at}.uid: user {:?} exists in the image with uid {existing}: an existing user keeps its uid; remove uid", u.name);
                }
                let r = &mut self.passwd.rows[i];
                if let Some(g) = gid {
                    r[3] = g.to_string();
                }
                if let Some(d) = &u.description {
                    r[4] = d.clone();
                }
                if let Some(h) = &u.home {
                    r[5] = h.clone();
                }
                if let Some(s) = &u.shell {
                    r[6] = s.clone();
                }
                i
            }
            None => {
                let uid = match u.uid {
                    Some(uid) => {
                        if let Some(other) = [&self.passwd, &self.lib_passwd].iter().find_map(|t| t.entries().find(|r| r[2] == uid.to_string()).map(|r| r[0].clone())) {
                            bail!("{at}.uid: uid {uid} of user {:?} is the image's user {other:?}: choose another uid, or leave it out to have one allocated", u.name);
                        }
                        uid
                    }
                    None => Self::allocate(&self.all_uids(), self.defs.uid_min, self.defs.uid_max, None)?,
                };
                let gid = match gid {
                    Some(g) => g,
                    None => {
                        // The user's own group, as USERGROUPS_ENAB makes it.
                        if self.gid(&u.name).is_some() {
                            bail!("{at}: a group named {:?} exists already: give the user's primary group with gid, or choose another name", u.name);
                        }
                        let gid = Self::allocate(&self.all_gids(), self.defs.gid_min, self.defs.gid_max, Some(uid))?;
                        self.new_group(&u.name, gid);
                        gid
                    }
                };
                let home = u.home.clone().unwrap_or_else(|| format!("{}/{}", self.default_home.trim_end_matches('/'), u.name));
                let shell = u.shell.clone().unwrap_or_else(|| self.default_shell.clone());
                self.passwd.rows.push(vec![
                    u.name.clone(),
                    "x".into(),
                    uid.to_string(),
                    gid.to_string(),
                    u.description.clone().unwrap_or_default(),
                    home,
                    shell,
                ]);
                let d = &self.defs;
                self.shadow.rows.push(vec![
                    u.name.clone(),
                    "!".into(),
                    days.map(|d| d.to_string()).unwrap_or_default(),
                    d.pass_min.clone(),
                    d.pass_max.clone(),
                    d.pass_warn.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                self.add_subordinate_ids(&u.name);
                self.passwd.rows.len() - 1
            }
        };
        self.changed[PASSWD] = true;
        // The shadow entry (made for an existing user that lacks one).
        let si = match self.shadow.find(&u.name) {
            Some(i) => i,
            None => {
                self.shadow.rows.push(vec![u.name.clone(), "!".into(), String::new(), String::new(), String::new(), String::new(), String::new(), String::new(), String::new()]);
                self.shadow.rows.len() - 1
            }
        };
        let s = &mut self.shadow.rows[si];
        if let Some(h) = hash {
            s[1] = h;
            s[2] = days.map(|d| d.to_string()).unwrap_or_default();
        }
        if let Some(e) = u.expire_date {
            s[7] = e.to_string();
        }
        if u.force_password_reset {
            // passwd --expire: the password must be changed at the next login.
            s[2] = "0".into();
        }
        self.changed[SHADOW] = true;
        if let Some(groups) = &u.groups {
            self.set_memberships(&u.name, groups);
        }
        let r = &self.passwd.rows[row];
        Ok(HomeDir {
            user: u.name.clone(),
            path: r[5].clone(),
            uid: r[2].parse().unwrap_or(0),
            gid: r[3].parse().unwrap_or(0),
            mode: self.defs.home_mode,
            keys: u.keys.clone(),
        })
    }

    /// Subordinate ids for a new user when the image keeps /etc/subuid, /etc/subgid (rootless
    /// containers), as useradd allocates them: the next free range above the ones in use.
    fn add_subordinate_ids(&mut self, name: &str) {
        let (min, count) = (self.defs.sub_uid_min, self.defs.sub_uid_count);
        for (t, flag) in [(&mut self.subuid, SUBUID), (&mut self.subgid, SUBGID)] {
            let Some(t) = t else { continue };
            if t.find(name).is_some() {
                continue;
            }
            let end = t
                .entries()
                .filter_map(|r| Some(r[1].parse::<u64>().ok()? + r[2].parse::<u64>().ok()?))
                .max()
                .unwrap_or(min as u64)
                .max(min as u64);
            t.rows.push(vec![name.into(), end.to_string(), count.to_string()]);
            self.changed[flag] = true;
        }
    }

    /// Writes the databases that changed, keeping each file's mode and owner (new files:
    /// 0644, or 0000 for the shadow files, root's).
    pub fn write(&self, root: &SystemRoot) -> Result<()> {
        let tables = [Some(&self.passwd), Some(&self.shadow), Some(&self.group), Some(&self.gshadow), self.subuid.as_ref(), self.subgid.as_ref()];
        for (i, t) in tables.iter().enumerate() {
            let Some(t) = t else { continue };
            if !self.changed[i] {
                continue;
            }
            let path = FILES[i];
            let secret = i == SHADOW || i == GSHADOW;
            let (mode, uid, gid) = root.stat(path)?.unwrap_or((if secret { 0 } else { 0o644 }, 0, 0));
            root.put(path, Content::File(t.render().as_bytes()), mode, uid, gid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts(passwd: &str, group: &str) -> Accounts {
        Accounts {
            passwd: Table::parse(passwd, 7),
            shadow: Table::parse("root:*:19000:0:99999:7:::\n", 9),
            group: Table::parse(group, 4),
            gshadow: Table::parse("root:*::\nwheel:*::\n", 4),
            subuid: Some(Table::parse("old:100000:65536\n", 3)),
            subgid: None,
            lib_passwd: Table::parse("bin:x:1:1::/:/sbin/nologin\n", 7),
            lib_group: Table::parse("bin:x:1:\n", 4),
            defs: LoginDefs::parse("UID_MIN 1000\nUID_MAX 60000\nGID_MIN 1000\nHOME_MODE 0700\nPASS_MAX_DAYS 99999\n"),
            default_home: "/home".into(),
            default_shell: "/bin/bash".into(),
            changed: [false; 6],
        }
    }

    #[test]
    fn useradd_allocation_memberships_and_clashes() {
        let mut a = accounts("root:x:0:0:root:/root:/bin/bash\nold:x:1000:1000::/home/old:/bin/sh\n", "root:x:0:\nwheel:x:10:\nold:x:1000:\n");
        let alice = config::User { name: "alice".into(), groups: Some(vec!["wheel".into()]), ..Default::default() };
        let home = a.apply_user(&alice, Some("$6$x$y".into()), Some(20000), "u[0]").unwrap();
        assert_eq!((home.uid, home.gid, home.mode, home.path.as_str()), (1001, 1001, 0o700, "/home/alice"));
        assert!(a.passwd.render().contains("alice:x:1001:1001::/home/alice:/bin/bash\n"));
        assert!(a.shadow.render().contains("alice:$6$x$y:20000::99999::::\n"), "{}", a.shadow.render());
        assert!(a.group.render().contains("wheel:x:10:alice\n") && a.group.render().contains("alice:x:1001:\n"));
        assert!(a.gshadow.render().contains("wheel:*::alice\n"));
        assert!(a.subuid.as_ref().unwrap().render().contains("alice:165536:65536\n"));

        let clash = config::User { name: "bob".into(), uid: Some(1000), ..Default::default() };
        let e = a.apply_user(&clash, None, None, "customizations.user[1]").unwrap_err().to_string();
        assert!(e.contains("customizations.user[1].uid") && e.contains("\"old\""), "{e}");
        let clash = config::User { name: "bob".into(), uid: Some(1), ..Default::default() };
        assert!(a.apply_user(&clash, None, None, "u").unwrap_err().to_string().contains("\"bin\""));
        let nogroup = config::User { name: "carol".into(), groups: Some(vec!["admins".into()]), ..Default::default() };
        assert!(a.apply_user(&nogroup, None, None, "u").unwrap_err().to_string().contains("no group \"admins\""));

        // An existing user keeps its uid, gets a key, a new password and its groups replaced.
        let root = config::User { name: "root".into(), home: Some("/var/roothome".into()), keys: vec!["ssh-ed25519 K".into()], ..Default::default() };
        let h = a.apply_user(&root, Some("$6$a$b".into()), None, "u").unwrap();
        assert_eq!((h.uid, h.path.as_str()), (0, "/var/roothome"));
        assert!(a.shadow.render().starts_with("root:$6$a$b::0:99999:7:::\n"), "{}", a.shadow.render());
        let e = a.apply_user(&config::User { name: "root".into(), uid: Some(5), ..Default::default() }, None, None, "u").unwrap_err().to_string();
        assert!(e.contains("keeps its uid"), "{e}");

        a.add_group(&config::Group { name: "admins".into(), gid: None }, "g").unwrap();
        assert!(a.group.render().contains("admins:x:1002:\n"), "{}", a.group.render());
        assert!(a.add_group(&config::Group { name: "x".into(), gid: Some(10) }, "g").unwrap_err().to_string().contains("\"wheel\""));
        assert!(a.add_group(&config::Group { name: "wheel".into(), gid: Some(11) }, "g").is_err());
    }

    #[test]
    fn login_defs_values() {
        let d = LoginDefs::parse("# c\nUID_MIN\t 500\nUMASK 077\n");
        assert_eq!((d.uid_min, d.uid_max, d.home_mode), (500, 60000, 0o700));
    }
}
