//! Configs from bootc-image-builder's README and test suite (retyped here as text), and bad
//! input: each parses, or fails naming the key, the file, its line and column.

use super::*;

fn toml(text: &str) -> Result<BuildConfig> {
    parse(text, Format::Toml, "config.toml")
}

fn json(text: &str) -> Result<BuildConfig> {
    parse(text, Format::Json, "config.json")
}

fn err(r: Result<BuildConfig>) -> String {
    format!("{:#}", r.expect_err("should fail"))
}

#[test]
fn readme_user_example_toml_and_json_agree() {
    let t = toml(
        r#"[[customizations.user]]
name = "alice"
password = "bob"
key = "ssh-rsa AAA ... user@email.com"
groups = ["wheel"]
"#,
    )
    .unwrap();
    let u = &t.users[0];
    assert_eq!(u.name, "alice");
    assert_eq!(u.password, Some(Password::Plain("bob".into())));
    assert_eq!(u.keys, vec!["ssh-rsa AAA ... user@email.com"]);
    assert_eq!(u.groups.as_deref(), Some(&["wheel".to_string()][..]));
    let j = json(r#"{"customizations": {"user": [{"name": "alice", "password": "bob", "key": "ssh-rsa AAA ... user@email.com", "groups": ["wheel"]}]}}"#).unwrap();
    assert_eq!(BuildConfig { source: String::new(), ..t }, BuildConfig { source: String::new(), ..j });
}

#[test]
fn readme_kernel_filesystem_and_iso_examples() {
    let c = json(r#"{"customizations": {"kernel": {"append": "mitigations=auto,nosmt"}}}"#).unwrap();
    assert_eq!(c.kernel_append, vec!["mitigations=auto,nosmt"]);
    let c = toml(
        "[[customizations.filesystem]]\nmountpoint = \"/\"\nminsize = \"10 GiB\"\n\n[[customizations.filesystem]]\nmountpoint = \"/var/data\"\nminsize = \"20 GiB\"\n",
    )
    .unwrap();
    assert_eq!(
        c.disk,
        Some(DiskConfig::Filesystems(vec![
            MountSize { mountpoint: "/".into(), min_size: 10 << 30 },
            MountSize { mountpoint: "/var/data".into(), min_size: 20 << 30 },
        ]))
    );
    let c = toml("[customizations.iso]\nvolume_id = \"TheISOLabel\"\napplication_id = \"MyFancyAPP\"\npublisher = \"ThePublisher\"\n").unwrap();
    assert_eq!(c.iso.unwrap().volume_id.as_deref(), Some("TheISOLabel"));
}

#[test]
fn readme_installer_examples_are_refused_with_what_to_do() {
    let e = err(toml("[customizations.installer.kickstart]\ncontents = \"\"\"\ntext --non-interactive\nzerombr\n\"\"\"\n"));
    assert!(e.contains("config.toml:1:1") && e.contains("customizations.installer.kickstart") && e.contains("not Anaconda"), "{e}");
    let e = err(json(r#"{"customizations": {"installer": {"modules": {"enable": ["org.fedoraproject.Anaconda.Modules.Localization"]}}}}"#));
    assert!(e.contains("config.json:1:") && e.contains("customizations.installer.modules"), "{e}");
}

/// The config bib's disk test builds every image with (test/test_build_disk.py), with each of
/// its filesystem and disk variants (test/testutil.py).
#[test]
fn bib_test_suite_configs() {
    let base = r#""user": [{"name": "root", "key": "ssh-rsa AAAAB3 test", "home": "/var/roothome"},
                         {"name": "test", "password": "X7PKUZ1QT4ND2S0ABC", "groups": ["wheel"]}],
                "kernel": {"append": "systemd.journald.forward_to_console=1"},
                "files": [{"path": "/etc/some-file", "data": "some-data"}],
                "directories": [{"path": "/etc/some-dir"}]"#;
    let with = |extra: &str| json(&format!("{{\"customizations\": {{{base}{extra}}}}}"));
    let c = with("").unwrap();
    assert_eq!(c.users.len(), 2);
    assert_eq!(c.users[0].home.as_deref(), Some("/var/roothome"));
    assert_eq!(c.files[0], FileNode { path: "/etc/some-file".into(), data: b"some-data".to_vec(), mode: 0o644, user: Owner::Id(0), group: Owner::Id(0) });
    assert_eq!(c.directories[0].mode, 0o755);

    let fs = with(r#","filesystem": [{"mountpoint": "/", "minsize": "12 GiB"}, {"mountpoint": "/var/data", "minsize": "3 GiB"},
                     {"mountpoint": "/var/data/test", "minsize": "1 GiB"}, {"mountpoint": "/var/opt", "minsize": "2 GiB"}]"#);
    let Some(DiskConfig::Filesystems(m)) = fs.unwrap().disk else { panic!() };
    assert_eq!(m.len(), 4);

    let swap = with(r#","disk": {"partitions": [{"minsize": "123 MiB", "fs_type": "swap"}]}"#).unwrap();
    let Some(DiskConfig::Partitions(t)) = swap.disk else { panic!() };
    assert_eq!(t.partitions[0].content, PartitionContent::Swap { label: None });
    assert_eq!(t.partitions[0].min_size, 123 << 20);

    let btrfs = with(r#","disk": {"partitions": [{"type": "btrfs", "minsize": "10 GiB", "subvolumes": [{"name": "varlog", "mountpoint": "/var/log"}]}]}"#).unwrap();
    let Some(DiskConfig::Partitions(t)) = btrfs.disk else { panic!() };
    assert_eq!(t.partitions[0].content, PartitionContent::Btrfs { subvolumes: vec![("varlog".into(), "/var/log".into())] });

    let lvm = err(with(
        r#","disk": {"partitions": [{"type": "lvm", "minsize": "10 GiB", "logical_volumes": [{"fs_type": "xfs", "minsize": "1 GiB", "mountpoint": "/var/log"}, {"minsize": "7 GiB", "fs_type": "swap"}]}]}"#,
    ));
    assert!(lvm.contains("customizations.disk.partitions[0].type") && lvm.contains("LVM is not supported"), "{lvm}");
}

/// bib's manifest test that expects only a warning: kiln refuses.
#[test]
fn bib_unsupported_repositories_are_refused() {
    let e = err(toml("[[customizations.repositories]]\nid = \"foo\"\n"));
    assert!(e.starts_with("build config config.toml: config.toml:1:1: customizations.repositories") || e.contains("config.toml:1:"), "{e}");
    assert!(e.contains("Containerfile"), "{e}");
}

#[test]
fn unknown_keys_top_level_and_nested_name_key_file_line_and_column() {
    let e = err(toml("name = \"x\"\nhostnme = \"a\"\n"));
    assert!(e.contains("config.toml:2:1") && e.contains("hostnme: unknown key"), "{e}");
    let e = err(toml("[[customizations.user]]\nname = \"a\"\npasword = \"b\"\n"));
    assert!(e.contains("config.toml:3:1") && e.contains("customizations.user[0].pasword: unknown key"), "{e}");
    assert!(e.contains("password"), "the known keys are listed: {e}");
    let e = err(json("{\"customizations\": {\n  \"kernel\": {\"apend\": \"x\"}}}"));
    assert!(e.contains("config.json:2:") && e.contains("customizations.kernel.apend: unknown key"), "{e}");
}

#[test]
fn the_hostname_example_of_the_issue() {
    let e = err(toml("[customizations]\nhostname = \"box\"\n"));
    assert!(
        e.contains("config.toml:2:12: customizations.hostname: a bootc disk cannot set it at bake time; set it in the image or with a files customization of /etc/hostname"),
        "{e}"
    );
}

#[test]
fn malformed_files_give_line_and_column() {
    let e = err(toml("[customizations.kernel]\nappend = \"a\n"));
    assert!(e.contains("config.toml:2:"), "{e}");
    let e = err(json("{\"customizations\": {\n \"kernel\": {\"append\": }}}"));
    assert!(e.contains("config.json:2:"), "{e}");
    let e = err(json("{} {}"));
    assert!(e.contains("extra data"), "{e}");
    let e = err(toml("[customizations.kernel]\nappend = 5\n"));
    assert!(e.contains("config.toml:2:") && e.contains("customizations.kernel.append"), "{e}");
}

#[test]
fn filesystem_and_disk_together_are_refused() {
    let e = err(toml("[[customizations.filesystem]]\nmountpoint = \"/\"\nminsize = \"1 GiB\"\n[customizations.disk]\n[[customizations.disk.partitions]]\nmountpoint = \"/var/a\"\nfs_type = \"ext4\"\nminsize = 1048576\n"));
    assert!(e.contains("cannot be combined"), "{e}");
}

#[test]
fn bibs_mountpoint_policy() {
    for (m, ok) in [
        ("/", true),
        ("/boot", true),
        ("/var/lib/data", true),
        ("/var", false),
        ("/var/home", false),
        ("/var/home/x", false),
        ("/var/roothome", false),
        ("/var/run", false),
        ("/usr", false),
        ("/etc", false),
        ("/opt", false),
        ("/var/lib/../home", false),
    ] {
        let r = toml(&format!("[[customizations.filesystem]]\nmountpoint = \"{m}\"\nminsize = \"1 GiB\"\n"));
        assert_eq!(r.is_ok(), ok, "{m}: {r:?}");
        if let Err(e) = r {
            let e = format!("{e:#}");
            assert!(e.contains("customizations.filesystem[0].mountpoint") && e.contains("config.toml"), "{e}");
        }
    }
}

#[test]
fn legacy_json_wrapper_and_metadata_keys() {
    let c = json(r#"{"blueprint": {"name": "x", "customizations": {"user": [{"name": "a"}]}}}"#).unwrap();
    assert_eq!(c.users[0].name, "a");
    let c = toml("name = \"n\"\ndescription = \"d\"\nversion = \"1.0.0\"\npackages = []\ngroups = []\n").unwrap();
    assert!(c.users.is_empty());
    let e = err(toml("[[packages]]\nname = \"vim\"\n"));
    assert!(e.contains("packages") && e.contains("Containerfile"), "{e}");
}

#[test]
fn passwords_files_and_kargs() {
    let c = toml(
        r#"[[customizations.user]]
name = "a"
password = "$6$salt$abc"
[[customizations.user]]
name = "b"
password = ""
[[customizations.files]]
path = "/etc/x"
mode = "0600"
user = "a"
group = 10
data = "hi"
[customizations.kernel]
append = 'quiet foo="a b" bar=1'
"#,
    )
    .unwrap();
    assert_eq!(c.users[0].password, Some(Password::Crypted("$6$salt$abc".into())));
    assert_eq!(c.users[1].password, None);
    assert_eq!((c.files[0].mode, &c.files[0].user, &c.files[0].group), (0o600, &Owner::Name("a".into()), &Owner::Id(10)));
    assert_eq!(c.kernel_append, vec!["quiet", "foo=\"a b\"", "bar=1"]);
    let e = err(toml("[[customizations.files]]\npath = \"/usr/bin/x\"\n"));
    assert!(e.contains("customizations.files[0].path") && e.contains("read-only"), "{e}");
    let e = err(toml("[[customizations.files]]\npath = \"/etc/passwd\"\n"));
    assert!(e.contains("written by kiln"), "{e}");
    let e = err(toml("[[customizations.files]]\npath = \"/etc/x\"\nmode = \"rw\"\n"));
    assert!(e.contains("customizations.files[0].mode"), "{e}");
    let e = err(toml("[[customizations.files]]\npath = \"/etc/x\"\n[[customizations.files]]\npath = \"/etc/x/y\"\n"));
    assert!(e.contains("cannot be inside"), "{e}");
}

#[test]
fn installer_settings_are_carried() {
    let c = toml("[customizations.installer]\nunattended = true\ntarget-disk = \"auto\"\nwipe = true\nkargs = [\"console=ttyS0\"]\nfilesystem = \"xfs\"\nenroll-mok = true\nmok-password = \"kiln test\"\nfinish = \"reboot\"\n").unwrap();
    assert_eq!(
        c.installer,
        Some(Installer {
            unattended: true,
            target_disk: Some("auto".into()),
            wipe: true,
            kargs: vec!["console=ttyS0".into()],
            filesystem: Some("xfs".into()),
            enroll_mok: true,
            mok_password: Some("kiln test".into()),
            finish: Finish::Reboot
        })
    );
    let e = err(toml("[customizations.installer]\nunattended = true\n"));
    assert!(e.contains("target-disk"), "{e}");
    let e = err(toml("[customizations.installer]\nmok-password = \"\"\n"));
    assert!(e.contains("customizations.installer.mok-password") && e.contains("1 to 256 characters"), "{e}");
}

/// The configs of bib's manifest tests (bootc-image-builder/test/test_manifest.py) and what
/// kiln makes of each: parsed, or refused with the reason.
#[test]
fn bib_manifest_test_configs() {
    let crypted = toml("[[customizations.user]]\nname = \"alice\"\npassword = \"$5$xx$aabbccddeeffgghhiijj\"  # notsecret\nkey = \"ssh-rsa AAA ... user@email.com\"\ngroups = [\"wheel\"]\n").unwrap();
    assert_eq!(crypted.users[0].password, Some(Password::Crypted("$5$xx$aabbccddeeffgghhiijj".into())));

    let e = err(json(r#"{"blueprint": {"customizations": {"filesystem": [{"mountpoint": "/", "minsize": "12GiB"}, {"mountpoint": "/var/log", "minsize": "1GiB"}, {"mountpoint": "/ostree", "minsize": "10GiB"}]}}}"#));
    assert!(e.contains("customizations.filesystem[2].mountpoint") && e.contains("/ostree is not allowed"), "{e}");

    for fs in [
        r#"{"/var/data": "2 GiB", "/var/stuff": "10 GiB"}"#,
        r#"{"/": "2 GiB", "/boot": "1 GiB"}"#,
        r#"{"/": "2 GiB", "/boot": "1 GiB", "/var/data": "42 GiB"}"#,
        r#"{"/": "2 GiB"}"#,
    ] {
        let m: serde_json::Map<String, serde_json::Value> = serde_json::from_str(fs).unwrap();
        let list: Vec<_> = m.iter().map(|(k, v)| serde_json::json!({"mountpoint": k, "minsize": v})).collect();
        json(&serde_json::json!({"customizations": {"filesystem": list}}).to_string()).unwrap();
    }

    let e = err(json(r#"{"customizations": {"fips": true}}"#));
    assert!(e.contains("customizations.fips") && e.contains("fips=1"), "{e}");
    let e = err(toml("[[customizations.disk.partitions]]\ntype = \"lvm\"\nminsize = \"10 GiB\"\n\n[[customizations.disk.partitions.logical_volumes]]\nminsize = \"10 GiB\"\nfs_type = \"ext4\"\nmountpoint = \"/\"\n"));
    assert!(e.contains("LVM is not supported"), "{e}");
    let e = err(toml("[customizations.disk]\ntype = \"dos\"\n"));
    assert!(e.contains("customizations.disk.type") && e.contains("GPT"), "{e}");
    let b = json(r#"{"customizations": {"disk": {"partitions": [{"type": "btrfs", "minsize": "10 GiB", "subvolumes": [{"name": "root", "mountpoint": "/"}]}]}}}"#).unwrap();
    assert!(matches!(b.disk, Some(DiskConfig::Partitions(_))), "parses; the bake refuses a root subvolume (disk::custom)");
    json(r#"{"customizations": {"disk": {"partitions": [{"minsize": "2 GiB", "fs_type": "swap"}]}}}"#).unwrap();
    let e = err(json(r#"{"customizations": {"disk": {"partitions": [{"type": "lvm", "minsize": "10 GiB", "logical_volumes": [{"minsize": "2 GiB", "fs_type": "swap"}]}]}}}"#));
    assert!(e.contains("LVM"), "{e}");
    let f = json(r#"{"blueprint": {"customizations": {"files": [{"path": "/etc/custom_file", "data": "hello world"}], "directories": [{"path": "/etc/custom_dir"}]}}}"#).unwrap();
    assert_eq!((f.files.len(), f.directories.len()), (1, 1));
    json(r#"{"blueprint": {"customizations": {"filesystem": [{"mountpoint": "/boot", "minsize": "3GiB"}]}}}"#).unwrap();
    let v = json(r#"{"blueprint": {"customizations": {"disk": {"partitions": [{"label": "var", "mountpoint": "/var", "fs_type": "ext4", "minsize": "3 GiB"}]}}}}"#).unwrap();
    assert!(matches!(v.disk, Some(DiskConfig::Partitions(_))));
    let e = err(json(r#"{"customizations": {"disk": {"partitions": [{"mountpoint": "/usr", "fs_type": "ext4", "minsize": "3 GiB"}]}}}"#));
    assert!(e.contains("/usr is not allowed"), "{e}");
}
