#!/bin/bash
# Runs kiln's whole test suite, boot tests included, on a fresh Debian 12 machine: installs the
# packages it needs, builds (or reuses) the test image, then runs every test.
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
[ "$(id -u)" = 0 ] || { echo "the tests need root (loop devices, mounts, chroot)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
bash scripts/setup.sh
# The test images (cached; on a fresh machine the arm64 one takes ~8 min of CPU under
# emulation) build while kiln compiles: the two leave each other idle time (downloads, the
# compiler's single-threaded stretches). The arm64 build must be over before the tests start:
# one of them checks that no arm64 binfmt handler exists while kiln bakes.
ARM64_LOG=$(mktemp)
bash scripts/test-image/build.sh bookworm-arm64 >"$ARM64_LOG" 2>&1 & ARM64=$!
trap 'kill $ARM64 2>/dev/null || true; rm -f "$ARM64_LOG"' EXIT
echo "test image: $(bash scripts/test-image/build.sh bookworm)"
echo "test image: $(bash scripts/test-image/build.sh sid)"
cargo test --release --locked --no-run
wait $ARM64 || { cat "$ARM64_LOG" >&2; echo "the arm64 test image failed to build" >&2; exit 1; }
echo "test image: $(tail -1 "$ARM64_LOG")"
# Two test threads: boot tests are CPU-bound emulation and these machines have two cores.
cargo test --release --locked -- --test-threads=2 "$@"
