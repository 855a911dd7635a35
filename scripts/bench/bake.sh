#!/bin/bash
# Benchmark: `kiln bake --type raw --rootfs ext4` vs the reference pipeline's raw path
# (../shared/bench/reference-pipeline.sh with RAW_ONLY=1) vs the floor (tar -x of the layers
# into a fresh ext4 on a loop device), on the test image, alternating in one run.
# Goals: kiln <= 1/3 of the reference's time and <= 1.5x the floor's.
# usage: scripts/bench/bake.sh [ROUNDS]
# BASELINE=/path/to/an/older/kiln also measures that binary, for a before/after ratio.
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
. scripts/bench/lib.sh
ROUNDS=${1:-3}
IMAGE=$(bash scripts/test-image/build.sh)
SHARED=${KILN_SHARED:-$(realpath -e ../shared 2>/dev/null || echo /work/shared)}
cargo build --release --locked -q --bin kiln
W=$(mktemp -d /var/tmp/kiln-bench.XXXXXX); trap 'rm -rf "$W"' EXIT
RESULTS=$W/results
for i in $(seq "$ROUNDS"); do
  measure kiln ./target/release/kiln bake --type raw --rootfs ext4 --force --progress quiet --output "$W/kiln" "oci:$IMAGE/oci-gzip:latest"
  [ -z "${BASELINE:-}" ] || measure baseline "$BASELINE" bake --type raw --rootfs ext4 --force --progress quiet --output "$W/baseline" "oci:$IMAGE/oci-gzip:latest"
  measure reference env RAW_ONLY=1 bash "$SHARED/bench/reference-pipeline.sh" "$IMAGE/oci-gzip:latest" "$W/ref"
  measure floor bash scripts/bench/floor.sh "$IMAGE/oci-gzip" "$W/floor.raw"
  rm -rf "$W/kiln" "$W/baseline" "$W/ref" "$W/floor.raw"
done
echo "bake of the test image to a raw disk, $ROUNDS rounds:"
report kiln reference floor
[ -z "${BASELINE:-}" ] || { report baseline; echo "  ratio kiln/baseline:   $(ratio kiln baseline)  ($BASELINE)"; }
echo "  ratio kiln/reference: $(ratio kiln reference)  (goal <= 0.33)"
echo "  ratio kiln/floor:     $(ratio kiln floor)  (goal <= 1.5)"
