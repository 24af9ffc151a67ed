#!/usr/bin/env bash
# TLS on a real cluster, over a fresh PKI (gen-certs.sh), on 127.0.0.1 only:
#   A. [server] tls_* with tls_client_ca (mTLS) on the one listener that also serves
#      Internal: a worker without a client certificate, and one with an expired one, are
#      refused; one with a certificate of the CA joins. Python grpcio with a client
#      certificate gets through; plaintext, no or an expired or a foreign client
#      certificate, and trusting another CA are refused. ferryctl generate with
#      --tls-ca/--tls-cert/--tls-key (and the FERRY_TLS_* variables) works, without the
#      client certificate it fails. A second coordinator on the same port fails naming
#      the address.
#   B. `ferryctl up` with TLS on [server] listen (no client certificates) and a
#      [cluster] listen with mTLS for the workers (--tls-* hands them the client
#      certificate): Python and ferryctl generate/load with --tls-ca work, plaintext and
#      another CA are refused.
#   C. An expired server certificate: Python and ferryctl refuse it.
#   D. Configuration errors name the key and the file.
# Usage: run-cluster-tls.sh COORDINATOR_BIN WORKER_BIN FERRYCTL PROTO_DIR
set -uo pipefail
co_bin=$1 wk_bin=$2 ferryctl=$3 proto=$4
here=$(cd "$(dirname "$0")" && pwd)
golden=$FERRY_GOLDEN/tiny-a
[ -f "$golden/config.json" ] || { echo "SKIP: no $golden (FERRY_GOLDEN)"; exit 77; }
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail=0
rc=0
"$here/../rpc/gen-certs.sh" "$tmp/pki" > /dev/null || rc=$?
[ "$rc" = 0 ] || exit "$rc"
pki=$tmp/pki
: > "$tmp/empty.conf"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/secret"
chmod 600 "$tmp/secret"

py_ok=1
/usr/bin/python3 -c "import grpc, grpc_tools.protoc" 2> /dev/null ||
  python3 -c "import grpc, grpc_tools.protoc" 2> /dev/null || py_ok=0
[ "$py_ok" = 1 ] || echo "note: python3-grpcio missing: the Python checks are skipped"

ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*" >&2; fail=1; }

# Starts a coordinator with extra args; sets $port, $co.
coordinator() {
  rm -f "$tmp/co.out"
  "$co_bin" -c "$tmp/empty.conf" -m "$golden" -l 127.0.0.1:0 -w 1 \
    --secret-file "$tmp/secret" -s cluster.join_timeout=60s "$@" > "$tmp/co.out" 2> "$tmp/co.err" &
  co=$!
  pids+=("$co")
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's/.*listening on port \([0-9]*\).*$/\1/p' "$tmp/co.out" 2>/dev/null || true)
    [ -n "$port" ] && return 0
    kill -0 "$co" 2> /dev/null || break
    sleep 0.1
  done
  echo "coordinator did not start:" >&2; cat "$tmp/co.err" >&2; exit 1
}

# SIGTERM: a drain exits WANT (0 once serving, 1 while still waiting for workers), and
# under ASan without leaks or errors (which would exit 134).
stop_coordinator() { # want
  local rc
  kill -TERM "$co"; wait "$co"; rc=$?
  [ "$rc" = "$1" ] || { bad "coordinator exit $rc after SIGTERM (want $1):"; tail -20 "$tmp/co.err" >&2; }
}

worker() { # name, extra args...
  local name=$1; shift
  "$wk_bin" -c "$tmp/empty.conf" -C "127.0.0.1:$port" -n "$name" -m "$golden" \
    --secret-file "$tmp/secret" "$@" 2> "$tmp/$name.err" &
  pids+=($!)
  last=$!
}

# wait_log FILE PATTERN SECONDS: FILE comes to hold PATTERN.
wait_log() {
  for _ in $(seq $(($3 * 10))); do grep -q -- "$2" "$1" 2> /dev/null && return 0; sleep 0.1; done
  return 1
}

# A worker refused at the TLS handshake keeps retrying its join (logging the first
# failure) until join_timeout; it must never join.
refused_worker() { # what, name, args...
  local what=$1 name=$2; shift 2
  worker "$name" "$@"
  if wait_log "$tmp/$name.err" "join: coordinator 127.0.0.1:$port: .*UNAVAILABLE" 20; then
    sleep 1
    if grep -q "'$name' joined\|worker .*$name.* joined" "$tmp/co.err"; then
      bad "$what: joined"
    else
      ok "$what: refused: $(grep -m1 'join: coordinator' "$tmp/$name.err")"
    fi
  else
    bad "$what: no refused join in its log:"; cat "$tmp/$name.err" >&2
  fi
  kill -TERM "$last"; wait "$last" 2> /dev/null
}

python_case() { # case, addr
  [ "$py_ok" = 1 ] || return 0
  if /usr/bin/python3 "$here/tls_client.py" --proto "$proto" --addr "$2" --pki "$pki" \
      --case "$1" > "$tmp/py.out" 2>&1; then
    sed 's/^/  python: /' "$tmp/py.out"; ok "python $1 against $2"
  else
    cat "$tmp/py.out" >&2; bad "python $1 against $2"
  fi
}

# gen WANT_RC WHAT args...: ferryctl generate (3 tokens) exits WANT_RC.
gen() {
  local want=$1 what=$2 rc; shift 2
  timeout 120 "$ferryctl" generate --tokens "1 2 3" -n 3 -q --timeout 60 "$@" > "$tmp/gen.out" 2> "$tmp/gen.err"
  rc=$?
  if [ "$rc" -eq "$want" ]; then
    ok "ferryctl generate $what: exit $rc: $({ head -c 60 "$tmp/gen.out"; grep -v '^E[0-9]' "$tmp/gen.err" | head -c 120; } | tr '\n' ' ')"
  else
    bad "ferryctl generate $what: exit $rc (want $want):"; cat "$tmp/gen.err" >&2
  fi
}

# ---- A. mTLS on the shared listener -----------------------------------------------------
coordinator -s server.tls_cert="$pki/server.pem" -s server.tls_key="$pki/server.key" \
  -s server.tls_client_ca="$pki/ca.pem"
grep -q "listening on 127.0.0.1:0 (port $port, mTLS)" "$tmp/co.err" &&
  ok "coordinator says mTLS" || bad "coordinator log lacks 'mTLS'"
refused_worker "worker without a client certificate" wbad -s cluster.tls_ca="$pki/ca.pem"
refused_worker "worker with an expired client certificate" wexp -s cluster.tls_ca="$pki/ca.pem" \
  -s cluster.tls_cert="$pki/client-expired.pem" -s cluster.tls_key="$pki/client-expired.key"
refused_worker "plaintext worker" wplain
worker w0 -s cluster.tls_ca="$pki/ca.pem" -s cluster.tls_cert="$pki/client.pem" \
  -s cluster.tls_key="$pki/client.key"
if wait_log "$tmp/co.err" "serving: " 60; then
  ok "worker joined over mTLS: $(grep -m1 "'w0' joined" "$tmp/co.err")"
else
  bad "the worker with a client certificate did not join:"; cat "$tmp/w0.err" >&2
fi
gen 0 "with a client certificate" -c "127.0.0.1:$port" --tls-ca "$pki/ca.pem" \
  --tls-cert "$pki/client.pem" --tls-key "$pki/client.key"
FERRY_TLS_CA=$pki/ca.pem FERRY_TLS_CERT=$pki/client.pem FERRY_TLS_KEY=$pki/client.key \
  gen 0 "with FERRY_TLS_*" -c "127.0.0.1:$port"
gen 1 "without a client certificate" -c "127.0.0.1:$port" --tls-ca "$pki/ca.pem"
gen 1 "in plaintext" -c "127.0.0.1:$port"
python_case mtls "127.0.0.1:$port"
# Item 5: a second coordinator on the taken port fails at once, naming it.
"$co_bin" -c "$tmp/empty.conf" -m "$golden" -l "127.0.0.1:$port" -w 1 \
  --secret-file "$tmp/secret" > /dev/null 2> "$tmp/co2.err"
rc=$?
if [ "$rc" = 1 ] && grep -q "listen 127.0.0.1:$port: address in use" "$tmp/co2.err"; then
  ok "second coordinator on port $port: $(grep -m1 'address in use' "$tmp/co2.err")"
else
  bad "second coordinator on port $port: exit $rc:"; cat "$tmp/co2.err" >&2
fi
stop_coordinator 0

# ---- B. ferryctl up: public TLS, workers over mTLS on [cluster] listen ------------------
"$ferryctl" up --model "$golden" --workers 2 --listen 127.0.0.1:0 --threads 1 --timeout 60 \
  --set server.tls_cert="$pki/server.pem" --set server.tls_key="$pki/server.key" \
  --set cluster.listen=127.0.0.1:0 --set cluster.tls_cert="$pki/server.pem" \
  --set cluster.tls_key="$pki/server.key" --set cluster.tls_client_ca="$pki/ca.pem" \
  --tls-ca "$pki/ca.pem" --tls-cert "$pki/client.pem" --tls-key "$pki/client.key" \
  > "$tmp/up.out" 2> "$tmp/up.err" &
up=$!
pids+=("$up")
if wait_log "$tmp/up.out" "^address: " 90; then
  addr=$(sed -n 's/^address: //p' "$tmp/up.out" 2>/dev/null || true)
  ok "ferryctl up over TLS at $addr: $(grep -m1 'workers join on' "$tmp/up.err")"
  gen 0 "--tls-ca (no client certificate)" -c "$addr" --tls-ca "$pki/ca.pem"
  FERRY_TLS_CA=$pki/ca.pem gen 0 "FERRY_TLS_CA" -c "$addr"
  gen 1 "in plaintext" -c "$addr"
  gen 1 "trusting another CA" -c "$addr" --tls-ca "$pki/other-ca.pem"
  if "$ferryctl" load -c "$addr" --tls-ca "$pki/ca.pem" > "$tmp/load.out" 2>&1; then
    ok "ferryctl load --tls-ca"
  else
    bad "ferryctl load --tls-ca:"; cat "$tmp/load.out" >&2
  fi
  python_case tls "$addr"
else
  bad "ferryctl up with TLS did not serve:"; tail -30 "$tmp/up.err" >&2
fi
kill -TERM "$up"; wait "$up" || bad "ferryctl up did not stop cleanly"

# ---- C. an expired server certificate --------------------------------------------------
coordinator -s server.tls_cert="$pki/server-expired.pem" -s server.tls_key="$pki/server-expired.key"
grep -q "certificate has expired" "$tmp/co.err" &&
  ok "coordinator warns about its expired certificate" || bad "no expiry warning"
gen 1 "against an expired server certificate" -c "127.0.0.1:$port" --tls-ca "$pki/ca.pem"
grep -q "certificate verify failed\|UNAVAILABLE" "$tmp/gen.err" || bad "no handshake error shown"
python_case expired "127.0.0.1:$port"
stop_coordinator 1

# ---- D. configuration errors -------------------------------------------------------------
conf_err() { # what, pattern, args...
  local what=$1 pat=$2 rc; shift 2
  "$co_bin" -c "$tmp/empty.conf" -m "$golden" -l 127.0.0.1:0 --secret-file "$tmp/secret" "$@" \
    > /dev/null 2> "$tmp/conf.err"
  rc=$?
  if [ "$rc" = 2 ] && grep -q -- "$pat" "$tmp/conf.err"; then
    ok "$what: $(head -1 "$tmp/conf.err")"
  else
    bad "$what: exit $rc (want 2):"; cat "$tmp/conf.err" >&2
  fi
}
conf_err "missing certificate" "\[server\] tls_\*: TLS certificate: $tmp/nope.pem: No such file" \
  -s server.tls_cert="$tmp/nope.pem" -s server.tls_key="$pki/server.key"
conf_err "key of another certificate" "does not match the certificate" \
  -s server.tls_cert="$pki/server.pem" -s server.tls_key="$pki/client.key"
conf_err "cert without key" "\[server\] tls_cert: set without \[server\] tls_key" \
  -s server.tls_cert="$pki/server.pem"
conf_err "not PEM" "\[cluster\] tls_\*: TLS client CA: .*not a PEM certificate" \
  -s cluster.listen=127.0.0.1:0 -s cluster.tls_cert="$pki/server.pem" \
  -s cluster.tls_key="$pki/server.key" -s cluster.tls_client_ca="$pki/not-pem.pem"

[ "$fail" = 0 ] && echo "all TLS checks passed"
exit "$fail"
