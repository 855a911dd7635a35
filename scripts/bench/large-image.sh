#!/bin/bash
# Builds (or finds in the cache) a desktop-sized benchmark image and prints its OCI layout
# directory: the bookworm test image plus one zstd layer made from real Debian packages
# (unpacked with dpkg -x: browsers, office, compilers, fonts, TeX, test suites…), with some
# hardlinks and xattrs added so every kind of entry a real image has is there.
#   mid    ≈ 2.5 GB, ≈ 50k files in the extra layer
#   large  ≈ 7 GB, ≈ 150k files in the extra layer
# Never used by CI: the benchmarks (scripts/bench/scale.sh) build it once and cache it in
# $KILN_BENCH_CACHE (default /var/cache/kiln-bench), keyed by a hash of this script.
# usage: large-image.sh mid|large
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
SIZE=${1:?usage: large-image.sh mid|large}
MID="libboost1.81-dev locales-all linux-image-6.1.0-50-amd64 linux-headers-6.1.0-50-amd64
  linux-headers-6.1.0-50-common inkscape racket python3-numpy python3-scipy python3-matplotlib
  libpython3.11-stdlib libpython3.11-dev golang-1.19-go golang-1.19-src gcc-12 g++-12 cpp-12
  libllvm15 llvm-15 libclang-cpp15 fonts-noto-core vim-runtime perl-modules-5.36 emacs-common
  firefox-esr libreoffice-core libreoffice-common libreoffice-calc libreoffice-writer"
LARGE="$MID piglit ghc thunderbird chromium libreoffice-impress libreoffice-draw gimp gimp-data
  blender blender-data krita krita-data texlive-base texlive-latex-base texlive-latex-recommended
  texlive-fonts-recommended texlive-latex-extra texlive-pictures fonts-noto-extra fonts-noto-cjk
  libqt5webenginecore5 libllvm14 mesa-vulkan-drivers libgl1-mesa-dri octave"
case $SIZE in mid) PKGS=$MID ;; large) PKGS=$LARGE ;; *) echo "mid or large" >&2; exit 2 ;; esac
CACHE=${KILN_BENCH_CACHE:-/var/cache/kiln-bench}
BASE=$(bash scripts/test-image/build.sh bookworm)
KEY=$( (cat "$0"; echo "$BASE") | sha256sum | cut -c1-16)
OUT=$CACHE/$SIZE-$KEY
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"; flock 9
if [ -e "$OUT/done" ]; then echo "$OUT/oci"; exit 0; fi
echo "large-image: building the $SIZE benchmark image (downloads Debian packages once)…" >&2
rm -rf "$OUT"; mkdir -p "$OUT" "$CACHE/debs"
(cd "$CACHE/debs" && apt-get download -q $PKGS >/dev/null 2>&1 || apt-get download $PKGS >&2)
TREE=$OUT/tree; mkdir -p "$TREE"
for p in $PKGS; do dpkg -x "$CACHE"/debs/"${p}"_*.deb "$TREE"; done
# A bootc image keeps /boot empty (the kernel package's copy in /boot goes; the test image's
# own kernel in /usr/lib/modules stays the only one).
rm -rf "$TREE/boot"
python3 - "$TREE" <<'PY'
# A realistic sprinkling of what image builders leave: hardlinked copies, user xattrs,
# file capabilities (as a real /usr has a few).
import os, sys
root = sys.argv[1]
cap = bytes.fromhex("0100000200040000000000000000000000000000")
n = 0
for d, dirs, files in os.walk(root):
    dirs.sort(); files.sort()
    for f in files:
        p = os.path.join(d, f)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        n += 1
        if n % 211 == 0:
            os.link(p, p + ".hardlink")
        if n % 97 == 0:
            os.setxattr(p, "user.kiln.bench", b"x" * (n % 50 + 1))
        if n % 1009 == 0:
            os.setxattr(p, "security.capability", cap)
PY
python3 scripts/bench/append-layer.py "$BASE/oci" "$TREE" "$OUT/oci.tmp"
rm -rf "$TREE"
mv "$OUT/oci.tmp" "$OUT/oci"
touch "$OUT/done"
echo "$OUT/oci"
