#!/bin/bash
# Benchmark: kiln's commit + deployment vs `ostree commit` + `ostree admin deploy` of the same
# tree (the test image unpacked), alternating in one run. Goal: kiln <= 0.5x their time.
# usage: scripts/bench/ostree.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
. scripts/bench/lib.sh
ROUNDS=${1:-3}
IMAGE=$(bash scripts/test-image/build.sh)
cargo build --release --locked -q --bin kiln --example ostree-deploy
W=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
trap 'chattr -i "$W"/*/ostree/deploy/*/deploy/*.0 2>/dev/null; rm -rf "$W"' EXIT
RESULTS=$W/results
./target/release/kiln image unpack --progress quiet "oci:$IMAGE/oci:latest" "$W/tree"
# ostree 2022.7 deploys only trees with /usr/etc (as the reference pipeline prepares them).
mv "$W/tree/etc" "$W/tree/usr/etc"
ostree_side() {
  S=$1
  mkdir -p "$S"
  ostree admin init-fs --modern "$S" >/dev/null
  ostree admin os-init --sysroot="$S" default >/dev/null
  ostree config --repo="$S/ostree/repo" set sysroot.bootloader none
  ostree commit --repo="$S/ostree/repo" --branch=image --tree=dir="$W/tree" >/dev/null
  ostree admin deploy --sysroot="$S" --os=default --karg=root=UUID=x --karg=rw image >/dev/null 2>&1
}
export -f ostree_side; export W
for i in $(seq "$ROUNDS"); do
  measure kiln ./target/release/examples/ostree-deploy "$W/tree" "$W/kiln"
  measure ostree bash -c 'ostree_side "$W/ostree"'
  # Deployment roots are immutable (chattr +i), as ostree leaves them.
  chattr -i "$W"/*/ostree/deploy/*/deploy/*.0 2>/dev/null || true
  rm -rf "$W/kiln" "$W/ostree"
done
echo "commit + deployment of the test image's tree, $ROUNDS rounds:"
report kiln ostree
echo "  ratio kiln/ostree: $(ratio kiln ostree)  (goal <= 0.5)"
