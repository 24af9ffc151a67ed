#!/usr/bin/env bash
# The operator's view of a running cluster (Admin.Status, Admin.GetPlacement through
# `ferryctl status` and `ferryctl placement show`), on a local cluster of the tiny golden
# model with replicas and an admin token:
#   - status: every worker serving, with its name, address, slots and memory; epoch,
#     requests, uptime; the JSON agrees with the table;
#   - placement show: every layer, every worker's slots, every expert in service at least
#     once, replicas that add up to the slots, the window's load per expert summing to the
#     load per worker after a request ran, and a heat map line per layer;
#   - refusals: no token (UNAUTHENTICATED), a layer out of range (INVALID_ARGUMENT naming
#     it), an unknown subcommand (exit 2).
# Usage: run-admin.sh FERRYCTL
set -euo pipefail
ferryctl=$1
. "$(dirname "$0")/lib-up.sh"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/admin"
chmod 600 "$tmp/admin"

up "$ferryctl" --model "$FERRY_GOLDEN/tiny-a" --workers 2 --replicas 2 --threads 1 \
  --set server.admin_token_file="$tmp/admin"
export FERRY_CLUSTER=$addr FERRY_ADMIN_TOKEN_FILE=$tmp/admin
"$ferryctl" run --cluster "$addr" --tokens "1 2 3 4 5 6 7 8" --max-new 16 > /dev/null

"$ferryctl" status | tee "$tmp/status.txt"
"$ferryctl" status --json > "$tmp/status.json"
"$ferryctl" placement show | tee "$tmp/placement.txt"
"$ferryctl" placement show --json > "$tmp/placement.json"
"$ferryctl" placement show --json --layer 1 > "$tmp/placement1.json"

python3 - "$tmp" "$FERRY_GOLDEN/tiny-a/config.json" <<'PY'
import json, sys, os
tmp, cfg = sys.argv[1], json.load(open(sys.argv[2]))
st = json.load(open(os.path.join(tmp, "status.json")))
pl = json.load(open(os.path.join(tmp, "placement.json")))
p1 = json.load(open(os.path.join(tmp, "placement1.json")))
txt = open(os.path.join(tmp, "status.txt")).read()
ptxt = open(os.path.join(tmp, "placement.txt")).read()
n_moe = cfg["num_hidden_layers"] - cfg.get("first_k_dense_replace", 0)
E = cfg["n_routed_experts"]
assert st["status"] == "serving", st
assert st["moe_layers"] == n_moe and st["routed_experts"] == E, st
assert st["workers_configured"] == 2 and len(st["workers"]) == 2, st
names = sorted(w["name"] for w in st["workers"])
assert names == ["w0", "w1"], names
per = -(-E // 2) + 2
for w in st["workers"]:
    assert w["state"] == "serving", w
    assert w["address"].startswith("ipv4:127.0.0.1:"), w
    assert w["slots_per_layer"] == per and w["slots_in_service"] == per * n_moe, w
    assert w["memory_used_bytes"] > 0 and w["transport"] == "shm", w
    assert w["name"] in txt and w["address"] in txt, "table lacks " + w["name"]
assert st["epoch"] >= 1 and st["uptime_s"] > 0 and st["last_rebalance"] is None, st
assert pl["n_workers"] == 2 and pl["slots"] == [per, per] and pl["n_experts"] == E, pl
assert len(pl["layers"]) == n_moe and len(pl["load"]) == n_moe, pl
for l, (se, ld) in enumerate(zip(pl["layers"], pl["load"])):
    assert len(se) == 2 * per, se
    assert set(range(E)) <= set(se), "layer %d loses an expert: %s" % (l, se)
    assert sum(ld["replicas"]) == 2 * per, ld
    assert all(ld["replicas"][e] == se.count(e) for e in range(E)), ld
    assert sum(ld["expert_tokens"]) == sum(ld["worker_tokens"]) > 0, ld
    assert 0 < ld["balancedness"] <= 1, ld
    assert "layer %d: balancedness" % l in ptxt, "no layer %d in the table" % l
assert ptxt.count("load |") == n_moe, "a heat map line per layer"
assert [x["layer"] for x in p1["load"]] == [1] and p1["layers"] == [pl["layers"][1]], p1
print("status and placement agree: %d workers, %d MoE layers, %d slots each" % (2, n_moe, per))
PY

# Refusals.
if FERRY_ADMIN_TOKEN_FILE= "$ferryctl" status > /dev/null 2> "$tmp/e1"; then echo "FAIL: status without a token" >&2; exit 1; fi
grep -q "UNAUTHENTICATED" "$tmp/e1" || { echo "FAIL: no token:" >&2; cat "$tmp/e1" >&2; exit 1; }
if "$ferryctl" placement show --layer 7 > /dev/null 2> "$tmp/e2"; then echo "FAIL: layer 7" >&2; exit 1; fi
grep -q "INVALID_ARGUMENT: layer 7 out of range" "$tmp/e2" || { cat "$tmp/e2" >&2; exit 1; }
rc=0; "$ferryctl" placement nonsense > /dev/null 2> "$tmp/e3" || rc=$?
[ "$rc" = 2 ] && grep -q "unknown subcommand 'nonsense'" "$tmp/e3" || { echo "FAIL: rc $rc" >&2; cat "$tmp/e3" >&2; exit 1; }
echo "refusals: $(head -1 "$tmp/e1"); $(head -1 "$tmp/e2"); $(head -1 "$tmp/e3")"
echo "admin test passed"
