#!/bin/bash
# Builds (or finds in the cache) kiln's test image and prints the directory holding it:
#   oci/               OCI image layout, tag `latest` (gzip, zstd and uncompressed layers)
#   oci-gzip/          the same image with every layer gzip (for umoci, which reads only gzip)
#   image.oci-archive  the image as an oci-archive
# The cache lives outside the repository (KILN_TEST_CACHE, default /var/cache/kiln-test),
# keyed by a hash of this directory's files, so a second run takes no time.
set -euo pipefail
HERE=$(dirname "$(realpath "$0")")
CACHE=${KILN_TEST_CACHE:-/var/cache/kiln-test}
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9

hash_files() { (cd "$HERE" && find "$@" -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }
BASE=$CACHE/base-$(hash_files base.sh)
IMAGE=$CACHE/image-$(hash_files .)
if [ -e "$IMAGE/done" ]; then echo "$IMAGE"; exit 0; fi

if [ ! -e "$BASE.done" ]; then
  echo "test image: building the Debian base (debootstrap, a few minutes)…" >&2
  rm -rf "$BASE"
  DEBS_CACHE=$CACHE/debs "$HERE/base.sh" "$BASE"
  touch "$BASE.done"
fi

echo "test image: assembling layers…" >&2
rm -rf "$IMAGE" "$IMAGE.tmp"
mkdir -p "$IMAGE.tmp"
python3 "$HERE/layers.py" "$BASE" "$IMAGE.tmp/oci"
skopeo copy -q oci:"$IMAGE.tmp/oci":latest oci-archive:"$IMAGE.tmp/image.oci-archive":latest
skopeo copy -q --dest-compress --dest-compress-format gzip \
  oci:"$IMAGE.tmp/oci":latest oci:"$IMAGE.tmp/oci-gzip":latest
touch "$IMAGE.tmp/done"
mv "$IMAGE.tmp" "$IMAGE"
echo "$IMAGE"
