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
#   CASES   cases per property (default 1000000), passed as PROPTEST_CASES; the slow
#           properties run a quarter (log segments, snapshots) or an eighth (the exhaustive
#           sweep of huge length fields) of it.
#   FILTER  only tests whose path contains it, e.g. `wal_props` (default: all of them).
#   PROPTEST_CASES already set in the environment is overridden by CASES.
# Runs in the dev profile so that integer overflow checks stay on (an overflow is a panic,
# hence a failure), with ark-node optimised (one extra build of it, ~10 minutes on 2 cores).
# Measured on the 2-core dev machine: 5000 cases run in 2 minutes after that build, mostly
# waiting for the fsyncs of the log-segment and snapshot cases; 1000000 take about 6 hours.
# A failure prints proptest's minimised input; a failure of a `proptest!` property also
# saves its seed under node/proptest-regressions/, which the next run replays first: commit
# that file with the fix so CI keeps checking the case. Needs only cargo; nothing is left
# behind but that file.
set -euo pipefail
CASES=${1:-1000000}
FILTER=${2:-}
cd "$(dirname "$0")/.."
export PROPTEST_CASES=$CASES
echo "== decoder properties, $CASES cases each${FILTER:+, tests matching $FILTER}"
# ark-node optimised like its dependencies already are in the dev profile (overflow checks
# stay on): the decoders are generic code compiled into ark-node, ~10x faster this way.
OPT=(--config 'profile.dev.package.ark-node.opt-level=2')
if [ -z "$FILTER" ]; then
  cargo test "${OPT[@]}" -p ark-node --lib -- _props::
  cargo test "${OPT[@]}" -p ark-node --test decode_alloc
else
  cargo test "${OPT[@]}" -p ark-node --lib -- "$FILTER"
  cargo test "${OPT[@]}" -p ark-node --test decode_alloc -- "$FILTER"
fi
