#!/usr/bin/env bash
# The OpenAI-compatible API ([http] listen) driven by the official `openai` npm package
# (installed here from package-lock.json with npm ci): models.list, a sampled completion
# with a text prompt, the same streamed (server-sent events, include_usage) and a greedy
# one with a prompt of token ids. Their tokens must equal the gRPC path's (ferryctl
# generate / run) for the same prompt, seed and temperature; usage must count them; n=2,
# an unknown model and a wrong key come back as OpenAI errors (400 with param "n", 404,
# 401). Then, with plain HTTP: a body that is not JSON, an unknown field, a stop string.
# Exits 77 when node/npm are missing or the package cannot be installed (offline).
# Usage: run-openai.sh COORDINATOR_BIN WORKER_BIN FERRYCTL
set -uo pipefail
co_bin=$1 wk_bin=$2 F=$3
here=$(cd "$(dirname "$0")" && pwd)
for b in node npm; do
  command -v $b >/dev/null || { echo "SKIP: $b not installed"; exit 77; }
done
nm=${FERRY_BUILD:-$here}/tests-http-node
if [ ! -d "$nm/node_modules/openai" ]; then
  mkdir -p "$nm" && cp "$here/package.json" "$here/package-lock.json" "$nm/" &&
    (cd "$nm" && npm ci --no-audit --no-fund --loglevel=error > npm.log 2>&1) ||
    { echo "SKIP: cannot install the openai npm package: $(tail -3 "$nm/npm.log" 2>/dev/null)"; exit 77; }
fi
cp "$here/openai-client.mjs" "$nm/"
. "$here/../cluster/lib-daemons.sh"

model=$tmp/tinytok
"$F" model gen --preset tiny --tokenizer "$FERRY_SRC/tests/data/tokenizer/tokenizer.json" -q \
  "$model" || fail "model gen"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/key"
chmod 600 "$tmp/key"
"$co_bin" -c "$tmp/empty.conf" -m "$model" -l 127.0.0.1:0 -w 1 --secret-file "$tmp/secret" \
  -s engine.threads=1 -s transport.wire_dtype=f32 -s http.listen=127.0.0.1:0 \
  -s http.api_key_file="$tmp/key" > "$tmp/co.out" 2> "$tmp/co.err" &
pids+=($!)
port= hport=
for _ in $(seq 100); do
  port=$(sed -n 's/.*listening on port \([0-9]*\)$/\1/p' "$tmp/co.out" 2>/dev/null || true)
  hport=$(sed -n 's/.*OpenAI-compatible API on .* (port \([0-9]*\)).*/\1/p' "$tmp/co.err" 2>/dev/null || true)
  [ -n "$port" ] && [ -n "$hport" ] && break
  sleep 0.1
done
[ -n "$port" ] && [ -n "$hport" ] || fail "coordinator did not start its HTTP API"
"$wk_bin" -c "$tmp/empty.conf" -C "127.0.0.1:$port" -n w0 -m "$model" \
  --secret-file "$tmp/secret" -s worker.threads=1 2> "$tmp/w0.err" &
pids+=($!)
export FERRY_CLUSTER=127.0.0.1:$port
wait_serving || fail "the cluster never served"

text="The quick brown fox"
ids="11 22 33 44 55"
node "$nm/openai-client.mjs" "http://127.0.0.1:$hport/v1" "$(cat "$tmp/key")" tinytok \
  "$text" "$ids" > "$tmp/oa.json" 2> "$tmp/node.err" || { cat "$tmp/node.err" >&2; fail "openai client"; }
# The gRPC path, same prompts and sampling.
"$F" generate --ids -n 8 --temperature 0.8 --seed 7 --ignore-eos "$text" > "$tmp/grpc_text" \
  2> "$tmp/gen.err" || { cat "$tmp/gen.err" >&2; fail "ferryctl generate"; }
"$F" run --cluster "127.0.0.1:$port" --tokens "$ids" --max-new 6 > "$tmp/grpc_ids" 2> "$tmp/run.err" ||
  { cat "$tmp/run.err" >&2; fail "ferryctl run"; }
python3 - "$tmp" <<'PY' || fail "the HTTP API does not agree with gRPC"
import json, os, sys
tmp = sys.argv[1]
o = json.load(open(os.path.join(tmp, "oa.json")))
grpc = [int(x) for x in open(os.path.join(tmp, "grpc_text")).read().split()]
grpc_ids = [int(x) for x in open(os.path.join(tmp, "grpc_ids")).read().split()]
assert o["models"] == ["tinytok"], o["models"]
p, s = o["plain"], o["stream"]
assert p["object"] == "text_completion", p
assert p["ids"] == grpc, ("non-streaming", p["ids"], grpc)
assert s["ids"] == grpc, ("streaming", s["ids"], grpc)
assert s["text"] == p["text"] and p["text"], (s["text"], p["text"])
assert s["chunks"] >= 3, s  # token events, the finish, the usage
assert p["finish"] == s["finish"] == "length", (p["finish"], s["finish"])
assert p["usage"]["completion_tokens"] == 8 and s["usage"] == p["usage"], (p["usage"], s["usage"])
assert p["usage"]["total_tokens"] == p["usage"]["prompt_tokens"] + 8 > 8, p["usage"]
assert o["ids"]["ids"] == grpc_ids, (o["ids"], grpc_ids)
assert o["ids"]["usage"]["prompt_tokens"] == 5, o["ids"]
assert o["bad_n"]["status"] == 400 and o["bad_n"]["param"] == "n", o["bad_n"]
assert o["bad_model"]["status"] == 404, o["bad_model"]
assert o["bad_key"]["status"] == 401, o["bad_key"]
print("openai client: %d tokens equal to gRPC's, streamed in %d events; greedy ids prompt "
      "equal; errors 400/404/401" % (len(grpc), s["chunks"]))
PY

# Plain HTTP: malformed bodies get OpenAI errors naming the problem; a stop string ends the
# text before it with finish_reason "stop".
python3 - "$hport" "$(cat "$tmp/key")" "$text" <<'PY' || fail "HTTP errors or stop"
import json, sys, urllib.request
port, key, text = sys.argv[1:]
def post(body, auth=True):
    req = urllib.request.Request("http://127.0.0.1:%s/v1/completions" % port,
                                 data=body if isinstance(body, bytes) else json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + key} if auth else {})
    try:
        r = urllib.request.urlopen(req, timeout=60)
        return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
st, j = post(b"{not json")
assert st == 400 and "not JSON" in j["error"]["message"], (st, j)
st, j = post({"prompt": text, "bogus": 1})
assert st == 400 and j["error"]["param"] == "bogus", (st, j)
st, j = post({"prompt": text, "temperature": 3})
assert st == 400 and j["error"]["param"] == "temperature", (st, j)
st, j = post({"prompt": []})
assert st == 400 and j["error"]["param"] == "prompt", (st, j)
st, j = post({"prompt": text}, auth=False)
assert st == 401 and j["error"]["code"] == "invalid_api_key", (st, j)
st, full = post({"prompt": text, "max_tokens": 8, "temperature": 0, "ignore_eos": True})
assert st == 200, (st, full)
t = full["choices"][0]["text"]
stop = t[len(t) // 2:len(t) // 2 + 2]
assert stop.strip(), t
st, j = post({"prompt": text, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "stop": [stop]})
c = j["choices"][0]
assert st == 200 and c["finish_reason"] == "stop" and stop not in c["text"] and \
    t.startswith(c["text"]), (stop, t, j)
print("HTTP: 400 naming the field, 401 without the key; stop %r ends %r as %r" % (stop, t, c["text"]))
PY
echo ok
