#!/bin/bash
# Benchmark: `kiln upload aws` vs `coldsnap upload` (the EBS-direct uploader AWS publishes),
# the same raw disk to the same moto server on 127.0.0.1, alternating, for a 4 GiB and a
# 16 GiB sparse disk (the test image baked with --size). Prints the time ratio, the blocks each
# sent and kiln's peak RSS. Goal: kiln <= 0.5x coldsnap's time, only blocks holding data sent,
# memory flat from 4 to 16 GiB.
#
# coldsnap is built here from crates.io (`cargo install`; its aws-sdk-ec2 takes ~10 minutes
# and ~8 GB), cached in $KILN_BENCH_CACHE (default /var/cache/kiln-bench) — never in CI.
# moto answers AWS's 512 KiB block size here (coldsnap trusts the answer; kiln does not ask).
# coldsnap runs in its best mode for this: --omit-zero-blocks (its default sends every block),
# --wait (kiln waits for the snapshot too, then registers the AMI).
# usage: scripts/bench/aws.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/../.."
. scripts/bench/lib.sh
ROUNDS=${1:-3}
CACHE=${KILN_BENCH_CACHE:-/var/cache/kiln-bench}
MOTO_VENV=${KILN_MOTO_VENV:-/opt/kiln-moto}
cargo build --release --locked -q --bin kiln
W=$(mktemp -d /var/tmp/kiln-bench-aws.XXXXXX)
MOTO_PID=
cleanup() { [ -z "$MOTO_PID" ] || kill "$MOTO_PID" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
RESULTS=$W/results

COLDSNAP=$CACHE/coldsnap/bin/coldsnap
if [ ! -x "$COLDSNAP" ]; then
  echo "bench: building coldsnap from crates.io into $CACHE/coldsnap (about 10 minutes)…" >&2
  mkdir -p "$CACHE"
  cargo install --locked --root "$CACHE/coldsnap" --target-dir "$W/coldsnap-target" coldsnap >&2
  rm -rf "$W/coldsnap-target"
fi

[ -x "$MOTO_VENV/bin/python" ] || { echo "bench: moto is missing: run scripts/setup.sh" >&2; exit 1; }
LOG=$W/moto.jsonl
"$MOTO_VENV/bin/python" tests/fixtures/moto-server.py --log "$LOG" --ebs-block-size 524288 > "$W/port" 2> "$W/moto.err" &
MOTO_PID=$!
for _ in $(seq 100); do grep -q PORT= "$W/port" 2>/dev/null && break; sleep 0.2; done
URL=http://127.0.0.1:$(sed -n 's/^PORT=//p' "$W/port")
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_ENDPOINT_URL=$URL AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN

# blocks_since LINE: PutSnapshotBlock requests logged after line LINE.
blocks_since() { tail -n +"$(( $1 + 1 ))" "$LOG" | grep -c '"action": "PutSnapshotBlock"' || true; }
reset_moto() { curl -sf -X POST "$URL/moto-api/reset" >/dev/null; }

IMAGE=$(bash scripts/test-image/build.sh)
for size in 4G 16G; do
  ./target/release/kiln bake --type raw --rootfs ext4 --size "$size" --progress quiet --output "$W/bake-$size" "oci:$IMAGE/oci:latest"
  RAW=$W/bake-$size/image/disk.raw
  for i in $(seq "$ROUNDS"); do
    reset_moto; n=$(wc -l < "$LOG")
    measure "kiln-$size" ./target/release/kiln upload aws --progress quiet --aws-ami-name "bench-$size-$i" "$RAW"
    echo "$(blocks_since "$n")" > "$W/kiln-$size.blocks"
    reset_moto; n=$(wc -l < "$LOG")
    measure "coldsnap-$size" "$COLDSNAP" --region us-east-1 --endpoint "$URL" upload --no-progress --omit-zero-blocks --wait "$RAW"
    echo "$(blocks_since "$n")" > "$W/coldsnap-$size.blocks"
  done
  data=$(python3 -c "
import sys
B=512*1024; n=0
with open(sys.argv[1],'rb') as f:
    while (b := f.read(B)):
        n += b.count(0) != len(b)
print(n)" "$RAW")
  echo "$size sparse disk ($(du -h "$RAW" | cut -f1) allocated, $data blocks of 512 KiB hold data), $ROUNDS rounds:"
  report "kiln-$size" "coldsnap-$size"
  echo "  time ratio kiln/coldsnap: $(ratio "kiln-$size" "coldsnap-$size")  (goal <= 0.5)"
  echo "  blocks sent: kiln $(cat "$W/kiln-$size.blocks"), coldsnap $(cat "$W/coldsnap-$size.blocks")  (goal: $data)"
  rm -f "$RAW"
done
