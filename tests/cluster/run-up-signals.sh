#!/usr/bin/env bash
# How `ferryctl up` stops, as an operator stops it:
#  A. Ctrl-C at a terminal: SIGINT to the whole foreground process group. The daemons run
#     in process groups of their own, so only ferryctl takes it and stops them in order
#     (the coordinator drains and tells the workers to leave). Before, every worker took the
#     SIGINT as its own drain at the same moment, asked to hand its experts back, was
#     refused and warned that "requests that need them will fail".
#  B. ferryctl killed outright (SIGKILL): no daemon outlives it (PR_SET_PDEATHSIG), and a
#     worker that finds the coordinator stopping leaves without a warning.
# Usage: run-up-signals.sh FERRYCTL
set -euo pipefail
ferryctl=$1
tmp=$(mktemp -d)
up_pid=
cleanup() {
  if [ -n "$up_pid" ]; then kill -KILL "$up_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "---- ferryctl up log:" >&2; cat "$tmp/up.err" >&2; exit 1; }

# Starts `ferryctl up` as the leader of a session (and so of a process group) of its own,
# as a shell does with a foreground job; sets $up_pid and $pids.
start() {
  : > "$tmp/up.out"
  setsid "$ferryctl" up --listen 127.0.0.1:0 --model "$FERRY_GOLDEN/tiny-a" --workers 2 \
    > "$tmp/up.out" 2> "$tmp/up.err" &
  up_pid=$!
  pids=
  for _ in $(seq 600); do
    pids=$(sed -n 's/^pids: //p' "$tmp/up.out")
    [ -n "$pids" ] && break
    kill -0 "$up_pid" 2>/dev/null || fail "ferryctl up exited before it served"
    sleep 0.1
  done
  [ -n "$pids" ] || fail "ferryctl up did not serve in 60 s"
  [ "$(ps -o pgid= -p "$up_pid" | tr -d ' ')" = "$up_pid" ] ||
    fail "ferryctl up ($up_pid) does not lead its process group"
  for p in $pids; do
    [ "$(ps -o pgid= -p "$p" | tr -d ' ')" != "$up_pid" ] ||
      fail "daemon $p is in ferryctl's process group: a Ctrl-C would reach it"
  done
}

# Waits up to $1 s for every daemon of the cluster to be gone.
gone_within() {
  for _ in $(seq $(($1 * 10))); do
    local alive=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  return 1
}

no_warnings() {
  if grep -E 'leaving without handing|asked to unload .*refused' "$tmp/up.err"; then
    fail "$1: the stop was not orderly"
  fi
}

# ---- A. Ctrl-C: SIGINT to the foreground group ------------------------------------------
start
kill -INT -- "-$up_pid"
rc=0
wait "$up_pid" || rc=$?
up_pid=
[ "$rc" = 0 ] || fail "A: ferryctl up exited $rc after SIGINT to its process group"
grep -q '^ferryctl up: stopped' "$tmp/up.err" || fail "A: no 'ferryctl up: stopped'"
grep -q 'coordinator asks to drain' "$tmp/up.err" || fail "A: the workers were not drained by the coordinator"
gone_within 5 || fail "A: daemons still running after ferryctl exited: $pids"
no_warnings A
echo "ok A: Ctrl-C stops the cluster in order (exit 0, workers drained by the coordinator)"

# ---- B. SIGKILL: nothing outlives ferryctl ----------------------------------------------
start
kill -KILL "$up_pid"
wait "$up_pid" 2>/dev/null || true
up_pid=
gone_within 30 || fail "B: daemons outlived a killed ferryctl: $(ps -o pid=,cmd= -p "${pids// /,}")"
no_warnings B
echo "ok B: a killed ferryctl takes its daemons with it"
