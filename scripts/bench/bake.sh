#!/bin/bash
# Benchmark: `kiln bake --type raw --rootfs ext4` vs the reference pipeline's raw path
# (../shared/bench/reference-pipeline.sh with RAW_ONLY=1) vs the floor (tar -x of the layers
# into a fresh ext4 on a loop device), on a test image, alternating in one run.
# On the sid image (SELinux policy, composefs), kiln also runs with --disable-selinux: the ratio
# of the two is what labelling costs (.ostree.cfs is written by both).
# Goals: kiln <= 1/3 of the reference's time and <= 1.5x the floor's; on sid, labelling adds
# <= 15% to kiln's own time.
# usage: scripts/bench/bake.sh [ROUNDS] [bookworm|sid]
# BASELINE=/path/to/an/older/kiln also measures that binary, for a before/after ratio.
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
. scripts/bench/lib.sh
ROUNDS=${1:-3}
FLAVOR=${2:-bookworm}
IMAGE=$(bash scripts/test-image/build.sh "$FLAVOR")
SHARED=${KILN_SHARED:-$(realpath -e ../shared 2>/dev/null || echo /work/shared)}
cargo build --release --locked -q --bin kiln
W=$(mktemp -d /var/tmp/kiln-bench.XXXXXX); trap 'rm -rf "$W"' EXIT
RESULTS=$W/results
KILN=(./target/release/kiln bake --type raw --rootfs ext4 --force --progress quiet --target-imgref quay.io/kiln/bench:latest)
for i in $(seq "$ROUNDS"); do
  measure kiln "${KILN[@]}" --output "$W/kiln" "oci:$IMAGE/oci-gzip:latest"
  if [ "$FLAVOR" = sid ]; then
    measure kiln-no-labels "${KILN[@]}" --disable-selinux --output "$W/kiln" "oci:$IMAGE/oci-gzip:latest"
  fi
  [ -z "${BASELINE:-}" ] || measure baseline "$BASELINE" bake --type raw --rootfs ext4 --force --progress quiet --target-imgref quay.io/kiln/bench:latest --output "$W/baseline" "oci:$IMAGE/oci-gzip:latest"
  measure reference env RAW_ONLY=1 bash "$SHARED/bench/reference-pipeline.sh" "$IMAGE/oci-gzip:latest" "$W/ref"
  measure floor bash scripts/bench/floor.sh "$IMAGE/oci-gzip" "$W/floor.raw"
  rm -rf "$W/kiln" "$W/baseline" "$W/ref" "$W/floor.raw"
done
echo "bake of the $FLAVOR test image to a raw disk, $ROUNDS rounds:"
if [ "$FLAVOR" = sid ]; then
  report kiln kiln-no-labels reference floor
  echo "  ratio kiln/kiln --disable-selinux: $(ratio kiln kiln-no-labels)  (goal <= 1.15)"
else
  report kiln reference floor
fi
[ -z "${BASELINE:-}" ] || { report baseline; echo "  ratio kiln/baseline:   $(ratio kiln baseline)  ($BASELINE)"; }
echo "  ratio kiln/reference: $(ratio kiln reference)  (goal <= 0.33)"
echo "  ratio kiln/floor:     $(ratio kiln floor)  (goal <= 1.5)"
