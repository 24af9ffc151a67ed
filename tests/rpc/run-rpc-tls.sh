#!/usr/bin/env bash
# The rpc library over TLS and mTLS: a fresh PKI (gen-certs.sh) in a temporary folder,
# then `test_rpc --case tls --certs DIR`.
# Usage: run-rpc-tls.sh TEST_RPC
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'chmod -R u+rwX "$tmp"; rm -rf "$tmp"' EXIT
rc=0
"$here/gen-certs.sh" "$tmp" || rc=$?
[ "$rc" = 0 ] || exit "$rc"
# The "localhost" check resolves a name: gRPC's c-ares resolver leaks 10 bytes per process
# under LeakSanitizer (libcares 1.18); the native one (getaddrinfo) does not.
# gRPC's handshaker may leak one OpenSSL object when a handshake is cut off (lsan-tls.supp).
LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$here/lsan-tls.supp" \
  GRPC_DNS_RESOLVER=native "$1" --case tls --certs "$tmp"
