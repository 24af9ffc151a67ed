#!/bin/sh
# test-tokenizer-cli.sh FERRYCTL: `ferryctl tokenize|detokenize` end to end on the reference tokenizer.
set -u
ctl=$1
tok=${FERRY_SRC:-.}/tests/data/tokenizer/tokenizer.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }

# plain: text -> ids (no trailing newline in the input, none added)
out=$(printf 'Hello, my dog is cute' | "$ctl" tokenize --tokenizer "$tok") || fail "tokenize rc $?"
expect_eq "$out" "19923 14 1026 6397 344 33125" "tokenize"
out=$(printf 'Hello, my dog is cute' | "$ctl" tokenize --tokenizer "$tok" --add-special)
expect_eq "$out" "0 19923 14 1026 6397 344 33125" "tokenize --add-special"
out=$(printf '' | "$ctl" tokenize --tokenizer "$tok")
expect_eq "$out" "" "tokenize empty"

# --model DIR uses DIR/tokenizer.json
mkdir "$tmp/model" && cp "$tok" "$tmp/model/tokenizer.json"
out=$(printf 'hello world' | "$ctl" tokenize --model "$tmp/model")
expect_eq "$out" "33310 2058" "tokenize --model"

# plain detokenize: ids -> bytes, exact
printf '0 19923 14 1026 6397 344 33125\n' | "$ctl" detokenize --tokenizer "$tok" > "$tmp/d1" || fail "detokenize rc"
printf '<\357\275\234begin\342\226\201of\342\226\201sentence\357\275\234>Hello, my dog is cute' > "$tmp/w1"
cmp -s "$tmp/d1" "$tmp/w1" || fail "detokenize output"
printf '0,19923, 14' | "$ctl" detokenize --tokenizer "$tok" --skip-special > "$tmp/d2"
printf 'Hello,' > "$tmp/w2"
cmp -s "$tmp/d2" "$tmp/w2" || fail "detokenize --skip-special"

# round trip of a file with tabs, CRLF, CJK, emoji, no final newline
printf 'int main(void)\r\n{\n\treturn 0; // \344\270\255\346\226\207 \360\237\230\200\n}\n\n  end' > "$tmp/src"
"$ctl" tokenize --tokenizer "$tok" < "$tmp/src" > "$tmp/ids" || fail "tokenize file"
"$ctl" detokenize --tokenizer "$tok" < "$tmp/ids" > "$tmp/back" || fail "detokenize file"
cmp -s "$tmp/src" "$tmp/back" || fail "file round trip"

# --jsonl both ways
printf '%s\n' '"Hello, my dog is cute"' '""' '"<｜User｜>hi\n\tthere"' > "$tmp/in.jsonl"
"$ctl" tokenize --tokenizer "$tok" --jsonl < "$tmp/in.jsonl" > "$tmp/ids.jsonl" || fail "tokenize --jsonl"
expect_eq "$(sed -n 1p "$tmp/ids.jsonl")" "[19923,14,1026,6397,344,33125]" "jsonl line 1"
expect_eq "$(sed -n 2p "$tmp/ids.jsonl")" "[]" "jsonl line 2"
expect_eq "$(wc -l < "$tmp/ids.jsonl" | tr -d ' ')" "3" "jsonl line count"
"$ctl" detokenize --tokenizer "$tok" --jsonl < "$tmp/ids.jsonl" > "$tmp/out.jsonl" || fail "detokenize --jsonl"
cmp -s "$tmp/in.jsonl" "$tmp/out.jsonl" || fail "jsonl round trip: $(cat "$tmp/out.jsonl")"
out=$(printf '[0,33310]\n' | "$ctl" detokenize --tokenizer "$tok" --jsonl --skip-special)
expect_eq "$out" '"hello"' "detokenize --jsonl --skip-special"

# bad input lines: exit 1 naming the line
printf '"ok"\n42\n' | "$ctl" tokenize --tokenizer "$tok" --jsonl > /dev/null 2> "$tmp/err"
rc=$?; expect_eq "$rc" 1 "bad jsonl rc"
grep -q "line 2" "$tmp/err" || fail "bad jsonl message: $(cat "$tmp/err")"
printf '[1]\n[1,"x"]\n' | "$ctl" detokenize --tokenizer "$tok" --jsonl > /dev/null 2> "$tmp/err"
rc=$?; expect_eq "$rc" 1 "bad detok jsonl rc"
grep -q "line 2" "$tmp/err" || fail "bad detok jsonl message: $(cat "$tmp/err")"
printf '[99999999]\n' | "$ctl" detokenize --tokenizer "$tok" --jsonl > /dev/null 2>&1
expect_eq "$?" 1 "id out of range (jsonl)"
printf '1 2 abc' | "$ctl" detokenize --tokenizer "$tok" > /dev/null 2> "$tmp/err"
expect_eq "$?" 1 "bad id rc"
grep -q "abc" "$tmp/err" || fail "bad id message: $(cat "$tmp/err")"

# usage errors exit 2; --help exits 0 on stdout
"$ctl" tokenize < /dev/null > /dev/null 2>&1; expect_eq "$?" 2 "no tokenizer"
"$ctl" tokenize --tokenizer a --model b < /dev/null > /dev/null 2>&1; expect_eq "$?" 2 "both"
"$ctl" tokenize --tokenizer "$tok" --bogus < /dev/null > /dev/null 2>&1; expect_eq "$?" 2 "unknown option"
"$ctl" tokenize --tokenizer "$tok" extra < /dev/null > /dev/null 2>&1; expect_eq "$?" 2 "extra argument"
"$ctl" tokenize --tokenizer < /dev/null > /dev/null 2>&1; expect_eq "$?" 2 "missing argument"
"$ctl" detokenize --tokenizer "$tok" --add-special < /dev/null > /dev/null 2>&1; expect_eq "$?" 2 "detok --add-special"
"$ctl" tokenize --help | grep -q "Usage: ferryctl tokenize" || fail "tokenize --help"
"$ctl" detokenize --help | grep -q "Usage: ferryctl detokenize" || fail "detokenize --help"
# a missing or broken tokenizer is a runtime failure, exit 1
"$ctl" tokenize --tokenizer "$tmp/none.json" < /dev/null > /dev/null 2> "$tmp/err"; expect_eq "$?" 1 "missing file"
grep -q "none.json" "$tmp/err" || fail "missing file message"
printf '{"model":{"type":"WordPiece"}}' > "$tmp/bad.json"
"$ctl" tokenize --tokenizer "$tmp/bad.json" < /dev/null > /dev/null 2> "$tmp/err"; expect_eq "$?" 1 "bad file"
grep -q "WordPiece" "$tmp/err" || fail "bad file message: $(cat "$tmp/err")"

[ "$fails" -eq 0 ] && echo "cli: all passed"
exit $((fails > 0))
