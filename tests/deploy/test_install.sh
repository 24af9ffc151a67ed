#!/usr/bin/env bash
# test_install.sh - deploy/install.sh into a scratch --destdir with stand-in binaries:
# files and modes, ExecStart following --prefix, configs never overwritten, secrets made
# once with mode 0600, --dry-run changing nothing, a missing binary refused.
set -uo pipefail
src=${FERRY_SRC:?FERRY_SRC not set}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # description, command...
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}
mode() { stat -c %a "$1"; }

build=$tmp/build
mkdir -p "$build/coordinator" "$build/worker" "$build/ctl" "$build/moe"
for b in coordinator/ferry-coordinator worker/ferry-worker ctl/ferryctl moe/libferry-gpu.so; do
  printf '#!/bin/sh\necho %s\n' "$b" > "$build/$b"
  chmod 755 "$build/$b"
done
root=$tmp/root
inst() { bash "$src/deploy/install.sh" --build "$build" --destdir "$root" "$@"; }

# --dry-run: prints the plan, creates nothing
out=$(inst --prefix /opt/ferry --dry-run --gen-secrets 2>&1)
check "dry-run succeeds" test $? -eq 0
check "dry-run writes nothing" test ! -e "$root"
check "dry-run shows the binary" grep -q "/opt/ferry/bin/ferry-coordinator" <<<"$out"
check "dry-run shows the secret" grep -q "cluster.secret" <<<"$out"

# a real install under --destdir
inst --prefix /opt/ferry --gen-secrets >"$tmp/log1" 2>&1
check "install succeeds" test $? -eq 0
for b in ferry-coordinator ferry-worker ferryctl; do
  check "bin/$b mode 755" test "$(mode "$root/opt/ferry/bin/$b")" = 755
done
u=$root/etc/systemd/system
check "coordinator unit" test -f "$u/ferry-coordinator.service"
check "worker unit" test -f "$u/ferry-worker@.service"
check "ExecStart follows --prefix" grep -qx \
  "ExecStart=/opt/ferry/bin/ferry-coordinator --config /etc/ferry/coordinator.conf" \
  "$u/ferry-coordinator.service"
check "worker ExecStart per instance" grep -qx \
  "ExecStart=/opt/ferry/bin/ferry-worker --config /etc/ferry/worker-%i.conf" \
  "$u/ferry-worker@.service"
check "no /usr/local left in units" bash -c "! grep -q /usr/local/ '$u'/ferry-*"
check "units mode 644" test "$(mode "$u/ferry-coordinator.service")" = 644
check "coordinator.conf installed" cmp -s "$src/deploy/coordinator.conf" "$root/etc/ferry/coordinator.conf"
check "worker.conf installed" cmp -s "$src/deploy/worker.conf" "$root/etc/ferry/worker.conf"
check "README installed" test -f "$root/opt/ferry/share/doc/ferry/README.md"
check "GPU module beside the worker" test -f "$root/opt/ferry/lib/ferry/libferry-gpu.so"
for s in cluster.secret admin.token; do
  check "$s mode 600" test "$(mode "$root/etc/ferry/$s")" = 600
  check "$s 64 hex digits" grep -qxE '[0-9a-f]{64}' "$root/etc/ferry/$s"
done

# a second install keeps edited configs and existing secrets
echo "# edited" >> "$root/etc/ferry/coordinator.conf"
cp "$root/etc/ferry/cluster.secret" "$tmp/secret.before"
inst --prefix /opt/ferry --gen-secrets >"$tmp/log2" 2>&1
check "second install succeeds" test $? -eq 0
check "edited config kept" grep -q "^# edited" "$root/etc/ferry/coordinator.conf"
check "example beside it" cmp -s "$src/deploy/coordinator.conf" "$root/etc/ferry/coordinator.conf.example"
check "secret kept" cmp -s "$tmp/secret.before" "$root/etc/ferry/cluster.secret"
check "says it kept the config" grep -q "keeping /etc/ferry/coordinator.conf" "$tmp/log2"

# a missing binary is refused before anything is installed
rm "$build/worker/ferry-worker"
inst --destdir "$tmp/root2" >"$tmp/log3" 2>&1
check "missing binary refused" test $? -ne 0
check "names the binary" grep -q "worker/ferry-worker is missing" "$tmp/log3"
check "nothing installed" test ! -e "$tmp/root2"
check "bad argument refused" bash -c "! bash '$src/deploy/install.sh' --bogus >/dev/null 2>&1"

echo "$fails failures"
[ "$fails" -eq 0 ]
