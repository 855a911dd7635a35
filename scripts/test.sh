#!/bin/bash
# Runs kiln's whole test suite, boot tests included, on a fresh Debian 12 machine: installs the
# packages it needs, builds (or reuses) the test image, then runs every test.
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
[ "$(id -u)" = 0 ] || { echo "the tests need root (loop devices, mounts, chroot)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
bash scripts/setup.sh
echo "test image: $(bash scripts/test-image/build.sh)"
# Two test threads: boot tests are CPU-bound emulation and these machines have two cores.
cargo test --release --locked -- --test-threads=2 "$@"
