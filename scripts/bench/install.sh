#!/bin/bash
# Benchmark: `kiln install to-disk` onto a loop device vs `kiln bake --type raw` of the same
# image with the same layout and disk size, alternating in one run, with peak RSS.
# Goal: install <= 1.1x bake (one code path: only the target differs), memory as flat.
# usage: scripts/bench/install.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
. scripts/bench/lib.sh
ROUNDS=${1:-3}
IMAGE=$(bash scripts/test-image/build.sh)
cargo build --release --locked -q --bin kiln
W=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
LOOP=
cleanup() { [ -z "$LOOP" ] || losetup -d "$LOOP"; rm -rf "$W"; }
trap cleanup EXIT
RESULTS=$W/results
SRC="oci:$IMAGE/oci-gzip:latest"
for i in $(seq "$ROUNDS"); do
  truncate -s 4G "$W/disk.raw"
  LOOP=$(losetup --find --show --partscan "$W/disk.raw")
  measure install ./target/release/kiln install to-disk --filesystem ext4 --progress quiet "$LOOP" "$SRC"
  losetup -d "$LOOP"; LOOP=; rm -f "$W/disk.raw"
  measure bake ./target/release/kiln bake --type raw --rootfs ext4 --layout bootc --size 4G --force --progress quiet --output "$W/bake" "$SRC"
  rm -rf "$W/bake"
done
echo "the test image installed to a 4 GiB loop device vs baked to a 4 GiB raw disk, $ROUNDS rounds:"
report install bake
echo "  ratio install/bake: $(ratio install bake)  (goal <= 1.1)"
