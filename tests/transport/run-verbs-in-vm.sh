#!/bin/sh
# run-verbs-in-vm.sh TEST_BINARY: runs the transport suite over verbs inside the soft-RoCE
# QEMU guest (../shared/rdma-vm). Side A uses rxe0, side B rxe1 (the test reads
# RDMA_VM_DEV0/1). Exit 77 with the reason when the VM cannot start.
set -u
bin=$1
src=${FERRY_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
vm=$src/../shared/rdma-vm/run-in-rdma-vm.sh
if [ ! -x "$vm" ]; then
	echo "SKIP: $vm not found" >&2
	exit 77
fi
if [ ! -e /dev/kvm ] && ! command -v qemu-system-x86_64 >/dev/null 2>&1 && [ "$(id -u)" != 0 ]; then
	echo "SKIP: no qemu-system-x86_64 and no root to install it" >&2
	exit 77
fi
# The guest shares the current directory read-write, at its real path, and has its own
# /tmp, /var/tmp, /run and /dev/shm: run from the binary's directory, named by real paths,
# so that a build directory under one of those (meson setup /tmp/b) works too.
bin=$(realpath "$bin") || exit 1
cd -P "$(dirname "$bin")" || exit 1
RDMA_VM_TIMEOUT=${RDMA_VM_TIMEOUT:-900} "$vm" "$bin" --backend verbs
rc=$?
case $rc in
125) echo "SKIP: the RDMA VM could not start (run-in-rdma-vm.sh exit 125; RDMA_VM_VERBOSE=1 for its log)" >&2
     exit 77 ;;
124) echo "FAIL: verbs suite timed out inside the VM" >&2
     exit 1 ;;
esac
exit $rc
