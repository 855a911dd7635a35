#!/bin/bash
# The demo: builds kiln's test image (a Debian bootc-style OCI image), bakes it into a raw disk
# with kiln, boots that disk under QEMU in UEFI and BIOS mode and shows what the booted system
# reports (its boot probe's checks). `demo.sh sid` does the same with the Fedora-shaped sid image
# (composefs, SELinux).
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
[ "$(id -u)" = 0 ] || { echo "the demo needs root (loop devices, mounts)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
bash scripts/setup.sh
FLAVOR=${1:-bookworm}
IMAGE=$(bash scripts/test-image/build.sh "$FLAVOR")
echo "== test image: $IMAGE"
cargo build --release --locked --bin kiln --example boot-probe
./target/release/kiln image inspect "oci:$IMAGE/oci:latest"
OUT=${KILN_DEMO_OUTPUT:-/var/tmp/kiln-demo}
echo "== kiln bake --type raw --output $OUT"
./target/release/kiln bake --type raw --force --output "$OUT" --target-imgref quay.io/kiln/test:latest "oci:$IMAGE/oci:latest"
./target/release/examples/boot-probe "$OUT/image/disk.raw" uefi bios
