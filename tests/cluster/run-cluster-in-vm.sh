#!/bin/sh
# run-cluster-in-vm.sh FERRYCTL CMP_F32: the multi-process golden check of run-cluster.sh
# (`ferryctl up` + `ferryctl run --cluster` against the engine and the references, every
# golden set, f32 wire) over the verbs transport inside the soft-RoCE QEMU guest
# (../shared/rdma-vm): two workers, no replicas, then the bf16-wire greedy check over verbs.
# Every process auto-picks the first ACTIVE device (rxe0); rxe talks to itself.
# Then, in the same guest, the same checks with the coordinator on both devices
# (--set transport.device=rxe0,rxe1: one endpoint per device pair, worker 0 on rxe0,
# worker 1 on rxe1 across the veth pair) while the workers still auto-pick rxe0; each
# cluster's log must show both devices serving a worker.
# Timeouts are generous: the guest may run under TCG, ~100x slower than hardware.
# Exit 77 with the reason when the VM cannot start; any mismatch fails.
set -u
ferryctl=$1 cmp=$2
src=${FERRY_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
vm=$src/../shared/rdma-vm/run-in-rdma-vm.sh
script=$src/tests/cluster/run-cluster.sh
if [ ! -x "$vm" ]; then
	echo "SKIP: $vm not found" >&2
	exit 77
fi
if [ ! -e /dev/kvm ] && ! command -v qemu-system-x86_64 >/dev/null 2>&1 && [ "$(id -u)" != 0 ]; then
	echo "SKIP: no qemu-system-x86_64 and no root to install it" >&2
	exit 77
fi
if [ -z "${FERRY_GOLDEN:-}" ] || [ ! -d "$FERRY_GOLDEN" ]; then
	echo "FAIL: FERRY_GOLDEN ('${FERRY_GOLDEN:-}') is not a directory" >&2
	exit 1
fi
ferryctl=$(realpath "$ferryctl") && cmp=$(realpath "$cmp") || exit 1
bindir=$(dirname "$ferryctl")
co_bin=${FERRY_BIN_DIR:-$bindir/../coordinator}/ferry-coordinator
wk_bin=${FERRY_BIN_DIR:-$bindir/../worker}/ferry-worker
# The guest sees the host's files through 9p with caching: a binary relinked on the host
# while the guest runs (a concurrent build) is stale or torn in there. Run private copies
# of the four binaries and of run-cluster.sh, from a run directory that is also the
# guest's only read-write share; the check itself writes to the guest's private /tmp.
# Only that directory is sure to be there: the guest has its own /tmp, /var/tmp, /run
# and /dev/shm, so a build directory under one of them (meson setup /tmp/b) is not, and
# neither is any path through it ("$bindir/.." needs $bindir in the guest). Hence the
# real path of the run directory, and a copy of the golden sets when they are hidden too.
run=$(mktemp -d "${FERRY_BUILD:-$(dirname "$bindir")}/cluster-vm.XXXXXX") &&
	run=$(realpath "$run") || exit 1
trap 'rm -rf "$run"' EXIT
golden=$(realpath "$FERRY_GOLDEN") || exit 1
case $golden/ in
/tmp/*|/var/tmp/*|/run/*|/dev/shm/*)
	cp -r "$golden" "$run/golden" || exit 1
	golden=$run/golden ;;
esac
echo "run-cluster-in-vm: the guest runs the copies in $run (its read-write share) on the golden sets in $golden" >&2
cp "$script" "$run/" || exit 1
for b in "$ferryctl" "$co_bin" "$wk_bin" "$cmp"; do
	cp "$b" "$run/" || exit 1
	c=$run/$(basename "$b")
	if [ ! -x "$c" ] || [ "$(head -c 4 "$c" | od -An -c | tr -d ' ')" != '177ELF' ]; then
		echo "FAIL: $b is not an executable (being rebuilt?)" >&2
		exit 1
	fi
done
cd "$run" || exit 1
# Inside the guest: $1 the run directory, $2 the comparison tool. Device names come from
# the guest's environment (RDMA_VM_DEV0/1).
guest='set -u
bash "$1/run-cluster.sh" "$1/ferryctl" "$2" verbs || exit
echo "---- the coordinator on $RDMA_VM_DEV0 and $RDMA_VM_DEV1, the workers on auto"
CLUSTER_UP_ARGS="$CLUSTER_UP_ARGS --set transport.device=$RDMA_VM_DEV0,$RDMA_VM_DEV1" \
CLUSTER_LOG_EXPECT="picked device=$RDMA_VM_DEV0 .*[(]configured[)]
picked device=$RDMA_VM_DEV1 .*[(]configured[)]
worker 0 .*verbs endpoint connected, device=$RDMA_VM_DEV0\$
worker 1 .*verbs endpoint connected, device=$RDMA_VM_DEV1\$" \
exec bash "$1/run-cluster.sh" "$1/ferryctl" "$2" verbs'
t0=$(date +%s)
RDMA_VM_TIMEOUT=${RDMA_VM_TIMEOUT:-900} "$vm" env \
	FERRY_GOLDEN="$golden" \
	FERRY_BIN_DIR="$run" \
	FERRY_LOG="${FERRY_LOG:-info}" \
	CLUSTER_SHAPES="2 0" \
	CLUSTER_BF16="${CLUSTER_BF16:-1}" \
	CLUSTER_BF16_TRANSPORT=verbs \
	CLUSTER_TIMEOUT="${CLUSTER_TIMEOUT:-600}" \
	CLUSTER_UP_ARGS="${CLUSTER_UP_ARGS:---set transport.expert_timeout=300s --set cluster.join_timeout=600s}" \
	bash -c "$guest" run-cluster-in-vm "$run" "$run/$(basename "$cmp")"
rc=$?
echo "run-cluster-in-vm: exit $rc after $(($(date +%s) - t0)) s (VM boot included)" >&2
case $rc in
0)   ;;
125) echo "SKIP: the RDMA VM could not start (run-in-rdma-vm.sh exit 125; RDMA_VM_VERBOSE=1 for its log)" >&2
     exit 77 ;;
124) echo "FAIL: the cluster check over verbs timed out inside the VM (RDMA_VM_TIMEOUT)" >&2
     exit 1 ;;
77)  echo "FAIL: the check inside the VM exited 77, which is not a skip here" >&2
     exit 1 ;;
*)   echo "FAIL: the cluster check over verbs failed inside the VM (exit $rc)" >&2 ;;
esac
exit $rc
