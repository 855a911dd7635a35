#!/bin/bash
# Benchmark: `kiln image unpack` vs `umoci raw unpack` of the same image (the test image's
# all-gzip copy, which both read), alternating in one run. Goal: kiln <= 0.5x umoci's time,
# peak memory under 256 MiB.
# usage: scripts/bench/unpack.sh [ROUNDS] [OCI_LAYOUT_DIR]
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
. scripts/bench/lib.sh
ROUNDS=${1:-5}
LAYOUT=${2:-$(bash scripts/test-image/build.sh)/oci-gzip}
cargo build --release --locked -q --bin kiln
W=$(mktemp -d /var/tmp/kiln-bench.XXXXXX); trap 'rm -rf "$W"' EXIT
RESULTS=$W/results
for i in $(seq "$ROUNDS"); do
  rm -rf "$W/k" "$W/u"
  measure kiln ./target/release/kiln image unpack --progress quiet "oci:$LAYOUT:latest" "$W/k"
  measure umoci umoci raw unpack --image "$LAYOUT:latest" "$W/u"
done
echo "unpack of $LAYOUT, $ROUNDS rounds:"
report kiln umoci
echo "  ratio kiln/umoci: $(ratio kiln umoci)  (goal <= 0.5)"
