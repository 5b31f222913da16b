#!/usr/bin/env bash
# The documented soak: every drill scenario in turn, SECS each (default 180 s, so about 30
# minutes for the 10 scenarios), against real arkd processes. Prints one line per scenario
# and exits non-zero if any drill reports a violation. Reports stay in OUT.
#
# Usage: scripts/soak.sh [SECS] [SEED] [OUT]
# Needs: the binaries built (cargo build, or cargo build --release with BIN=target/release).
set -uo pipefail
SECS=${1:-180}
SEED=${2:-1}
OUT=${3:-$(mktemp -d /tmp/ark-soak-XXXXXX)}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
failed=0
echo "# $(date -u +%FT%TZ) soak: ${SECS}s per scenario, seed $SEED, reports in $OUT"
for s in $("$BIN/ark-chaos" list | awk '{print $1}'); do
  "$BIN/ark-chaos" run --scenario "$s" --duration "$SECS" --seed "$SEED" --out "$OUT/$s" >"$OUT/$s.log" 2>&1
  rc=$?
  python3 - "$OUT/$s/report.json" "$s" "$rc" <<'PY' || failed=1
import json, sys
path, name, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    r = json.load(open(path))
except Exception as e:
    print(f"{name:22} NO REPORT ({e}), exit {rc}")
    sys.exit(1)
o = r["ops"]
print(f"{name:22} ok {o['ok']:>7} fail {o['fail']:>4} unknown {o['unknown']:>4} "
      f"linearizable {r['linearizable']} lost {r['lost_acked']} corrupt {r['corrupt_reads']} "
      f"rto_ms {r['rto_ms']:.0f} exit {rc}")
sys.exit(0 if rc == 0 and r["linearizable"] and r["lost_acked"] == 0 and r["corrupt_reads"] == 0 else 1)
PY
done
exit $failed
