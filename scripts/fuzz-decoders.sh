#!/usr/bin/env bash
# Long run of the decoder property tests (the ones CI runs with proptest's default 256 cases
# per property): every decoder a peer or a file can feed, on random and mutated inputs,
# must answer a value or an error, never panic, never allocate past its bound.
#
#   node/src/net/frame_props.rs      peer frames and the protobuf envelope
#   node/src/raft/codec_props.rs     bincode Raft messages, forwarded writes, stored values
#   node/src/raft/snapshot_props.rs  snapshot install
#   node/src/raft/wal_props.rs       Raft log segment files
#   node/src/chunks/store_props.rs   chunk files (raw and zstd)
#   node/src/config_props.rs         arkd.toml
#   node/tests/decode_alloc.rs       allocation bounds (a counting global allocator)
#
# Usage: scripts/fuzz-decoders.sh [CASES] [FILTER]
#   CASES   cases per property (default 1000000), passed as PROPTEST_CASES; the properties
#           that write files (WAL segments, snapshots) run a quarter of it.
#   FILTER  only tests whose path contains it, e.g. `wal_props` (default: all of them).
# Runs in the dev profile so that integer overflow checks stay on (an overflow is a panic,
# hence a failure). At 1000000 cases expect hours: the exhaustive sweep of huge length
# fields in codec_props and decode_alloc dominates; 10000 cases take a few minutes.
# A failure prints proptest's minimised input and saves its seed under
# node/proptest-regressions/, which the next run replays first: commit that file with the
# fix so CI keeps checking the case. Needs only cargo; nothing is left behind but that file.
set -euo pipefail
CASES=${1:-1000000}
FILTER=${2:-}
cd "$(dirname "$0")/.."
export PROPTEST_CASES=$CASES
echo "== decoder properties, $CASES cases each${FILTER:+, tests matching $FILTER}"
if [ -z "$FILTER" ]; then
  cargo test -p ark-node --lib -- _props::
  cargo test -p ark-node --test decode_alloc
else
  cargo test -p ark-node --lib -- "$FILTER"
  cargo test -p ark-node --test decode_alloc -- "$FILTER"
fi
