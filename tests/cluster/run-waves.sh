#!/usr/bin/env bash
# A live rebalance in waves, for workers with little staging room: a coordinator and three
# workers (8 slots each for the 16 experts of the tiny golden model, f32 wire); w0 and w1
# can load 3 new expert copies beside those serving ([worker] staging_slots=3), w2 what its
# memory_limit leaves after its slots (2). Under 16 concurrent streaming clients,
# `ferryctl rebalance --wait` to a profile whose hot experts differ moves the slots in
# several waves, each an epoch of its own: no request fails, every output equals the same
# request on the idle cluster, no worker ever loads more than its room at once (its log
# says how many new slots each epoch brought), and the dry run announces the waves. w1
# holds its slots through the device path's CPU twin ([compute] device = twin): its loads
# and unloads go through the device ops while it serves.
# Usage: run-waves.sh COORDINATOR_BIN WORKER_BIN FERRYCTL
set -uo pipefail
co_bin=$1 wk_bin=$2 F=$3
golden=$FERRY_GOLDEN/tiny-a
. "$(dirname "$0")/lib-daemons.sh"

"$co_bin" -c "$tmp/empty.conf" -m "$golden" -l 127.0.0.1:0 -w 3 --secret-file "$tmp/secret" \
  -s transport.wire_dtype=f32 -s engine.max_seqs=32 -s engine.threads=1 \
  -s placement.rebalance=off > "$tmp/co.out" 2> "$tmp/co.err" &
co=$!
pids+=("$co")
wait_port || fail "coordinator did not start"
# one expert copy: gate, up and down of hidden x moe_intermediate f32 values
per=$(python3 -c "
import json, sys
c = json.load(open(sys.argv[1]))
print(3 * c['hidden_size'] * c['moe_intermediate_size'] * 4)" "$golden/config.json")
declare -A room=([w0]=3 [w1]=3 [w2]=2)
declare -A device=([w0]=cpu [w1]=twin)
for w in w0 w1; do
  "$wk_bin" -c "$tmp/empty.conf" -C "127.0.0.1:$port" -n "$w" -m "$golden" --slots 8 \
    --secret-file "$tmp/secret" -s worker.threads=1 -s worker.staging_slots=3 \
    -s compute.device=${device[$w]} 2> "$tmp/$w.err" &
  pids+=($!)
done
# 8 slots x 3 MoE layers held, memory for 2 more
"$wk_bin" -c "$tmp/empty.conf" -C "127.0.0.1:$port" -n w2 -m "$golden" --slots 8 \
  --secret-file "$tmp/secret" -s worker.threads=1 -s worker.memory_limit=$((per * 26)) 2> "$tmp/w2.err" &
pids+=($!)
export FERRY_CLUSTER=127.0.0.1:$port
wait_serving || fail "the cluster never served"
for w in w0 w1 w2; do
  grep -q "'$w' joined: 8 slots per layer, .*, staging room ${room[$w]} expert copies" "$tmp/co.err" ||
    fail "the coordinator does not report $w's staging room of ${room[$w]}"
done
grep -q "experts on the CPU twin of a device" "$tmp/w1.err" || fail "w1 is not on the device twin"

# Two profiles whose hot experts differ: the second plan moves many slots.
python3 - "$tmp" <<'PY'
import json, os, sys
for name, shift in (("hot1.json", 0), ("hot2.json", 8)):
    json.dump({"layers": [[1000.0 / (1 + ((e + shift + 3 * l) % 16)) ** 1.6 for e in range(16)]
                          for l in range(3)]}, open(os.path.join(sys.argv[1], name), "w"))
PY
"$F" rebalance --profile "$tmp/hot1.json" --wait --json > "$tmp/rb1.json" 2> "$tmp/rb1.err" ||
  { cat "$tmp/rb1.err" >&2; fail "first rebalance"; }
"$F" rebalance --profile "$tmp/hot2.json" --dry-run --json > "$tmp/dry.json" 2> "$tmp/dry.err" ||
  { cat "$tmp/dry.err" >&2; fail "dry run"; }
python3 - "$tmp/dry.json" <<'PY' || fail "the dry run does not announce waves"
import json, sys
d = json.loads(open(sys.argv[1]).readline())
assert d["phase"] == "planned" and d["waves"] >= 2 and "waves" in d["detail"], d
print("dry run: %d slots move in %d waves (%s)" % (d["moves"], d["waves"], d["detail"]))
PY
epoch0=$("$F" status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['epoch'])")

prompt() { python3 -c "
import random, sys
r = random.Random(int(sys.argv[1]))
print(' '.join(str(r.randrange(512)) for _ in range(10)))" "$1"; }
for i in $(seq 0 15); do prompt "$i" > "$tmp/p$i"; done
for i in $(seq 0 15); do
  "$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 300 > "$tmp/ref$i" || fail "reference $i"
done
cl=()
for i in $(seq 0 15); do
  "$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 300 > "$tmp/out$i" 2> "$tmp/err$i" &
  cl+=($!)
done
sleep 0.3
"$F" rebalance --profile "$tmp/hot2.json" --wait --json > "$tmp/rb.json" 2> "$tmp/rb.err" ||
  { cat "$tmp/rb.err" >&2; fail "rebalance in waves"; }
bad=0
for i in $(seq 0 15); do wait "${cl[$i]}" || { bad=$((bad + 1)); cat "$tmp/err$i" >&2; }; done
[ "$bad" = 0 ] || fail "$bad of 16 requests failed during the rebalance"
for i in $(seq 0 15); do cmp -s "$tmp/ref$i" "$tmp/out$i" || fail "request $i differs across the waves"; done
echo "16 concurrent requests across the waves: 0 failed, every output equals the request alone"
python3 - "$tmp/rb.json" "$epoch0" <<'PY' || fail "rebalance outcome"
import json, sys
ms = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
done, e0 = ms[-1], int(sys.argv[2])
swapped = [m for m in ms if m["phase"] == "swapped"]
assert done["phase"] == "done" and done["waves"] >= 2, done
assert done["epoch"] == e0 + done["waves"], (e0, done["epoch"], done["waves"])
assert [m["wave"] for m in swapped] == list(range(1, done["waves"] + 1)), swapped
assert [m["epoch"] for m in swapped] == list(range(e0 + 1, e0 + 1 + done["waves"])), swapped
print("rebalance: %d slots moved in %d waves (epochs %d..%d) in %.2f s, balancedness "
      "%.3f -> %.3f" % (done["moves"], done["waves"], e0 + 1, done["epoch"], done["duration_s"],
                        done["balancedness_before"], done["balancedness_after"]))
PY
for w in w0 w1 w2; do
  python3 - "$tmp/$w.err" "${room[$w]}" "$w" <<'PY' || fail "$w loaded more than its room at once"
import re, sys
n = [int(x) for x in re.findall(r"staged: (\d+) new slots of", open(sys.argv[1]).read())]
assert n and max(n) <= int(sys.argv[2]), n
print("%s: new slots per epoch %s, room %s" % (sys.argv[3], n, sys.argv[2]))
PY
done
"$F" status --json > "$tmp/st.json"
python3 -c "
import json, sys
s = json.load(open(sys.argv[1]))
assert all(w['state'] == 'serving' for w in s['workers']), s['workers']
print('after the waves: epoch %d, every worker serving' % s['epoch'])" "$tmp/st.json" || fail "status after"
