#!/usr/bin/env bash
# Side-by-side bulk copy: time until a file is durable on 3 nodes in an Ark sync namespace
# (3-site playground) vs rsync through an rsync daemon on loopback to two destinations (the
# source's copy plus two = 3 copies), then the same after one contiguous 1% change. Both run
# on this machine, one after the other, from the same source file.
#
# rsync runs twice per step: as usual (no fsync: the data may still sit in the page cache
# when it returns) and with --fsync (durable, like Ark, which fsyncs every chunk on every
# node before acknowledging).
#
# Each step prints its wall time, MB/s and the CPU seconds the whole machine spent meanwhile
# (all processes: Ark's client and nodes, or rsync's clients and daemon).
#
# Usage: scripts/bench-objects-vs-rsync.sh [SIZE_MIB] [ROUNDS]
# Needs: rsync (apt-get install rsync); a release build (cargo build --release).
# Everything it starts is stopped and removed on exit.
set -euo pipefail
SIZE_MIB=${1:-1024}
ROUNDS=${2:-2}
cd "$(dirname "$0")/.."
ARK=$(pwd)/target/release/ark
command -v rsync >/dev/null || { echo "rsync not found: apt-get install rsync" >&2; exit 1; }
[ -x "$ARK" ] || { echo "build first: cargo build --release" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/ark-bulk-XXXXXX)
RSYNCD_PID=""
cleanup() {
  "$ARK" playground down --dir "$WORK/ark" >/dev/null 2>&1 || true
  [ -n "$RSYNCD_PID" ] && kill "$RSYNCD_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
mbps() { awk -v s="$1" -v t="$2" 'BEGIN { printf "%.0f", s / t }'; }
# CPU time of the whole machine (user, nice, system, irq, softirq), in clock ticks: every
# process of a step (client, nodes, rsync daemon and clients) is counted, idle and iowait not.
cpu_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
TICK=$(getconf CLK_TCK)
# step LABEL RATE CMD...: runs CMD and prints its wall time, MB/s (RATE=y) and CPU seconds.
step() {
  local label=$1 rate=$2 c0 t0 t1 c1 s
  shift 2
  c0=$(cpu_ticks); t0=$(now); "$@"; t1=$(now); c1=$(cpu_ticks)
  s=$(secs "$t0" "$t1")
  printf "%-6s %-28s %9s %8s %7s\n" "$r" "$label" "$s" "$([ "$rate" = y ] && mbps "$MB" "$s" || echo -)" \
    "$(awk -v a="$c0" -v b="$c1" -v t="$TICK" 'BEGIN { printf "%.1f", (b - a) / t }')"
}
ark_put() { "$ARK" --config "$CFG" put "bulk/r$r" "$SRC" >/dev/null; }

SRC=$WORK/src.bin
change_one_percent() { # one contiguous 1% region in the middle, new random bytes
  local region=$((SIZE_MIB * 1024 * 1024 / 100))
  local at=$((SIZE_MIB * 1024 * 1024 / 2 + 4097))
  head -c "$region" /dev/urandom | dd of="$SRC" bs=1M seek="$at" oflag=seek_bytes conv=notrunc status=none
}

# rsync daemon with two modules.
mkdir -p "$WORK/d1" "$WORK/d2"
PORT=$((20000 + RANDOM % 20000))
cat >"$WORK/rsyncd.conf" <<EOF
use chroot = no
uid = root
gid = root
[d1]
path = $WORK/d1
read only = no
[d2]
path = $WORK/d2
read only = no
EOF
rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --port="$PORT" --address=127.0.0.1 &
RSYNCD_PID=$!
sleep 1

rsync_both() { # $@ = extra rsync flags
  rsync -a "$@" "$SRC" "rsync://127.0.0.1:$PORT/d1/" &
  local a=$!
  rsync -a "$@" "$SRC" "rsync://127.0.0.1:$PORT/d2/" &
  local b=$!
  wait "$a" "$b"
}

"$ARK" playground up --dir "$WORK/ark" --sites 3 >/dev/null
CFG=$WORK/ark/client.toml
"$ARK" --config "$CFG" ns create bulk --mode sync --copies 3 --min-sites 2 >/dev/null

echo "# $(date -u +%FT%TZ) size=${SIZE_MIB}MiB rounds=$ROUNDS rsync=$(rsync --version | head -1 | awk '{print $3}')"
printf "%-6s %-28s %9s %8s %7s\n" round step seconds MB/s cpu-s
for r in $(seq 1 "$ROUNDS"); do
  # Fresh random bytes every round: the cluster holds none of its chunks yet (a round
  # that re-put an earlier round's bytes would measure deduplication, not a copy).
  head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/src.orig"
  cp "$WORK/src.orig" "$SRC"
  rm -rf "$WORK/d1/"* "$WORK/d2/"*
  "$ARK" --config "$CFG" rm "bulk/r$r" >/dev/null 2>&1 || true
  sync
  MB=$((SIZE_MIB * 1048576 / 1000000))

  step "ark full (3 copies, sync)" y ark_put
  step "rsync full (2 dest)" y rsync_both
  rm -rf "$WORK/d1/"* "$WORK/d2/"*; sync
  step "rsync --fsync full (2 dest)" y rsync_both --fsync

  change_one_percent
  sync
  step "ark 1% change" n ark_put
  # rsync's delta transfer needs the old file at the destination: d1/d2 hold the full
  # copy from the --fsync run above.
  step "rsync 1% change (2 dest)" n rsync_both
  cp "$WORK/src.orig" "$SRC"; rsync_both >/dev/null; change_one_percent; sync
  step "rsync --fsync 1% change" n rsync_both --fsync
done
for n in 1 2 3; do
  m=$(awk -F'"' '/metrics_addr/ {print $4}' "$WORK/ark/playground.json" | sed -n "${n}p")
  sent=$(curl -s "http://$m/metrics" 2>/dev/null | awk '/^ark_replication_bytes_sent_total/ {print $2}')
  echo "# node $n ark_replication_bytes_sent_total ${sent:-0}"
done
