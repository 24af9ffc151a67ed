#!/usr/bin/env bash
# ferryctl placement plan on generated load profiles: the --json report is complete and
# consistent, an --out file read back as --prev moves nothing, --max-moves holds, and bad
# input fails with a message naming the problem and the documented exit code.
set -uo pipefail
ferryctl=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
seed=${FERRY_TEST_SEED:-$RANDOM}
echo "seed $seed (FERRY_TEST_SEED to repeat)"

# Zipf-skewed profiles: 6 layers x 32 experts; b.json drifts from a.json.
python3 - "$tmp" "$seed" <<'PY'
import json, random, sys
d, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
L, E = 6, 32
a = []
for l in range(L):
    order = list(range(E)); rng.shuffle(order)
    row = [0.0] * E
    for r, e in enumerate(order):
        row[e] = round(1000.0 / (r + 1) ** 0.9 * rng.uniform(0.8, 1.2), 3)
    a.append(row)
b = [[x * rng.uniform(0.5, 2.0) for x in row] for row in a]
json.dump({"layers": a, "comment": "placement-plan.sh"}, open(d + "/a.json", "w"))
json.dump({"layers": b}, open(d + "/b.json", "w"))
json.dump({"layers": a[:2]}, open(d + "/short.json", "w"))
PY

# check_json FILE SLOTS_TOTAL [MOVES|max:M]: keys, per-layer values, mean, worst, totals.
check_json() {
  python3 - "$@" <<'PY'
import json, sys
path, total, moves = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = json.load(open(path))
want = ["layers", "balancedness_mean", "balancedness_worst", "moves", "slots_total"]
assert list(r) == want, "keys %s" % list(r)
bs = [x["balancedness"] for x in r["layers"]]
assert [list(x) for x in r["layers"]] == [["layer", "balancedness"]] * len(bs)
assert [x["layer"] for x in r["layers"]] == list(range(6)), "layer ids"
assert all(0 < b <= 1 for b in bs), bs
assert abs(r["balancedness_mean"] - sum(bs) / len(bs)) < 1e-6, "mean"
assert abs(r["balancedness_worst"] - min(bs)) < 1e-6, "worst"
assert r["slots_total"] == total, "slots_total %d, want %d" % (r["slots_total"], total)
if moves.startswith("max:"):
    assert 0 <= r["moves"] <= int(moves[4:]), "moves %d over the cap" % r["moves"]
else:
    assert r["moves"] == int(moves), "moves %d, want %s" % (r["moves"], moves)
print("ok: %s mean %.4f worst %.4f moves %d of %d" % (path.rsplit("/", 1)[-1],
      r["balancedness_mean"], r["balancedness_worst"], r["moves"], total))
PY
}

run_ok() { # name, args...
  local name=$1; shift
  "$ferryctl" placement plan "$@" >"$tmp/$name" 2>"$tmp/err"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "FAIL: ferryctl placement plan $* -> exit $rc:" >&2
    cat "$tmp/err" >&2
    fail=1
    return 1
  fi
}

# 4 workers x 10 slots (8 spare) and a list of unequal counts
if run_ok a.out --profile "$tmp/a.json" --workers 4 --slots 10 --out "$tmp/a.place" --json; then
  check_json "$tmp/a.out" 240 240 || fail=1
fi
if run_ok list.out --profile "$tmp/a.json" --slots 16,16,17,18 --min-distinct 2 --json; then
  check_json "$tmp/list.out" 402 402 || fail=1
fi
# the --out file read back: the same profile moves nothing, the table says so too
if run_ok same.out --profile "$tmp/a.json" --workers 4 --slots 10 --prev "$tmp/a.place" --json \
   --out "$tmp/same.place"; then
  check_json "$tmp/same.out" 240 0 || fail=1
  cmp -s "$tmp/a.place" "$tmp/same.place" || { echo "FAIL: --out differs after a 0-move plan" >&2; fail=1; }
fi
if run_ok same.txt --profile "$tmp/a.json" --workers 4 --slots 10 --prev "$tmp/a.place"; then
  grep -q "^moves 0 of 240 slots" "$tmp/same.txt" || { echo "FAIL: table:" >&2; cat "$tmp/same.txt" >&2; fail=1; }
fi
# a drifted profile: some moves; capped ones stay under the cap
if run_ok drift.out --profile "$tmp/b.json" --workers 4 --slots 10 --prev "$tmp/a.place" --json; then
  check_json "$tmp/drift.out" 240 max:240 || fail=1
fi
if run_ok cap.out --profile "$tmp/b.json" --workers 4 --slots 10 --prev "$tmp/a.place" \
   --max-moves 20 --tolerance 0.02 --json; then
  check_json "$tmp/cap.out" 240 max:20 || fail=1
fi
run_ok zero.out --profile "$tmp/b.json" --workers 4 --slots 10 --prev "$tmp/a.place" \
   --max-moves 0 --json && { check_json "$tmp/zero.out" 240 0 || fail=1; }
"$ferryctl" placement plan --help | grep -q -- "--max-moves M" || { echo "FAIL: --help" >&2; fail=1; }

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
P="placement plan --profile $tmp/a.json"
echo '{"layers": [[1, 2], [3, -4]]}' > "$tmp/neg.json"
echo '{"n_workers": 4, "slots": [10, 10, 10, 10], "layers": [[0, 1' > "$tmp/trunc.place"
expect 2 "missing subcommand" placement
expect 2 "unknown subcommand 'solve'" placement solve
expect 2 "profile FILE is required" placement plan --workers 4 --slots 10
expect 2 "--workers N needs --slots S" $P --workers 4
expect 2 "--slots S needs --workers N" $P --slots 10
expect 2 "--workers 3, but --slots lists 4 counts" $P --workers 3 --slots 8,8,8,8
expect 2 "--slots: 'x' (worker 1)" $P --slots 8,x,8
expect 2 "--workers: '0'" $P --workers 0 --slots 10
expect 2 "--max-moves needs --prev" $P --workers 4 --slots 10 --max-moves 5
expect 2 "--max-moves: '-1'" $P --workers 4 --slots 10 --prev "$tmp/a.place" --max-moves -1
expect 2 "--tolerance: 'nan'" $P --workers 4 --slots 10 --tolerance nan
expect 2 "--algo: 'greedy'" $P --workers 4 --slots 10 --algo greedy
expect 2 "unknown option --bogus" $P --workers 4 --slots 10 --bogus
expect 1 "nope.json: No such file" placement plan --profile "$tmp/nope.json" --workers 4 --slots 10
expect 1 "layers\[1\]\[1\] is -4" placement plan --profile "$tmp/neg.json" --workers 2 --slots 2
expect 1 "need at least 32 slots" $P --workers 4 --slots 7
expect 1 "min_distinct 5 needs 5 workers" $P --workers 4 --slots 10 --min-distinct 5
expect 1 "prev $tmp/a.place is 6 layers x 32 experts on 4 workers (slots 10,10,10,10), the plan 2 layers" \
  placement plan --profile "$tmp/short.json" --workers 4 --slots 10 --prev "$tmp/a.place"
expect 1 "(slots 10,10,10,10), the plan 6 layers x 32 experts on 4 workers (slots 11,11,11,11)" $P --workers 4 --slots 11 --prev "$tmp/a.place"
expect 1 "trunc.place: placement file: invalid JSON" $P --workers 4 --slots 10 --prev "$tmp/trunc.place"
expect 1 "--out $tmp/no/dir/x.place" $P --workers 4 --slots 10 --out "$tmp/no/dir/x.place"
exit $fail
