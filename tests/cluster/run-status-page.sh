#!/usr/bin/env bash
# The coordinator's status page (GET / on [metrics] listen) in headless Chromium: a cluster
# of two workers serves a few requests and goes through one live rebalance; the page,
# rendered from /status.json by its own script, must show both workers, one heat-map row
# of every expert per MoE layer, the layers' balancedness and the rebalance. The DOM and a
# screenshot are kept in the build's meson-logs/ as artifacts. Exits 77 without chromium.
# Usage: run-status-page.sh COORDINATOR_BIN WORKER_BIN FERRYCTL
set -uo pipefail
co_bin=$1 wk_bin=$2 F=$3
command -v chromium >/dev/null || { echo "SKIP: chromium not installed (apt-get install chromium)"; exit 77; }
golden=$FERRY_GOLDEN/tiny-a
. "$(dirname "$0")/lib-daemons.sh"
art=${FERRY_BUILD:-$tmp}/meson-logs
mkdir -p "$art"
"$co_bin" -c "$tmp/empty.conf" -m "$golden" -l 127.0.0.1:0 -w 2 --secret-file "$tmp/secret" \
  -s engine.threads=1 -s placement.rebalance=off -s metrics.listen=127.0.0.1:0 \
  > "$tmp/co.out" 2> "$tmp/co.err" &
pids+=($!)
port= mport=
for _ in $(seq 100); do
  port=$(sed -n 's/.*listening on port \([0-9]*\)$/\1/p' "$tmp/co.out" 2>/dev/null || true)
  mport=$(sed -n 's/.*metrics on .* (port \([0-9]*\)).*/\1/p' "$tmp/co.err" 2>/dev/null || true)
  [ -n "$port" ] && [ -n "$mport" ] && break
  sleep 0.1
done
[ -n "$port" ] && [ -n "$mport" ] || fail "coordinator did not start"
for w in alpha beta; do
  "$wk_bin" -c "$tmp/empty.conf" -C "127.0.0.1:$port" -n "$w" -m "$golden" --slots 10 \
    --secret-file "$tmp/secret" -s worker.threads=1 2> "$tmp/$w.err" &
  pids+=($!)
done
export FERRY_CLUSTER=127.0.0.1:$port
wait_serving || fail "the cluster never served"
for n in 4 9 16; do
  "$F" run --cluster "127.0.0.1:$port" --tokens "$(seq -s ' ' 20 $((19 + n)))" --max-new 8 \
    > /dev/null 2> "$tmp/run.err" || { cat "$tmp/run.err" >&2; fail "request"; }
done
"$F" rebalance --wait > "$tmp/rb.out" 2>&1 || { cat "$tmp/rb.out" >&2; fail "rebalance"; }

url=http://127.0.0.1:$mport/
chromium --headless --no-sandbox --disable-gpu --virtual-time-budget=5000 --dump-dom "$url" \
  > "$art/status-page.html" 2> "$tmp/chromium.err" || { tail -5 "$tmp/chromium.err" >&2; fail "chromium --dump-dom"; }
chromium --headless --no-sandbox --disable-gpu --virtual-time-budget=5000 \
  --window-size=1280,1000 --screenshot="$art/status-page.png" "$url" 2>> "$tmp/chromium.err" ||
  fail "chromium --screenshot"
[ -s "$art/status-page.png" ] || fail "no screenshot"
python3 - "$art/status-page.html" "$golden/config.json" <<'PY' || fail "the status page does not show the cluster"
import html.parser, json, sys
dom, cfgp = sys.argv[1:]
cfg = json.load(open(cfgp))
n_moe = cfg["num_hidden_layers"] - cfg.get("first_k_dense_replace", 0)
n_e = cfg["n_routed_experts"]
class P(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ready = False
        self.rects = set()
        self.labels = []
        self.tables = {}
        self.cur_table = None
        self.in_td = False
        self.row = None
        self.label = False
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body" and a.get("data-ready") == "1":
            self.ready = True
        if tag == "rect" and "data-layer" in a:
            self.rects.add((int(a["data-layer"]), int(a["data-expert"])))
        if tag == "text" and a.get("class") == "layer-label":
            self.label = True
        if tag == "table":
            self.cur_table = a.get("id")
            self.tables[self.cur_table] = []
        if tag == "tr" and self.cur_table:
            self.row = []
        if tag == "td":
            self.in_td = True
            self.row.append("")
    def handle_endtag(self, tag):
        if tag == "td":
            self.in_td = False
        if tag == "tr" and self.row is not None:
            if self.row:
                self.tables[self.cur_table].append(self.row)
            self.row = None
        if tag == "table":
            self.cur_table = None
    def handle_data(self, d):
        if self.in_td:
            self.row[-1] += d
        if self.label:
            self.labels.append(d)
            self.label = False
p = P()
p.feed(open(dom).read())
assert p.ready, "the page's script did not render /status.json"
names = {r[1]: r[3] for r in p.tables["workers"]}
assert names == {"alpha": "serving", "beta": "serving"}, names
assert p.labels == ["layer %d" % l for l in range(n_moe)], p.labels
assert p.rects == {(l, e) for l in range(n_moe) for e in range(n_e)}, len(p.rects)
layers = p.tables["layers"]
assert [int(r[0]) for r in layers] == list(range(n_moe)), layers
assert all(0 < float(r[1]) <= 1 for r in layers), layers
pl = p.tables["placement"]
assert len(pl) == n_moe * 2 and {r[1] for r in pl} == {"alpha", "beta"}, pl
for L in range(n_moe):  # every expert is placed somewhere in every layer
    held = set(x for r in pl if r[0] == str(L) for x in r[2].split())
    assert held >= {"e%d" % e for e in range(n_e)}, (L, held)
rbs = p.tables["rebalances"]
assert len(rbs) == 1 and rbs[0][1].startswith("manual") and int(rbs[0][2]) > 0, rbs
print("status page: %d workers, %d layers x %d experts in the heat map, %d rebalance; "
      "screenshot meson-logs/status-page.png" % (len(names), n_moe, n_e, len(rbs)))
PY
echo ok
