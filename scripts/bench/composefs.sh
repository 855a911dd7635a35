#!/bin/bash
# Benchmark: what a deployment's .ostree.cfs costs in a bake. `kiln bake --type raw` of the sid
# test image (composefs enabled) against building and writing its .ostree.cfs alone
# (examples/ostree-cfs, same image, median of ROUNDS), in one run.
# Goal: the image is a small part of the bake (with the SELinux labels, at most 15% together).
# usage: scripts/bench/composefs.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
. scripts/bench/lib.sh
ROUNDS=${1:-3}
IMAGE=$(bash scripts/test-image/build.sh sid)
cargo build --release --locked -q --bin kiln --example ostree-cfs
W=$(mktemp -d /var/tmp/kiln-bench.XXXXXX); trap 'rm -rf "$W"' EXIT
RESULTS=$W/results
for i in $(seq "$ROUNDS"); do
  measure bake ./target/release/kiln bake --type raw --rootfs ext4 --force --progress quiet --output "$W/kiln" "oci:$IMAGE/oci:latest"
  rm -rf "$W/kiln"
done
cfs=$(./target/release/examples/ostree-cfs "oci:$IMAGE/oci:latest" "$W/cfs" "$ROUNDS")
echo "bake of the sid test image to a raw disk, $ROUNDS rounds:"
report bake
printf '  %-22s median %6.2fs\n' ".ostree.cfs alone" "$cfs"
echo "  ratio .ostree.cfs/bake: $(awk -v a="$cfs" -v b="$(median bake 2)" 'BEGIN{printf "%.3f", a/b}')"
