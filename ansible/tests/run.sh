#!/usr/bin/env bash
# Container test of the Ansible deployment (issue 19), called by .ci/run after nextest.
#
# Builds (once, cached by tag) a small Debian image with systemd, starts one unprivileged
# systemd container per site on a docker network of its own, deploys the CI build's arkd
# and ark with site.yml, runs site.yml again and fails if anything changed, verifies the
# cluster (units, status, KV and objects from the controller, file modes, monitoring files
# against live metrics), restarts arkd on the leader's host while a writer writes, runs
# upgrade.yml to a rebuilt arkd (ARK_BUILD_TAG=upgrade-test) while a writer writes, and
# runs drill.yml (ark drill, leader-kill) against the containers. Every acknowledged write
# is read back. Ends with one line "N passed, M failed"; exit 0 only when M is 0.
#
# Needs: root or docker access, cargo (for the relinks of arkd), network to Debian and
# PyPI for the first run (mmdebstrap, prometheus, python venv: cached afterwards).
# Environment: ARK_ANSIBLE_CACHE (venv, collections; default target/ansible-ci),
# ARK_TEST_KEEP=1 keeps containers and temp dir for debugging.
set -euo pipefail
ansible_dir=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$ansible_dir/.." && pwd)
build_dir=$repo/target/debug
cache=${ARK_ANSIBLE_CACHE:-$repo/target/ansible-ci}
image=ark-test-base:systemd-1
run_id=ark-t$$
playbook_timeout_s=600

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
summary() { echo "$passed passed, $failed failed"; }
# A step the rest depends on failed: count it, say why, stop.
die() {
  fail "$*"
  summary
  exit 1
}
log() { echo "== $(date -u +%H:%M:%S) $*"; }

tmp=$(mktemp -d /tmp/ark-ansible-test.XXXXXX)
containers=()
cleanup() {
  local rc=$?
  set +e
  if [ -n "${writer_pid:-}" ]; then kill "$writer_pid" 2>/dev/null; wait "$writer_pid" 2>/dev/null; fi
  if [ "${ARK_TEST_KEEP:-}" = 1 ]; then
    echo "ARK_TEST_KEEP=1: left containers ${containers[*]}, network $run_id and $tmp" >&2
    return
  fi
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
  docker network rm "$run_id" >/dev/null 2>&1
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools (cached)
log "tools"
if ! command -v mmdebstrap >/dev/null || ! command -v promtool >/dev/null; then
  [ "$(id -u)" = 0 ] || die "mmdebstrap and promtool needed: apt-get install mmdebstrap prometheus"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap prometheus >/dev/null
fi
venv=$cache/venv
if [ ! -x "$venv/bin/ansible-lint" ] || [ ! -x "$venv/bin/ansible-playbook" ]; then
  mkdir -p "$cache"
  python3 -m venv "$venv"
  # ansible-core 2.19: 2.20 needs Python 3.12. Collections come from the `ansible` wheel
  # below: ansible-galaxy cannot reach its server from CI.
  "$venv/bin/pip" install -q 'ansible-core==2.19.*' 'ansible-lint==26.*'
fi
collections=$cache/collections
if [ ! -d "$collections/ansible_collections/community/docker" ] || [ ! -d "$collections/ansible_collections/ansible/posix" ]; then
  rm -rf "$cache/wheel" "$collections"
  mkdir -p "$cache/wheel" "$collections"
  "$venv/bin/pip" download -q --no-deps -d "$cache/wheel" 'ansible==12.*'
  "$venv/bin/python" - "$cache/wheel" "$collections" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/ansible-*.whl")[0]
keep = ("ansible_collections/community/docker/", "ansible_collections/community/library_inventory_filtering_v1/",
        "ansible_collections/ansible/posix/")
with zipfile.ZipFile(wheel) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(keep)])
PY
fi
export PATH=$venv/bin:$PATH
export ANSIBLE_COLLECTIONS_PATH=$collections
export ANSIBLE_CONFIG=$ansible_dir/ansible.cfg
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
# Task timings in every playbook log (the slowest tasks are listed at its end).
export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks

# ---------------------------------------------------------------- lint and rules (no hosts)
log "ansible-lint (profile production)"
if (cd "$ansible_dir" && ansible-lint --profile production --offline -q . >"$tmp/lint.log" 2>&1); then
  pass "ansible-lint --profile production"
else
  cat "$tmp/lint.log"
  fail "ansible-lint --profile production"
fi

# ---------------------------------------------------------------- binaries
# The CI build's arkd, ark and ark-chaos, and the same arkd relinked with a build tag for
# the upgrade. Each set gets the SHA256SUMS file the roles verify against.
log "binaries: release set and upgrade set"
command -v cargo >/dev/null || die "cargo needed to relink arkd with ARK_BUILD_TAG"
(cd "$repo" && env -u ARK_BUILD_TAG cargo build -q -p ark-node --bin arkd -p ark-cli --bin ark -p ark-chaos --bin ark-chaos) ||
  die "cargo build of arkd, ark, ark-chaos"
stage() { # stage DIR: copies the three binaries into DIR and writes SHA256SUMS
  mkdir -p "$1"
  cp "$build_dir/arkd" "$build_dir/ark" "$build_dir/ark-chaos" "$1/"
  (cd "$1" && sha256sum arkd ark ark-chaos >SHA256SUMS)
}
stage "$tmp/bin"
(cd "$repo" && ARK_BUILD_TAG=upgrade-test cargo build -q -p ark-node --bin arkd) || die "relink of arkd with ARK_BUILD_TAG"
stage "$tmp/bin-upgrade"
if "$tmp/bin-upgrade/arkd" --version | grep -q 'build upgrade-test' && ! "$tmp/bin/arkd" --version | grep -q upgrade-test; then
  pass "upgrade binary carries its build tag ($("$tmp/bin-upgrade/arkd" --version))"
else
  die "arkd --version does not tell the two builds apart"
fi

# ---------------------------------------------------------------- image and containers
if ! docker image inspect "$image" >/dev/null 2>&1; then
  log "building $image (mmdebstrap, about 2 minutes; cached afterwards)"
  mmdebstrap --variant=minbase --include=python3,systemd,systemd-sysv,dbus,openssl \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='chroot "$1" systemctl mask getty@tty1.service serial-getty@.service systemd-remount-fs.service dev-hugepages.mount sys-fs-fuse-connections.mount systemd-logind.service' \
    bookworm - /etc/apt/sources.list.d/debian.sources |
    docker import -c 'CMD ["/sbin/init"]' - "$image" >/dev/null || die "image build"
fi
t0=$SECONDS
log "containers"
docker network create "$run_id" >/dev/null
declare -A cname ip
for h in node-a node-b node-c; do
  c=$run_id-${h#node-}
  containers+=("$c")
  cname[$h]=$c
  docker run -d --name "$c" --hostname "$h" --network "$run_id" \
    --stop-signal SIGRTMIN+3 --tmpfs /run --tmpfs /run/lock \
    -v /sys/fs/cgroup:/sys/fs/cgroup:ro "$image" >/dev/null
done
for h in node-a node-b node-c; do
  # Right after start systemctl cannot reach the bus yet: poll, at most 90 s.
  state=""
  for _ in $(seq 1 90); do
    state=$(timeout 30 docker exec "${cname[$h]}" systemctl is-system-running --wait 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 1
  done
  case "$state" in running | degraded) ;; *) die "systemd in ${cname[$h]} did not come up: '$state'" ;; esac
  ip[$h]=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${cname[$h]}")
done
{
  echo "all:"
  echo "  hosts:"
  for h in node-a node-b node-c; do
    echo "    $h: {ansible_host: ${cname[$h]}, ark_advertise_host: ${ip[$h]}}"
  done
} >"$tmp/hosts.yml"
pass "3 systemd containers up in $((SECONDS - t0)) s (${ip[node-a]}, ${ip[node-b]}, ${ip[node-c]})"

export ARK_TEST_TMP=$tmp ARK_TEST_BIN_DIR=$tmp/bin
play() { # play LOG PLAYBOOK ARGS...: runs a playbook against the test inventory
  local out=$1
  shift
  (cd "$ansible_dir" && timeout "$playbook_timeout_s" ansible-playbook -i inventories/test -i "$tmp/hosts.yml" "$@") >"$out" 2>&1
}
recap_changed() { # total changed= of a playbook log's recap
  awk '/PLAY RECAP/ {r=1} r && /changed=/ {for (i=1;i<=NF;i++) if ($i ~ /^changed=/) {split($i,a,"="); s+=a[2]}} END {print s+0}' "$1"
}
scrape() { # scrape IP: a node's /metrics
  python3 -c 'import sys,urllib.request;sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=10).read().decode())' \
    "http://$1:7002/metrics"
}
ark() { "$tmp/bin/ark" --config "$tmp/pki/client.toml" --timeout-ms 10000 "$@"; }

# ---------------------------------------------------------------- converge, idempotence
log "site.yml: converge"
t0=$SECONDS
if play "$tmp/converge.log" site.yml; then
  pass "site.yml converged fresh hosts in $((SECONDS - t0)) s ($(recap_changed "$tmp/converge.log") changes)"
else
  tail -60 "$tmp/converge.log"
  die "site.yml on fresh hosts"
fi
log "site.yml: second run"
t0=$SECONDS
if play "$tmp/rerun.log" site.yml && [ "$(recap_changed "$tmp/rerun.log")" = 0 ]; then
  pass "site.yml second run changed nothing ($((SECONDS - t0)) s)"
else
  grep -E '^(changed|failed|fatal)' "$tmp/rerun.log" | head -20
  tail -20 "$tmp/rerun.log"
  fail "site.yml second run is not idempotent"
fi

# ---------------------------------------------------------------- verify
log "verify"
bad=""
for h in node-a node-b node-c; do
  show=$(docker exec "${cname[$h]}" systemctl show -p ActiveState -p SubState -p Type -p StatusText arkd)
  grep -qx 'ActiveState=active' <<<"$show" && grep -qx 'Type=notify' <<<"$show" &&
    grep -qx 'StatusText=serving: a leader is known' <<<"$show" || bad="$bad $h: $(tr '\n' ' ' <<<"$show")"
done
[ -z "$bad" ] && pass "arkd active on every host, Type=notify, status 'serving: a leader is known'" ||
  fail "arkd units:$bad"

if ark status --json >"$tmp/status.json" 2>"$tmp/status.err" &&
  python3 - "$tmp/status.json" <<'PY'; then
import json, sys
s = json.load(open(sys.argv[1]))
voters = [n for n in s["nodes"] if n["role"] == "voter"]
assert s["leader_id"] in (1, 2, 3), s
assert len(voters) == 3, voters
assert sorted(n["site"] for n in voters) == ["site-a", "site-b", "site-c"], voters
assert all(n["healthy"] for n in voters), voters
PY
  pass "ark status: 3 voters in 3 sites, all healthy, leader $(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["leader_id"])' "$tmp/status.json")"
else
  cat "$tmp/status.json" "$tmp/status.err"
  fail "ark status --json from the controller"
fi

if ark kv put deploy/greeting "hello from the controller" >/dev/null &&
  [ "$(ark kv get deploy/greeting)" = "hello from the controller" ]; then
  pass "KV put/get from the controller"
else
  fail "KV put/get from the controller"
fi

head -c 3000000 /dev/urandom >"$tmp/object.bin"
if ark ns create ckpt --mode sync >/dev/null && ark put ckpt/model.bin "$tmp/object.bin" >/dev/null &&
  ark get ckpt/model.bin -o "$tmp/object.out" >/dev/null && cmp -s "$tmp/object.bin" "$tmp/object.out"; then
  pass "object put/get (3 MB, sync namespace) from the controller, bytes identical"
else
  fail "object put/get from the controller"
fi

if docker exec "${cname[node-c]}" ark --config /etc/ark-client/client.toml kv get deploy/greeting 2>&1 |
  grep -qx 'hello from the controller'; then
  pass "ark_client: the CLI and client.toml on node-c read the cluster"
else
  fail "ark_client on node-c"
fi
if out=$(docker exec "${cname[node-c]}" ark --config /etc/ark-client/client.toml kv put deploy/greeting overwritten 2>&1); then
  fail "node-c (granted kv-read on deploy/* only) could write: $out"
elif grep -q 'missing kv-write on deploy/greeting' <<<"$out" && [ "$(ark kv get deploy/greeting)" = "hello from the controller" ]; then
  pass "ark_grants: node-c reads deploy/* and its write is refused with the missing permission"
else
  fail "node-c's refused write: $out"
fi

bad=""
for h in node-a node-b node-c; do
  got=$(docker exec "${cname[$h]}" stat -c '%n %a %U' /var/lib/ark /etc/ark/certs/node.key /etc/ark/arkd.toml)
  want=$'/var/lib/ark 700 ark\n/etc/ark/certs/node.key 600 ark\n/etc/ark/arkd.toml 640 root'
  [ "$got" = "$want" ] || bad="$bad $h: $(tr '\n' ';' <<<"$got")"
  keys=$(docker exec "${cname[$h]}" find / -xdev -name 'ca.key' -print 2>/dev/null || true)
  [ -z "$keys" ] || bad="$bad $h has a CA key: $keys"
done
[ -z "$bad" ] && pass "data dir 0700, node key 0600 owned by ark, no CA key on any node" || fail "file modes:$bad"

# Monitoring: the rules pass their unit tests and every metric the rules and the dashboard
# name is exported by a running node (or by the certificate-expiry textfile).
mon=$tmp/prometheus
cp "$ansible_dir/roles/ark_monitoring/tests/ark-alerts.test.yml" "$mon/rules/"
if promtool check config --syntax-only "$mon/prometheus.yml" >/dev/null &&
  (cd "$mon/rules" && promtool test rules ark-alerts.test.yml >"$tmp/promtool.log" 2>&1); then
  pass "promtool: config valid, alert rules pass their unit tests"
else
  cat "$tmp/promtool.log"
  fail "promtool check config / test rules"
fi
# The leader exports a namespace's lag gauges after its first repair pass since the
# namespace was created (ckpt, just above), up to objects.repair_interval_ms later: scrape
# again for a few seconds before calling a name missing.
metrics_named_exist() {
  : >"$tmp/metrics.txt"
  for h in node-a node-b node-c; do
    scrape "${ip[$h]}" >>"$tmp/metrics.txt"
    docker exec "${cname[$h]}" cat /var/lib/prometheus/node-exporter/ark_tls.prom >>"$tmp/metrics.txt"
  done
  python3 - "$tmp/metrics.txt" "$tmp/grafana/ark.json" "$mon/rules/ark-alerts.yml" "$repo/node/src" <<'PY'

import json, pathlib, re, sys
live = set()
for line in open(sys.argv[1]):
    m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
    if m and not line.startswith("#"):
        live.add(m.group(1))
exprs = [t["expr"] for p in json.load(open(sys.argv[2]))["panels"] for t in p["targets"]]
exprs += re.findall(r"expr: (?:>-\n)?((?:.*\n)+?)\s+for:", open(sys.argv[3]).read())
used = {n for e in exprs for n in re.findall(r"\b(ark_[a-z0-9_]+)", e)}
# Exported only under conditions a fresh test cluster does not meet (a failure model in
# _ark; a repair having happened); they must at least be recorded by the node's code.
conditional = {"ark_node_failure_risk", "ark_replication_repaired_chunks_total", "ark_object_reads_failed_total",
               "ark_chunks_without_live_copy", "ark_link_rtt_seconds", "ark_link_bytes_per_second"}
src = "".join(p.read_text() for p in pathlib.Path(sys.argv[4]).rglob("*.rs"))
missing = []
for n in sorted(used):
    base = re.sub(r"_(bucket|sum|count)$", "", n)
    if n in live or base in live or f"{base}_bucket" in live:
        continue
    if base in conditional and f'"{base}"' in src:
        print(f"  {n}: not yet exported by the test cluster (conditional), recorded in node/src")
        continue
    missing.append(n)
print(f"  {len(used)} metric names used, {len(missing)} missing")
assert not missing, missing
PY
}
named_ok=0
for attempt in 1 2 3 4 5 6 7 8; do
  if metrics_named_exist >"$tmp/named.log" 2>&1; then
    named_ok=1
    break
  fi
  sleep 1
done
cat "$tmp/named.log"
if [ "$named_ok" = 1 ]; then
  pass "every metric named by the alert rules and the dashboard exists"
else
  fail "alert rules or dashboard name metrics that do not exist"
fi

# ---------------------------------------------------------------- writer
# Writes KEY=VALUE pairs with unique keys under a prefix until told to stop; records each
# acknowledged one with its time. Nothing is retried: a write whose outcome is unknown is
# not recorded, and the read-back only checks acknowledged ones.
start_writer() { # start_writer PREFIX
  local prefix=$1 out=$tmp/acked-$1.tsv
  : >"$out"
  rm -f "$tmp/stop-writer"
  (
    i=0
    while [ ! -e "$tmp/stop-writer" ] && [ "$i" -lt 100000 ]; do
      i=$((i + 1))
      if "$tmp/bin/ark" --config "$tmp/pki/client.toml" --timeout-ms 8000 kv put "$prefix/$i" "v$i" >/dev/null 2>&1; then
        printf '%s/%s\tv%s\t%s\n' "$prefix" "$i" "$i" "$(date +%s%3N)" >>"$out"
      else
        echo "$(date +%s%3N)" >>"$tmp/failed-$prefix.txt"
      fi
      sleep 0.1 # about 8 writes a second: leave the 2 cores to the cluster and Ansible
    done
  ) &
  writer_pid=$!
}
stop_writer() {
  touch "$tmp/stop-writer"
  wait "$writer_pid" || true
  writer_pid=""
}
# read_back PREFIX [MAX_GAP_MS]: every acknowledged write is there with its value, and
# (when given) no two consecutive acknowledgements are further apart; prints figures
read_back() {
  local prefix=$1 max_gap_ms=${2:-0}
  ark kv ls "$prefix/" --values --limit 100000 >"$tmp/read-$prefix.tsv" || return 1
  python3 - "$tmp/acked-$prefix.tsv" "$tmp/read-$prefix.tsv" "$tmp/failed-$prefix.txt" "$max_gap_ms" <<'PY'
import os, sys
acked = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
read = dict(l.rstrip("\n").split("\t", 1) for l in open(sys.argv[2]) if l.strip())
lost = [k for k, v, _ in acked if read.get(k) != v]
times = [int(t) for _, _, t in acked]
gap = max((b - a for a, b in zip(times, times[1:])), default=0)
failed = sum(1 for _ in open(sys.argv[3])) if os.path.exists(sys.argv[3]) else 0
print(f"{len(acked)} acked, {len(lost)} lost, {failed} failed or unknown, longest gap between acks {gap} ms")
assert acked, "no write was acknowledged"
assert not lost, f"lost acknowledged writes: {lost[:10]}"
max_gap = int(sys.argv[4])
assert not max_gap or gap <= max_gap, f"no write acknowledged for {gap} ms (more than {max_gap})"
PY
}
leader_host() { # the inventory host of the current leader
  local id
  id=$(ark status --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["leader_id"])') || return 1
  local by_id=("" node-a node-b node-c)
  echo "${by_id[$id]}"
}
term() { ark status --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["term"])'; }

# ---------------------------------------------------------------- restart of the leader
# `systemctl restart arkd` on the leader's host while a writer writes. arkd is back within
# a second, inside the followers' election timeout, and openraft resumes the restarted
# leader's committed vote: the leadership may stay where it was. The property is that no
# acknowledged write is lost and the cluster serves again at once.
log "systemctl restart arkd on the leader's host, with a writer"
old_leader=$(leader_host) || die "no leader before the restart"
old_term=$(term)
start_writer restart
sleep 2
t0=$(date +%s%3N)
docker exec "${cname[$old_leader]}" systemctl restart arkd
restart_ms=$(($(date +%s%3N) - t0))
sleep 3
stop_writer
after=$(leader_host) || after=""
if [ -n "$after" ] && figures=$(read_back restart); then
  pass "systemctl restart arkd on leader $old_leader (term $old_term): returned after $restart_ms ms, serving; leader now $after in term $(term); $figures"
else
  fail "systemctl restart arkd on the leader $old_leader: leader after '$after'; ${figures:-read-back failed}"
fi

# The leader's host down for longer than an election timeout (stop, then start): the
# others must elect a new leader in a new term, and the old one rejoins as a follower.
log "leader's arkd stopped until a new leader is elected, then started, with a writer"
old_leader=$(leader_host) || die "no leader before the stop"
old_term=$(term)
start_writer failover
sleep 2
docker exec "${cname[$old_leader]}" systemctl stop arkd
t0=$(date +%s%3N)
new_leader=""
for _ in $(seq 1 60); do
  l=$(leader_host 2>/dev/null) && [ "$l" != "$old_leader" ] && [ "$(term)" -gt "$old_term" ] && new_leader=$l && break
  sleep 0.5
done
elect_ms=$(($(date +%s%3N) - t0))
docker exec "${cname[$old_leader]}" systemctl start arkd
sleep 3
stop_writer
rejoined=$(docker exec "${cname[$old_leader]}" systemctl show -p StatusText --value arkd)
if [ -n "$new_leader" ] && [ "$rejoined" = "serving: a leader is known" ] && figures=$(read_back failover); then
  pass "leader $old_leader stopped: new leader $new_leader in term $(term) within $elect_ms ms; $old_leader restarted and serving; $figures"
else
  fail "leader failover: old $old_leader, new '$new_leader' after $elect_ms ms, old one '$rejoined'; ${figures:-read-back failed}"
fi

# ---------------------------------------------------------------- rolling upgrade
log "upgrade.yml to the tagged build, with a writer"
leader_before=$(leader_host) || die "no leader before the upgrade"
start_writer upgrade
t0=$SECONDS
if ARK_TEST_BIN_DIR=$tmp/bin-upgrade play "$tmp/upgrade.log" upgrade.yml; then
  upgrade_ok=1
else
  upgrade_ok=0
  tail -40 "$tmp/upgrade.log"
fi
upgrade_s=$((SECONDS - t0))
sleep 2
stop_writer
# Serving throughout: writes keep being acknowledged, never 10 s without one.
figures=$(read_back upgrade 10000 2>&1) || figures="read-back failed: $figures"
bad=""
for h in node-a node-b node-c; do
  m=$(scrape "${ip[$h]}" 2>&1) || m="scrape failed: $m"
  grep -q 'ark_build_info{.*build="upgrade-test"' <<<"$m" || bad="$bad $h not running the upgrade build"
done
# Followers first, the leader last: the old leader's arkd started after both others'.
declare -A started
for h in node-a node-b node-c; do
  started[$h]=$(docker exec "${cname[$h]}" systemctl show -p ExecMainStartTimestampMonotonic --value arkd)
done
for h in node-a node-b node-c; do
  [ "$h" = "$leader_before" ] && continue
  [ "${started[$h]}" -lt "${started[$leader_before]}" ] || bad="$bad $h restarted after the leader $leader_before"
done
# The leader's restart was preceded by a hand-over (`ark members transfer-leader`).
grep -A4 'Leadership moves off this node' "$tmp/upgrade.log" | grep -q '^changed:' \
  || bad="$bad no leadership hand-over before the leader's restart"
if [ "$upgrade_ok" = 1 ] && [ -z "$bad" ] && grep -q ' 0 lost' <<<"$figures"; then
  pass "upgrade.yml in $upgrade_s s: every node runs build upgrade-test, leader $leader_before last after a hand-over; $figures"
else
  fail "upgrade.yml:$bad; $figures"
fi

# ---------------------------------------------------------------- drill
log "drill.yml: leader-kill against the containers"
t0=$SECONDS
if play "$tmp/drill.log" drill.yml -e ark_drill_scenario=leader-kill -e ark_drill_duration_s=20 \
  -e "ark_drill_out_dir=$tmp/drill" -e 'ark_drill_exec="docker exec {host}"' -e "ark_binary_src=$tmp/bin-upgrade" &&
  python3 - "$tmp/drill/report.json" <<'PY'; then
import json, sys
r = json.load(open(sys.argv[1]))
v = r.get("verdict", r)
print(json.dumps({k: r.get(k) for k in ("passed", "lost_acked", "linearizable", "rto_ms", "faults") if k in r}))
PY
  pass "drill.yml leader-kill (20 s) passed in $((SECONDS - t0)) s"
else
  tail -30 "$tmp/drill.log"
  [ -f "$tmp/drill/report.json" ] && head -c 2000 "$tmp/drill/report.json"
  fail "drill.yml leader-kill"
fi

summary
[ "$failed" = 0 ]
