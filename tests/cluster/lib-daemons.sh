# SPDX-License-Identifier: Apache-2.0
# lib-daemons.sh - sourced by the tests that start ferry-coordinator and ferry-workers
# themselves (lib-up.sh is for those that run `ferryctl up`). Gives:
#   $tmp           a temporary directory holding empty.conf (a config file that sets
#                  nothing) and secret (a cluster secret, mode 0600); removed at exit
#   pids           an array: append every process started; at exit each gets
#                  $stop_signal (TERM unless the script set it before sourcing) and is
#                  waited for
#   fail MSG...    prints "FAIL: MSG" and the last $fail_tail lines (20 unless set) of the
#                  coordinator's log, $tmp/co.err; exits 1
#   wait_port      waits up to 10 s for "listening on port N" in $tmp/co.out: sets $port,
#                  returns 1 if it never comes
#   wait_serving   waits up to 30 s for `$F status --json` (FERRY_CLUSTER set) to say the
#                  cluster serves; returns 1 if it never does
tmp=$(mktemp -d)
pids=()
stop_signal=${stop_signal:-TERM}
fail_tail=${fail_tail:-20}
lib_daemons_cleanup() {
  for p in "${pids[@]}"; do kill -"$stop_signal" "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap lib_daemons_cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -"$fail_tail" "$tmp/co.err" >&2; exit 1; }
: > "$tmp/empty.conf"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/secret"
chmod 600 "$tmp/secret"

wait_port() {
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's/.*listening on port \([0-9]*\)$/\1/p' "$tmp/co.out" 2>/dev/null || true)
    [ -n "$port" ] && return 0
    sleep 0.1
  done
  return 1
}

wait_serving() {
  for _ in $(seq 300); do
    "$F" status --json > "$tmp/st.json" 2>/dev/null &&
      python3 -c "import json,sys; s=json.load(open(sys.argv[1])); sys.exit(s['status'] != 'serving')" \
        "$tmp/st.json" && return 0
    sleep 0.1
  done
  return 1
}
