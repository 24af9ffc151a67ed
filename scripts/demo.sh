#!/usr/bin/env bash
# The main job on one machine: install dependencies, build, generate a small synthetic
# DeepSeekMoE checkpoint and run it.
#   MODEL_DIR   where the checkpoint goes (default: build/models/tiny)
#   PRESET      tiny|2b|16b|145b (default tiny), LAYERS (default: the preset's)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -d build ] || meson setup build >/dev/null
ninja -C build
PRESET=${PRESET:-tiny}
MODEL_DIR=${MODEL_DIR:-build/models/$PRESET}
ferryctl=build/ctl/ferryctl
if [ ! -f "$MODEL_DIR/config.json" ]; then
  $ferryctl model gen --preset "$PRESET" ${LAYERS:+--layers "$LAYERS"} "$MODEL_DIR"
fi
$ferryctl model info "$MODEL_DIR" || true
echo "== ferryctl run --model $MODEL_DIR --tokens \"1 2 3 4 5 6 7 8\" --max-new 32 --stats"
$ferryctl run --model "$MODEL_DIR" --tokens "1 2 3 4 5 6 7 8" --max-new 32 --stats
