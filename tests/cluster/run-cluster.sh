#!/usr/bin/env bash
# The cluster against the single-process engine and the golden references: for every golden
# set, over shm and tcp, with 1, 2 and 3 workers, with and without replicas, `ferryctl up`
# starts a coordinator and workers (f32 wire), and `ferryctl run --cluster` must give
#   - every reference sequence's logits within 1e-5 of `ferryctl run --model` (same process
#     layout, one process) and within 3e-5 of the references,
#   - the reference greedy tokens, and greedy logits within 3e-5.
# One bf16-wire cluster per set must give the reference greedy tokens too.
#
# Usage: run-cluster.sh FERRYCTL CMP_F32 [TRANSPORTS]   (default transports: "shm tcp")
# Environment (defaults: the full check above):
#   CLUSTER_SHAPES          comma-separated "WORKERS REPLICAS [MICRO_BATCHES]" (default
#                           "1 0,2 0 2,3 0,2 1 2,3 3"; micro-batches default 1, as in up)
#   CLUSTER_BF16            1: run the bf16-wire greedy check and `ferryctl load`; 0: skip it
#   CLUSTER_BF16_TRANSPORT  transport of the bf16-wire cluster (default shm)
#   CLUSTER_TIMEOUT         `ferryctl up --timeout` in seconds (default 60)
#   CLUSTER_UP_ARGS         extra `ferryctl up` options, split on whitespace (e.g. --set ...)
#   CLUSTER_LOG_EXPECT      extended regexes, one per line: each cluster's log (coordinator
#                           and workers) must match every one of them (e.g. the devices used)
set -euo pipefail
ferryctl=$1 cmp=$2
transports=${3:-shm tcp}
IFS=, read -r -a shapes <<< "${CLUSTER_SHAPES:-1 0,2 0 2,3 0,2 1 2,3 3}"
bf16=${CLUSTER_BF16:-1}
bf16_tp=${CLUSTER_BF16_TRANSPORT:-shm}
up_timeout=${CLUSTER_TIMEOUT:-60}
read -r -a up_args <<< "${CLUSTER_UP_ARGS:-}"
log_expect=()
[ -z "${CLUSTER_LOG_EXPECT:-}" ] || mapfile -t log_expect <<< "$CLUSTER_LOG_EXPECT"
[[ $up_timeout =~ ^[1-9][0-9]*$ ]] || { echo "CLUSTER_TIMEOUT: '$up_timeout' is not a number of seconds" >&2; exit 1; }
[[ $bf16 == [01] ]] || { echo "CLUSTER_BF16: '$bf16' is not 0 or 1" >&2; exit 1; }
tmp=$(mktemp -d)
up_pid=
cleanup() {
  local rc=$?
  if [ -n "$up_pid" ]; then kill -TERM "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  if [ "$rc" != 0 ] && [ -s "$tmp/up.err" ]; then
    echo "---- last cluster's log (ferryctl up stderr, tail):" >&2
    tail -n 40 "$tmp/up.err" >&2
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Starts `ferryctl up` with the given options; sets $addr.
up() {
  : > "$tmp/up.out"
  "$ferryctl" up --listen 127.0.0.1:0 --threads 1 --timeout "$up_timeout" ${up_args[@]+"${up_args[@]}"} "$@" \
    > "$tmp/up.out" 2> "$tmp/up.err" &
  up_pid=$!
  for _ in $(seq $((up_timeout * 10))); do
    addr=$(sed -n 's/^address: //p' "$tmp/up.out" 2>/dev/null || true)
    [ -n "$addr" ] && return 0
    kill -0 "$up_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "ferryctl up $* did not come up:" >&2
  cat "$tmp/up.err" >&2
  : > "$tmp/up.err"
  exit 1
}

down() {
  kill -TERM "$up_pid"
  if ! wait "$up_pid"; then
    echo "ferryctl up did not stop cleanly:" >&2
    cat "$tmp/up.err" >&2
    : > "$tmp/up.err"
    exit 1
  fi
  up_pid=
  local re
  for re in ${log_expect[@]+"${log_expect[@]}"}; do
    [ -n "$re" ] || continue
    if ! grep -Eq -- "$re" "$tmp/up.err"; then
      echo "the cluster's log has no line matching '$re'" >&2
      exit 1
    fi
    echo "log: $(grep -Em1 -- "$re" "$tmp/up.err")"
  done
}

n=0
for set in "$FERRY_GOLDEN"/*/; do
  set=${set%/}
  name=$(basename "$set")
  vocab=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$set/config.json")
  prompt=$(cat "$set/ref_greedy_prompt.txt")
  np=$(wc -w < "$set/ref_greedy_prompt.txt")
  ng=$(wc -w < "$set/ref_greedy_tokens.txt")
  want=$(cat "$set/ref_greedy_tokens.txt")
  # The single-process engine's logits of every reference sequence.
  for toks in "$set"/ref_tokens_*.txt; do
    k=${toks##*_}; k=${k%.txt}
    "$ferryctl" run --model "$set" --threads 1 --tokens "$(cat "$toks")" --max-new 0 \
      --dump-logits "$tmp/local_$k.f32" > /dev/null
  done
  for tp in $transports; do
    for shape in "${shapes[@]}"; do
      read -r workers replicas mbs <<< "$shape"
      mbs=${mbs:-1}
      what="$name $tp $workers worker(s) +$replicas replica slot(s) m=$mbs"
      up --model "$set" --workers "$workers" --replicas "$replicas" --transport "$tp" --wire f32 \
        --micro-batches "$mbs"
      for toks in "$set"/ref_tokens_*.txt; do
        k=${toks##*_}; k=${k%.txt}
        "$ferryctl" run --cluster "$addr" --tokens "$(cat "$toks")" --max-new 0 \
          --dump-logits "$tmp/c.f32" > /dev/null
        echo -n "$what seq $k vs engine: "
        "$cmp" "$tmp/c.f32" "$tmp/local_$k.f32" "$vocab" 1e-5
        echo -n "$what seq $k vs reference: "
        "$cmp" "$tmp/c.f32" "$set/ref_logits_$k.f32" "$vocab" 3e-5
        n=$((n + 2))
      done
      out=$("$ferryctl" run --cluster "$addr" --tokens "$prompt" --max-new "$ng" --dump-logits "$tmp/g.f32")
      if [ "$out" != "$want" ]; then
        echo "$what greedy: got '$out'" >&2
        echo "$what greedy: want '$want'" >&2
        exit 1
      fi
      echo -n "$what greedy: "
      "$cmp" "$tmp/g.f32" "$set/ref_greedy_logits.f32" "$vocab" 3e-5 $((np - 1))
      n=$((n + 1))
      down
    done
  done
  [ "$bf16" = 1 ] || continue
  up --model "$set" --workers 2 --transport "$bf16_tp" --wire bf16
  out=$("$ferryctl" run --cluster "$addr" --tokens "$prompt" --max-new "$ng")
  if [ "$out" != "$want" ]; then
    echo "$name $bf16_tp bf16 wire greedy: got '$out', want '$want'" >&2
    exit 1
  fi
  echo "$name $bf16_tp bf16 wire greedy: tokens identical"
  n=$((n + 1))
  # bench-serve's baselines: the serving engine (Admin.BenchEngine) and the same work on a
  # single-process engine in ferryctl (--model)
  "$ferryctl" bench-serve --cluster "$addr" -C "1 2" -n 2 --prompt-len fixed:4 \
    --output-len fixed:3 --model "$set" --threads 1 --json > "$tmp/bs.json"
  python3 - "$tmp/bs.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for lv in j["levels"]:
    assert lv["ok"] == 2 and lv["errors"] == 0, lv
    assert lv["engine_tokens_per_s"] > 0, lv
    assert lv["single_engine_tokens_per_s"] > 0, lv
PY
  echo "$name bench-serve: engine and single-process baselines measured"
  n=$((n + 1))
  "$ferryctl" load --cluster "$addr" > "$tmp/load.txt"
  grep -q 'balancedness' "$tmp/load.txt" || { echo "ferryctl load printed no balancedness" >&2; cat "$tmp/load.txt" >&2; exit 1; }
  down
done
[ "$n" -gt 0 ] || { echo "no golden sets under $FERRY_GOLDEN" >&2; exit 1; }
echo "$n checks passed"
