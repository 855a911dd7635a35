#!/bin/bash
# The floor for a bake: extract the image's layers with tar into a fresh filesystem (ext4
# unless FS says otherwise) on a loop device (no ostree, no bootloader, no layer semantics).
# Nothing a bake does can be cheaper than writing the bytes once.
# usage: floor.sh OCI_LAYOUT_DIR OUT.raw [SIZE [FS]]
set -euo pipefail
LAYOUT=$1 OUT=$2 SIZE=${3:-4G} FS=${4:-ext4}
M=$(mktemp -d)
rm -f "$OUT"; truncate -s "$SIZE" "$OUT"
case $FS in
  ext4) mkfs.ext4 -q -F "$OUT" ;;
  *) "mkfs.$FS" -q -f "$OUT" ;;
esac
LOOP=$(losetup -f --show "$OUT")
cleanup() { umount "$M" 2>/dev/null || true; losetup -d "$LOOP"; rmdir "$M"; }
trap cleanup EXIT
mount "$LOOP" "$M"
MANIFEST=$(jq -r '.manifests[0].digest' "$LAYOUT/index.json" | cut -d: -f2)
for d in $(jq -r '.layers[].digest' "$LAYOUT/blobs/sha256/$MANIFEST" | cut -d: -f2); do
  case $(head -c4 "$LAYOUT/blobs/sha256/$d" | od -An -tx1 | tr -d ' ') in
    1f8b*) gzip -dc ;;
    28b52ffd) zstd -dc ;;
    *) cat ;;
  esac < "$LAYOUT/blobs/sha256/$d" | tar -x --recursive-unlink --xattrs --xattrs-include='*' --numeric-owner -C "$M"
done
sync -f "$M"
