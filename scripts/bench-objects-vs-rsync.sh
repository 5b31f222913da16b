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
# Then, each against its floor or a peer (issue 22):
# - get of the object from a node that holds every chunk, to a file (fsynced, as `ark get
#   -o` does) and to /dev/null, against `cp` + fsync and `cat` of the same bytes from the
#   page cache, and `dd iflag=direct` of them from the disk (Ark wrote its chunks with
#   O_DIRECT, so it reads them from the disk);
# - get from the one node of the three that holds none of the object's chunks (a namespace
#   with 2 copies), which pulls every chunk from the other sites;
# - `ark restore` of a namespace of TREE_OBJECTS objects of mixed sizes (log-uniform from
#   4 KiB to 4 MiB, ~1.2 GiB for 2000) into an empty folder, against `cp -r` and `rsync -a
#   --fsync` of the restored tree;
# - SMALL_OBJECTS puts of 4 KiB objects (`ark bench objects`, 16 clients, then every one
#   read back verified), against Ark's own KV put rate for the same bytes (`ark bench kv`,
#   same clients) and the disk's synchronous 4 KiB write rate (`dd oflag=dsync`).
#
# Each step prints its wall time, MB/s and the CPU seconds the whole machine spent meanwhile
# (all processes: Ark's client and nodes, or rsync's clients and daemon). Lines starting
# with '#' add what a step's own tool reported (objects/s, latency).
#
# Usage: scripts/bench-objects-vs-rsync.sh [SIZE_MIB] [ROUNDS]
#        (env TREE_OBJECTS=2000 SMALL_OBJECTS=10000; 0 skips that part)
# Needs: rsync (apt-get install rsync), jq; a release build (cargo build --release).
# Everything it starts is stopped and removed on exit; every step has a time limit.
set -euo pipefail
SIZE_MIB=${1:-1024}
ROUNDS=${2:-2}
TREE_OBJECTS=${TREE_OBJECTS:-2000}
SMALL_OBJECTS=${SMALL_OBJECTS:-10000}
STEP_MAX_S=600 # no single step may take longer
cd "$(dirname "$0")/.."
ARK=${ARK:-$(pwd)/target/release/ark} # (env ARK: another build, with its arkd beside it)
command -v rsync >/dev/null || { echo "rsync not found: apt-get install rsync" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq not found: apt-get install jq" >&2; exit 1; }
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
  STEP_S=$s
  printf "%-6s %-28s %9s %8s %7s\n" "$r" "$label" "$s" "$([ "$rate" = y ] && mbps "$MB" "$s" || echo -)" \
    "$(awk -v a="$c0" -v b="$c1" -v t="$TICK" 'BEGIN { printf "%.1f", (b - a) / t }')"
}
# Every command a step runs has a time limit.
T() { timeout "$STEP_MAX_S" "$@"; }
ark_put() { T "$ARK" --config "$CFG" put "bulk/r$r" "$SRC" >/dev/null; }

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
  T rsync -a "$@" "$SRC" "rsync://127.0.0.1:$PORT/d1/" &
  local a=$!
  T rsync -a "$@" "$SRC" "rsync://127.0.0.1:$PORT/d2/" &
  local b=$!
  wait "$a" "$b"
}

"$ARK" playground up --dir "$WORK/ark" --sites 3 >/dev/null
CFG=$WORK/ark/client.toml
"$ARK" --config "$CFG" ns create bulk --mode sync --copies 3 --min-sites 2 >/dev/null
# Two copies in three sites: one node holds none of an object's chunks and must pull them.
"$ARK" --config "$CFG" ns create far --mode sync --copies 2 --min-sites 2 >/dev/null
node_field() { jq -r --argjson n "$1" ".nodes[] | select(.id == \$n) | .$2" "$WORK/ark/playground.json"; }
node_chunks() { find "$(node_field "$1" data_dir)/chunks" -type f | wc -l; }
A1=$(node_field 1 client_addr)

get_file() { T "$ARK" --config "$CFG" --endpoint "$1" get "$2" -o "$WORK/get.bin" >/dev/null; }
get_null() { T "$ARK" --config "$CFG" --endpoint "$1" get "$2" >/dev/null; }
cp_fsync() { T cp "$1" "$WORK/get.bin" && T sync "$WORK/get.bin"; }
cat_null() { T cat "$1" >/dev/null; }
dd_direct() { T dd if="$1" of=/dev/null bs=4M iflag=direct status=none; }
ark_restore() { T "$ARK" --config "$CFG" restore "$1" --to "$2" --parallel "$3" >/dev/null; }
small_objects() {
  T "$ARK" --config "$CFG" bench objects --ns "small$r" --count "$SMALL_OBJECTS" --object-bytes 4096 \
    --clients 16 --conns 4 --seed "$r" --get --json >"$WORK/small.json"
}
kv_4k() {
  T "$ARK" --config "$CFG" bench kv --clients 16 --conns 4 --value-bytes 4096 --duration 10 --json >"$WORK/kv.json"
}
dsync_4k() { T dd if=/dev/zero of="$WORK/dsync.bin" bs=4k count=2000 oflag=dsync status=none; }

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

  # Get (issue 22): bulk/r$r now holds SRC's bytes (the 1% re-put), on all 3 nodes.
  cat "$SRC" >/dev/null # the floors read it from the page cache
  step "ark get local -> file" y get_file "$A1" "bulk/r$r"
  rm -f "$WORK/get.bin"
  step "cp + fsync (cache -> file)" y cp_fsync "$SRC"
  rm -f "$WORK/get.bin"
  step "ark get local -> /dev/null" y get_null "$A1" "bulk/r$r"
  step "cat (page cache)" y cat_null "$SRC"
  step "dd iflag=direct (disk)" y dd_direct "$SRC"
  # Fresh bytes into the 2-copy namespace (chunks are shared between namespaces: SRC's are
  # on every node already), through node 1; the node that got none of them reads it.
  head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/far.bin"
  before=$(for n in 1 2 3; do node_chunks "$n"; done)
  T "$ARK" --config "$CFG" --endpoint "$A1" put "far/r$r" "$WORK/far.bin" >/dev/null
  after=$(for n in 1 2 3; do node_chunks "$n"; done)
  FAR=$(paste <(echo "$before") <(echo "$after") | awk '$1 == $2 { print NR; exit }')
  [ -n "$FAR" ] || { echo "every node got chunks of far/r$r: no node to pull from the others" >&2; exit 1; }
  echo "# far/r$r: chunk files per node before $(echo $before), after $(echo $after); reading via node $FAR"
  step "ark get remote -> file" y get_file "$(node_field "$FAR" client_addr)" "far/r$r"
  rm -f "$WORK/get.bin" "$WORK/far.bin"

  # Restore (issue 22): a namespace of many objects of mixed sizes into an empty folder.
  if [ "$TREE_OBJECTS" -gt 0 ]; then
    "$ARK" --config "$CFG" ns create "tree$r" --mode sync --copies 3 --min-sites 2 >/dev/null
    T "$ARK" --config "$CFG" bench objects --ns "tree$r" --count "$TREE_OBJECTS" --object-bytes 4096 \
      --object-bytes-max 4194304 --clients 4 --conns 2 --seed "$r" --json >"$WORK/tree.json"
    TREE_BYTES=$(jq .put.bytes "$WORK/tree.json")
    echo "# tree$r: $TREE_OBJECTS objects, $TREE_BYTES bytes, 4 KiB to 4 MiB log-uniform; put at $(jq -r '.put | "\(.objects_per_s | floor) objects/s, \(.mib_per_s | floor) MiB/s"' "$WORK/tree.json")"
    MB_KEEP=$MB
    MB=$((TREE_BYTES / 1000000))
    sync
    step "ark restore (parallel 3)" y ark_restore "tree$r" "$WORK/restored" 3
    [ "$(find "$WORK/restored" -type f | wc -l)" -eq "$TREE_OBJECTS" ] || { echo "restore wrote the wrong number of files" >&2; exit 1; }
    rm -rf "$WORK/restored"; sync
    step "ark restore (parallel 8)" y ark_restore "tree$r" "$WORK/restored" 8
    step "cp -r (same tree)" y T cp -r "$WORK/restored" "$WORK/tree-cp"
    rm -rf "$WORK/tree-cp"; sync
    step "rsync -a --fsync (same tree)" y T rsync -a --fsync "$WORK/restored/" "$WORK/tree-rsync/"
    rm -rf "$WORK/restored" "$WORK/tree-rsync"
    MB=$MB_KEEP
  fi

  # Small objects (issue 22): per-object overhead against Ark's KV puts and the disk.
  if [ "$SMALL_OBJECTS" -gt 0 ]; then
    "$ARK" --config "$CFG" ns create "small$r" --mode sync --copies 3 --min-sites 2 >/dev/null
    step "ark ${SMALL_OBJECTS} x 4 KiB put+get" n small_objects
    for ph in put get; do
      jq -r --arg ph "$ph" '.[$ph] as $p | "# small objects \($ph), \(.clients) clients: \($p.ok) ok, \($p.errors) errors, \($p.duration_s * 100 | round / 100) s, \($p.objects_per_s | round) objects/s, p50/p99/p999 \($p.latency_ms.p50)/\($p.latency_ms.p99)/\($p.latency_ms.p999) ms"' "$WORK/small.json"
    done
    step "ark bench kv 4 KiB, 10 s" n kv_4k
    jq -r '"# kv 4 KiB, \(.clients) clients: \(.ops) ok, \(.errors) errors, \(.throughput_ops_per_s | round) ops/s, p50/p99/p999 \(.latency_ms.p50)/\(.latency_ms.p99)/\(.latency_ms.p999) ms"' "$WORK/kv.json"
    step "dd 4 KiB oflag=dsync x2000" n dsync_4k
    awk -v s="$STEP_S" 'BEGIN { printf "# disk: %.0f synchronous 4 KiB writes/s (%.2f ms each)\n", 2000 / s, s / 2 }'
    rm -f "$WORK/dsync.bin"
  fi
done
for n in 1 2 3; do
  m=$(awk -F'"' '/metrics_addr/ {print $4}' "$WORK/ark/playground.json" | sed -n "${n}p")
  sent=$(curl -s "http://$m/metrics" 2>/dev/null | awk '/^ark_replication_bytes_sent_total/ {print $2}')
  echo "# node $n ark_replication_bytes_sent_total ${sent:-0}"
done
