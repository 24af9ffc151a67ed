#!/usr/bin/env bash
# `ferryctl run` end to end on the golden sets: --dump-logits of every prompt position and
# of the greedy steps against the references, and the printed greedy tokens; the greedy runs
# also with the engine's device path on the CPU twin (--device twin).
set -euo pipefail
ferryctl=$1 cmp=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
for set in "$FERRY_GOLDEN"/*/; do
  set=${set%/}
  vocab=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$set/config.json")
  for toks in "$set"/ref_tokens_*.txt; do
    k=${toks##*_}; k=${k%.txt}
    "$ferryctl" run --model "$set" --tokens "$(cat "$toks")" --max-new 0 --dump-logits "$tmp/l.f32" >/dev/null
    echo -n "$(basename "$set") seq $k: "
    "$cmp" "$tmp/l.f32" "$set/ref_logits_$k.f32" "$vocab" 3e-5
    n=$((n + 1))
  done
  prompt=$(cat "$set/ref_greedy_prompt.txt")
  np=$(wc -w < "$set/ref_greedy_prompt.txt")
  ng=$(wc -w < "$set/ref_greedy_tokens.txt")
  for dev in cpu twin; do
  for workers in 1 2; do
    out=$("$ferryctl" run --model "$set" --tokens "$prompt" --max-new "$ng" --workers $workers \
      --device $dev --dump-logits "$tmp/g.f32")
    if [ "$out" != "$(cat "$set/ref_greedy_tokens.txt")" ]; then
      echo "$(basename "$set") greedy ($workers workers, $dev): got '$out'" >&2
      echo "                       want '$(cat "$set/ref_greedy_tokens.txt")'" >&2
      exit 1
    fi
    echo -n "$(basename "$set") greedy ($workers workers, $dev): "
    "$cmp" "$tmp/g.f32" "$set/ref_greedy_logits.f32" "$vocab" 3e-5 $((np - 1))
    n=$((n + 1))
  done
  done
done
[ "$n" -gt 0 ] || { echo "no golden sets under $FERRY_GOLDEN" >&2; exit 1; }
echo "$n checks passed"
