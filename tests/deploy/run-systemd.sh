#!/usr/bin/env bash
# deploy/systemd for real: boots a Debian 12 root filesystem (debootstrap, cached) under
# `systemd-nspawn --boot`, so that systemd is PID 1, installs Ferry into it with
# deploy/install.sh and runs tests/deploy/systemd-inside.sh there: Type=notify readiness,
# `systemctl stop ferry-worker@w1` draining with no failed request while clients run, a
# hung worker (kill -STOP) killed by the watchdog, restarted and rejoining, logs in
# journald with FERRY_COMPONENT / FERRY_LEVEL / PRIORITY fields, and the
# `systemd-analyze security` exposure of both units (printed; README quotes them).
# Exits 77, saying why, without root, systemd-nspawn or debootstrap, or when the root
# filesystem cannot be made (no Debian mirror) or nspawn cannot boot here.
# Usage: run-systemd.sh BUILD_DIR
#   FERRY_SYSTEMD_ROOTFS  the cached root filesystem (default /var/tmp/ferry-systemd-rootfs)
set -uo pipefail
build=$(cd "${1:?usage: run-systemd.sh BUILD_DIR}" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
cache=${FERRY_SYSTEMD_ROOTFS:-/var/tmp/ferry-systemd-rootfs}
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root (systemd-nspawn)"; exit 77; }
for b in systemd-nspawn debootstrap dpkg-query; do
  command -v $b > /dev/null || { echo "SKIP: $b not installed (apt-get install systemd-container debootstrap)"; exit 77; }
done

# The root filesystem: Debian 12 with systemd and the shared libraries our binaries link.
if [ ! -x "$cache/lib/systemd/systemd" ]; then
  libs=$(for b in coordinator/ferry-coordinator worker/ferry-worker ctl/ferryctl; do
           ldd "$build/$b" | awk '$3 ~ /^\// {print $3}'; done | sort -u)
  pkgs=$(for l in $libs; do dpkg-query -S "$(readlink -f "$l")" 2>/dev/null ||
           dpkg-query -S "$l" 2>/dev/null; done | cut -d: -f1 | sort -u | tr '\n' ',')
  # the Debian mirror (and proxy) apt uses here
  mirror=$( (awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources;
             awk '$1 == "deb" && $2 ~ /^http/ {print $2; exit}' /etc/apt/sources.list) 2>/dev/null |
            head -1)
  mirror=${mirror:-http://deb.debian.org/debian}
  eval "$(apt-config shell http_proxy Acquire::http::Proxy 2>/dev/null)"
  [ -n "${http_proxy:-}" ] && export http_proxy
  echo "debootstrap from $mirror into $cache with: ${pkgs%,}"
  rm -rf "$cache.tmp"
  if ! debootstrap --variant=minbase \
       --include="systemd,systemd-sysv,dbus,passwd,openssl,python3,procps,${pkgs%,}" \
       bookworm "$cache.tmp" "$mirror" > "/tmp/ferry-debootstrap.log" 2>&1; then
    echo "SKIP: debootstrap failed (no Debian mirror?): $(tail -2 /tmp/ferry-debootstrap.log)"
    rm -rf "$cache.tmp"
    exit 77
  fi
  mv "$cache.tmp" "$cache"
fi

tmp=$(mktemp -d /var/tmp/ferry-systemd.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp -a "$cache" "$tmp/root" || { echo "FAIL: cannot copy the root filesystem"; exit 1; }
mkdir -p "$tmp/results" "$tmp/root/src" "$tmp/root/build" "$tmp/root/srv/ferry/model" \
  "$tmp/root/results"
cat > "$tmp/root/etc/systemd/system/ferry-test.service" <<'EOF'
[Unit]
Description=Ferry's systemd test (tests/deploy/systemd-inside.sh)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/src/tests/deploy/systemd-inside.sh
TimeoutStartSec=15min
EOF
ln -sf /etc/systemd/system/ferry-test.service \
  "$tmp/root/etc/systemd/system/multi-user.target.wants/ferry-test.service"
echo ferrytest > "$tmp/root/etc/hostname"

timeout 900 systemd-nspawn -q -D "$tmp/root" --register=no --keep-unit --boot \
  --bind-ro="$src:/src" --bind-ro="$build:/build" \
  --bind-ro="$FERRY_GOLDEN/tiny-a:/srv/ferry/model" --bind="$tmp/results:/results" \
  > "$tmp/console.log" 2>&1
rc=$?
cat "$tmp/results/log" 2>/dev/null
if [ ! -e "$tmp/results/rc" ]; then
  if ! grep -q "Reached target.*Multi-User\|multi-user.target" "$tmp/console.log"; then
    echo "SKIP: systemd-nspawn could not boot the container here (exit $rc): $(tail -5 "$tmp/console.log")"
    exit 77
  fi
  echo "FAIL: the test inside the container did not finish (nspawn exit $rc)"
  tail -30 "$tmp/console.log"
  exit 1
fi
for f in "$tmp"/results/security-*.txt; do
  [ -e "$f" ] && cp "$f" "$build/meson-logs/" 2>/dev/null
done
[ "$(cat "$tmp/results/rc")" = 0 ] || exit 1
echo ok
