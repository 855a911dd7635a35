#!/bin/bash
# Benchmark: how a bake scales with the image. For the test image (small), the mid and the large
# desktop-sized images (scripts/bench/large-image.sh, built once and cached), in one run and
# alternating: `kiln bake --type raw --rootfs ext4` vs the floor (tar -x of the layers into a fresh
# ext4 on a loop device, scripts/bench/floor.sh). Prints time, ratio and peak RSS for each, and the
# growth of each from the small image to the others. KILN_BENCH_ROOTFS=xfs|btrfs measures that
# root filesystem instead (kiln's and the floor's).
# Goals: kiln <= 0.5x the floor at every size; peak RSS <= 128 MiB; kiln grows no faster than the
# floor.
# usage: scripts/bench/scale.sh [ROUNDS] [SIZES…]   (default: 2 rounds; small mid large)
# A size may be given as NAME=OCI_LAYOUT_DIR to measure an image already built (a cached mid or
# large image of an older test image, say) without building it again.
# KILN_BEFORE=/path/to/an/older/kiln adds that binary to each round ("before"), so a change is
# measured before and after in the same run.
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
. scripts/bench/lib.sh
ROUNDS=${1:-2}; shift || true
SIZES=${*:-small mid large}
ROOTFS=${KILN_BENCH_ROOTFS:-ext4}
cargo build --release --locked -q --bin kiln
declare -A LAYOUT
NAMES=
for spec in $SIZES; do
  s=${spec%%=*}; NAMES="$NAMES $s"
  case $spec in
    *=*) LAYOUT[$s]=${spec#*=} ;;
    small) LAYOUT[$s]=$(bash scripts/test-image/build.sh)/oci ;;
    *) LAYOUT[$s]=$(bash scripts/bench/large-image.sh "$s") ;;
  esac
done
SIZES=${NAMES# }
W=$(mktemp -d /var/tmp/kiln-bench.XXXXXX); trap 'rm -rf "$W"' EXIT
RESULTS=$W/results
for i in $(seq "$ROUNDS"); do
  for s in $SIZES; do
    measure "kiln-$s" ./target/release/kiln bake --type raw --rootfs "$ROOTFS" --force --progress quiet --output "$W/kiln" "oci:${LAYOUT[$s]}:latest"
    rm -rf "$W/kiln"
    if [ -n "${KILN_BEFORE:-}" ]; then
      measure "before-$s" "$KILN_BEFORE" bake --type raw --rootfs "$ROOTFS" --force --progress quiet --output "$W/kiln" "oci:${LAYOUT[$s]}:latest"
      rm -rf "$W/kiln"
    fi
    measure "floor-$s" bash scripts/bench/floor.sh "${LAYOUT[$s]}" "$W/floor.raw" 16G "$ROOTFS"
    rm -f "$W/floor.raw"
  done
done
echo "bake to a raw disk vs tar -x into $ROOTFS, $ROUNDS rounds:"
for s in $SIZES; do
  report "kiln-$s" ${KILN_BEFORE:+"before-$s"} "floor-$s"
  echo "  ratio kiln/floor ($s): $(ratio "kiln-$s" "floor-$s")  (goal <= 0.5)"
  [ -n "${KILN_BEFORE:-}" ] && echo "  ratio before/floor ($s): $(ratio "before-$s" "floor-$s")"
done
first=${SIZES%% *}
for s in $SIZES; do
  [ "$s" = "$first" ] && continue
  echo "  growth $first -> $s: kiln $(ratio "kiln-$s" "kiln-$first")x, floor $(ratio "floor-$s" "floor-$first")x  (goal: kiln's <= floor's)${KILN_BEFORE:+, before $(ratio "before-$s" "before-$first")x}"
done
