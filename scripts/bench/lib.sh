# Helpers for the side-by-side benchmarks: run commands alternately in one run (these machines
# are noisy: only ratios mean something), record wall time and peak RSS, print medians.

# measure NAME CMD...: runs CMD once under /usr/bin/time, appends "NAME seconds maxrss_kib".
measure() {
  local name=$1; shift
  local t; t=$(mktemp)
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f '%e %M' -o "$t" "$@" >/dev/null 2>&1 || { echo "bench: $name failed: $*" >&2; cat "$t" >&2; rm -f "$t"; return 1; }
  echo "$name $(tail -1 "$t")" >> "$RESULTS"
  rm -f "$t"
}

# median NAME FIELD (2 = seconds, 3 = peak RSS KiB)
median() {
  awk -v n="$1" -v f="$2" '$1==n{print $f}' "$RESULTS" | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

# ratio A B: median time of A divided by median time of B
ratio() {
  awk -v a="$(median "$1" 2)" -v b="$(median "$2" 2)" 'BEGIN{printf "%.2f", a/b}'
}

report() { # report NAME...
  for n in "$@"; do
    printf '  %-22s median %6.2fs  peak RSS %6d MiB\n' "$n" "$(median "$n" 2)" "$(( $(median "$n" 3 | cut -d. -f1) / 1024 ))"
  done
}
