#!/usr/bin/env bash
# Heartbeats keep flowing while the engine is busy: Admin.BenchEngine runs steps back to
# back under the engine lock for a few seconds, on a local cluster of the tiny golden model
# with heartbeats every 50 ms. A worker's ReportStats used to wait for that lock (a mutex
# is not fair to a waiter against steps back to back) and hold its next heartbeat: workers
# looked silent for 2-4 s, long enough for the coordinator to fence a live worker whose
# experts have replicas. Now no worker may look silent for 1 s (20 intervals).
# The same for the coordinator's own queries that take the engine lock: GetPlacement
# (`ferryctl load`, polled every 0.2 s meanwhile) took up to 0.7-1.4 s behind the steps;
# they now mark their wait and the next step lets them in (50-60 ms a call, the process
# start included). None may take 500 ms.
# Usage: run-heartbeats.sh FERRYCTL
set -euo pipefail
ferryctl=$1
. "$(dirname "$0")/lib-up.sh"

up "$ferryctl" --model "$FERRY_GOLDEN/tiny-a" --workers 2 --replicas 2 \
  --set cluster.heartbeat_interval=50ms

# GetPlacement every 0.2 s, each call's milliseconds in $tmp/load_ms
(
  while [ ! -e "$tmp/stop" ]; do
    t0=$(date +%s%N)
    "$ferryctl" load --cluster "$addr" > /dev/null
    echo $(( ($(date +%s%N) - t0) / 1000000 )) >> "$tmp/load_ms"
    sleep 0.2
  done
) &
poller=$!
# 16 streams of 400 tokens, then the engine baseline: 16 sequences, 400 steps back to back
"$ferryctl" bench-serve --cluster "$addr" -C 16 -n 16 --prompt-len fixed:8 \
  --output-len fixed:400 --json > "$tmp/bs.json"
touch "$tmp/stop"
wait "$poller"
"$ferryctl" status --cluster "$addr" --json > "$tmp/status.json"
cp "$tmp/up.err" "$tmp/during.err" # before the shutdown, whose silence is expected
python3 - "$tmp" <<'PY'
import json, os, re, sys
tmp = sys.argv[1]
bs = json.load(open(os.path.join(tmp, "bs.json")))
lv = bs["levels"][0]
assert lv["ok"] == 16 and lv["errors"] == 0, lv
assert lv["engine_tokens_per_s"] > 0, "Admin.BenchEngine did not run: %s" % lv
log = open(os.path.join(tmp, "during.err")).read()
silences = [int(m) for m in re.findall(r"missed heartbeats for (\d+) ms", log)]
assert not [s for s in silences if s >= 1000], \
    "a worker looked silent for %d ms while the engine was busy:\n%s" % (max(silences), log)
assert "fenced" not in log, log
st = json.load(open(os.path.join(tmp, "status.json")))
states = {w["name"]: w["state"] for w in st["workers"]}
assert states == {"w0": "serving", "w1": "serving"}, states
print("heartbeats while Admin.BenchEngine ran: longest silence reported %s ms (1000 allowed)"
      % (max(silences) if silences else "none"))
ms = sorted(int(l) for l in open(os.path.join(tmp, "load_ms")))
assert len(ms) >= 10, "only %d GetPlacement calls while the engine was busy" % len(ms)
assert ms[-1] < 500, "GetPlacement took %d ms while the engine was busy (all: %s)" % (ms[-1], ms)
print("GetPlacement while the engine was busy: %d calls, median %d ms, longest %d ms (500 allowed)"
      % (len(ms), ms[len(ms) // 2], ms[-1]))
PY
