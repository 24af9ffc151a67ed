#!/bin/sh
# run-fuzzer.sh FUZZER CORPUS SECONDS: a bounded libFuzzer run seeded from CORPUS.
# New inputs go to a scratch dir; a crash leaves its reproducer in $FERRY_BUILD/fuzz-crashes.
set -eu
fuzzer=$1 corpus=$2 secs=$3
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
crashdir=${FERRY_BUILD:-.}/fuzz-crashes
mkdir -p "$crashdir"
exec "$fuzzer" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
	-artifact_prefix="$crashdir/$(basename "$fuzzer")-" -print_final_stats=1 \
	"$scratch" "$corpus"
