#!/bin/bash
# Runs inside the systemd-nspawn container that run-systemd.sh boots (systemd is PID 1),
# as the oneshot ferry-test.service: installs Ferry with deploy/install.sh, starts the
# units, and checks what run-systemd.sh describes. Writes its verdict to /results/rc and
# powers the container off. Mounts: /src (the source tree), /build (the build folder),
# /srv/ferry/model (a golden checkpoint), all read-only; /results read-write.
set -uo pipefail
exec > /results/log 2>&1
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
finish() {
  echo "$fails" > /results/rc
  sync
  systemctl poweroff --no-block
  exit 0
}
trap finish EXIT

echo "== install"
/src/deploy/install.sh --build /build --gen-secrets || { bad "install.sh"; exit 1; }
getent passwd ferry > /dev/null && ok "the ferry system user exists" || bad "no ferry user"
cat > /etc/ferry/coordinator.conf <<'EOF'
[model]
path = /srv/ferry/model
[server]
listen = 127.0.0.1:7400
admin_token_file = /etc/ferry/admin.token
[cluster]
workers = 2
secret_file = /etc/ferry/cluster.secret
heartbeat_interval = 500ms
[placement]
min_distinct = 2
rebalance = off
[engine]
threads = 1
[transport]
backend = tcp
EOF
for w in w1 w2; do
  sed "s/@NAME@/$w/" > /etc/ferry/worker-$w.conf <<'EOF'
[worker]
name = @NAME@
coordinator = 127.0.0.1:7400
slots = 16
threads = 1
[model]
path = /srv/ferry/model
[cluster]
secret_file = /etc/ferry/cluster.secret
[transport]
backend = tcp
EOF
done
# The test's watchdog: hang detection in seconds rather than the shipped 30 s.
mkdir -p /etc/systemd/system/ferry-worker@w2.service.d
printf '[Service]\nWatchdogSec=4s\n' > /etc/systemd/system/ferry-worker@w2.service.d/test.conf
systemctl daemon-reload
export FERRY_CLUSTER=127.0.0.1:7400 FERRY_ADMIN_TOKEN_FILE=/etc/ferry/admin.token
F=/usr/local/bin/ferryctl

echo "== Type=notify: systemctl start returns once the daemon said READY=1"
systemctl start ferry-coordinator || bad "ferry-coordinator did not start"
[ "$(systemctl show -p ActiveState --value ferry-coordinator)" = active ] &&
  ok "ferry-coordinator active after start" || bad "ferry-coordinator not active"
systemctl start ferry-worker@w1 ferry-worker@w2 || bad "workers did not start"
for w in w1 w2; do
  [ "$(systemctl show -p ActiveState --value ferry-worker@$w)" = active ] &&
    ok "ferry-worker@$w active (READY=1)" || bad "ferry-worker@$w not active"
done
serving() { # number of workers serving
  $F status --json 2>/dev/null | python3 -c "
import json, sys
s = json.load(sys.stdin)
print(sum(w['state'] == 'serving' for w in s['workers']) if s['status'] == 'serving' else 0)"
}
for _ in $(seq 300); do [ "$(serving)" = 2 ] && break; sleep 0.2; done
[ "$(serving)" = 2 ] && ok "the cluster serves on both workers" || bad "not serving: $($F status 2>&1)"

echo "== systemctl stop ferry-worker@w1 drains it while requests run: none fails"
load() { # one client sending requests until /results/stop exists; counts failures
  local n=0 f=0
  while [ ! -e /results/stop ]; do
    if $F run --cluster 127.0.0.1:7400 --tokens "3 1 4 1 5 9 2 6" --max-new 12 > /dev/null 2>> /results/load.err; then
      n=$((n + 1))
    else
      f=$((f + 1))
    fi
  done
  echo "$n $f" > "/results/load.$1"
}
rm -f /results/stop
load a & la=$!
load b & lb=$!
sleep 2
systemctl stop ferry-worker@w1
[ "$(systemctl show -p ActiveState --value ferry-worker@w1)" = inactive ] &&
  ok "ferry-worker@w1 stopped ($(systemctl show -p Result --value ferry-worker@w1))" ||
  bad "ferry-worker@w1: $(systemctl show -p ActiveState,Result ferry-worker@w1)"
sleep 2
touch /results/stop
wait $la $lb
read -r na fa < /results/load.a
read -r nb fb < /results/load.b
[ $((fa + fb)) -eq 0 ] && [ $((na + nb)) -gt 0 ] &&
  ok "$((na + nb)) requests during the stop, 0 failed" ||
  bad "$((fa + fb)) of $((na + nb + fa + fb)) requests failed: $(tail -3 /results/load.err)"
systemctl start ferry-worker@w1 || bad "w1 did not start again"
for _ in $(seq 300); do [ "$(serving)" = 2 ] && break; sleep 0.2; done
[ "$(serving)" = 2 ] && ok "w1 rejoined" || bad "w1 did not rejoin"

echo "== a hung worker (kill -STOP) is killed by the watchdog, restarted, and rejoins"
pid=$(systemctl show -p MainPID --value ferry-worker@w2)
restarts=$(systemctl show -p NRestarts --value ferry-worker@w2)
kill -STOP "$pid"
for _ in $(seq 400); do
  [ "$(systemctl show -p NRestarts --value ferry-worker@w2)" -gt "$restarts" ] &&
    [ "$(systemctl show -p MainPID --value ferry-worker@w2)" != "$pid" ] && break
  sleep 0.2
done
[ "$(systemctl show -p NRestarts --value ferry-worker@w2)" -gt "$restarts" ] &&
  ok "w2 restarted by systemd (NRestarts $(systemctl show -p NRestarts --value ferry-worker@w2))" ||
  bad "w2 was not restarted: $(systemctl show -p ActiveState,SubState,Result ferry-worker@w2)"
journalctl -u ferry-worker@w2 --no-pager | grep -qi "watchdog" &&
  ok "the journal says the watchdog fired" || bad "no watchdog message in the journal"
for _ in $(seq 300); do [ "$(serving)" = 2 ] && break; sleep 0.2; done
[ "$(serving)" = 2 ] && ok "w2 rejoined after the restart" || bad "w2 did not rejoin: $($F status 2>&1)"
$F run --cluster 127.0.0.1:7400 --tokens "1 2 3" --max-new 4 > /dev/null &&
  ok "requests are served" || bad "a request failed after the restarts"

echo "== logs reach journald with the component and level as fields"
journalctl -u ferry-coordinator -o json --no-pager | python3 -c "
import json, sys
recs = [json.loads(l) for l in sys.stdin if l.strip()]
mine = [r for r in recs if 'FERRY_COMPONENT' in r]
assert mine, 'no record with FERRY_COMPONENT among %d' % len(recs)
r = mine[0]
assert r['FERRY_LEVEL'] in ('error', 'warn', 'info', 'debug') and r['PRIORITY'] in '3467', r
assert any(r['FERRY_COMPONENT'] == 'coordinator' and 'serving' in r['MESSAGE'] for r in mine)
print('ok: %d coordinator records with FERRY_COMPONENT/FERRY_LEVEL/PRIORITY, e.g. %s' % (
    len(mine), {k: r[k] for k in ('FERRY_COMPONENT', 'FERRY_LEVEL', 'PRIORITY', 'MESSAGE')}))
" || bad "journald fields"

echo "== systemd-analyze security"
for u in ferry-coordinator.service ferry-worker@w1.service; do
  systemd-analyze security --no-pager "$u" > "/results/security-$u.txt" 2>&1
  score=$(grep -o 'Overall exposure level for.*' "/results/security-$u.txt")
  [ -n "$score" ] && echo "security: $score" || bad "systemd-analyze security $u"
done
systemctl stop ferry-worker@w1 ferry-worker@w2 ferry-coordinator
echo "== $fails failure(s)"
