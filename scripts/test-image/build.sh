#!/bin/bash
# Builds (or finds in the cache) one of kiln's test images and prints the directory holding it:
#   oci/               OCI image layout, tag `latest` (gzip, zstd and uncompressed layers)
#   oci-gzip/          the same image with every layer gzip (for umoci, which reads only gzip)
#   image.oci-archive  the image as an oci-archive
#   base ->            the base root filesystem the image was made from; for sid, also the
#                      toolbox the tests run oracles from (mkcomposefs, ostree 2026, setfiles)
# usage: build.sh [bookworm|sid|bookworm-arm64]   (default bookworm; see base.sh for what each is)
# The cache lives outside the repository (KILN_TEST_CACHE, default /var/cache/kiln-test),
# keyed by a hash of this directory's files, so a second run takes no time.
set -euo pipefail
HERE=$(dirname "$(realpath "$0")")
FLAVOR=${1:-bookworm}
case $FLAVOR in bookworm|sid|bookworm-arm64) ;; *) echo "usage: build.sh [bookworm|sid|bookworm-arm64]" >&2; exit 2 ;; esac
CACHE=${KILN_TEST_CACHE:-/var/cache/kiln-test}
mkdir -p "$CACHE"

hash_files() { (cd "$HERE" && find "$@" -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }
BASE=$CACHE/base-$FLAVOR-$(hash_files base.sh)
IMAGE=$CACHE/image-$FLAVOR-$(hash_files .)
# A finished image is final (it appears whole, by a rename); a build takes the flavor's lock,
# so that building one flavor (the arm64 one takes a quarter of an hour) never holds up another.
if [ -e "$IMAGE/done" ]; then echo "$IMAGE"; exit 0; fi
exec 9>"$CACHE/lock-$FLAVOR"
flock 9
if [ -e "$IMAGE/done" ]; then echo "$IMAGE"; exit 0; fi

if [ ! -e "$BASE.done" ]; then
  echo "test image: building the Debian $FLAVOR base (debootstrap, a few minutes; arm64 under emulation about 15)…" >&2
  rm -rf "$BASE"
  DEBS_CACHE=$CACHE/debs "$HERE/base.sh" "$BASE" "$FLAVOR"
  touch "$BASE.done"
fi

echo "test image: assembling the $FLAVOR layers…" >&2
rm -rf "$IMAGE" "$IMAGE.tmp"
mkdir -p "$IMAGE.tmp"
python3 "$HERE/layers.py" "$BASE" "$IMAGE.tmp/oci" "$FLAVOR"
skopeo copy -q oci:"$IMAGE.tmp/oci":latest oci-archive:"$IMAGE.tmp/image.oci-archive":latest
skopeo copy -q --dest-compress --dest-compress-format gzip \
  oci:"$IMAGE.tmp/oci":latest oci:"$IMAGE.tmp/oci-gzip":latest
ln -s "$BASE" "$IMAGE.tmp/base"
touch "$IMAGE.tmp/done"
mv "$IMAGE.tmp" "$IMAGE"
echo "$IMAGE"
