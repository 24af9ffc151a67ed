#!/usr/bin/env bash
# 64 concurrent streaming clients against a local cluster (`ferryctl up`, 2 workers, 2
# ping-pong micro-batches):
# tokens identical to each request alone, coordinator RSS flat after warm-up, cancelled
# clients' KV blocks freed (test_load checks all three). Then admission control: with one
# sequence slot and a queue of 2, a burst of requests gets RESOURCE_EXHAUSTED for the
# excess, never an error or a hang, and the queued ones still complete.
#
# Usage: run-load.sh FERRYCTL TEST_LOAD
set -euo pipefail
ferryctl=$1 test_load=$2
. "$(dirname "$0")/../cluster/lib-up.sh"

# Under AddressSanitizer freed memory sits in a quarantine (256 MiB by default), which
# would look like a leak to the RSS check: keep it small so the check measures the code.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0:thread_local_quarantine_size_kb=0"

model=$FERRY_GOLDEN/tiny-a
up "$ferryctl" --threads 1 --model "$model" --workers 2 --micro-batches 2 --set engine.max_seqs=64
"$test_load" "$addr" "${pids%% *}" 64 3
down

# Admission control: one sequence at a time, two may wait.
up "$ferryctl" --threads 1 --model "$model" --workers 1 --set engine.max_seqs=1 --set engine.queue_max=2
for i in $(seq 8); do
  "$ferryctl" run --cluster "$addr" --tokens "1 2 3" --max-new 200 > "$tmp/r$i.out" 2> "$tmp/r$i.err" &
done
wait_rc=0
for job in $(jobs -p); do [ "$job" = "$up_pid" ] && continue; wait "$job" || true; done
ok=0 full=0 other=0
for i in $(seq 8); do
  if [ -s "$tmp/r$i.out" ] && [ "$(wc -w < "$tmp/r$i.out")" = 200 ]; then ok=$((ok + 1))
  elif grep -q "RESOURCE_EXHAUSTED: the admission queue is full" "$tmp/r$i.err"; then full=$((full + 1))
  else other=$((other + 1)); echo "request $i:" >&2; cat "$tmp/r$i.err" >&2; fi
done
echo "burst of 8 with 1 slot + queue of 2: $ok completed, $full refused RESOURCE_EXHAUSTED, $other other"
[ "$other" = 0 ] && [ "$ok" -ge 3 ] && [ "$full" -ge 1 ] || { echo "FAIL: admission control" >&2; exit 1; }
down

# Memory-short admission: a pool of 8 KV blocks (128 positions) for 8 sequence slots. A
# request whose context needs 4 blocks waits for blocks instead of failing (two run at a
# time); one that could never fit is refused, naming the sizes.
up "$ferryctl" --threads 1 --model "$model" --workers 1 --set engine.max_seqs=8 --set engine.kv_blocks=8
for i in $(seq 6); do
  "$ferryctl" run --cluster "$addr" --tokens "1 2 3" --max-new 50 > "$tmp/k$i.out" 2> "$tmp/k$i.err" &
done
for job in $(jobs -p); do [ "$job" = "$up_pid" ] && continue; wait "$job" || true; done
for i in $(seq 6); do
  [ "$(wc -w < "$tmp/k$i.out")" = 50 ] || { echo "FAIL: request $i did not complete:" >&2; cat "$tmp/k$i.err" >&2; exit 1; }
done
echo "6 requests of 4 KV blocks each through a pool of 8: all completed"
if "$ferryctl" run --cluster "$addr" --tokens "1 2 3" --max-new 200 > /dev/null 2> "$tmp/big.err" ||
   ! grep -q "INVALID_ARGUMENT: the request needs 13 KV blocks, the pool has 8" "$tmp/big.err"; then
  echo "FAIL: a request larger than the pool:" >&2; cat "$tmp/big.err" >&2; exit 1
fi
echo "a request larger than the pool: $(cat "$tmp/big.err")"
down
echo "load test passed"
