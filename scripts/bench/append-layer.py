#!/usr/bin/env python3
"""Copies an OCI image layout and appends one zstd layer made from a directory tree.

usage: append-layer.py SRC_LAYOUT TREE DEST_LAYOUT
The tree is archived with GNU tar (PAX, xattrs, numeric owners, sorted) and compressed with
zstd -3 on all cores; config (diff_ids, history) and manifest are rewritten, tag `latest`.
"""
import hashlib, json, os, shutil, subprocess, sys

src, tree, dest = sys.argv[1:4]
shutil.copytree(src, dest)
blobs = os.path.join(dest, "blobs", "sha256")

def blob(digest):
    return os.path.join(blobs, digest.split(":", 1)[1])

def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)

index = json.load(open(os.path.join(dest, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
config = json.load(open(blob(manifest["config"]["digest"])))

names = sorted(os.listdir(tree))
tar = subprocess.Popen(["tar", "-C", tree, "--format=posix", "--xattrs", "--xattrs-include=*",
                        "--numeric-owner", "--sort=name", "--pax-option=delete=atime,delete=ctime",
                        "--mtime=2023-11-14 22:13:20", "-cf", "-", *names], stdout=subprocess.PIPE)
tmp = os.path.join(blobs, "layer.tmp")
diff = hashlib.sha256()
with open(tmp, "wb") as out:
    z = subprocess.Popen(["zstd", "-q", "-3", "-T0", "-c"], stdin=subprocess.PIPE, stdout=out)
    while True:
        chunk = tar.stdout.read(1 << 20)
        if not chunk:
            break
        diff.update(chunk)
        z.stdin.write(chunk)
    z.stdin.close()
    assert tar.wait() == 0 and z.wait() == 0
h = hashlib.sha256()
with open(tmp, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
os.rename(tmp, os.path.join(blobs, h.hexdigest()))
manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                           "digest": "sha256:" + h.hexdigest(), "size": os.path.getsize(blob("sha256:" + h.hexdigest()))})
config["rootfs"]["diff_ids"].append("sha256:" + diff.hexdigest())
config.setdefault("history", []).append({"created": "2023-11-14T22:13:20Z", "created_by": "kiln benchmark: desktop-sized layer"})
cd, cs = put(json.dumps(config, sort_keys=True).encode())
manifest["config"]["digest"], manifest["config"]["size"] = cd, cs
md, ms = put(json.dumps(manifest, sort_keys=True).encode())
index["manifests"][0]["digest"], index["manifests"][0]["size"] = md, ms
json.dump(index, open(os.path.join(dest, "index.json"), "w"))
