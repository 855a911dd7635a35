#!/bin/bash
# Benchmark: kiln's qcow2 and vmdk writers vs qemu-img on the same raw disk (the test image
# baked), alternating in one run. Goals: qcow2 <= 0.7x qemu-img's time at <= 1.05x its size;
# vmdk <= 0.7x qemu-img's time. Peak memory is reported too.
# usage: scripts/bench/formats.sh [ROUNDS] [RAW]
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
. scripts/bench/lib.sh
ROUNDS=${1:-3}
cargo build --release --locked -q --bin kiln
W=$(mktemp -d /var/tmp/kiln-bench.XXXXXX); trap 'rm -rf "$W"' EXIT
RESULTS=$W/results
RAW=${2:-}
if [ -z "$RAW" ]; then
  IMAGE=$(bash scripts/test-image/build.sh)
  ./target/release/kiln bake --type raw --rootfs ext4 --progress quiet --output "$W/bake" "oci:$IMAGE/oci:latest"
  RAW=$W/bake/image/disk.raw
fi
for i in $(seq "$ROUNDS"); do
  rm -rf "$W/k" "$W/q.qcow2" "$W/q.vmdk"
  measure kiln-qcow2 ./target/release/kiln convert --progress quiet --type qcow2 --output "$W/k" "$RAW"
  measure qemu-qcow2 qemu-img convert -c -O qcow2 "$RAW" "$W/q.qcow2"
  measure kiln-vmdk ./target/release/kiln convert --progress quiet --type vmdk --output "$W/k" "$RAW"
  measure qemu-vmdk qemu-img convert -O vmdk -o subformat=streamOptimized "$RAW" "$W/q.vmdk"
done
echo "conversions of $RAW ($(du -h --apparent-size "$RAW" | cut -f1), $(du -h "$RAW" | cut -f1) allocated), $ROUNDS rounds:"
report kiln-qcow2 qemu-qcow2 kiln-vmdk qemu-vmdk
size_ratio=$(awk -v a="$(stat -c %s "$W/k/qcow2/disk.qcow2")" -v b="$(stat -c %s "$W/q.qcow2")" 'BEGIN{printf "%.3f", a/b}')
echo "  qcow2 time ratio kiln/qemu-img: $(ratio kiln-qcow2 qemu-qcow2)  (goal <= 0.7); size ratio: $size_ratio  (goal <= 1.05)"
echo "  vmdk  time ratio kiln/qemu-img: $(ratio kiln-vmdk qemu-vmdk)  (goal <= 0.7)"
