#!/usr/bin/env bash
# Heartbeats keep flowing while the engine is busy: Admin.BenchEngine runs steps back to
# back under the engine lock for a few seconds, on a local cluster of the tiny golden model
# with heartbeats every 50 ms. A worker's ReportStats used to wait for that lock (a mutex
# is not fair to a waiter against steps back to back) and hold its next heartbeat: workers
# looked silent for 2-4 s, long enough for the coordinator to fence a live worker whose
# experts have replicas. Now no worker may look silent for 1 s (20 intervals).
# Usage: run-heartbeats.sh FERRYCTL
set -euo pipefail
ferryctl=$1
. "$(dirname "$0")/lib-up.sh"

up "$ferryctl" --model "$FERRY_GOLDEN/tiny-a" --workers 2 --replicas 2 \
  --set cluster.heartbeat_interval=50ms

# 16 streams of 400 tokens, then the engine baseline: 16 sequences, 400 steps back to back
"$ferryctl" bench-serve --cluster "$addr" -C 16 -n 16 --prompt-len fixed:8 \
  --output-len fixed:400 --json > "$tmp/bs.json"
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
PY
