#!/usr/bin/env bash
# Installs what Ferry needs to build and test on Debian 12 (run as root or with sudo).
set -euo pipefail
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pkgs=(
  build-essential meson ninja-build pkg-config clang llvm
  libjansson-dev libpcre2-dev libopenblas-dev libinih-dev libssl-dev libsystemd-dev
  libibverbs-dev librdmacm-dev ibverbs-providers
  libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler
  libmicrohttpd-dev  # /metrics
  xz-utils
  prometheus  # tests: promtool check metrics, and a real server scraping a cluster
  chromium    # tests/cluster/run-status-page.sh: the status page in headless Chromium
  systemd-container debootstrap  # tests/deploy/run-systemd.sh: the units under systemd
  openssl  # tests/rpc/gen-certs.sh: the test PKI
  python3-grpcio python3-grpc-tools  # tests/py: Python gRPC clients
)
# tests/http: the openai npm client (npm ci at test time) needs Node.js
command -v node >/dev/null || pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
