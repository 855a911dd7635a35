//! kiln's composefs images against libcomposefs itself (Debian sid's composefs 1.0.8 tools, run
//! in the sid test image's root): for hand-made edge cases and generated trees, kiln's image
//! must be byte-identical to `mkcomposefs --from-file` of the dump kiln wrote for the same
//! tree, pass `fsck.erofs`, dump back (`composefs-info dump`) to exactly that dump, and have
//! the fs-verity digest `fsverity digest` and `mkcomposefs --print-digest-only` report.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{sid, Scratch};
use kiln::composefs::{dump, erofs::Image, Kind, Mtime, Node, Xattrs};
use sha2::Digest;

fn file(size: u64, payload: &str, verity: Option<[u8; 32]>) -> Node {
    Node { kind: Kind::Regular { size, payload: Some(payload.as_bytes().to_vec()), verity }, ..Node::dir(0o644, 0, 0) }
}

fn node(mode: u32, kind: Kind) -> Node {
    Node { kind, ..Node::dir(mode, 0, 0) }
}

fn xattrs(list: &[(&str, &[u8])]) -> Xattrs {
    list.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect()
}

fn put<'a>(dir: &'a mut Node, name: &[u8], n: Node) -> &'a mut Node {
    let e = dir.entries_mut().unwrap();
    e.insert(name.to_vec(), n);
    e.get_mut(name).unwrap()
}

fn object(i: u64) -> String {
    let h = hex::encode(sha2::Sha256::digest(i.to_le_bytes()));
    format!("{}/{}.file", &h[..2], &h[2..])
}

/// An ostree-shaped tree: labelled directories, files redirected to objects, empty files,
/// symlinks, the mount-point directories.
fn ostree_like() -> Node {
    let label = |t: &str| format!("system_u:object_r:{t}:s0\0").into_bytes();
    let mut root = Node { xattrs: xattrs(&[("security.selinux", &label("root_t"))]), ..Node::dir(0o755, 0, 0) };
    for d in ["boot", "etc", "sysroot", "var"] {
        put(&mut root, d.as_bytes(), Node::dir(0o755, 0, 0));
    }
    let usr = put(&mut root, b"usr", Node { xattrs: xattrs(&[("security.selinux", &label("usr_t"))]), ..Node::dir(0o755, 0, 0) });
    let bin = put(usr, b"bin", Node { xattrs: xattrs(&[("security.selinux", &label("bin_t"))]), ..Node::dir(0o755, 0, 0) });
    for i in 0..300u64 {
        let mut f = file(1 + i * 997, &object(i), None);
        f.mode = if i % 7 == 0 { 0o4755 } else { 0o755 };
        f.xattrs = xattrs(&[("security.selinux", &label(if i % 3 == 0 { "bin_t" } else { "usr_t" }))]);
        if i % 11 == 0 {
            f.xattrs.insert(b"security.capability".to_vec(), vec![1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        put(bin, format!("tool-{i}").as_bytes(), f);
    }
    put(bin, b"sh", Node { xattrs: xattrs(&[("security.selinux", &label("bin_t"))]), ..node(0o777, Kind::Symlink(b"bash".to_vec())) });
    put(bin, b"empty", Node { kind: Kind::Regular { size: 0, payload: None, verity: None }, ..Node::dir(0o644, 0, 0) });
    let etc = put(usr, b"etc", Node { xattrs: xattrs(&[("security.selinux", &label("etc_t"))]), ..Node::dir(0o755, 0, 0) });
    let mut shadow = file(700, &object(999), Some([7; 32]));
    shadow.mode = 0o640;
    shadow.gid = 42;
    put(etc, b"shadow", shadow);
    root
}

/// Adds entries to `d` whose dirents take `bytes` bytes (names of 4 bytes and more).
fn fill(d: &mut Node, bytes: usize) {
    let mut left = bytes;
    let mut j = 0;
    while left > 0 {
        let take = if left > 212 + 16 { 212 } else if left > 212 { left - 16 } else { left };
        let mut name = format!("{j:04}").into_bytes();
        name.resize(take - 12, b'n');
        put(d, &name, file(5, &object(j as u64), None));
        left -= take;
        j += 1;
    }
}

/// Directories whose entries fill several blocks, and tails around the half-block limit.
fn big_dirs() -> Node {
    let mut root = Node::dir(0o755, 0, 0);
    let many = put(&mut root, b"many", Node::dir(0o755, 0, 0));
    for i in 0..2000 {
        put(many, format!("{i:05}-{}", "x".repeat(i % 50)).as_bytes(), file(5, &object(i as u64), None));
    }
    // "." and ".." take 27 bytes.
    for (name, total) in [("tail-2048", 2048), ("tail-2049", 2049), ("block-4096", 4096), ("block-4097", 4097), ("blocks-12300", 12300)] {
        fill(put(&mut root, name.as_bytes(), Node::dir(0o755, 0, 0)), total - 27);
    }
    // Directories after xattr-heavy inodes, so that tails land near block ends.
    for i in 0..40 {
        let d = put(&mut root, format!("d{i:02}").as_bytes(), Node { xattrs: xattrs(&[("user.pad", &vec![b'p'; 13 * i])]), ..Node::dir(0o755, 0, 0) });
        fill(d, 16 * (i * 7 + 1));
    }
    root
}

/// Symlinks whose targets, with the inode and xattrs, fit a block, fill it, or overflow it.
fn symlinks() -> Node {
    let mut root = Node::dir(0o755, 0, 0);
    for len in [1, 60, 1000, 2047, 2048, 2049, 4000, 4030, 4031, 4032, 4033, 4063, 4064, 4065, 4095] {
        put(&mut root, format!("l{len}").as_bytes(), node(0o777, Kind::Symlink(vec![b'a' + (len % 26) as u8; len])));
        let mut x = node(0o777, Kind::Symlink(vec![b't'; len]));
        x.xattrs = xattrs(&[("user.k", b"0123456789")]);
        put(&mut root, format!("x{len}").as_bytes(), x);
    }
    root
}

/// Every xattr prefix, shared and unshared values, escaping of overlay names, more than 128
/// shared xattrs on one inode, an ACL.
fn xattr_mix() -> Node {
    let mut root = Node { xattrs: xattrs(&[("trusted.overlay.opaque", b"y"), ("user.overlay.x", b"1")]), ..Node::dir(0o755, 0, 0) };
    let all: Vec<(String, Vec<u8>)> = vec![
        ("user.a".into(), b"1".to_vec()),
        ("trusted.t".into(), b"v=w".to_vec()),
        ("security.selinux".into(), b"system_u:object_r:usr_t:s0\0".to_vec()),
        ("security.ima".into(), vec![0xff, 0, 1, 2]),
        ("system.posix_acl_access".into(), vec![2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff]),
        ("system.posix_acl_default".into(), vec![2, 0, 0, 0]),
        ("system.nfs4_acl".into(), b"x".to_vec()),
        ("trusted.overlay.redirect".into(), b"/elsewhere".to_vec()),
        ("trusted.overlay.overlay.x".into(), b"deep".to_vec()),
        ("user.empty".into(), Vec::new()),
        ("user.big".into(), vec![b'b'; 3000]),
        ("user.eq=sign".into(), b"a b\\c\n".to_vec()),
    ];
    for i in 0..all.len() {
        let mut f = file(10 + i as u64, &object(i as u64), None);
        f.xattrs = all[..=i].iter().map(|(k, v)| (k.clone().into_bytes(), v.clone())).collect();
        put(&mut root, format!("f{i:02}").as_bytes(), f);
    }
    // Two inodes sharing 150 xattrs: only 128 can be shared references.
    let many: Xattrs = (0..150).map(|i| (format!("user.m{i:03}").into_bytes(), format!("value {i}").into_bytes())).collect();
    for name in ["many-a", "many-b"] {
        put(&mut root, name.as_bytes(), Node { xattrs: many.clone(), ..Node::dir(0o700, 0, 0) });
    }
    root
}

/// Sizes at the chunk-format boundaries, owners and times that need extended inodes, devices,
/// whiteouts, names that collide with the root's whiteouts, names that need escaping.
fn odd_inodes() -> Node {
    let mut root = Node { mtime: Mtime { sec: 100, nsec: 5 }, ..Node::dir(0o1777, 0, 0) };
    for (i, size) in [1u64, 4095, 4096, 4097, 1 << 20, (1 << 32) - 1, 1 << 32, 5 << 40, 9_000_000_000_000_000].into_iter().enumerate() {
        put(&mut root, format!("size-{size}").as_bytes(), file(size, &object(i as u64), if i % 2 == 0 { Some([i as u8; 32]) } else { None }));
    }
    let mut late = file(3, &object(50), None);
    late.mtime = Mtime { sec: 1_700_000_000, nsec: 123 };
    put(&mut root, b"late", late);
    let mut early = file(3, &object(51), None);
    early.mtime = Mtime { sec: 99, nsec: 0 };
    put(&mut root, b"early", early);
    put(&mut root, b"uid", Node { uid: 70000, gid: 5, ..file(3, &object(52), None) });
    put(&mut root, b"nlink", Node { nlink: 70000, ..file(3, &object(53), None) });
    put(&mut root, b"chr", node(0o620, Kind::CharDevice(0x0501)));
    put(&mut root, b"blk", node(0o660, Kind::BlockDevice(0x0803)));
    put(&mut root, b"fifo", node(0o600, Kind::Fifo));
    put(&mut root, b"sock", node(0o755, Kind::Socket));
    put(&mut root, b"00", Node::dir(0o755, 0, 0));
    put(&mut root, b"a5", file(1, &object(54), None));
    put(&mut root, b"ff", node(0o777, Kind::Symlink(b"00".to_vec())));
    put(&mut root, b"with space\tand\\back\nslash=eq\xff\x01", file(2, "we/ird path=x", None));
    put(&mut root, b"-", file(2, "-", None));
    put(&mut root, b"no-payload", Node { kind: Kind::Regular { size: 9, payload: None, verity: None }, ..Node::dir(0o644, 0, 0) });
    root
}

fn whiteouts() -> Node {
    let mut root = Node::dir(0o755, 0, 0);
    put(&mut root, b"gone", node(0o644, Kind::CharDevice(0)));
    let d = put(&mut root, b"dir", Node { xattrs: xattrs(&[("user.keep", b"1")]), ..Node::dir(0o755, 0, 0) });
    put(d, b"also-gone", node(0o600, Kind::CharDevice(0)));
    put(d, b"kept", file(4, &object(1), None));
    root
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random tree of about `count` inodes, xattrs drawn from a pool so that many are shared.
fn generated(seed: u64, count: usize) -> Node {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let pool: Vec<(Vec<u8>, Vec<u8>)> = (0..40)
        .map(|i| {
            let prefix = ["user.", "trusted.", "security.", "system.posix_acl_access", "other."][i % 5];
            let key = if prefix.starts_with("system.") { prefix.to_string() } else { format!("{prefix}k{}", i % 7) };
            (key.into_bytes(), format!("val-{i}-{}", "z".repeat(i * 3)).into_bytes())
        })
        .collect();
    let mut root = Node::dir(0o755, 0, 0);
    let mut dirs: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    for i in 0..count {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let long = rng.below(10) == 0;
        let len = 1 + rng.below(if long { 200 } else { 20 });
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._- =\\\xe9";
        let mut name: Vec<u8> = (0..len).map(|_| CHARS[rng.below(CHARS.len() as u64) as usize]).collect();
        if name == b"." || name == b".." {
            name.push(b'x');
        }
        let kind = match rng.below(100) {
            0..=14 => Kind::Dir(BTreeMap::new()),
            15..=69 => {
                let size = match rng.below(10) {
                    0..=1 => 0,
                    2..=7 => rng.below(100_000),
                    _ => rng.below(1 << 40),
                };
                Kind::Regular { size, payload: (size > 0).then(|| object(i as u64).into_bytes()), verity: (rng.below(3) == 0).then(|| [rng.below(256) as u8; 32]) }
            }
            70..=89 => Kind::Symlink(vec![b's'; 1 + if rng.below(8) == 0 { rng.below(4095) } else { rng.below(60) } as usize]),
            90..=93 => Kind::CharDevice(1 + rng.below(1 << 20)),
            94..=95 => Kind::BlockDevice(rng.below(1 << 20)),
            96..=97 => Kind::Fifo,
            _ => Kind::Socket,
        };
        let mut n = Node {
            mode: rng.below(0o10000) as u32,
            uid: [0, 0, 0, 1000, 70000][rng.below(5) as usize],
            gid: [0, 0, 0, 1000, 80000][rng.below(5) as usize],
            nlink: if rng.below(50) == 0 { 2 + rng.below(5) as u32 } else { 1 },
            mtime: if rng.below(20) == 0 { Mtime { sec: rng.below(1 << 33) as i64, nsec: rng.below(1_000_000_000) as u32 } } else { Mtime::default() },
            xattrs: Xattrs::default(),
            kind,
        };
        for _ in 0..rng.below(5) {
            let (k, v) = &pool[rng.below(pool.len() as u64) as usize];
            n.xattrs.insert(k.clone(), v.clone());
        }
        if rng.below(10) == 0 {
            n.xattrs.insert(format!("user.unique{i}").into_bytes(), rng.next().to_le_bytes().to_vec());
        }
        let is_dir = matches!(n.kind, Kind::Dir(_));
        let mut d = &mut root;
        for c in &parent {
            d = d.entries_mut().unwrap().get_mut(c).unwrap();
        }
        if d.entries().unwrap().contains_key(&name) {
            continue;
        }
        put(d, &name, n);
        if is_dir {
            let mut p = parent;
            p.push(name);
            dirs.push(p);
        }
    }
    root
}

/// A tree with more inodes than 16 bits count, and a directory with more than 65535
/// subdirectories (its link count needs an extended inode).
fn many_inodes() -> Node {
    let mut root = Node::dir(0o755, 0, 0);
    let wide = put(&mut root, b"wide", Node::dir(0o755, 0, 0));
    for i in 0..65540 {
        put(wide, format!("{i}").as_bytes(), Node::dir(0o755, 0, 0));
    }
    let files = put(&mut root, b"files", Node::dir(0o755, 0, 0));
    for i in 0..5000u64 {
        put(files, format!("f{i}").as_bytes(), file(i + 1, &object(i), None));
    }
    root
}

/// Writes each tree's image, dump and digest into `dir` as kiln makes them.
fn write_cases(dir: &Path, cases: &[(String, Node)]) -> BTreeMap<String, String> {
    let mut digests = BTreeMap::new();
    for (name, tree) in cases {
        let image = Image::new(tree).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let mut bytes = Vec::new();
        let digest = image.write_to(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, image.size(), "{name}: the image's length");
        assert_eq!(digest, kiln::fsverity::digest(&bytes), "{name}: the streamed digest");
        std::fs::write(dir.join(format!("{name}.cfs")), &bytes).unwrap();
        std::fs::write(dir.join(format!("{name}.dump")), dump::to_string(tree).unwrap()).unwrap();
        // The dump reads back to the same tree.
        let text = std::fs::read(dir.join(format!("{name}.dump"))).unwrap();
        let mut back = Vec::new();
        Image::new(&dump::parse(&text).unwrap()).unwrap().write_to(&mut back).unwrap();
        assert!(back == bytes, "{name}: the dump does not read back to the same image");
        digests.insert(name.clone(), hex::encode(digest));
    }
    digests
}

/// Runs the libcomposefs checks on every case in `dir`; returns, per case, what they said.
const CHECKS: &str = r#"
cd "$1"
for d in *.dump; do
  n=${d%.dump}
  mkcomposefs --from-file "$d" "/tmp/$n.ref"
  if cmp -s "/tmp/$n.ref" "$n.cfs"; then echo "$n image same"; else echo "$n image differs: $(cmp "/tmp/$n.ref" "$n.cfs" | head -1) sizes $(stat -c %s "/tmp/$n.ref" "$n.cfs" | tr '\n' ' ')"; fi
  if fsck.erofs "$n.cfs" >"/tmp/$n.fsck" 2>&1; then echo "$n fsck ok"; else echo "$n fsck failed: $(tail -3 "/tmp/$n.fsck" | tr '\n' ' ')"; fi
  composefs-info dump "$n.cfs" >"/tmp/$n.info"
  if cmp -s "/tmp/$n.info" "$d"; then echo "$n dump same"; else echo "$n dump differs: $(diff "/tmp/$n.info" "$d" | head -4 | cut -c1-300 | tr '\n' '|')"; fi
  echo "$n digests $(mkcomposefs --print-digest-only --from-file "$d") $(fsverity digest "$n.cfs" | cut -d' ' -f1)"
done
"#;

#[test]
fn images_are_byte_identical_to_mkcomposefs() {
    let s = Scratch::new("composefs-mkcomposefs");
    let mut cases: Vec<(String, Node)> = vec![
        ("empty".into(), Node::dir(0o755, 0, 0)),
        ("ostree-like".into(), ostree_like()),
        ("big-dirs".into(), big_dirs()),
        ("symlinks".into(), symlinks()),
        ("xattrs".into(), xattr_mix()),
        ("odd-inodes".into(), odd_inodes()),
        ("whiteouts".into(), whiteouts()),
        ("many-inodes".into(), many_inodes()),
    ];
    for seed in 0..24 {
        cases.push((format!("generated-{seed:02}"), generated(seed, [10, 100, 1000, 5000][seed as usize % 4])));
    }
    let digests = write_cases(s.path(), &cases);
    let out = sid::run_ok(&format!("sh -c {} - {}", shell_quote(CHECKS), sid::host(s.path())), &[s.path()]);
    let mut failures = Vec::new();
    for (name, digest) in &digests {
        let said: Vec<&str> = out.lines().filter(|l| l.split(' ').next() == Some(name)).collect();
        let has = |what: &str| said.iter().any(|l| *l == format!("{name} {what}"));
        // libcomposefs dumps whiteouts back with the overlay xattrs it added to their parents.
        let dump_ok = name == "whiteouts" || has("dump same");
        if !(has("image same") && has("fsck ok") && dump_ok && has(&format!("digests {digest} sha256:{digest}"))) {
            failures.push(format!("{name} (kiln's digest {digest}):\n  {}", said.join("\n  ")));
        }
    }
    assert!(failures.is_empty() && !digests.is_empty(), "{} of {} cases differ from libcomposefs:\n{}", failures.len(), digests.len(), failures.join("\n"));
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The strongest oracle: for a commit kiln wrote (the sid test image, through kiln's ostree
/// stage), Debian sid's ostree 2026 writes the same `.ostree.cfs` kiln put in the deployment,
/// and every object the image redirects to is in the repository.
#[test]
fn ostree_writes_the_same_image_for_kilns_commit() {
    use kiln::ostree::{self, Repo};
    let s = Scratch::new("composefs-ostree");
    let sysroot = s.path().join("sysroot");
    std::fs::create_dir_all(sysroot.join("boot")).unwrap();
    let reference = format!("oci:{}:latest", common::sid_image().join("oci").display());
    let image = kiln::image::Image::open(&reference, &Default::default()).unwrap();
    let repo = Repo::create(&sysroot.join("ostree/repo"), ostree::SYSROOT_CONFIG).unwrap();
    let merged = kiln::tree::apply_layers(&image, &repo, &kiln::progress::Progress::quiet(), "layers").unwrap();
    let (root, filtered) = ostree::convert(merged.root).unwrap();
    let kver = kiln::tree::kernels(&root).remove(0);
    let info = ostree::CommitInfo { image: &image, target_transport_ref: "docker://quay.io/kiln/sid:latest", filtered: &filtered, kernel: &kver };
    let layers = merged.layers.into_iter().map(|l| ostree::commit::filter(l).unwrap().0).collect();
    let commit = ostree::commit(&repo, &root, layers, &info).unwrap();
    let opts = ostree::DeployOptions {
        stateroot: "default",
        origin: "ostree-unverified-registry:quay.io/kiln/sid:latest",
        kargs: &["rw".to_string()],
        version: None,
        image: "quay.io/kiln/sid:latest",
        labels: None,
        selinux_state: "disabled",
        object_verity: None,
    };
    let dep = ostree::deploy(&sysroot, &repo, &commit, root.clone(), &opts).unwrap();
    let cfs = dep.dir.join(".ostree.cfs");
    let md = std::fs::metadata(&cfs).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o7777, 0o644);
    assert_eq!((std::os::unix::fs::MetadataExt::uid(&md), std::os::unix::fs::MetadataExt::gid(&md)), (0, 0));

    let script = format!(
        "set -e; cd /tmp; ostree --repo={repo} checkout --composefs-noverity {commit} ref.cfs; \
         cmp /tmp/ref.cfs {cfs} && echo SAME; \
         fsck.erofs {cfs} >/dev/null && echo FSCK-OK; \
         echo MISSING:$(composefs-info missing-objects --basedir={repo}/objects {cfs} | wc -l); \
         echo OBJECTS:$(composefs-info objects {cfs} | wc -l); \
         composefs-info ls {cfs} | grep -c . | sed 's/^/ENTRIES:/'",
        repo = sid::host(&sysroot.join("ostree/repo")),
        commit = kiln::ostree::object::hex(&commit),
        cfs = sid::host(&cfs),
    );
    let out = sid::run_ok(&script, &[&sysroot.join("ostree/repo"), &dep.dir]);
    assert!(out.contains("SAME\n"), "ostree's image differs from kiln's:\n{out}");
    assert!(out.contains("FSCK-OK\n"), "{out}");
    assert!(out.contains("MISSING:0\n"), "objects missing from the repository:\n{out}");
    let count = |key: &str| out.lines().find_map(|l| l.strip_prefix(key)).and_then(|n| n.trim().parse::<u64>().ok()).unwrap_or(0);
    assert!(count("OBJECTS:") > 1000 && count("ENTRIES:") > 5000, "the image lists too little:\n{out}");
}
