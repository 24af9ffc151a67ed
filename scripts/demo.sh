#!/usr/bin/env bash
# The main job on one machine: install dependencies, build, generate a small synthetic
# DeepSeekMoE checkpoint, start a local cluster on it (one ferry-coordinator and WORKERS
# ferry-workers over shared memory: `ferryctl up`), stream a generation through the
# coordinator's gRPC API, show the per-worker expert load, and stop the cluster.
#   MODEL_DIR   where the checkpoint goes (default: build/models/$PRESET)
#   PRESET      tiny|2b|16b|145b (default tiny), LAYERS (default: the preset's)
#   WORKERS     expert workers (default 2)
#   TOKENIZER   tokenizer.json for the model (default: DeepSeek-V3's, under tests/data; empty:
#               none, then the demo sends token ids)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -d build ] || meson setup build >/dev/null
ninja -C build
PRESET=${PRESET:-tiny}
WORKERS=${WORKERS:-2}
MODEL_DIR=${MODEL_DIR:-build/models/$PRESET}
ferryctl=build/ctl/ferryctl
TOKENIZER=${TOKENIZER-tests/data/tokenizer/tokenizer.json}
if [ ! -f "$MODEL_DIR/config.json" ]; then
  mkdir -p "$(dirname "$MODEL_DIR")"
  $ferryctl model gen --preset "$PRESET" ${LAYERS:+--layers "$LAYERS"} \
    ${TOKENIZER:+--tokenizer "$TOKENIZER"} "$MODEL_DIR"
fi
$ferryctl model info "$MODEL_DIR" || true

log=$(mktemp)
up_pid=
cleanup() {
  if [ -n "$up_pid" ]; then kill -TERM "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  rm -f "$log"
}
trap cleanup EXIT
echo "== ferryctl up --model $MODEL_DIR --workers $WORKERS --listen 127.0.0.1:0"
$ferryctl up --model "$MODEL_DIR" --workers "$WORKERS" --listen 127.0.0.1:0 > "$log" &
up_pid=$!
addr=
for _ in $(seq 1200); do
  addr=$(sed -n 's/^address: //p' "$log")
  [ -n "$addr" ] && break
  kill -0 "$up_pid" 2>/dev/null || { echo "the cluster did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "the cluster did not start in time" >&2; exit 1; }
cat "$log"
if [ -f "$MODEL_DIR/tokenizer.json" ]; then
  # Random weights: the text is noise, but it streams through the real path.
  echo "== ferryctl generate --cluster $addr --max-tokens 32 \"The quick brown fox\""
  $ferryctl generate --cluster "$addr" --max-tokens 32 --ignore-eos "The quick brown fox"
  echo
else
  echo "== ferryctl run --cluster $addr --tokens \"1 2 3 4 5 6 7 8\" --max-new 32 --stats"
  $ferryctl run --cluster "$addr" --tokens "1 2 3 4 5 6 7 8" --max-new 32 --stats
fi
echo "== ferryctl load --cluster $addr"
sleep 1.2 # one heartbeat: the workers' measured compute time arrives with it
$ferryctl load --cluster "$addr"
echo "== stopping the cluster"
kill -TERM "$up_pid"
wait "$up_pid"
up_pid=
