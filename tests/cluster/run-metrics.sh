#!/usr/bin/env bash
# /metrics on a real cluster: a coordinator and two workers with [metrics] listen on ports
# the kernel picks (read from their logs) and per_expert counters on, scraped every second
# by a real Prometheus server (Debian's) on loopback. After requests whose sizes the test
# knows, every output passes `promtool check metrics`, and the series agree with the
# client's counts (requests, prompt and generated tokens, histogram counts), with each
# other (per layer: the coordinator's per-worker tokens, the workers' own counts and the
# per-expert counters add up to the same) and with `ferryctl load`; Prometheus's query API
# returns the same numbers, and every PromQL expression of deploy/grafana/ferry.json returns
# data. Other paths answer 404, other methods 405. Exits 77 without Debian's prometheus
# package (promtool and the server).
# Usage: run-metrics.sh COORDINATOR_BIN WORKER_BIN FERRYCTL
set -uo pipefail
co_bin=$1 wk_bin=$2 F=$3
for b in promtool prometheus; do
  command -v $b >/dev/null || { echo "SKIP: $b not installed (apt-get install prometheus)"; exit 77; }
done
golden=$FERRY_GOLDEN/tiny-a
. "$(dirname "$0")/lib-daemons.sh"
# "metrics on ADDR (port N)" from a daemon's log
mport() {
  local p=
  for _ in $(seq 100); do
    p=$(sed -n 's/.*metrics on .* (port \([0-9]*\)).*/\1/p' "$1" 2>/dev/null || true)
    [ -n "$p" ] && break
    sleep 0.1
  done
  echo "$p"
}

"$co_bin" -c "$tmp/empty.conf" -m "$golden" -l 127.0.0.1:0 -w 2 --secret-file "$tmp/secret" \
  -s engine.threads=1 -s placement.rebalance=off -s metrics.listen=127.0.0.1:0 \
  -s metrics.per_expert=true > "$tmp/co.out" 2> "$tmp/co.err" &
pids+=($!)
wait_port || fail "coordinator did not start"
co_m=$(mport "$tmp/co.err")
[ -n "$co_m" ] || fail "the coordinator does not log its metrics port"
for w in w0 w1; do
  "$wk_bin" -c "$tmp/empty.conf" -C "127.0.0.1:$port" -n "$w" -m "$golden" --slots 8 \
    --secret-file "$tmp/secret" -s worker.threads=1 -s metrics.listen=127.0.0.1:0 \
    2> "$tmp/$w.err" &
  pids+=($!)
done
w0_m=$(mport "$tmp/w0.err")
w1_m=$(mport "$tmp/w1.err")
[ -n "$w0_m" ] && [ -n "$w1_m" ] || fail "a worker does not log its metrics port"
export FERRY_CLUSTER=127.0.0.1:$port
wait_serving || fail "the cluster never served"

# Prometheus scrapes all three every second from before the first request.
prom_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ferry
    static_configs:
      - targets: ['127.0.0.1:$co_m', '127.0.0.1:$w0_m', '127.0.0.1:$w1_m']
EOF
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" > "$tmp/prom.log" 2>&1 &
pids+=($!)
python3 - "$prom_port" <<'PY' || { tail -20 "$tmp/prom.log" >&2; fail "prometheus did not start scraping"; }
import json, sys, time, urllib.request
port = sys.argv[1]
for _ in range(300):
    try:
        r = json.load(urllib.request.urlopen("http://127.0.0.1:%s/api/v1/query?query=up" % port, timeout=2))
        ups = [float(x["value"][1]) for x in r["data"]["result"]]
        if len(ups) == 3 and all(u == 1 for u in ups):
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(1)
PY

# Four requests of known sizes: prompts of 3, 5, 7 and 9 tokens, 6 new tokens each.
for n in 3 5 7 9; do
  toks=$(seq -s ' ' 10 $((9 + n)))
  "$F" run --cluster "127.0.0.1:$port" --tokens "$toks" --max-new 6 > "$tmp/out.$n" 2> "$tmp/run.err" ||
    { cat "$tmp/run.err" >&2; fail "request of $n tokens"; }
  [ "$(wc -w < "$tmp/out.$n")" -eq 6 ] || fail "request of $n tokens: $(cat "$tmp/out.$n")"
done
# The workers report compute time with their heartbeats (every second); Prometheus scrapes
# a few more times.
sleep 3.5
"$F" load --cluster "127.0.0.1:$port" --json > "$tmp/load.json" || fail "ferryctl load"
for x in co:$co_m w0:$w0_m w1:$w1_m; do
  python3 - "${x#*:}" "$tmp/${x%%:*}.prom" <<'PY' || fail "scrape of ${x%%:*}"
import sys, urllib.request
port, out = sys.argv[1:]
r = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port, timeout=10)
assert r.status == 200, r.status
ct = r.headers["Content-Type"]
assert ct.startswith("text/plain; version=0.0.4"), ct
open(out, "wb").write(r.read())
for path, method, want in (("/nope", "GET", 404), ("/metrics", "POST", 405)):
    try:
        urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%s%s" % (port, path),
                                                      method=method, data=b"" if method == "POST" else None), timeout=10)
        raise SystemExit("%s %s answered 200" % (method, path))
    except urllib.error.HTTPError as e:
        assert e.code == want, (method, path, e.code)
PY
  promtool check metrics < "$tmp/${x%%:*}.prom" > "$tmp/promtool.out" 2>&1 ||
    { cat "$tmp/promtool.out" >&2; fail "promtool check metrics on ${x%%:*}"; }
done
echo "promtool check metrics: coordinator and both workers pass"

python3 - "$tmp" <<'PY' || fail "the metrics do not add up"
import json, os, re, sys
tmp = sys.argv[1]
def parse(name):
    m = {}
    for line in open(os.path.join(tmp, name + ".prom")):
        if line.startswith("#") or not line.strip():
            continue
        k, v = line.rsplit(" ", 1)
        m[k] = float(v)
    return m
co, w0, w1 = parse("co"), parse("w0"), parse("w1")
def get(m, name, **labels):
    key = name + ("{" + ",".join('%s="%s"' % kv for kv in labels.items()) + "}" if labels else "")
    assert key in m, "missing " + key
    return m[key]
def series(m, name):
    out = {}
    for k, v in m.items():
        mm = re.fullmatch(re.escape(name) + r"\{(.*)\}", k)
        if mm:
            out[tuple(re.findall(r'(\w+)="([^"]*)"', mm.group(1)))] = v
    return out

prompts = [3, 5, 7, 9]
assert get(co, "ferry_requests_total", method="ferry.v1.Inference/Generate", code="OK") == 4
assert get(co, "ferry_generate_finished_total", reason="length") == 4
assert get(co, "ferry_prompt_tokens_total") == sum(prompts)
assert get(co, "ferry_generation_tokens_total") == 24
for h, n in (("ferry_time_to_first_token_seconds", 4), ("ferry_request_latency_seconds", 4),
             ("ferry_request_queue_seconds", 4), ("ferry_inter_token_latency_seconds", 20)):
    assert get(co, h + "_count") == n, (h, get(co, h + "_count"))
    assert get(co, h + "_bucket", le="+Inf") == n, h
assert get(co, "ferry_step_seconds_count") == get(co, "ferry_steps_total") >= 4 * 6
# every step dispatches every MoE layer at least once (micro-batches: possibly more)
for L in ("0", "1", "2"):
    assert get(co, "ferry_layer_dispatch_seconds_count", layer=L) >= get(co, "ferry_steps_total"), L
assert get(co, "ferry_workers", state="serving") == 2
assert get(co, "ferry_requests_running") == 0 and get(co, "ferry_kv_blocks", state="used") == 0
assert get(co, "ferry_placement_epoch") >= 1

# Per MoE layer (its index, as ferryctl load numbers them): what the coordinator routed to each worker, what each worker computed,
# what the experts received, and the load window all agree. Every token the engine
# forwarded (prompt and generated but the last of each request) went to top-k experts.
load = json.load(open(os.path.join(tmp, "load.json")))
k = json.load(open(os.path.join(os.environ["FERRY_GOLDEN"], "tiny-a", "config.json")))["num_experts_per_tok"]
want = sum(p + 6 - 1 for p in prompts) * k
per_w = series(co, "ferry_layer_worker_tokens_total")
per_e = series(co, "ferry_expert_tokens_total")
layers = sorted({dict(l)["layer"] for l in per_w})
assert layers, "no per-layer series"
for L in layers:
    by_worker = {dict(l)["worker"]: v for l, v in per_w.items() if dict(l)["layer"] == L}
    assert set(by_worker) == {"w0", "w1"}, by_worker
    total = sum(by_worker.values())
    assert total == want, (L, total, want)
    for name, m in (("w0", w0), ("w1", w1)):
        assert get(m, "ferry_worker_layer_tokens_total", layer=L) == by_worker[name], (L, name)
    assert sum(v for l, v in per_e.items() if dict(l)["layer"] == L) == total, L
    lw = [x for x in load["layers"] if str(x["layer"]) == L]
    assert len(lw) == 1, ("ferryctl load has no layer", L)
    assert sum(w["tokens"] for w in lw[0]["workers"]) == total, (L, lw[0])
    busy = sum(v for l, v in series(co, "ferry_layer_worker_busy_seconds_total").items()
               if dict(l)["layer"] == L)
    assert busy > 0, "no compute time reported for layer " + L
for m in (w0, w1):
    assert get(m, "ferry_worker_frames_total", direction="in") > 0
    assert get(m, "ferry_worker_bytes_total", direction="out") > 0
    assert get(m, "ferry_worker_slots_loaded") == 8 * len(layers)
    assert get(m, "ferry_worker_compute_info", device="cpu", precision="exact",
               frames="host") == 1
print("metrics agree: 4 requests, %d prompt + 24 generated tokens, %d routed pairs per layer "
      "on %d MoE layers" % (sum(prompts), want, len(layers)))
PY

# The same numbers through Prometheus, and every expression of the dashboard has data.
python3 - "$tmp" "$prom_port" "$FERRY_SRC/deploy/grafana/ferry.json" <<'PY' || { tail -5 "$tmp/prom.log" >&2; fail "Prometheus"; }
import json, os, sys, urllib.parse, urllib.request
tmp, port, dash = sys.argv[1:]
def query(expr):
    u = "http://127.0.0.1:%s/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": expr}))
    r = json.load(urllib.request.urlopen(u, timeout=10))
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]
def scalar(expr):
    res = query(expr)
    assert len(res) == 1, (expr, res)
    return float(res[0]["value"][1])
assert scalar("ferry_generation_tokens_total") == 24
assert scalar("ferry_prompt_tokens_total") == 24
assert scalar('ferry_requests_total{method="ferry.v1.Inference/Generate",code="OK"}') == 4
assert scalar("ferry_time_to_first_token_seconds_count") == 4
co_side = scalar("sum(ferry_layer_worker_tokens_total)")
wk_side = scalar("sum(ferry_worker_layer_tokens_total)")
assert co_side == wk_side > 0, (co_side, wk_side)
load = json.load(open(os.path.join(tmp, "load.json")))
assert co_side == sum(w["tokens"] for l in load["layers"] for w in l["workers"]), co_side
assert scalar("sum(ferry_expert_tokens_total)") == co_side
d = json.load(open(dash))
exprs = [(p["title"], t["expr"]) for p in d["panels"] for t in p.get("targets", [])]
empty = []
for title, e in exprs:
    if not query(e.replace("$__rate_interval", "1m")):
        empty.append("%s: %s" % (title, e))
assert not empty, "no data for: " + "; ".join(empty)
print("Prometheus: the same counts through its query API; %d dashboard expressions (%d panels) "
      "return data" % (len(exprs), len(d["panels"])))
PY
echo "ok"
