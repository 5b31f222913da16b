#!/usr/bin/env bash
# One put of SIZE_MIB (default 1024) fresh random bytes into a sync namespace (3 copies) of a
# 3-site playground in DIR, printing the wall time and the CPU each process spent on it: the
# client (user, sys) and each arkd (from /proc/<pid>/stat around the put), with minor faults.
#
# The playground is created on the first call and kept, so calls can be repeated and two
# builds alternated (one DIR per build; ARKD_BIN=/path/to/arkd picks the node binary when
# the playground is created). Chunk data accumulates: about 3 x SIZE_MIB per call.
# When done: target/release/ark playground down --dir DIR/ark && rm -rf DIR
#
# Usage: scripts/bench-put-cpu.sh DIR [SIZE_MIB]   (needs cargo build --release)
set -euo pipefail
D=$(realpath -m "${1:?usage: $0 DIR [SIZE_MIB]}")
SIZE=${2:-1024}
ARK=${ARK:-$(cd "$(dirname "$0")/.." && pwd)/target/release/ark}
mkdir -p "$D"
if [ ! -f "$D/ark/playground.json" ]; then
  "$ARK" playground up --dir "$D/ark" --sites 3 >/dev/null
  "$ARK" --config "$D/ark/client.toml" ns create bulk --mode sync --copies 3 --min-sites 2 >/dev/null
fi
head -c $((SIZE * 1048576)) /dev/urandom >"$D/src.bin"
sync
pids=$(pgrep -f "arkd --config $D/ark/" || true)
sample() { for p in $pids; do awk -v p="$p" '{ print p, $14 + $15, $10 }' "/proc/$p/stat"; done; }
before=$(sample)
t0=$(date +%s.%N)
/usr/bin/time -f "client user %U s, sys %S s, minor faults %R" \
  "$ARK" --config "$D/ark/client.toml" put "bulk/k$(date +%s%N)" "$D/src.bin" >/dev/null
t1=$(date +%s.%N)
after=$(sample)
echo "wall $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
join <(echo "$before") <(echo "$after") |
  awk -v t="$(getconf CLK_TCK)" '{ printf "arkd pid %s: cpu %.2f s, minor faults %d\n", $1, ($4 - $2) / t, $5 - $3 }'
