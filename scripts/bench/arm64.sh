#!/bin/bash
# Benchmark: baking the arm64 test image on this x86_64 machine costs what baking the x86_64
# test image of the same size costs (goal: ratio <= 1.1: kiln runs nothing from the image, so no
# emulation is in its path), and the Asahi package (`--type asahi`) against `--type raw` of the
# same arm64 image. The smaller image gets a layer of copies of its own files so that both hold
# the same bytes (same-size.py). Alternating, in one run.
# usage: scripts/bench/arm64.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
. scripts/bench/lib.sh
ROUNDS=${1:-3}
X86=$(bash scripts/test-image/build.sh bookworm)
ARM=$(bash scripts/test-image/build.sh bookworm-arm64)
cargo build --release --locked -q --bin kiln
W=$(mktemp -d /var/tmp/kiln-bench.XXXXXX); trap 'rm -rf "$W"' EXIT
RESULTS=$W/results
{ read -r X86_REF; read -r ARM_REF; } < <(python3 scripts/bench/same-size.py "$X86" "$ARM" "$W")
# (An array, not a function: measure runs its command under /usr/bin/time.)
BAKE=(./target/release/kiln bake --rootfs ext4 --force --progress quiet --target-imgref quay.io/kiln/bench:latest)
for i in $(seq "$ROUNDS"); do
  measure x86_64-raw "${BAKE[@]}" --type raw --output "$W/x" "$X86_REF"
  measure arm64-raw "${BAKE[@]}" --type raw --output "$W/a" "$ARM_REF"
  measure arm64-asahi "${BAKE[@]}" --type asahi --output "$W/s" "$ARM_REF"
  rm -rf "$W/x" "$W/a" "$W/s"
done
echo "bake of the x86_64 and arm64 test images (same size) to raw disks, and of the arm64 one to an Asahi package, $ROUNDS rounds:"
report x86_64-raw arm64-raw arm64-asahi
echo "  ratio arm64/x86_64 (raw):   $(ratio arm64-raw x86_64-raw)  (goal <= 1.1)"
echo "  ratio asahi/raw (arm64):    $(ratio arm64-asahi arm64-raw)"
