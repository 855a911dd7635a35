#!/usr/bin/env python3
"""Makes two test images the same size for a fair comparison: the one whose layers hold fewer
bytes (uncompressed) gets one more layer of copies of its own largest files, to the byte.

usage: same-size.py IMAGE_DIR_A IMAGE_DIR_B WORK_DIR
IMAGE_DIR_*: test image directories (build.sh's output: oci-gzip/, base/). Prints two lines,
each `oci:<layout>:latest` for A then B, and the sizes on stderr.
"""
import gzip, json, os, shutil, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))


def layer_bytes(layout):
    index = json.load(open(os.path.join(layout, "index.json")))
    blob = lambda d: os.path.join(layout, "blobs", "sha256", d.split(":", 1)[1])
    manifest = json.load(open(blob(index["manifests"][0]["digest"])))
    total = 0
    for l in manifest["layers"]:
        with gzip.open(blob(l["digest"])) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total


def filler(base, deficit, tree):
    """Copies of the base's largest files under usr/, cycling, until `deficit` bytes (tar
    headers included, 512 bytes a file, padding to 512) are made up."""
    files = []
    for root, _, names in os.walk(os.path.join(base, "usr")):
        for n in names:
            p = os.path.join(root, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files.append((os.path.getsize(p), p))
    files.sort(reverse=True)
    files = files[:200]
    os.makedirs(tree)
    left, i = deficit - 1024, 0  # the tar's end blocks
    while left > 1024:
        size, src = files[i % len(files)]
        take = min(size, left - 512)
        take -= take % 512
        if take <= 0:
            break
        with open(src, "rb") as s, open(os.path.join(tree, f"filler-{i:05d}"), "wb") as d:
            d.write(s.read(take))
        left -= 512 + take
        i += 1


def main():
    a, b, work = sys.argv[1:4]
    sizes = {d: layer_bytes(os.path.join(d, "oci-gzip")) for d in (a, b)}
    small, big = sorted((a, b), key=lambda d: sizes[d])
    out = {big: f"oci:{os.path.join(big, 'oci-gzip')}:latest"}
    tree = os.path.join(work, "filler")
    filler(os.path.join(small, "base"), sizes[big] - sizes[small], tree)
    padded = os.path.join(work, "padded")
    subprocess.run([sys.executable, os.path.join(HERE, "append-layer.py"), os.path.join(small, "oci-gzip"), tree, padded], check=True)
    shutil.rmtree(tree)
    out[small] = f"oci:{padded}:latest"
    print(f"same-size: {os.path.basename(big)} {sizes[big]} bytes; {os.path.basename(small)} {sizes[small]} bytes + filler layer", file=sys.stderr)
    print(out[a])
    print(out[b])


main()
