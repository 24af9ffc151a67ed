#!/usr/bin/env bash
# A network partition costs a delay, not a request: the coordinator and three workers each
# in a network namespace of their own on a bridge (10.78.0.0/24, tcp data plane, f32 wire,
# [placement] min_distinct = 2 so every expert lives on two workers). While 32 greedy
# streaming clients run, w2's link is cut (`ip link set ... down`): w2 misses its step
# deadline and is fenced, the step runs again on w0 and w1, 0 requests fail and every
# output equals the same request on the idle cluster (the longest pause between two
# tokens is printed). With the link up again w2 hears it was fenced and leaves (exit 1);
# started again it rejoins and gets slots back.
#
# Usage: run-partition.sh FERRYCTL COORDINATOR_BIN WORKER_BIN
# Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2; exits 77 with the reason
# when namespaces cannot be created here.
set -uo pipefail
F=$1 co_bin=$2 wk_bin=$3
golden=$FERRY_GOLDEN/tiny-a
tag=fp$$
ns_co=$tag-co ns_br=$tag-br
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for n in $ns_co $tag-w0 $tag-w1 $tag-w2 $ns_br; do ip netns del "$n" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -20 "$tmp/co.err" >&2; exit 1; }

if ! command -v ip >/dev/null; then echo "SKIP: iproute2 (ip) is not installed" >&2; exit 77; fi
if ! ip netns add "$ns_br" 2>"$tmp/err"; then
  echo "SKIP: cannot create network namespaces here: $(cat "$tmp/err")" >&2
  exit 77
fi
set -e
ip -n "$ns_br" link add br0 type bridge
ip -n "$ns_br" link set br0 up
i=1
for n in $ns_co $tag-w0 $tag-w1 $tag-w2; do
  ip netns add "$n"
  ip link add "v$i-$tag" type veth peer name "p$i-$tag"
  ip link set "v$i-$tag" netns "$n"
  ip link set "p$i-$tag" netns "$ns_br"
  ip -n "$n" link set "v$i-$tag" name eth0
  ip -n "$n" addr add "10.78.0.$i/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
  ip -n "$ns_br" link set "p$i-$tag" master br0
  ip -n "$ns_br" link set "p$i-$tag" up
  i=$((i + 1))
done
set +e

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/secret"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/admin"
chmod 600 "$tmp/secret" "$tmp/admin"
: > "$tmp/empty.conf"
export FERRY_ADMIN_TOKEN_FILE=$tmp/admin
addr=10.78.0.1:7400
# A dead-peer timeout longer than the partition: the worker must hear it was fenced when the
# link is back, not give its data plane up first (with the default 5 s it did whenever the
# 32 clients took that long, as under a loaded CI).
common=(-c "$tmp/empty.conf" --secret-file "$tmp/secret" -t tcp -m "$golden"
  -s transport.peer_timeout=120s)
ip netns exec "$ns_co" "$co_bin" "${common[@]}" -l "$addr" -w 3 -s transport.bind_addr=10.78.0.1 \
  -s transport.wire_dtype=f32 -s placement.min_distinct=2 -s placement.rebalance=off \
  -s engine.max_seqs=40 -s engine.threads=1 -s server.admin_token_file="$tmp/admin" \
  > "$tmp/co.out" 2> "$tmp/co.err" &
co=$!
pids+=("$co")
declare -A wpid
start_worker() { # NAME INDEX SLOTS
  ip netns exec "$tag-$1" "$wk_bin" "${common[@]}" -C "$addr" -n "$1" --slots "$3" \
    -s transport.bind_addr=10.78.0.$(($2 + 2)) -s worker.threads=1 2>> "$tmp/$1.err" &
  wpid[$1]=$!
  pids+=($!)
}
start_worker w0 0 16
start_worker w1 1 16
start_worker w2 2 8
run() { ip netns exec "$ns_co" "$F" "$@"; }
for _ in $(seq 300); do
  run run --cluster "$addr" --tokens 1 --max-new 1 > /dev/null 2>&1 && break
  sleep 0.2
done

prompt() { python3 -c "
import random, sys
r = random.Random(int(sys.argv[1]))
print(' '.join(str(r.randrange(512)) for _ in range(10)))" "$1"; }
for i in $(seq 0 31); do prompt "$i" > "$tmp/p$i"; done
for i in $(seq 0 31); do
  run run --cluster "$addr" --tokens "$(cat "$tmp/p$i")" --max-new 200 > "$tmp/ref$i" || fail "reference $i"
done
cl=()
for i in $(seq 0 31); do
  run run --cluster "$addr" --tokens "$(cat "$tmp/p$i")" --max-new 200 --stats > "$tmp/out$i" 2> "$tmp/err$i" &
  cl+=($!)
done
sleep 0.7
ip -n "$ns_br" link set "p4-$tag" down # w2's port on the bridge
bad=0
for i in $(seq 0 31); do wait "${cl[$i]}" || { bad=$((bad + 1)); cat "$tmp/err$i" >&2; }; done
[ "$bad" = 0 ] || fail "$bad of 32 requests failed across the partition"
for i in $(seq 0 31); do cmp -s "$tmp/ref$i" "$tmp/out$i" || fail "request $i differs across the partition"; done
pause=$(cat "$tmp"/err* | sed -n 's/.*longest pause between tokens \([0-9.]*\) s$/\1/p' | sort -g | tail -1)
echo "w2's link cut under 32 streaming clients: 0 failed, every output equals the request alone; longest pause between two tokens ${pause} s"
python3 -c "import sys; sys.exit(not float(sys.argv[1]) < 2.0)" "${pause:-99}" || fail "a pause of $pause s"
grep -q "worker [0-9] 'w2' is fenced" "$tmp/co.err" || fail "w2 was not fenced"
echo "$(grep -m1 "no combine frame.*fenced\|missed heartbeats.*fenced" "$tmp/co.err")"

ip -n "$ns_br" link set "p4-$tag" up
for _ in $(seq 200); do kill -0 "${wpid[w2]}" 2>/dev/null || break; sleep 0.1; done
wait "${wpid[w2]}"; rc=$?
[ "$rc" = 1 ] && grep -q "the coordinator fenced this worker" "$tmp/w2.err" ||
  { tail -5 "$tmp/w2.err" >&2; fail "w2 after the link came back: exit $rc, expected 1 saying it was fenced"; }
echo "w2 after the link came back: $(grep -m1 "fenced this worker" "$tmp/w2.err" | cut -c1-90)..."
start_worker w2 2 8
for _ in $(seq 300); do
  run status --cluster "$addr" --json > "$tmp/st.json" 2>/dev/null &&
    python3 -c "
import json, sys
w = {x['name']: x for x in json.load(open(sys.argv[1]))['workers']}
sys.exit(not (w['w2']['state'] == 'serving' and w['w2']['slots_in_service'] > 0))" "$tmp/st.json" && break
  sleep 0.1
done
python3 -c "
import json, sys
w = {x['name']: x for x in json.load(open(sys.argv[1]))['workers']}
assert w['w2']['state'] == 'serving' and w['w2']['slots_in_service'] > 0, w['w2']
print('w2 rejoined: serving %d slots' % w['w2']['slots_in_service'])" "$tmp/st.json" ||
  fail "w2 did not get slots back after the partition"
out=$(run run --cluster "$addr" --tokens "$(cat "$tmp/p0")" --max-new 200) || fail "a request after w2 rejoined"
[ "$out" = "$(cat "$tmp/ref0")" ] || fail "a request after w2 rejoined differs"
kill -0 "$co" 2>/dev/null || fail "the coordinator exited"
echo "after the partition healed: w2 back, same tokens"
