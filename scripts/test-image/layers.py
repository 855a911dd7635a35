#!/usr/bin/env python3
"""Assembles the test image as an OCI image layout from the base root filesystem.

usage: layers.py ROOTFS OUT_OCI_DIR [FLAVOR]

FLAVOR (bookworm, sid or bookworm-arm64, see base.sh) changes the version label, the
architecture (the image config's, and the one the kargs files name), and adds: for sid, the
kargs.d file that turns SELinux on; for arm64, what an Apple Silicon image carries besides
m1n1 and U-Boot (device trees for Apple machines, stand-ins compiled here since Debian's
kernel has none, and a boot picker icon).

Layers, each exercising a different encoding and layer semantics:
  1. the base OS (GNU tar, posix format with xattrs), gzip
  2. bootc configuration, the boot probe, fixtures later layers change; GNU tar format
     (GNU long names), zstd
  3. layer semantics: whiteouts, an opaque directory, hardlinks,
     symlinks, setuid/setgid/sticky, a non-root owner, xattrs, unicode and long names, a
     directory replacing a file and the reverse; PAX format, gzip
  4. one file, uncompressed
The probe (probe/kiln-probe) checks each of these on the booted system.

A hardlink to a file of a lower layer is valid OCI but containers-storage cannot hold it
(podman fails to load such an image), so that case lives in kiln's synthetic-image tests, not
here: the test image must load everywhere.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
MTIME = 1700000000
T = "usr/share/kiln-test"
LONG_NAME = f"{T}/long-{'x' * 150}.txt"
DEEP_PATH = f"{T}/deep/{'d' * 60}/{'e' * 60}/file"
# vfs_cap_data revision 2 with the effective flag: cap_net_bind_service (bit 10) permitted.
CAP_NET_BIND_SERVICE = bytes.fromhex("01000002" "00040000" "00000000" "00000000" "00000000")


class Layer:
    """Builds one layer tar in memory from entries described in order."""

    def __init__(self, fmt):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=fmt)

    def _info(self, name, kind, mode, uid=0, gid=0, xattrs=None):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, gid, MTIME
        ti.uname = ti.gname = ""
        if xattrs:
            ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        return ti

    def dir(self, name, mode=0o755, **kw):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))

    def file(self, name, content, mode=0o644, **kw):
        data = content.encode() if isinstance(content, str) else content
        ti = self._info(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))

    def symlink(self, name, target):
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)

    def hardlink(self, name, target):
        ti = self._info(name, tarfile.LNKTYPE, 0o644)
        ti.linkname = target
        self.tar.addfile(ti)

    def whiteout(self, path):
        d, base = os.path.split(path)
        self.file(f"{d}/.wh.{base}", b"")

    def opaque(self, dir_path):
        self.file(f"{dir_path}/.wh..wh..opq", b"")

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


# Per architecture: the OCI name, the kernel's (kargs.d's match-architectures), the other one,
# and the serial console the kernel writes to (on aarch64 `virt`, the PL011).
ARCHES = {
    "amd64": {"ARCH": "x86_64", "OTHER_ARCH": "aarch64", "CONSOLE": "ttyS0,115200n8"},
    "arm64": {"ARCH": "aarch64", "OTHER_ARCH": "x86_64", "CONSOLE": "ttyAMA0"},
}
FLAVORS = {"bookworm": ("12", "amd64"), "sid": ("sid", "amd64"), "bookworm-arm64": ("12", "arm64")}
# Apple machines' device trees (stand-ins) under the kernel's dtb directory, as Fedora's kernel
# ships them: m1n1/boot.bin takes t6*.dtb and t81*.dtb (asahi-scripts' update-m1n1), not the
# t8015 (an iPhone's SoC).
APPLE_DTBS = {
    "t8103-j274.dtb": ("apple,j274", "apple,t8103", "Apple Mac mini (M1, 2020)"),
    "t8112-j413.dtb": ("apple,j413", "apple,t8112", "Apple MacBook Air (13-inch, M2, 2022)"),
    "t6000-j314s.dtb": ("apple,j314s", "apple,t6000", "Apple MacBook Pro (14-inch, M1 Pro, 2021)"),
    "t6001-j375c.dtb": ("apple,j375c", "apple,t6001", "Apple Mac Studio (M1 Max, 2022)"),
    "t8015-fixture.dtb": ("apple,d22", "apple,t8015", "iPhone X (not for m1n1/boot.bin)"),
}


def bootc_file(name, arch):
    text = open(f"{HERE}/bootc/{name}").read()
    for k, v in ARCHES[arch].items():
        text = text.replace(f"@{k}@", v)
    return text


def dtb(compatible, soc, model):
    dts = (f'/dts-v1/;\n/ {{\n  compatible = "{compatible}", "{soc}", "apple,arm-platform";\n'
           f'  model = "{model}";\n  #address-cells = <2>;\n  #size-cells = <2>;\n}};\n')
    return subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", "-"], input=dts.encode(),
                          check=True, stdout=subprocess.PIPE).stdout


def layer2(flavor, rootfs):
    arch = FLAVORS[flavor][1]
    l = Layer(tarfile.GNU_FORMAT)
    for d in ["usr", "usr/share", T, f"{T}/opaque", f"{T}/was-dir", "usr/lib", "usr/lib/bootc",
              "usr/lib/bootc/install", "usr/lib/bootc/kargs.d", "usr/libexec", "usr/lib/systemd",
              "usr/lib/systemd/system", "usr/lib/systemd/system/multi-user.target.wants", "usr/bin",
              "etc", "etc/kiln-test", "var", "var/lib", "var/lib/kiln-test"]:
        l.dir(d)
    l.file(f"{T}/deleted", "deleted by layer 3")
    l.file(f"{T}/opaque/old-a", "hidden by the opaque whiteout")
    l.file(f"{T}/opaque/old-b", "hidden by the opaque whiteout")
    l.file(f"{T}/was-dir/inside", "removed when the directory becomes a file")
    l.file(f"{T}/was-file", "replaced by a directory in layer 3")
    l.file(f"{T}/overridden", "layer 2")
    l.file(f"{T}/gnu-long-{'g' * 140}", "GNU long name")
    l.file("etc/kiln-test/config", "from-image")
    l.file("etc/kiln-test/deleted", "deleted by layer 3")
    l.file("var/lib/kiln-test/seed", "seeded from image")
    l.file("usr/lib/bootc/install/00-kiln-test.toml", bootc_file("00-kiln-test.toml", arch))
    l.file("usr/lib/bootc/kargs.d/10-kiln-test.toml", bootc_file("10-kiln-test.toml", arch))
    l.file("usr/lib/bootc/kargs.d/20-other-arch.toml", bootc_file("20-other-arch.toml", arch))
    l.file("usr/lib/bootc/kargs.d/41-emulation-x86.toml", open(f"{HERE}/bootc/41-emulation-x86.toml").read())
    if flavor == "sid":
        l.file("usr/lib/bootc/kargs.d/30-selinux.toml", open(f"{HERE}/bootc/30-selinux.toml").read())
        l.file("usr/lib/bootc/kargs.d/40-emulation.toml", open(f"{HERE}/bootc/40-emulation.toml").read())
        # The policy knows /root, /home…; a bootc image keeps them in /var, as Fedora's policy
        # says with the same aliases. A policy file from a layer above the policy's own.
        l.file("etc/selinux/default/contexts/files/file_contexts.subs", open(f"{HERE}/bootc/file_contexts.subs").read())
    if arch == "arm64":
        (kver,) = os.listdir(f"{rootfs}/usr/lib/modules")
        modules = f"usr/lib/modules/{kver}"
        for d in [modules, f"{modules}/dtb", f"{modules}/dtb/apple", "usr/share/pixmaps",
                  "usr/share/pixmaps/bootloader"]:
            l.dir(d)
        for name, (compatible, soc, model) in sorted(APPLE_DTBS.items()):
            l.file(f"{modules}/dtb/apple/{name}", dtb(compatible, soc, model))
        # The boot picker icon, where fedora-logos puts Fedora's (bootloader/fedora.icns).
        l.file("usr/share/pixmaps/bootloader/debian.icns", b"icns\x00\x00\x00\x10kiln-test")
    l.file("usr/libexec/kiln-probe", open(f"{HERE}/probe/kiln-probe", "rb").read(), mode=0o755)
    l.file("usr/lib/systemd/system/kiln-probe.service", open(f"{HERE}/probe/kiln-probe.service").read())
    l.symlink("usr/lib/systemd/system/multi-user.target.wants/kiln-probe.service", "../kiln-probe.service")
    return l.bytes()


def layer3():
    l = Layer(tarfile.PAX_FORMAT)
    l.whiteout(f"{T}/deleted")
    l.whiteout("etc/kiln-test/deleted")
    l.dir(f"{T}/opaque")
    l.opaque(f"{T}/opaque")
    l.file(f"{T}/opaque/new-entry", "after the opaque whiteout")
    l.file(f"{T}/hardlink-a", "hardlinked content")
    l.hardlink(f"{T}/hardlink-b", f"{T}/hardlink-a")
    l.file(f"{T}/target-file", "symlink target content")
    l.symlink(f"{T}/symlink", "target-file")
    l.file("usr/bin/kiln-setuid", "#!/bin/sh\necho setuid\n", mode=0o4755)
    l.file("usr/bin/kiln-cap", "#!/bin/sh\necho capability\n", mode=0o755,
           xattrs={"security.capability": CAP_NET_BIND_SERVICE.decode("latin-1")})
    l.dir(f"{T}/shared-dir", mode=0o3775)
    l.file(f"{T}/owned", "owned by 1234:5678", uid=1234, gid=5678)
    l.file(f"{T}/xattr-file", "has a user xattr", xattrs={"user.kiln.test": "hello xattr"})
    l.file(f"{T}/ünïcødé-名前-☃.txt", "unicode")
    l.file(LONG_NAME, "long name")
    parts = DEEP_PATH.split("/")
    for i in range(len(parts) - 3, len(parts)):
        l.dir("/".join(parts[:i]))
    l.file(DEEP_PATH, "deep")
    l.dir(f"{T}/was-file")
    l.file(f"{T}/was-file/child", "child of new dir")
    l.file(f"{T}/was-dir", "now a file")
    l.file(f"{T}/overridden", "layer 3")
    return l.bytes()


def layer4():
    l = Layer(tarfile.PAX_FORMAT)
    l.file(f"{T}/layer4", "uncompressed layer")
    return l.bytes()


def base_layer(rootfs):
    names = sorted(os.listdir(rootfs))
    return subprocess.run(
        ["tar", "-C", rootfs, "--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner",
         "--sort=name", "--pax-option=delete=atime,delete=ctime", "-cf", "-", *names],
        check=True, stdout=subprocess.PIPE).stdout


def compress(data, how):
    if how == "gzip":
        return subprocess.run(["gzip", "-n", "-6"], input=data, check=True, stdout=subprocess.PIPE).stdout
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-3", "-T0"], input=data, check=True, stdout=subprocess.PIPE).stdout
    return data


MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def main():
    rootfs, out = sys.argv[1], sys.argv[2]
    flavor = sys.argv[3] if len(sys.argv) > 3 else "bookworm"
    version, arch = FLAVORS[flavor]
    os.makedirs(f"{out}/blobs/sha256")

    def put_blob(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(f"{out}/blobs/sha256/{digest}", "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers = [
        (base_layer(rootfs), "gzip", f"debootstrap {flavor} base, kernel, dracut+ostree, shim, GRUB"),
        (layer2(flavor, rootfs), "zstd", "bootc install config, kargs.d, boot probe, fixtures"),
        (layer3(), "gzip", "layer semantics: whiteouts, opaque dir, links, modes, owners, xattrs, names"),
        (layer4(), "none", "an uncompressed layer"),
    ]
    descs, diff_ids, history = [], [], []
    for tar, how, what in layers:
        desc = put_blob(compress(tar, how))
        desc["mediaType"] = MEDIA[how]
        descs.append(desc)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        history.append({"created": "2023-11-14T22:13:20Z", "created_by": f"kiln test image: {what}"})

    osrel = dict(l.split("=", 1) for l in open(f"{rootfs}/usr/lib/os-release").read().split("\n") if "=" in l)
    config = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Cmd": ["/sbin/init"],
            "Labels": {
                "containers.bootc": "1",
                "ostree.bootable": "1",
                "org.opencontainers.image.version": f"{version}.kiln-test.1",
                "org.opencontainers.image.title": "kiln test image",
                "org.opencontainers.image.description": osrel.get("PRETTY_NAME", "").strip('"'),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    cdesc = put_blob(json.dumps(config, sort_keys=True).encode())
    cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cdesc,
        "layers": descs,
        "annotations": {"org.opencontainers.image.created": "2023-11-14T22:13:20Z"},
    }
    mdesc = put_blob(json.dumps(manifest, sort_keys=True).encode())
    mdesc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    mdesc["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    with open(f"{out}/index.json", "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [mdesc]}, f)
    with open(f"{out}/oci-layout", "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


if __name__ == "__main__":
    main()
