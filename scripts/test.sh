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
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo test --release --locked -- --test-threads=2 "$@"
  exit
fi
# cargo-nextest runs every binary's tests in one pool, the longest boots first
# (.config/nextest.toml), where cargo test runs the binaries one after another and a binary's
# last boot leaves the other core idle. Arguments are nextest's (a name filters tests).
rc=0
cargo nextest run --release --locked --test-threads 2 --no-tests warn "$@" || rc=$?
# The slowest tests, for the priorities in .config/nextest.toml and the CI time budget.
python3 - target/nextest/default/junit.xml <<'PY' || true
import sys, xml.etree.ElementTree as ET
cases = sorted(((float(c.get("time", 0)), c.get("classname"), c.get("name")) for c in ET.parse(sys.argv[1]).iter("testcase")), reverse=True)
print(f"slowest tests ({len(cases)} run, {sum(t for t, _, _ in cases):.0f} s of test time in all):")
for t, binary, name in cases[:15]:
    print(f"  {t:7.1f} s  {binary} {name}")
PY
exit $rc
