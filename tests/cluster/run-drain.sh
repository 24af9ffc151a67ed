#!/usr/bin/env bash
# Drain under load on a real cluster: a coordinator and three workers (8 slots each for the
# 16 experts of the tiny golden model, f32 wire), 16 concurrent streaming clients, and
# `ferryctl drain w2 --wait` while they run: no request fails, every output equals the
# same request on the idle cluster, w2 ends with no slot in service (Status: draining),
# then it is stopped (SIGTERM) and the cluster serves on with the same tokens. A second
# drain that would leave too few slots is refused naming the problem, nothing changed;
# undrain under load gives w2 its slots back moving little else (exact, 0 failed), a
# second drain likewise; undrain of a worker that is gone is refused.
# Usage: run-drain.sh COORDINATOR_BIN WORKER_BIN FERRYCTL
set -uo pipefail
co_bin=$1 wk_bin=$2 F=$3
golden=$FERRY_GOLDEN/tiny-a
. "$(dirname "$0")/lib-daemons.sh"

"$co_bin" -c "$tmp/empty.conf" -m "$golden" -l 127.0.0.1:0 -w 3 --secret-file "$tmp/secret" \
  -s transport.wire_dtype=f32 -s engine.max_seqs=32 -s engine.threads=1 \
  > "$tmp/co.out" 2> "$tmp/co.err" &
co=$!
pids+=("$co")
wait_port || fail "coordinator did not start"
declare -A wpid
for w in w0 w1 w2; do
  "$wk_bin" -c "$tmp/empty.conf" -C "127.0.0.1:$port" -n "$w" -m "$golden" --slots 8 \
    --secret-file "$tmp/secret" -s worker.threads=1 2> "$tmp/$w.err" &
  wpid[$w]=$!
  pids+=($!)
done
export FERRY_CLUSTER=127.0.0.1:$port
wait_serving || fail "the cluster never served"

prompt() { python3 -c "
import random, sys
r = random.Random(int(sys.argv[1]))
print(' '.join(str(r.randrange(512)) for _ in range(10)))" "$1"; }
for i in $(seq 0 15); do prompt "$i" > "$tmp/p$i"; done
for i in $(seq 0 15); do
  "$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 48 > "$tmp/ref$i" || fail "reference $i"
done

cl=()
for i in $(seq 0 15); do
  "$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 48 > "$tmp/out$i" 2> "$tmp/err$i" &
  cl+=($!)
done
sleep 0.3
"$F" drain w2 --wait > "$tmp/drain.out" 2> "$tmp/drain.err" || { cat "$tmp/drain.err" >&2; fail "drain"; }
bad=0
for i in $(seq 0 15); do wait "${cl[$i]}" || { bad=$((bad + 1)); cat "$tmp/err$i" >&2; }; done
[ "$bad" = 0 ] || fail "$bad of 16 requests failed during the drain"
for i in $(seq 0 15); do cmp -s "$tmp/ref$i" "$tmp/out$i" || fail "request $i differs across the drain"; done
tail -1 "$tmp/drain.out"
"$F" status --json > "$tmp/st.json"
python3 - "$tmp/st.json" <<'PY' || fail "status after the drain"
import json, sys
s = json.load(open(sys.argv[1]))
w = {x["name"]: x for x in s["workers"]}
assert w["w2"]["state"] == "draining" and w["w2"]["slots_in_service"] == 0, w["w2"]
assert all(w[n]["state"] == "serving" and w[n]["slots_in_service"] == 8 * 3 for n in ("w0", "w1")), w
assert s["last_rebalance"]["why"].startswith("drain worker"), s["last_rebalance"]
print("after the drain: w2 draining with 0 slots in service, w0 and w1 serving 24 each")
PY
echo "16 concurrent requests across the drain: 0 failed, every output equals the request alone"

# A second drain would leave 8 slots for 16 experts: refused, nothing changed.
rc=0; "$F" drain w1 > /dev/null 2> "$tmp/e1" || rc=$?
[ "$rc" = 1 ] && grep -q "cannot drain worker .* 'w1'.*fewer than the 16 routed experts" "$tmp/e1" ||
  { cat "$tmp/e1" >&2; fail "second drain"; }
echo "refused: $(head -1 "$tmp/e1")"

# Moves stay near what must move: undrain under load loads w2's 24 slots and at most 18
# of the other 48 (the solve starts from the layout in force, not from scratch:
# it moved 62 that way); draining w2 again re-homes what only w2 held (at most 36).
moves() { python3 -c "
import json, sys
d = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]
assert d['phase'] == 'done', d
print(d['moves'])" "$1"; }
# Longer requests here (400 new tokens) so that steps run while the slots move.
for i in $(seq 0 15); do
  "$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 400 > "$tmp/lref$i" || fail "reference $i (400)"
done
cl=()
for i in $(seq 0 15); do
  "$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 400 > "$tmp/un$i" 2> "$tmp/err$i" &
  cl+=($!)
done
sleep 0.3
"$F" undrain w2 --wait --json > "$tmp/undrain.out" 2> "$tmp/undrain.err" || { cat "$tmp/undrain.err" >&2; fail "undrain"; }
bad=0
for i in $(seq 0 15); do wait "${cl[$i]}" || { bad=$((bad + 1)); cat "$tmp/err$i" >&2; }; done
[ "$bad" = 0 ] || fail "$bad of 16 requests failed during the undrain"
for i in $(seq 0 15); do cmp -s "$tmp/lref$i" "$tmp/un$i" || fail "request $i differs across the undrain"; done
um=$(moves "$tmp/undrain.out") || fail "undrain outcome"
steps=$(python3 -c "
import json, sys
print([json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1].get('steps_during', 0))" "$tmp/undrain.out")
[ "$um" -ge 24 ] && [ "$um" -le 42 ] ||
  fail "undrain moved $um of 72 slots (w2's 24 must load, at most 18 of the other 48 may move)"
"$F" status --json > "$tmp/st.json"
python3 -c "
import json, sys
w = {x['name']: x for x in json.load(open(sys.argv[1]))['workers']}
assert all(w[n]['state'] == 'serving' and w[n]['slots_in_service'] == 24 for n in w), w" "$tmp/st.json" ||
  fail "status after the undrain"
"$F" drain w2 --wait --json > "$tmp/drain2.out" 2> "$tmp/drain2.err" || { cat "$tmp/drain2.err" >&2; fail "second drain of w2"; }
dm=$(moves "$tmp/drain2.out") || fail "drain outcome"
[ "$dm" -le 36 ] || fail "drain moved $dm of 72 slots (at most 36)"
echo "undrain under load ($steps steps ran while it moved): 16 requests, 0 failed, same tokens; $um of 72 slots moved; drain again: $dm moved"

# Stop the drained worker: nothing routes to it, the cluster serves on.
kill -TERM "${wpid[w2]}"; wait "${wpid[w2]}"
for i in 0 1 2 3; do
  "$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 48 > "$tmp/after$i" || fail "request after w2 left"
  cmp -s "$tmp/ref$i" "$tmp/after$i" || fail "request $i differs after w2 left"
done
kill -0 "$co" || fail "the coordinator exited"
echo "w2 stopped: 4 requests later, the same tokens"
rc=0; "$F" undrain w2 > /dev/null 2> "$tmp/e2" || rc=$?
[ "$rc" = 1 ] && grep -q "worker .* 'w2' is not serving" "$tmp/e2" || { cat "$tmp/e2" >&2; fail "undrain of a stopped worker"; }
echo "refused: $(head -1 "$tmp/e2")"
echo "drain test passed"
