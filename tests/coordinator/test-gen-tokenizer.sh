#!/bin/sh
# test-gen-tokenizer.sh FERRYCTL: a synthetic model with a real tokenizer end to end:
# `ferryctl model gen --preset tiny --tokenizer tokenizer.json DIR`, then text through
# `ferryctl tokenize --model DIR` and the ids through `ferryctl run --model DIR`.
set -u
ctl=$1
tok=${FERRY_SRC:-.}/tests/data/tokenizer/tokenizer.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }
json_int() { sed -n "s/^ *\"$1\": \\([0-9-]*\\),*\$/\\1/p" "$2"; }

"$ctl" model gen --preset tiny --layers 2 --tokenizer "$tok" --quiet "$tmp/m" > "$tmp/gen.out" ||
	fail "model gen --tokenizer rc $?"
cat "$tmp/gen.out"
grep -q "tokenizer.json" "$tmp/gen.out" || fail "gen summary does not mention the tokenizer"
cmp -s "$tok" "$tmp/m/tokenizer.json" || fail "tokenizer.json not copied unchanged"
# DeepSeek-V3's tokenizer: 128815 ids, BOS 0, EOS 1.
expect_eq "$(json_int vocab_size "$tmp/m/config.json")" 128815 "vocab_size"
expect_eq "$(json_int bos_token_id "$tmp/m/config.json")" 0 "bos_token_id"
expect_eq "$(json_int eos_token_id "$tmp/m/config.json")" 1 "eos_token_id"
"$ctl" model info "$tmp/m" > "$tmp/info" || fail "model info rc $?"
grep -q "vocab 128815" "$tmp/info" || fail "model info: $(cat "$tmp/info")"

# Text -> ids with the model directory's tokenizer; ids -> text back.
ids=$(printf 'Hello, my dog is cute' | "$ctl" tokenize --model "$tmp/m") || fail "tokenize rc $?"
expect_eq "$ids" "19923 14 1026 6397 344 33125" "tokenize --model"
back=$(printf '%s' "$ids" | "$ctl" detokenize --model "$tmp/m") || fail "detokenize rc $?"
expect_eq "$back" "Hello, my dog is cute" "detokenize --model"

# The ids run through the model; every generated id is one the tokenizer can decode.
out=$("$ctl" run --model "$tmp/m" --tokens "0 $ids" --max-new 6 --threads 2) ||
	fail "run rc $?"
echo "run: $out"
expect_eq "$(printf '%s\n' "$out" | wc -w | tr -d ' ')" 6 "generated count"
printf '%s' "$out" | "$ctl" detokenize --model "$tmp/m" > /dev/null || fail "detokenize of the output"
# The highest id is valid (vocab covers the tokenizer).
"$ctl" run --model "$tmp/m" --tokens "128814 1" --max-new 1 --threads 2 > /dev/null ||
	fail "run with id 128814"

# A regeneration without --tokenizer keeps its own vocab; a bad tokenizer path is refused.
"$ctl" model gen --preset tiny --layers 1 --quiet "$tmp/m2" > /dev/null || fail "plain gen"
expect_eq "$(json_int vocab_size "$tmp/m2/config.json")" 1024 "plain vocab_size"
[ ! -e "$tmp/m2/tokenizer.json" ] || fail "plain gen wrote a tokenizer.json"
"$ctl" model gen --preset tiny --tokenizer "$tmp/nope.json" --quiet "$tmp/m3" 2> "$tmp/err"
expect_eq "$?" 1 "missing tokenizer rc"
grep -q "nope.json" "$tmp/err" || fail "missing tokenizer message: $(cat "$tmp/err")"
printf '{"model": 3}' > "$tmp/bad.json"
"$ctl" model gen --preset tiny --tokenizer "$tmp/bad.json" --quiet "$tmp/m4" 2> "$tmp/err"
expect_eq "$?" 1 "bad tokenizer rc"
[ ! -e "$tmp/m4/config.json" ] || fail "bad tokenizer still wrote config.json"

[ "$fails" -eq 0 ] && echo "ok: gen --tokenizer" && exit 0
exit 1
