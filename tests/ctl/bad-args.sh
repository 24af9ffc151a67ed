#!/usr/bin/env bash
# ferryctl refuses bad arguments and bad models with a message naming the problem and the
# documented exit code (2 usage, 1 failure) -- and never crashes.
set -uo pipefail
ferryctl=$1
golden=$FERRY_GOLDEN/tiny-a
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
expect() { # code, pattern, args...
  local code=$1 pat=$2; shift 2
  "$ferryctl" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -ne "$code" ] || ! grep -q -- "$pat" "$tmp/err"; then
    echo "FAIL: ferryctl $* -> exit $rc (want $code), stderr:" >&2
    cat "$tmp/err" >&2
    fail=1
  else
    echo "ok: ferryctl $* -> $code: $(head -1 "$tmp/err")"
  fi
}
expect 2 "unknown command" frobnicate
expect 2 "give exactly one of --model DIR and --cluster ADDR" run --tokens "1 2"
expect 2 "tokens is required" run --model "$golden"
expect 2 "max-new" run --model "$golden" --tokens 1 --max-new -3
expect 2 "top-p" run --model "$golden" --tokens 1 --top-p 0
expect 2 "unknown option" run --model "$golden" --tokens 1 --bogus
expect 2 "needs a value" run --model "$golden" --tokens
expect 1 "bad token id '512'" run --model "$golden" --tokens "1 512"
expect 1 "bad token id 'x'" run --model "$golden" --tokens "1 x"
expect 1 "prompt is empty" run --model "$golden" --tokens " "
expect 1 "exceed max_position_embeddings" run --model "$golden" --tokens 1 --max-new 100000
expect 1 "exceed the 16 routed experts" run --model "$golden" --tokens 1 --top-k 10 --mask-top 8
expect 1 "config.json" run --model "$tmp/nonexistent" --tokens 1
expect 2 "give exactly one of --model DIR and --cluster ADDR" run --model "$golden" --cluster 127.0.0.1:1 --tokens 1
expect 2 "apply to --model only" run --cluster 127.0.0.1:1 --tokens 1 --workers 2
expect 2 "--precision 'half': expected exact or fast" run --model "$golden" --tokens 1 --precision half
expect 2 "apply to --model only" run --cluster 127.0.0.1:1 --tokens 1 --precision fast
expect 2 "--device: 'gpu' is not cpu, cuda:N" run --model "$golden" --tokens 1 --device gpu
expect 2 "--device: 'cuda:x' is not cpu" run --model "$golden" --tokens 1 --device cuda:x
expect 2 "apply to --model only" run --cluster 127.0.0.1:1 --tokens 1 --device twin
if "$ferryctl" --help | grep -q '^  up '; then
  expect 2 "--model DIR is required" up
  expect 2 "--workers: '0' is not an integer" up --model "$golden" --workers 0
  expect 2 "--transport: 'ib' is not shm, tcp or verbs" up --model "$golden" --transport ib
  expect 2 "--wire: 'fp8' is not bf16 or f32" up --model "$golden" --wire fp8
  expect 2 "--precision: 'fp8' is not exact or fast" up --model "$golden" --precision fp8
  expect 2 "--listen" up --model "$golden" --listen
  expect 2 "--worker-set: 'staging' is not SECTION.KEY=VALUE" up --model "$golden" --worker-set staging
  expect 1 "config.json" up --model "$tmp/nonexistent"
  expect 2 "--cluster ADDR is required" load
  expect 2 "--layer: 'x'" load --cluster 127.0.0.1:1 --layer x
  expect 1 "UNAVAILABLE" load --cluster 127.0.0.1:1
  expect 2 "--tls-cert: needs --tls-key" load --cluster 127.0.0.1:1 --tls-cert "$tmp/c.pem"
  FERRY_TLS_KEY=/k expect 2 "--tls-key (\$FERRY_TLS_KEY): needs --tls-cert" generate --tokens 1
  expect 2 "apply to --cluster only" run --model "$golden" --tokens 1 --tls-ca "$tmp/ca.pem"
  expect 1 "TLS CA: $tmp/nope.pem: No such file" load --cluster 127.0.0.1:1 --tls-ca "$tmp/nope.pem"
  expect 1 "UNAVAILABLE" run --cluster 127.0.0.1:1 --tokens "1 2"
fi
# A checkpoint missing a tensor fails at start-up, naming it.
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
expect 1 "model.layers.2.mlp.experts.5.up_proj.weight" run --model "$tmp/cut" --tokens 1
exit $fail
