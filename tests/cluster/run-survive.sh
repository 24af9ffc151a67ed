#!/usr/bin/env bash
# A worker killed mid-stream costs a delay, not a request: a coordinator and three workers
# where every expert lives on two of them ([placement] min_distinct = 2; the tiny golden
# model, f32 wire so outputs must be exact), 32 concurrent greedy streaming clients, and
# `kill -9` of one worker while they stream: the step it broke runs again on the others,
# 0 requests fail, every output equals the same request on the idle cluster, and the
# longest pause between two tokens is printed (target < 1 s). The coordinator serves on
# (Status: the worker dead); the worker restarted rejoins and gets slots back by itself,
# after which a kill of another worker is survived again; the same holds for a kill while
# a rebalance loads; a worker stopped with SIGSTOP (hung) is fenced at its step deadline
# and survived the same way, then leaves once it runs again and rejoins when restarted;
# and without replicas, the experts a killed worker held alone move to the survivor's free
# slots while the requests wait.
# Usage: run-survive.sh COORDINATOR_BIN WORKER_BIN FERRYCTL [shm|tcp]
set -uo pipefail
co_bin=$1 wk_bin=$2 F=$3 tp=${4:-shm}
golden=$FERRY_GOLDEN/tiny-a
stop_signal=KILL fail_tail=30
. "$(dirname "$0")/lib-daemons.sh"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/admin"
chmod 600 "$tmp/admin"
export FERRY_ADMIN_TOKEN_FILE=$tmp/admin

here=$(cd "$(dirname "$0")" && pwd)
# health STATUS SERVING CONFIGURED WHAT: Health through grpcio says so
health() {
  /usr/bin/python3 "$here/health.py" --proto "$FERRY_SRC/proto/ferry/v1" --addr "$FERRY_CLUSTER" \
    --status "$1" --serving "$2" --configured "$3" > "$tmp/h.out" 2>&1
  local rc=$?
  if [ $rc = 77 ]; then echo "note: $4: Health not checked: $(tail -1 "$tmp/h.out")"; return 0; fi
  [ $rc = 0 ] || fail "$4: expected $1 with $2 of $3 workers serving: $(cat "$tmp/h.out")"
  echo "$4: $(tail -1 "$tmp/h.out")"
}
declare -A wpid
start_worker() { # NAME SLOTS
  "$wk_bin" -c "$tmp/empty.conf" -C "127.0.0.1:$port" -n "$1" -m "$golden" --slots "$2" \
    -t "$tp" --secret-file "$tmp/secret" -s worker.threads=1 2>> "$tmp/$1.err" &
  wpid[$1]=$!
  pids+=($!)
}
# start_cluster: coordinator + w0, w1 (16 slots: every expert) + w2 (8 slots)
start_cluster() {
  "$co_bin" -c "$tmp/empty.conf" -m "$golden" -l 127.0.0.1:0 -w 3 --secret-file "$tmp/secret" \
    -s transport.wire_dtype=f32 -s transport.backend="$tp" -s engine.max_seqs=40 \
    -s engine.threads=1 -s placement.min_distinct=2 -s placement.rebalance=off \
    -s server.admin_token_file="$tmp/admin" "$@" > "$tmp/co.out" 2> "$tmp/co.err" &
  co=$!
  pids+=("$co")
  wait_port || fail "coordinator did not start"
  start_worker w0 16
  start_worker w1 16
  start_worker w2 8
  export FERRY_CLUSTER=127.0.0.1:$port
  wait_serving || fail "the cluster never served"
}

prompt() { python3 -c "
import random, sys
r = random.Random(int(sys.argv[1]))
print(' '.join(str(r.randrange(512)) for _ in range(10)))" "$1"; }
for i in $(seq 0 31); do prompt "$i" > "$tmp/p$i"; done

start_cluster
for i in $(seq 0 31); do
  "$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 200 > "$tmp/ref$i" || fail "reference $i"
done

# clients TAG: 32 concurrent streams, their pids in cl
clients() {
  cl=()
  for i in $(seq 0 31); do
    "$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 200 --stats \
      > "$tmp/$1$i" 2> "$tmp/$1err$i" &
    cl+=($!)
  done
}
# finish TAG WHAT: every client succeeded with its reference; prints the longest pause
finish() {
  local bad=0
  for i in $(seq 0 31); do wait "${cl[$i]}" || { bad=$((bad + 1)); cat "$tmp/$1err$i" >&2; }; done
  [ "$bad" = 0 ] || fail "$2: $bad of 32 requests failed"
  for i in $(seq 0 31); do
    cmp -s "$tmp/ref$i" "$tmp/$1$i" || fail "$2: request $i differs from the request alone"
  done
  pause=$(cat "$tmp/$1err"* | sed -n 's/.*longest pause between tokens \([0-9.]*\) s$/\1/p' | sort -g | tail -1)
  echo "$2: 32 concurrent requests, 0 failed, every output equals the request alone; longest pause between two tokens ${pause} s"
  python3 -c "import sys; sys.exit(not float(sys.argv[1]) < 2.0)" "${pause:-99}" ||
    fail "$2: a pause of ${pause} s between two tokens (target < 1 s)"
}

# 1. kill -9 of w2 while 32 clients stream.
clients a
sleep 0.7
kill -KILL "${wpid[w2]}"
finish a "kill -9 of w2 mid-stream ($tp)"
grep -q "a step failed (.*w2.*): it runs again on the other workers" "$tmp/co.err" ||
  echo "note: w2 was noticed between steps, not inside one"
grep -q "worker [0-9] 'w2' is gone: its 24 slots are out of service" "$tmp/co.err" ||
  fail "the coordinator did not take w2's slots out of service"
"$F" status --json > "$tmp/st.json" || fail "status after the kill"
python3 - "$tmp/st.json" <<'PY' || fail "status after the kill"
import json, sys
s = json.load(open(sys.argv[1]))
w = {x["name"]: x for x in s["workers"]}
assert s["status"] == "serving", s
assert w["w2"]["state"] == "dead" and w["w0"]["state"] == w["w1"]["state"] == "serving", w
print("after the kill: the cluster serves, w2 dead (%s)" % w["w2"]["detail"])
PY
kill -0 "$co" 2>/dev/null || fail "the coordinator exited"
health SERVING 2 3 "Health after the kill"

# 1b. w2 comes back (same name and slots): it rejoins, gets slots back by itself, and a
#     kill -9 of another worker (w1) under 32 clients is survived again.
start_worker w2 8
for _ in $(seq 300); do
  "$F" status --json > "$tmp/st.json" 2>/dev/null &&
    python3 -c "
import json, sys
w = {x['name']: x for x in json.load(open(sys.argv[1]))['workers']}
sys.exit(not (w['w2']['state'] == 'serving' and w['w2']['slots_in_service'] > 0))" "$tmp/st.json" && break
  sleep 0.1
done
python3 - "$tmp/st.json" <<'PY' || fail "w2 did not get slots back after it rejoined"
import json, sys
s = json.load(open(sys.argv[1]))
w = {x["name"]: x for x in s["workers"]}
assert all(w[n]["state"] == "serving" for n in ("w0", "w1", "w2")), w
assert w["w2"]["slots_in_service"] > 0, w["w2"]
print("w2 rejoined: serving %d slots again, epoch %d (%s)" % (w["w2"]["slots_in_service"],
      s["epoch"], s["last_rebalance"]["why"]))
PY
grep -q "worker [0-9] 'w2' is back: joining again" "$tmp/co.err" || fail "the coordinator did not log the rejoin"
health SERVING 3 3 "Health after w2 rejoined"
clients c
sleep 0.7
kill -KILL "${wpid[w1]}"
finish c "kill -9 of w1 after w2 rejoined ($tp)"
kill -0 "$co" 2>/dev/null || fail "the coordinator exited"
kill -TERM "$co"; wait "$co" 2>/dev/null
for w in w0 w2; do wait "${wpid[$w]}" 2>/dev/null; done

# 2. kill -9 of w2 while 32 clients stream and a rebalance loads (heartbeats every 3 s:
#    the workers are still to stage it when w2 dies): the rebalance is abandoned naming
#    w2, no request fails.
start_cluster -s cluster.heartbeat_interval=3s -s placement.rebalance_load_timeout=20s
python3 - "$tmp/hot.json" <<'PY'
import json, sys
json.dump({"layers": [[1000.0 / (1 + ((e * 7 + l * 5) % 16)) ** 1.5 for e in range(16)]
                      for l in range(3)]}, open(sys.argv[1], "w"))
PY
clients b
sleep 0.5
"$F" rebalance --profile "$tmp/hot.json" --wait > /dev/null 2> "$tmp/rb.err" &
rb=$!
sleep 0.5
kill -KILL "${wpid[w2]}"
wait "$rb"; rc=$?
finish b "kill -9 of w2 during a rebalance ($tp)"
[ "$rc" = 1 ] && grep -q "rebalance abandoned, the old placement serves on: worker [0-9] 'w2'" "$tmp/rb.err" ||
  { cat "$tmp/rb.err" >&2; fail "the rebalance did not say it was abandoned for w2 (exit $rc)"; }
echo "the rebalance: $(head -1 "$tmp/rb.err")"
kill -0 "$co" 2>/dev/null || fail "the coordinator exited"
kill -TERM "$co"; wait "$co" 2>/dev/null
for w in w0 w1; do wait "${wpid[$w]}" 2>/dev/null; done

# 3. kill -STOP of w2 while 32 clients stream (hung, not dead): it misses its step deadline
#    (10x its recent answers, at least [transport] suspect_after), is fenced and the step
#    runs again on the others: 0 failed, exact. After SIGCONT it hears it was fenced and
#    leaves (exit 1, saying so); started again it rejoins and gets slots back.
start_cluster
clients d
sleep 0.7
kill -STOP "${wpid[w2]}"
finish d "kill -STOP of w2 mid-stream ($tp)"
grep -q "worker [0-9] 'w2' is fenced (it stopped answering in time): its 24 slots are out of service" "$tmp/co.err" ||
  fail "the coordinator did not fence the stopped w2"
echo "$(grep -m1 "no combine frame.*fenced\|missed heartbeats.*fenced" "$tmp/co.err")"
kill -CONT "${wpid[w2]}"
for _ in $(seq 100); do kill -0 "${wpid[w2]}" 2>/dev/null || break; sleep 0.1; done
wait "${wpid[w2]}"; rc=$?
[ "$rc" = 1 ] && grep -q "the coordinator fenced this worker" "$tmp/w2.err" ||
  { tail -5 "$tmp/w2.err" >&2; fail "w2 after SIGCONT: exit $rc, expected 1 saying it was fenced"; }
echo "w2 after SIGCONT: $(grep -m1 "fenced this worker" "$tmp/w2.err" | cut -c1-100)..."
start_worker w2 8
for _ in $(seq 300); do
  "$F" status --json > "$tmp/st.json" 2>/dev/null &&
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
print('w2 rejoined after it was fenced: serving %d slots' % w['w2']['slots_in_service'])" "$tmp/st.json" ||
  fail "w2 did not get slots back after it was fenced"
kill -0 "$co" 2>/dev/null || fail "the coordinator exited"
kill -TERM "$co"; wait "$co" 2>/dev/null
for w in w0 w1 w2; do wait "${wpid[$w]}" 2>/dev/null; done

# 4. No replicas (SetRedundancy 0: every expert in exactly one slot), two workers, w0 with
#    room for every expert: kill -9 of w1 under 32 clients moves the experts only w1 held to
#    w0's free slots while the requests wait: 0 failed, exact, pause printed.
"$co_bin" -c "$tmp/empty.conf" -m "$golden" -l 127.0.0.1:0 -w 2 --secret-file "$tmp/secret" \
  -s transport.wire_dtype=f32 -s transport.backend="$tp" -s engine.max_seqs=40 \
  -s engine.threads=1 -s placement.rebalance=off -s cluster.heartbeat_interval=300ms \
  -s server.admin_token_file="$tmp/admin" > "$tmp/co.out" 2> "$tmp/co.err" &
co=$!
pids+=("$co")
wait_port || fail "coordinator did not start"
export FERRY_CLUSTER=127.0.0.1:$port
start_worker w0 16
start_worker w1 8
wait_serving || fail "the cluster never served"
# (nothing measured yet: SetRedundancy places for a uniform load)
"$F" rebalance --redundancy 0 --wait > /dev/null || fail "rebalance --redundancy 0"
"$F" placement show --json > "$tmp/pl.json"
only_w1=$(python3 - "$tmp/pl.json" "$tmp/st.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
i = [x["name"] for x in json.load(open(sys.argv[2]))["workers"]].index("w1")
base = sum(p["slots"][:i])
n = 0
for l in p["layers"]:
    used = [e for e in l if e >= 0]
    assert sorted(used) == list(range(p["n_experts"])), l   # every expert exactly once
    n += sum(1 for e in l[base:base + p["slots"][i]] if e >= 0)
print(n)
PY
) || fail "the placement with redundancy 0"
for i in $(seq 0 31); do
  "$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 200 > "$tmp/ref$i" || fail "reference $i"
done
# A worker silent for three heartbeats shows as suspect (the only copy of its experts is
# on it, so it is not fenced), and serving again once it speaks.
kill -STOP "${wpid[w0]}"
sleep 1.3
"$F" status --json > "$tmp/st.json"
kill -CONT "${wpid[w0]}"
python3 -c "
import json, sys
w = {x['name']: x for x in json.load(open(sys.argv[1]))['workers']}
assert w['w0']['state'] == 'suspect', w['w0']
print('w0 stopped for 1.3 s (heartbeats every 0.3 s): %s (%s)' % (w['w0']['state'], w['w0']['detail']))" "$tmp/st.json" ||
  fail "a silent worker is not shown as suspect"
for _ in $(seq 50); do
  "$F" status --json > "$tmp/st.json" && python3 -c "
import json, sys
w = {x['name']: x for x in json.load(open(sys.argv[1]))['workers']}
sys.exit(w['w0']['state'] != 'serving')" "$tmp/st.json" && break
  sleep 0.1
done
clients e
sleep 0.7
kill -KILL "${wpid[w1]}"
finish e "kill -9 of w1 holding the only copy of $only_w1 experts ($tp)"
grep -q "healed in [0-9.]* s" "$tmp/co.err" || fail "the coordinator did not move the lost experts"
echo "$(grep -m1 "healed in" "$tmp/co.err")"
kill -0 "$co" 2>/dev/null || fail "the coordinator exited"

# 5. A new worker (a name the cluster has not seen) joins while it serves: the placement
#    grows by one worker and the next automatic step gives it slots; tokens stay the same.
start_worker w3 8
for _ in $(seq 300); do
  "$F" status --json > "$tmp/st.json" 2>/dev/null &&
    python3 -c "
import json, sys
w = {x['name']: x for x in json.load(open(sys.argv[1]))['workers']}
sys.exit(not ('w3' in w and w['w3']['state'] == 'serving' and w['w3']['slots_in_service'] > 0))" "$tmp/st.json" && break
  sleep 0.1
done
python3 -c "
import json, sys
s = json.load(open(sys.argv[1]))
w = {x['name']: x for x in s['workers']}
assert 'w3' in w and w['w3']['state'] == 'serving' and w['w3']['slots_in_service'] > 0, s['workers']
assert s['last_rebalance']['why'] == 'worker \'w3\' joined', s['last_rebalance']
print('w3 joined the serving cluster: %d workers, w3 serves %d slots (%s)' % (len(w),
      w['w3']['slots_in_service'], s['last_rebalance']['why']))" "$tmp/st.json" ||
  fail "a new worker did not get slots"
grep -q "worker [0-9] 'w3' joins the serving cluster" "$tmp/co.err" || fail "the coordinator did not log the new worker"
health SERVING 2 2 "Health with w3 added and w1 dead"
for i in 0 1 2 3; do
  out=$("$F" run --cluster "$FERRY_CLUSTER" --tokens "$(cat "$tmp/p$i")" --max-new 200) || fail "request $i with w3"
  [ "$out" = "$(cat "$tmp/ref$i")" ] || fail "request $i differs with w3"
done
echo "with w3: the same tokens"
kill -0 "$co" 2>/dev/null || fail "the coordinator exited"
