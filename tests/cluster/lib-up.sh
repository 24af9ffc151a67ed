# SPDX-License-Identifier: Apache-2.0
# lib-up.sh - sourced by the tests that run a local cluster under `ferryctl up`. Gives:
#   $tmp              a temporary directory, removed at exit (the cluster stopped first)
#   up FERRYCTL ARGS  starts `FERRYCTL up --listen 127.0.0.1:0 ARGS` in the background and
#                     returns once it serves, with $addr its address and $pids its
#                     processes; exits 1 showing its log when it does not come up
#   down              stops it as an operator would (SIGTERM) and waits for it
# A script that needs more at exit sets its own trap and calls lib_up_cleanup from it.
tmp=$(mktemp -d)
up_pid=
lib_up_cleanup() {
  if [ -n "$up_pid" ]; then kill -TERM "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap lib_up_cleanup EXIT

up() {
  local f=$1
  shift
  "$f" up --listen 127.0.0.1:0 "$@" > "$tmp/up.out" 2> "$tmp/up.err" &
  up_pid=$!
  addr= pids=
  for _ in $(seq 600); do
    addr=$(sed -n 's/^address: //p' "$tmp/up.out" 2>/dev/null || true)
    pids=$(sed -n 's/^pids: //p' "$tmp/up.out" 2>/dev/null || true)
    [ -n "$addr" ] && [ -n "$pids" ] && return 0
    kill -0 "$up_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "ferryctl up $* did not come up:" >&2
  cat "$tmp/up.err" >&2
  exit 1
}

down() { kill -TERM "$up_pid"; wait "$up_pid"; up_pid=; }
