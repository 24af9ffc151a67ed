#!/usr/bin/env bash
# Multi-host cluster on one machine: the coordinator and two workers each in a network
# namespace of their own, joined by veth pairs on a bridge (10.77.0.0/24), tcp data plane.
# Checks what run-cluster.sh checks: every golden sequence's logits within 1e-5 of the
# single-process engine and 3e-5 of the references, greedy tokens identical.
#
# Usage: run-netns.sh FERRYCTL CMP_F32 COORDINATOR_BIN WORKER_BIN
# Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2; exits 77 with the reason
# when namespaces cannot be created here.
set -uo pipefail
ferryctl=$1 cmp=$2 co_bin=$3 wk_bin=$4
tag=fy$$
ns_co=$tag-co ns_w0=$tag-w0 ns_w1=$tag-w1 ns_br=$tag-br
tmp=$(mktemp -d)
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for n in $ns_co $ns_w0 $ns_w1 $ns_br; do ip netns del "$n" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

if ! command -v ip >/dev/null; then echo "SKIP: iproute2 (ip) is not installed" >&2; exit 77; fi
if ! ip netns add "$ns_br" 2>"$tmp/err"; then
  echo "SKIP: cannot create network namespaces here: $(cat "$tmp/err")" >&2
  exit 77
fi
set -e
ip -n "$ns_br" link add br0 type bridge
ip -n "$ns_br" link set br0 up
i=1
for n in $ns_co $ns_w0 $ns_w1; do
  ip netns add "$n"
  ip link add "v$i-$tag" type veth peer name "p$i-$tag"
  ip link set "v$i-$tag" netns "$n"
  ip link set "p$i-$tag" netns "$ns_br"
  ip -n "$n" link set "v$i-$tag" name eth0
  ip -n "$n" addr add "10.77.0.$i/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
  ip -n "$ns_br" link set "p$i-$tag" master br0
  ip -n "$ns_br" link set "p$i-$tag" up
  i=$((i + 1))
done


head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/secret"
chmod 600 "$tmp/secret"
: > "$tmp/empty.conf"
n=0
for set in "$FERRY_GOLDEN"/*/; do
  set=${set%/}
  name=$(basename "$set")
  vocab=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$set/config.json")
  experts=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['n_routed_experts'])" "$set/config.json")
  common=(-c "$tmp/empty.conf" --secret-file "$tmp/secret" -t tcp -m "$set" -s log.level=warn)
  ip netns exec "$ns_co" "$co_bin" "${common[@]}" -l 10.77.0.1:7400 -w 2 \
    -s transport.bind_addr=10.77.0.1 -s transport.wire_dtype=f32 > "$tmp/co.out" 2> "$tmp/co.err" &
  pids=($!)
  for w in 0 1; do
    ns=$ns_w0; [ $w = 1 ] && ns=$ns_w1
    ip netns exec "$ns" "$wk_bin" "${common[@]}" -C 10.77.0.1:7400 -n "w$w" \
      --slots $(( (experts + 1) / 2 )) -s transport.bind_addr=10.77.0.$((w + 2)) 2> "$tmp/w$w.err" &
    pids+=($!)
  done
  ok=0
  for _ in $(seq 300); do
    if ip netns exec "$ns_co" "$ferryctl" run --cluster 10.77.0.1:7400 --tokens 1 --max-new 1 \
        > /dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  if [ $ok = 0 ]; then
    echo "$name: the cluster did not serve:" >&2
    cat "$tmp/co.err" "$tmp/w0.err" "$tmp/w1.err" >&2
    exit 1
  fi
  for toks in "$set"/ref_tokens_*.txt; do
    k=${toks##*_}; k=${k%.txt}
    "$ferryctl" run --model "$set" --tokens "$(cat "$toks")" --max-new 0 --dump-logits "$tmp/l.f32" > /dev/null
    ip netns exec "$ns_co" "$ferryctl" run --cluster 10.77.0.1:7400 --tokens "$(cat "$toks")" \
      --max-new 0 --dump-logits "$tmp/c.f32" > /dev/null
    echo -n "$name netns seq $k vs engine: "; "$cmp" "$tmp/c.f32" "$tmp/l.f32" "$vocab" 1e-5
    echo -n "$name netns seq $k vs reference: "; "$cmp" "$tmp/c.f32" "$set/ref_logits_$k.f32" "$vocab" 3e-5
    n=$((n + 2))
  done
  want=$(cat "$set/ref_greedy_tokens.txt")
  out=$(ip netns exec "$ns_co" "$ferryctl" run --cluster 10.77.0.1:7400 \
    --tokens "$(cat "$set/ref_greedy_prompt.txt")" --max-new "$(wc -w < "$set/ref_greedy_tokens.txt")")
  [ "$out" = "$want" ] || { echo "$name netns greedy: got '$out', want '$want'" >&2; exit 1; }
  echo "$name netns greedy: tokens identical"
  n=$((n + 1))
  kill -TERM "${pids[0]}"
  for p in "${pids[@]}"; do
    wait "$p" || { echo "$name: a process did not exit cleanly:" >&2; cat "$tmp/co.err" "$tmp/w0.err" "$tmp/w1.err" >&2; exit 1; }
  done
  pids=()
done
echo "$n checks passed across network namespaces"
