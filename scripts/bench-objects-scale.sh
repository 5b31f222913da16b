#!/usr/bin/env bash
# Scale (issue 22, part 5), on 3-site playgrounds of this machine.
#
# Part 1, many small objects in one namespace: a sync namespace (3 copies, 2 sites) gets
# COUNT objects of 4 KiB from `ark bench objects`, in batches of BATCH objects (one `ark`
# process per batch, so that each can run under its own lock), CLIENTS closed-loop clients,
# latency reported per slice of SLICE objects, and after each slice GET_SAMPLE verified gets
# of objects drawn from the batch so far. Before the first batch and after each one, every
# node's resident memory (VmRSS and VmHWM from /proc/<pid>/status), the size of its redb file,
# its number of chunk files and the bytes it has written to storage (`write_bytes` from
# /proc/<pid>/io); the memory, metadata and writes per object follow from the growth.
#
# Part 2, a new node catching up (CATCHUP_GIB > 0; set 0 to skip): a fresh playground, a sync
# namespace with 3 copies holding CATCHUP_GIB of 16 MiB objects (so a few thousand chunks,
# with memory and redb growth per chunk); a follower is killed and removed, the leader's
# repair queue reports the namespace below policy, and a new node is added in the dead
# node's site: the time from its `members add` until the leader reports no object below
# policy, and the chunk bytes the new node then holds, give the catch-up rate, and from it
# the time for 100 GiB.
#
# Usage: scripts/bench-objects-scale.sh [COUNT] [BATCH] [SLICE]      (defaults 100000 50000 10000)
# env: CLIENTS=16 GET_SAMPLE=1000 CATCHUP_GIB=4 REPAIR_WAIT_MAX_S=1800
#      PART1_MAX_S=1500: no new batch starts once the batches have run this many seconds
#      (their own time, not waits for the lock); the report then says how far it got.
#      QUIET_FS_S=310: before starting, sync and wait this long. On ext4 without a journal
#      (this machine's disk), creating a file skips every free inode deleted in the last
#      minute (6 while its inode-table block is dirty), so a run that starts right after another
#      run's clean-up (hundreds of thousands of chunk files deleted) creates its chunk files
#      ever more slowly (docs/benchmarks.md, "Scale, re-measured").
#      KEEP_LOGS=DIR: copy every node's arkd.log there before the clean-up.
#      LOCK=FILE: each heavy step (playground start, batch, put, catch-up) runs holding
#      `flock FILE`, released in between; no process a step starts keeps it.
# Needs: jq; a release build (cargo build --release -p ark-cli -p ark-node), or ARK=path/to/ark
# (its arkd beside it) to measure another build.
# Everything it starts is stopped and removed on exit; every step has a time limit.
set -euo pipefail
COUNT=${1:-100000}
BATCH=${2:-50000}
SLICE=${3:-10000}
CLIENTS=${CLIENTS:-16}
GET_SAMPLE=${GET_SAMPLE:-1000}
CATCHUP_GIB=${CATCHUP_GIB:-4}
REPAIR_WAIT_MAX_S=${REPAIR_WAIT_MAX_S:-1800}
PART1_MAX_S=${PART1_MAX_S:-1500}
STEP_MAX_S=1800
cd "$(dirname "$0")/.."
ARK=${ARK:-$(pwd)/target/release/ark}
command -v jq >/dev/null || { echo "jq not found: apt-get install jq" >&2; exit 1; }
[ -x "$ARK" ] || { echo "build first: cargo build --release -p ark-cli -p ark-node" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/ark-scale-XXXXXX)
# keep_logs PG: with KEEP_LOGS=DIR, the nodes' logs outlive the run (leader changes, refused puts).
keep_logs() {
  if [ -n "${KEEP_LOGS:-}" ] && [ -d "$1" ]; then
    mkdir -p "$KEEP_LOGS/$(basename "$1")"
    find "$1" -name arkd.log | while read -r f; do
      cp "$f" "$KEEP_LOGS/$(basename "$1")/$(basename "$(dirname "$f")").log"
    done
  fi
}
cleanup() {
  for pg in "$WORK/p1" "$WORK/p2"; do
    [ -f "$pg/playground.json" ] && "$ARK" playground down --dir "$pg" >/dev/null 2>&1 || true
    keep_logs "$pg"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# L CMD...: CMD under the lock (when LOCK is set) and a time limit. The lock is taken on fd 9,
# which CMD does not inherit: a node CMD starts must not hold the lock for its whole life.
L() {
  local rc=0
  if [ -n "${LOCK:-}" ]; then
    exec 9>>"$LOCK"
    flock 9
    timeout "$STEP_MAX_S" "$@" 9>&- || rc=$?
    flock -u 9
    exec 9>&-
  else
    timeout "$STEP_MAX_S" "$@" || rc=$?
  fi
  return "$rc"
}
now() { date +%s.%N; }
node_field() { jq -r --argjson n "$2" ".nodes[] | select(.id == \$n) | .$3" "$1/playground.json"; }
# per_node PG: one line per node: id rss_kib hwm_kib redb_bytes chunk_files write_bytes (the
# bytes the process has caused to be written to storage, from /proc/<pid>/io)
per_node() {
  local pg=$1 id pid dd
  for id in $(jq -r '.nodes[].id' "$pg/playground.json"); do
    pid=$(node_field "$pg" "$id" pid)
    dd=$(node_field "$pg" "$id" data_dir)
    [ -d "/proc/$pid" ] || continue
    echo "$id $(awk '/^VmRSS/ { r = $2 } /^VmHWM/ { h = $2 } END { print r, h }' "/proc/$pid/status")" \
      "$(stat -c %s "$dd/ark.redb")" "$(find "$dd/chunks" -type f | wc -l)" \
      "$(awk '/^write_bytes/ { print $2 }' "/proc/$pid/io")"
  done
}
# show LABEL LINES: prints per_node lines.
show() {
  echo "$2" | awk -v l="$1" '{ printf "# %s node %s: rss %.1f MiB (peak %.1f), redb %.1f MiB, %d chunk files, %.2f GiB written\n", l, $1, $2 / 1024, $3 / 1024, $4 / 1048576, $5, $6 / 1073741824 }'
}
# growth BEFORE AFTER OBJECTS CHUNKS: per node, growth per object and per chunk, and the bytes
# written to storage per object.
growth() {
  join <(echo "$1") <(echo "$2") | awk -v o="$3" -v c="$4" '{
    printf "# growth node %s: rss %+.1f MiB = %.0f B/object, %.0f B/chunk; redb %+.1f MiB = %.0f B/object, %.0f B/chunk; written %.2f GiB = %.1f KiB/object (%d objects, %d chunks)\n",
      $1, ($7 - $2) / 1024, ($7 - $2) * 1024 / o, ($7 - $2) * 1024 / c, ($9 - $4) / 1048576, ($9 - $4) / o, ($9 - $4) / c,
      ($11 - $6) / 1073741824, ($11 - $6) / 1024 / o, o, c }'
}
# cpu_and_scans PG: one line per node: id cpu_seconds repair_scan_seconds repair_scans (the last
# two from the node's metrics: only the leader scans; "none" elsewhere).
cpu_and_scans() {
  local pg=$1 id pid
  for id in $(jq -r '.nodes[].id' "$pg/playground.json"); do
    pid=$(node_field "$pg" "$id" pid)
    [ -d "/proc/$pid" ] || continue
    echo "$id $(awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$pid/stat")" \
      "$(metric "$pg" "$id" ark_repair_scan_seconds_sum)" "$(metric "$pg" "$id" ark_repair_scan_seconds_count)"
  done
}
# busy BEFORE AFTER: per node, the CPU it used between two cpu_and_scans, and how much of it
# went to the repair queue's scans (builds before the scan metric show n/a).
busy() {
  join <(echo "$1") <(echo "$2") | awk '{
    scan = ($6 == "none" || $3 == "none") ? "n/a" : sprintf("%.1f s in %d scans", $6 - $3, $7 - $4)
    printf "# cpu node %s: %.1f s, repair scans %s\n", $1, $5 - $2, scan }'
}
# idle_cpu PG SECONDS: each node's CPU over SECONDS (utime + stime from /proc/<pid>/stat).
idle_cpu() {
  local pg=$1 secs=$2 pids
  pids=$(jq -r '.nodes[].pid' "$pg/playground.json")
  sample() { for p in $pids; do awk -v p="$p" '{ print p, $14 + $15 }' "/proc/$p/stat"; done; }
  local before after
  before=$(sample); sleep "$secs"; after=$(sample)
  join <(echo "$before") <(echo "$after") | awk -v t="$(getconf CLK_TCK)" -v s="$secs" \
    '{ printf "# idle: arkd pid %s used %.1f%% of a core over %d s with no load\n", $1, ($3 - $2) / t / s * 100, s }'
}
metric() { # metric PG NODE PREFIX: sum of the node's samples whose line starts with PREFIX
  curl -s --max-time 5 "http://$(node_field "$1" "$2" metrics_addr)/metrics" |
    awk -v p="$3" 'index($0, p) == 1 { s += $NF; f = 1 } END { if (f) print s; else print "none" }'
}
# The locked catch-up step runs in its own bash: it needs these two as well.
export -f metric node_field
fresh_playground() { # fresh_playground PG NS: a 3-site playground with a sync namespace NS
  L "$ARK" playground up --dir "$1" --sites 3 >/dev/null
  "$ARK" --config "$1/client.toml" ns create "$2" --mode sync --copies 3 --min-sites 2 >/dev/null
  sleep 3
}

if [ "${QUIET_FS_S:-0}" -gt 0 ]; then
  sync
  echo "# waiting ${QUIET_FS_S} s for recently deleted inodes to age out"
  sleep "$QUIET_FS_S"
fi
echo "# load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) count=$COUNT batch=$BATCH slice=$SLICE clients=$CLIENTS get_sample=$GET_SAMPLE catchup=${CATCHUP_GIB}GiB"

if [ "$COUNT" -gt 0 ]; then
  P1=$WORK/p1
  fresh_playground "$P1" scale
  C1=(--config "$P1/client.toml")
  base=$(per_node "$P1")
  show "start" "$base"
  printf "%-10s %9s %9s %8s %8s %8s %9s %8s %8s\n" objects put/s p50_ms p99_ms p999_ms errors get/s p50_ms p99_ms
  done_n=0
  b=0
  p1_s=0
  while [ "$done_n" -lt "$COUNT" ]; do
    if [ "$(awk -v a="$p1_s" -v m="$PART1_MAX_S" 'BEGIN { print (a > m) }')" = 1 ]; then
      echo "# stopped after $done_n of $COUNT objects: the batches ran $p1_s s, past PART1_MAX_S=$PART1_MAX_S s"
      break
    fi
    n=$((COUNT - done_n < BATCH ? COUNT - done_n : BATCH))
    cpu_before=$(cpu_and_scans "$P1")
    # A batch with failed operations exits 1 but still reports: go on, and show the failure.
    L "$ARK" "${C1[@]}" bench objects --ns scale --count "$n" --object-bytes 4096 --clients "$CLIENTS" \
      --slice "$SLICE" --prefix "b$b/" --seed "$((b + 1))" --get --get-sample "$GET_SAMPLE" --json >"$WORK/b$b.json" ||
      [ -s "$WORK/b$b.json" ] || { echo "batch $b reported nothing" >&2; exit 1; }
    jq -r '.slices[] | select(.put.first_error or .get.first_error) |
      "# slice \(.from)..\(.to): first error: \(.put.first_error // .get.first_error)"' "$WORK/b$b.json"
    jq -r --argjson done "$done_n" '.slices[] | [$done + .to, (.put.objects_per_s | round), .put.latency_ms.p50, .put.latency_ms.p99,
      .put.latency_ms.p999, (.put.errors + .get.errors), (.get.objects_per_s | round), .get.latency_ms.p50, .get.latency_ms.p99] | @tsv' \
      "$WORK/b$b.json" | awk '{ printf "%-10s %9s %9.2f %8.2f %8.2f %8s %9s %8.2f %8.2f\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }'
    done_n=$((done_n + n))
    cpu_after=$(cpu_and_scans "$P1")
    now_nodes=$(per_node "$P1")
    bs=$(jq '.put.duration_s + .get.duration_s' "$WORK/b$b.json")
    p1_s=$(awk -v a="$p1_s" -v b="$bs" 'BEGIN { print a + b }')
    echo "# batch $b: $n objects, puts $(jq '.put.duration_s | . * 10 | round / 10' "$WORK/b$b.json") s, sampled gets $(jq '.get.duration_s | . * 10 | round / 10' "$WORK/b$b.json") s; all batches so far ${p1_s} s"
    busy "$cpu_before" "$cpu_after"
    show "after $done_n objects" "$now_nodes"
    growth "$base" "$now_nodes" "$done_n" "$done_n"
    b=$((b + 1))
  done
  # With no load at all: what each node spends keeping this many objects (the leader's
  # repair queue looks at every object and chunk on each pass).
  sleep 5
  idle_cpu "$P1" 10
  # Raft snapshots each node built and how long they took (builds before the metric: none),
  # and the term: 2 after the first election, one more per leadership change; and how many
  # entries each transaction of object entries carried (builds before the metric: none).
  for id in $(jq -r '.nodes[].id' "$P1/playground.json"); do
    echo "# node $id: term $(metric "$P1" "$id" ark_raft_term), snapshots built" \
      "$(metric "$P1" "$id" ark_raft_snapshot_build_seconds_count) in" \
      "$(metric "$P1" "$id" ark_raft_snapshot_build_seconds_sum) s, entries applied straight to redb" \
      "$(metric "$P1" "$id" ark_sm_direct_entries_total) in $(metric "$P1" "$id" ark_sm_direct_commits_total) transactions," \
      "ops proposed $(metric "$P1" "$id" ark_raft_entry_ops_sum) in $(metric "$P1" "$id" ark_raft_entry_ops_count) entries"
  done
  # One namespace listing (every namespace's counts) through each node, timed: a follower
  # asks the leader for the lag (peer request NsLag), the counts are its own.
  for id in $(jq -r '.nodes[].id' "$P1/playground.json"); do
    t0=$(now)
    if "$ARK" "${C1[@]}" --endpoint "$(node_field "$P1" "$id" client_addr)" ns ls --json >"$WORK/ns-ls.out" 2>"$WORK/ns-ls.err"; then
      echo "# ark ns ls through node $id with $done_n objects: $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }') s:" \
        "$(jq -c '.[] | select(.name == "scale") | {objects, bytes, behind, lag_ms}' "$WORK/ns-ls.out")"
    else
      echo "# ark ns ls through node $id with $done_n objects failed: $(head -c 300 "$WORK/ns-ls.err")"
    fi
  done
  L "$ARK" playground down --dir "$P1" >/dev/null
  keep_logs "$P1"
  rm -rf "$P1"
fi

if [ "$CATCHUP_GIB" -gt 0 ]; then
  P2=$WORK/p2
  fresh_playground "$P2" cu
  C2=(--config "$P2/client.toml")
  before=$(per_node "$P2")
  t0=$(now)
  L "$ARK" "${C2[@]}" bench objects --ns cu --count "$((CATCHUP_GIB * 64))" --object-bytes 16777216 --clients 2 \
    --conns 2 --json >"$WORK/cu.json"
  t1=$(now)
  objects=$(jq .put.ok "$WORK/cu.json")
  chunks=$("$ARK" "${C2[@]}" ls cu --json | jq '[.[].chunks] | add')
  after=$(per_node "$P2")
  echo "# put ${CATCHUP_GIB} GiB as $objects objects of 16 MiB, $chunks chunks, in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
  show "after the put" "$after"
  growth "$before" "$after" "$objects" "$chunks"

  leader=$("$ARK" "${C2[@]}" status --json | jq .leader_id)
  victim=$(jq -r --argjson l "$leader" '[.nodes[].id | select(. != $l)][0]' "$P2/playground.json")
  site=$(node_field "$P2" "$victim" site)
  kill -KILL "$(node_field "$P2" "$victim" pid)"
  "$ARK" "${C2[@]}" --timeout-ms 30000 members remove "$victim" >/dev/null
  behind() { metric "$P2" "$leader" "ark_namespace_behind_objects{namespace=\"cu\"}"; }
  until [ "$(behind)" != none ] && [ "$(behind)" != 0 ]; do
    sleep 0.5
    [ "$(awk -v a="$t1" -v b="$(now)" 'BEGIN { print (b - a > 120) }')" = 1 ] && { echo "the leader never reported cu below policy" >&2; exit 1; }
  done
  echo "# killed and removed node $victim ($site, leader $leader): $(behind) objects of cu below policy"
  L bash -c '
    set -euo pipefail
    ARK=$1; P2=$2; site=$3; max=$4; leader=$5
    new=$("$ARK" playground add-node --dir "$P2" --site "$site" --json)
    id=$(echo "$new" | jq .id)
    t0=$(date +%s.%N)
    "$ARK" --config "$P2/client.toml" --timeout-ms 30000 members add "$id" --site "$site" \
      --peer-addr "$(echo "$new" | jq -r .peer_addr)" --client-addr "$(echo "$new" | jq -r .client_addr)" >/dev/null
    while :; do
      b=$(metric "$P2" "$leader" "ark_namespace_behind_objects{namespace=\"cu\"}")
      [ "$b" = 0 ] && break
      [ "$(awk -v a="$t0" -v b="$(date +%s.%N)" -v m="$max" "BEGIN { print (b - a > m) }")" = 1 ] && { echo "not at policy after $max s" >&2; exit 1; }
      sleep 0.2
    done
    t1=$(date +%s.%N)
    dd=$(echo "$new" | jq -r .data_dir)
    bytes=$(find "$dd/chunks" -type f -printf "%s\n" | awk "{ s += \$1 } END { print s + 0 }")
    files=$(find "$dd/chunks" -type f | wc -l)
    awk -v a="$t0" -v b="$t1" -v by="$bytes" -v f="$files" -v id="$id" "BEGIN {
      s = b - a; r = by / s;
      printf \"# new node %s: %d chunk files, %.2f GiB in %.1f s from members add to policy: %.1f MiB/s\n\", id, f, by / 2^30, s, r / 2^20;
      printf \"# 100 GiB at that rate: %.0f s (%.1f min)\n\", 100 * 2^30 / r, 100 * 2^30 / r / 60 }"
  ' _ "$ARK" "$P2" "$site" "$REPAIR_WAIT_MAX_S" "$leader"
fi
