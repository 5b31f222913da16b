#!/usr/bin/env bash
# Side-by-side small-write benchmark: Ark (3-node playground) and etcd 3.4 (3 members), both
# on loopback on this machine, driven by the same load generator (`ark bench kv`) with the
# same clients, connections and value size. etcd runs twice: with mutual TLS on both planes
# (like Ark) and in plain HTTP (etcd's fastest setting). Only the system being measured
# runs during its measurement.
#
# Usage: scripts/bench-kv-vs-etcd.sh [CLIENTS] [VALUE_BYTES] [SECONDS] [ROUNDS]
# Needs: the Debian packages etcd-server and etcd-client (apt-get install etcd-server etcd-client); a release build
# (cargo build --release). Everything it starts is stopped and removed on exit.
set -euo pipefail
CLIENTS=${1:-64}
VALUE=${2:-1024}
SECS=${3:-10}
ROUNDS=${4:-3}
CONNS=8
cd "$(dirname "$0")/.."
ARK=target/release/ark
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
[ -x "$ARK" ] || { echo "build first: cargo build --release" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ark-bench-XXXXXX)
ETCD_PIDS=()
cleanup() {
  "$ARK" playground down --dir "$WORK/ark" >/dev/null 2>&1 || true
  for p in "${ETCD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The playground's CA and node certificates (SANs 127.0.0.1, localhost) serve etcd too.
"$ARK" playground up --dir "$WORK/ark" --sites 3 >/dev/null
CERTS="$WORK/ark/certs"
cp -r "$CERTS" "$WORK/certs"
CERTS="$WORK/certs"
"$ARK" playground down --dir "$WORK/ark" >/dev/null
rm -rf "$WORK/ark"

start_etcd() { # $1 = plain|tls, $2 = base port
  local mode=$1 base=$2 scheme=http tlsargs=() cluster=""
  [ "$mode" = tls ] && scheme=https
  for i in 1 2 3; do cluster+="e$i=$scheme://127.0.0.1:$((base + i * 10 + 1)),"; done
  for i in 1 2 3; do
    tlsargs=()
    if [ "$mode" = tls ]; then
      tlsargs=(--cert-file "$CERTS/node-$i.pem" --key-file "$CERTS/node-$i.key" --trusted-ca-file "$CERTS/ca.pem"
        --client-cert-auth --peer-cert-file "$CERTS/node-$i.pem" --peer-key-file "$CERTS/node-$i.key"
        --peer-trusted-ca-file "$CERTS/ca.pem" --peer-client-cert-auth)
    fi
    etcd --name "e$i" --data-dir "$WORK/etcd-$mode-$i" \
      --listen-client-urls "$scheme://127.0.0.1:$((base + i * 10))" \
      --advertise-client-urls "$scheme://127.0.0.1:$((base + i * 10))" \
      --listen-peer-urls "$scheme://127.0.0.1:$((base + i * 10 + 1))" \
      --initial-advertise-peer-urls "$scheme://127.0.0.1:$((base + i * 10 + 1))" \
      --initial-cluster "${cluster%,}" --initial-cluster-state new --initial-cluster-token "bench-$mode" \
      "${tlsargs[@]}" >"$WORK/etcd-$mode-$i.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
}

leader_url() { # $1 = plain|tls, $2 = base port: the member that leads (writes go there directly)
  local scheme=http flags=()
  if [ "$1" = tls ]; then scheme=https; flags=(--cacert "$CERTS/ca.pem" --cert "$CERTS/client.pem" --key "$CERTS/client.key"); fi
  for i in 1 2 3; do
    local url="$scheme://127.0.0.1:$(($2 + i * 10))"
    if ETCDCTL_API=3 etcdctl --endpoints "$url" "${flags[@]}" endpoint status -w json 2>/dev/null | grep -q "\"leader\":$(ETCDCTL_API=3 etcdctl --endpoints "$url" "${flags[@]}" endpoint status -w json | sed -E 's/.*"member_id":([0-9]+).*/\1/')"; then
      echo "$url"; return
    fi
  done
  echo "$scheme://127.0.0.1:$(($2 + 10))"
}

stop_etcd() {
  for p in "${ETCD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${ETCD_PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  ETCD_PIDS=()
}

run() { "$ARK" --config "$WORK/ark/client.toml" bench kv --clients "$CLIENTS" --conns "$CONNS" --value-bytes "$VALUE" --duration "$SECS" "$@"; }
echo "# $(date -u +%FT%TZ) clients=$CLIENTS conns=$CONNS value_bytes=$VALUE seconds=$SECS rounds=$ROUNDS"
for r in $(seq 1 "$ROUNDS"); do
  "$ARK" playground up --dir "$WORK/ark" --sites 3 >/dev/null
  run
  "$ARK" playground down --dir "$WORK/ark" >/dev/null
  rm -rf "$WORK/ark"
  for mode in tls plain; do
    base=22000; [ "$mode" = plain ] && base=23000
    rm -rf "$WORK"/etcd-$mode-*
    start_etcd $mode $base
    sleep 4
    url=$(leader_url $mode $base)
    # The load generator takes its TLS files from a client config; reuse the saved certs.
    mkdir -p "$WORK/ark"
    printf 'endpoints = ["127.0.0.1:1"]\nca = "%s/ca.pem"\ncert = "%s/client.pem"\nkey = "%s/client.key"\n' "$CERTS" "$CERTS" "$CERTS" >"$WORK/ark/client.toml"
    run --etcd "$url" | sed "s/^etcd:/etcd-$mode:/"
    rm -rf "$WORK/ark"
    stop_etcd
  done
done
