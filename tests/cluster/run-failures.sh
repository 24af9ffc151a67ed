#!/usr/bin/env bash
# A cluster that cannot form fails fast with messages naming the problem, on both sides:
#   - a worker without the cluster secret is refused (and the coordinator logs it),
#   - a worker whose checkpoint lacks an expert tensor names the tensor and leaves,
#   - too few slots for the routed experts (impossible placement) is named,
#   - a worker checkpoint of another shape, one of the same shape with other weights (its
#     expert fingerprint differs: the expert is named), and a data-plane ring too small
#     for the coordinator's micro-batches, are refused at join.
# Then: `ferryctl load` needs the admin token and names the workers; a worker killed while
# the cluster serves that held the only copy of experts the other has no room for fails the
# request with UNAVAILABLE naming the lost experts and the worker (never a hang); the
# coordinator stays up, Status says so, and the worker started again brings them back. A worker stopped with
# SIGTERM hands its slots back: with replicas elsewhere the cluster goes on without it
# (same tokens); without, the coordinator refuses naming the expert. A worker killed while
# the cluster is idle is noticed between steps: with replicas elsewhere it serves on. A
# rebalance that fails midway (a worker stopped past the load timeout, or killed while it
# loads) is abandoned naming the worker; the old placement serves on.
#
# Usage: run-failures.sh COORDINATOR_BIN WORKER_BIN FERRYCTL
set -uo pipefail
co_bin=$1 wk_bin=$2 ferryctl=$3
golden=$FERRY_GOLDEN/tiny-a
other=$FERRY_GOLDEN/tiny-b
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail=0
: > "$tmp/empty.conf"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/secret"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/wrong"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/admin"
chmod 600 "$tmp/secret" "$tmp/wrong" "$tmp/admin"

# Checkpoint copy without one expert tensor.
mkdir "$tmp/cut"
cp "$golden/config.json" "$tmp/cut/"
python3 - "$golden/model.safetensors" "$tmp/cut/model.safetensors" <<'PY'
import json, struct, sys
src, dst = sys.argv[1:]
b = open(src, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
hdr = json.loads(b[8:8 + n])
del hdr["model.layers.2.mlp.experts.5.up_proj.weight"]
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
open(dst, "wb").write(struct.pack("<Q", len(h)) + h + b[8 + n:])
PY

# Starts a coordinator (extra args after the worker count); sets $port and $co.
coordinator() {
  local workers=$1; shift
  rm -f "$tmp/co.out" # the previous coordinator's port must not be read for this one's
  "$co_bin" -c "$tmp/empty.conf" -m "$golden" -l 127.0.0.1:0 -w "$workers" \
    --secret-file "$tmp/secret" -s cluster.join_timeout=20s "$@" > "$tmp/co.out" 2> "$tmp/co.err" &
  co=$!
  pids+=("$co")
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's/.*listening on port \([0-9]*\)$/\1/p' "$tmp/co.out" 2>/dev/null || true)
    [ -n "$port" ] && return 0
    sleep 0.1
  done
  echo "coordinator did not start:" >&2; cat "$tmp/co.err" >&2; exit 1
}

worker() { # name, extra args...
  local name=$1; shift
  "$wk_bin" -c "$tmp/empty.conf" -C "127.0.0.1:$port" -n "$name" "$@" 2> "$tmp/$name.err" &
  pids+=($!)
  last=$!
}

# check WHAT PID WANT_RC FILE PATTERN: the process exits with WANT_RC and FILE has PATTERN.
check() {
  local what=$1 pid=$2 want=$3 file=$4 pat=$5 rc
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "FAIL: $what: still running after 30 s" >&2; kill -KILL "$pid"; fail=1; return
  fi
  wait "$pid"; rc=$?
  if [ "$rc" -ne "$want" ] || ! grep -q -- "$pat" "$file"; then
    echo "FAIL: $what: exit $rc (want $want), $file lacks '$pat':" >&2
    cat "$file" >&2
    fail=1
  else
    echo "ok: $what: exit $rc: $(grep -m1 -- "$pat" "$file")"
  fi
}

# 1. Wrong secret: refused, and the coordinator says so.
coordinator 1
worker w0 -m "$golden" --secret-file "$tmp/wrong"
check "worker with a wrong secret" "$last" 1 "$tmp/w0.err" "UNAUTHENTICATED: join refused: bad HMAC"
grep -q "refused join of worker 'w0' from ipv4:127.0.0.1:[0-9]*: bad HMAC" "$tmp/co.err" ||
  { echo "FAIL: the coordinator did not log the refused join" >&2; cat "$tmp/co.err" >&2; fail=1; }
# Without any secret: 'insecure' is gone, the worker refuses to start.
worker w1 -m "$golden" --insecure
check "worker without a secret" "$last" 2 "$tmp/w1.err" "insecure: no longer supported"
# Checkpoint copy of the same shape with other weights in one expert (its last value).
mkdir "$tmp/other-weights"
cp "$golden/config.json" "$tmp/other-weights/"
python3 - "$golden/model.safetensors" "$tmp/other-weights/model.safetensors" <<'PY'
import json, struct, sys
src, dst = sys.argv[1:]
b = bytearray(open(src, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
hdr = json.loads(b[8:8 + n])
end = hdr["model.layers.3.mlp.experts.11.down_proj.weight"]["data_offsets"][1]
b[8 + n + end - 1] ^= 0x40
open(dst, "wb").write(bytes(b))
PY

# 2. Another model's checkpoint, and a ring too small: refused at join.
worker w2 -m "$other" --secret-file "$tmp/secret"
check "worker with another model" "$last" 1 "$tmp/w2.err" "FAILED_PRECONDITION: worker checkpoint has hidden_size 96"
worker w5 -m "$tmp/other-weights" --secret-file "$tmp/secret"
check "worker with other weights of the same shape" "$last" 1 "$tmp/w5.err" "FAILED_PRECONDITION: worker checkpoint differs from the coordinator's: tensors of model.layers.3.mlp.experts.11"
worker w3 -m "$golden" --secret-file "$tmp/secret" -s transport.ring_tokens=4
check "worker with a small ring" "$last" 1 "$tmp/w3.err" "FAILED_PRECONDITION: worker ring of 4 slots x 4 tokens is too small\|ring of . slots x 4 tokens is too small"
kill -TERM "$co"; wait "$co"

# 3. A checkpoint without an expert tensor: the worker names it at start, the coordinator
#    gives up.
coordinator 1
worker w0 -m "$tmp/cut" --secret-file "$tmp/secret"
check "worker missing a tensor" "$last" 1 "$tmp/w0.err" "model.layers.2.mlp.experts.5.up_proj.weight"
# The worker checks every expert tensor at start (its fingerprint reads them all), so it
# never joins; the coordinator gives up at its join timeout.
check "coordinator of that worker" "$co" 1 "$tmp/co.err" "only 0 of 1 workers joined"

# 4. Fewer slots than experts.
coordinator 2
worker w0 -m "$golden" --secret-file "$tmp/secret" --slots 4
w0=$last
worker w1 -m "$golden" --secret-file "$tmp/secret" --slots 4
check "coordinator with too few slots" "$co" 1 "$tmp/co.err" "impossible placement: the 2 workers offer 8 slots per MoE layer, the model has 16 routed experts"
check "worker of an impossible placement" "$w0" 1 "$tmp/w0.err" "impossible placement"

# 5. A worker killed while serving, holding the only copy of experts the other has no room
#    for: the request fails (UNAVAILABLE naming the lost experts, no hang), the coordinator
#    stays up and reports it, and the worker restarted brings them back. `ferryctl load` first: only with the admin token, and
#    naming the workers (names unlike "w<index>", which join order decides).
coordinator 2 -s transport.peer_timeout=2s -s server.admin_token_file="$tmp/admin"
worker node-a -m "$golden" --secret-file "$tmp/secret" --slots 8
wa=$last
worker node-b -m "$golden" --secret-file "$tmp/secret" --slots 8
for _ in $(seq 100); do
  "$ferryctl" run --cluster "127.0.0.1:$port" --tokens 1 --max-new 1 > /dev/null 2>&1 && break
  sleep 0.2
done
# The admin API needs the bearer token.
if "$ferryctl" load --cluster "127.0.0.1:$port" > /dev/null 2> "$tmp/load.err" ||
   ! grep -q "UNAUTHENTICATED" "$tmp/load.err"; then
  echo "FAIL: ferryctl load without the admin token was not refused:" >&2; cat "$tmp/load.err" >&2; fail=1
else
  echo "ok: ferryctl load without the admin token: $(head -1 "$tmp/load.err")"
fi
if "$ferryctl" load --cluster "127.0.0.1:$port" --token-file "$tmp/wrong" > /dev/null 2> "$tmp/load.err" ||
   ! grep -q "UNAUTHENTICATED" "$tmp/load.err"; then
  echo "FAIL: ferryctl load with a wrong token was not refused" >&2; fail=1
fi
if ! FERRY_ADMIN_TOKEN_FILE="$tmp/admin" "$ferryctl" load --cluster "127.0.0.1:$port" > "$tmp/load.out"; then
  echo "FAIL: ferryctl load with the admin token failed" >&2; fail=1
else
  echo "ok: ferryctl load with the admin token: $(grep -m1 balancedness "$tmp/load.out")"
  # rows "LAYER NAME INDEX SLOTS ...": each worker by name, on every layer
  for n in node-a node-b; do
    rows=$(grep -cE "^[0-9]+ +$n +[01] +[0-9]+ " "$tmp/load.out")
    layers=$(grep -c balancedness "$tmp/load.out")
    if [ "$rows" -ne "$layers" ] || [ "$layers" -eq 0 ]; then
      echo "FAIL: ferryctl load shows $n on $rows of $layers layers:" >&2; cat "$tmp/load.out" >&2; fail=1
    fi
  done
fi
# --json: the "worker" index as before, and "name"; each index with one name throughout
if ! FERRY_ADMIN_TOKEN_FILE="$tmp/admin" "$ferryctl" load --cluster "127.0.0.1:$port" --json > "$tmp/load.json" ||
   ! python3 - "$tmp/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
pairs = {(w["worker"], w["name"]) for l in r["layers"] for w in l["workers"]}
assert r["layers"] and all(len(l["workers"]) == 2 for l in r["layers"]), r
assert sorted(n for _, n in pairs) == ["node-a", "node-b"], pairs
assert sorted(i for i, _ in pairs) == [0, 1], pairs
PY
then
  echo "FAIL: ferryctl load --json lacks the worker names:" >&2; cat "$tmp/load.json" >&2; fail=1
else
  echo "ok: ferryctl load --json names the workers"
fi
grep -q "refused: missing or wrong admin bearer token" "$tmp/co.err" ||
  { echo "FAIL: the coordinator did not log the refused admin call" >&2; fail=1; }
"$ferryctl" run --cluster "127.0.0.1:$port" --tokens "1 2 3" --max-new 4 > "$tmp/before.out" 2>&1 ||
  { echo "FAIL: request before node-a died" >&2; fail=1; }
kill -KILL "$wa"; wait "$wa" 2>/dev/null
timeout 60 "$ferryctl" run --cluster "127.0.0.1:$port" --tokens "1 2 3" --max-new 4 > /dev/null 2> "$tmp/run.err"
rc=$?
if [ $rc -ne 1 ] || ! grep -q "UNAVAILABLE: .*experts lost .*'node-a'" "$tmp/run.err"; then
  echo "FAIL: request after a worker died: exit $rc:" >&2; cat "$tmp/run.err" >&2; fail=1
else
  echo "ok: request after a worker died: $(head -1 "$tmp/run.err")"
fi
# The coordinator stays up and says what is lost; node-a started again brings them back.
kill -0 "$co" 2>/dev/null || { echo "FAIL: the coordinator exited after a worker died" >&2; fail=1; }
FERRY_ADMIN_TOKEN_FILE="$tmp/admin" "$ferryctl" status --cluster "127.0.0.1:$port" --json > "$tmp/st.json" &&
  python3 -c "
import json, sys
s = json.load(open(sys.argv[1]))
assert s['status'] == 'serving' and 'experts lost' in s['detail'] and 'node-a' in s['detail'], s
print('ok: status after node-a died: ' + s['detail'][:90] + '...')" "$tmp/st.json" ||
  { echo "FAIL: status does not report the lost experts" >&2; fail=1; }
/usr/bin/python3 "$FERRY_SRC/tests/cluster/health.py" --proto "$FERRY_SRC/proto/ferry/v1" \
  --addr "127.0.0.1:$port" --status NOT_SERVING --serving 1 --configured 2 > "$tmp/h.out" 2>&1
case $? in
  0) echo "ok: Health with experts lost: $(tail -1 "$tmp/h.out")" ;;
  77) echo "note: Health not checked: $(tail -1 "$tmp/h.out")" ;;
  *) echo "FAIL: Health with experts lost:" >&2; cat "$tmp/h.out" >&2; fail=1 ;;
esac
worker node-a -m "$golden" --secret-file "$tmp/secret" --slots 8
wa=$last
for _ in $(seq 100); do
  "$ferryctl" run --cluster "127.0.0.1:$port" --tokens "1 2 3" --max-new 4 > "$tmp/after.out" 2>/dev/null && break
  sleep 0.2
done
if cmp -s "$tmp/before.out" "$tmp/after.out"; then
  echo "ok: node-a rejoined with its slots: same tokens $(cat "$tmp/after.out")"
else
  echo "FAIL: after node-a rejoined:" >&2; cat "$tmp/before.out" "$tmp/after.out" "$tmp/co.err" >&2; fail=1
fi
kill -TERM "$co"
check "coordinator after a worker died and came back" "$co" 0 "$tmp/co.err" "stopping: draining"

# waits until the cluster on $port answers a request
serving() {
  for _ in $(seq 150); do
    "$ferryctl" run --cluster "127.0.0.1:$port" --tokens 1 --max-new 1 > /dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "FAIL: the cluster on port $port never served" >&2; cat "$tmp/co.err" >&2; fail=1
}

# A coordinator and three workers where every expert lives on two of them (w2 is the one
# that goes); runs TOKENS once into before.out.
replicated_cluster() {
  coordinator 3 -s placement.min_distinct=2
  worker w0 -m "$golden" --secret-file "$tmp/secret" --slots 16
  worker w1 -m "$golden" --secret-file "$tmp/secret" --slots 16
  worker w2 -m "$golden" --secret-file "$tmp/secret" --slots 8
  w2=$last
  serving
  "$ferryctl" run --cluster "127.0.0.1:$port" --tokens "$1" --max-new 12 > "$tmp/before.out" 2>&1 ||
    { echo "FAIL: request before w2 went:" >&2; cat "$tmp/before.out" >&2; fail=1; }
}

# same_tokens WHAT TOKENS N: N more requests give what before.out holds.
same_tokens() {
  for i in $(seq "$3"); do
    if ! "$ferryctl" run --cluster "127.0.0.1:$port" --tokens "$2" --max-new 12 > "$tmp/after.out" 2>&1 ||
       ! cmp -s "$tmp/before.out" "$tmp/after.out"; then
      echo "FAIL: $1: request $i differs or failed:" >&2; cat "$tmp/before.out" "$tmp/after.out" >&2
      fail=1
      return
    fi
  done
  echo "ok: $1: same tokens: $(cat "$tmp/after.out")"
}

# 6. A worker stopped (SIGTERM) whose experts all have replicas elsewhere hands its slots
#    back (UnloadExperts, signed): the cluster goes on without it, with the same tokens.
replicated_cluster "5 6 7 8"
kill -TERM "$w2"
check "worker leaving with replicas elsewhere" "$w2" 0 "$tmp/w2.err" "the coordinator took our 24 slots out of service; leaving"
grep -q "worker [0-9] 'w2' unloaded 24 slots, 0 still in service" "$tmp/co.err" ||
  { echo "FAIL: the coordinator did not log the unload:" >&2; cat "$tmp/co.err" >&2; fail=1; }
# more than one step: the departed worker's endpoint fails meanwhile
same_tokens "the cluster without w2 (stopped)" "5 6 7 8" 3
kill -TERM "$co"
check "coordinator stopped after a worker left" "$co" 0 "$tmp/co.err" "stopping: draining"

# 7. A worker killed (SIGKILL) while the cluster is idle, whose experts all have replicas:
#    the coordinator notices between steps, takes its slots out of service and serves on.
replicated_cluster "9 10 11"
kill -KILL "$w2"; wait "$w2" 2>/dev/null
for _ in $(seq 50); do grep -q "'w2' is gone: its 24 slots are out of service" "$tmp/co.err" && break; sleep 0.1; done
if ! grep -q "worker [0-9] 'w2' is gone: its 24 slots are out of service" "$tmp/co.err"; then
  echo "FAIL: the coordinator did not take the killed worker's slots out of service:" >&2
  cat "$tmp/co.err" >&2; fail=1
else
  echo "ok: $(grep -m1 "is gone" "$tmp/co.err")"
  same_tokens "the cluster without w2 (killed)" "9 10 11" 2
fi
kill -TERM "$co"
check "coordinator stopped after a worker was killed" "$co" 0 "$tmp/co.err" "stopping: draining"

# 8. A worker stopped that holds the only replica of some expert: the coordinator refuses
#    the unload and names the expert; the worker says it leaves without handing back.
coordinator 2
worker w0 -m "$golden" --secret-file "$tmp/secret" --slots 8
w0=$last
worker w1 -m "$golden" --secret-file "$tmp/secret" --slots 8
serving
kill -TERM "$w0"
check "worker leaving with unreplicated experts" "$w0" 0 "$tmp/w0.err" "leaving without handing our 24 slots back (requests that need them will fail): .*FAILED_PRECONDITION: unload: expert [0-9]* of layer [0-9]* would have no replica left"
grep -q "worker [0-9] 'w0' asked to unload 24 slots: refused: unload: expert" "$tmp/co.err" ||
  { echo "FAIL: the coordinator did not log the refused unload:" >&2; cat "$tmp/co.err" >&2; fail=1; }
kill -TERM "$co"; wait "$co" 2>/dev/null

# 9. A rebalance that fails midway leaves the old placement serving and says why:
#    (a) a worker that does not load its slots in time (stopped, SIGSTOP) is named when the
#        rebalance is abandoned; once it runs again the cluster serves on the old epoch;
#    (b) a worker killed while it loads: the rebalance is abandoned naming it, its slots go
#        out of service (every expert has a replica elsewhere) and the cluster serves on.
python3 - "$tmp/hot.json" <<'PY'
import json, sys
# 3 MoE layers x 16 experts: a few hot experts per layer, so the plan moves slots
json.dump({"layers": [[1000.0 / (1 + ((e * 7 + l * 5) % 16)) ** 1.5 for e in range(16)]
                      for l in range(3)]}, open(sys.argv[1], "w"))
PY
rebalance_cluster() {
  coordinator 3 -s placement.min_distinct=2 -s placement.rebalance=off \
    -s placement.rebalance_load_timeout=3s -s cluster.heartbeat_interval=3s \
    -s server.admin_token_file="$tmp/admin"
  worker w0 -m "$golden" --secret-file "$tmp/secret" --slots 16
  worker w1 -m "$golden" --secret-file "$tmp/secret" --slots 16
  worker w2 -m "$golden" --secret-file "$tmp/secret" --slots 10
  w2=$last
  serving
  "$ferryctl" run --cluster "127.0.0.1:$port" --tokens "$1" --max-new 12 > "$tmp/before.out" 2>&1 ||
    { echo "FAIL: request before the rebalance:" >&2; cat "$tmp/before.out" >&2; fail=1; }
  # the plan must move something, or there is nothing to abandon
  FERRY_ADMIN_TOKEN_FILE="$tmp/admin" "$ferryctl" rebalance --cluster "127.0.0.1:$port" \
    --profile "$tmp/hot.json" --dry-run --json > "$tmp/dry.json" 2>&1 &&
    python3 -c "import json,sys; assert json.load(open(sys.argv[1]))['moves'] > 0" "$tmp/dry.json" ||
    { echo "FAIL: the dry run plans no move:" >&2; cat "$tmp/dry.json" >&2; fail=1; }
}
epoch_is() { # WANT: the epoch in force
  local got
  got=$(FERRY_ADMIN_TOKEN_FILE="$tmp/admin" "$ferryctl" status --cluster "127.0.0.1:$port" --json |
        python3 -c "import json,sys; print(json.load(sys.stdin)['epoch'])")
  [ "$got" = "$1" ] || { echo "FAIL: epoch $got in force, expected $1" >&2; fail=1; }
}

rebalance_cluster "12 13 14"
kill -STOP "$w2"
FERRY_ADMIN_TOKEN_FILE="$tmp/admin" timeout 60 "$ferryctl" rebalance --cluster "127.0.0.1:$port" \
  --profile "$tmp/hot.json" --wait > /dev/null 2> "$tmp/rb.err"
rc=$?
kill -CONT "$w2"
if [ $rc -ne 1 ] || ! grep -q "rebalance abandoned, the old placement serves on: worker [0-9] 'w2' did not load its slots within 3 s" "$tmp/rb.err"; then
  echo "FAIL: rebalance with a stopped worker: exit $rc:" >&2; cat "$tmp/rb.err" >&2; fail=1
else
  echo "ok: rebalance with a stopped worker: $(head -1 "$tmp/rb.err")"
fi
grep -q "rebalance to epoch 2 abandoned, epoch 1 serves on: worker [0-9] 'w2' did not load" "$tmp/co.err" ||
  { echo "FAIL: the coordinator did not log the abandoned rebalance" >&2; cat "$tmp/co.err" >&2; fail=1; }
epoch_is 1
same_tokens "after the abandoned rebalance (old placement)" "12 13 14" 2
# the next one goes through: w2 loads (the epoch skips the abandoned one)
if FERRY_ADMIN_TOKEN_FILE="$tmp/admin" timeout 60 "$ferryctl" rebalance --cluster "127.0.0.1:$port" \
   --profile "$tmp/hot.json" --wait > /dev/null 2> "$tmp/rb.err"; then
  epoch_is 3
  same_tokens "after the next rebalance (new placement)" "12 13 14" 2
else
  echo "FAIL: the rebalance after the abandoned one:" >&2; cat "$tmp/rb.err" >&2; fail=1
fi
kill -TERM "$co"
check "coordinator after an abandoned rebalance" "$co" 0 "$tmp/co.err" "stopping: draining"

rebalance_cluster "15 16 17"
kill -STOP "$w2"
FERRY_ADMIN_TOKEN_FILE="$tmp/admin" timeout 60 "$ferryctl" rebalance --cluster "127.0.0.1:$port" \
  --profile "$tmp/hot.json" --wait > /dev/null 2> "$tmp/rb.err" &
rb=$!
sleep 1
kill -KILL "$w2"; wait "$w2" 2>/dev/null
wait "$rb"; rc=$?
if [ $rc -ne 1 ] || ! grep -q "rebalance abandoned, the old placement serves on: worker [0-9] 'w2' left while loading" "$tmp/rb.err"; then
  echo "FAIL: rebalance with a worker killed while loading: exit $rc:" >&2; cat "$tmp/rb.err" >&2; fail=1
else
  echo "ok: rebalance with a worker killed while loading: $(head -1 "$tmp/rb.err")"
fi
for _ in $(seq 50); do grep -q "'w2' is gone: its [0-9]* slots are out of service" "$tmp/co.err" && break; sleep 0.1; done
grep -q "'w2' is gone: its [0-9]* slots are out of service" "$tmp/co.err" ||
  { echo "FAIL: the killed worker's slots did not leave service:" >&2; cat "$tmp/co.err" >&2; fail=1; }
epoch_is 1
same_tokens "after a worker died while loading (old placement, without w2)" "15 16 17" 2
kill -TERM "$co"
check "coordinator after a worker died while loading" "$co" 0 "$tmp/co.err" "stopping: draining"
exit $fail
