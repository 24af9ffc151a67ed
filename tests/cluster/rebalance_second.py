#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A second Admin.Rebalance while a first one runs, sent the moment the first one's
progress (a file that `ferryctl rebalance --wait --json` writes) shows PATTERN. The channel
is connected beforehand, so the call goes out milliseconds after the plan: a new ferryctl
process took long enough on a loaded machine for the first rebalance to finish meanwhile
now and then (its workers load at their next heartbeat).

Usage: rebalance_second.py --proto DIR --addr HOST:PORT --progress FILE [--pattern S]
Prints the gRPC status code and details of the refusal. Exit 1 when refused (as ferryctl),
0 when accepted, 2 when the progress never showed the pattern, 77 skipped (no grpcio).
"""

import argparse
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "py"))
import ferrytest  # noqa: E402

ferrytest.require_grpc()
import grpc  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto", required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--progress", required=True)
    ap.add_argument("--pattern", default='"planned"')
    ap.add_argument("--wait", type=float, default=10.0)
    a = ap.parse_args()
    pb, pb_grpc = ferrytest.gen_stubs(a.proto, name="admin")
    with grpc.insecure_channel(a.addr) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        stub = pb_grpc.AdminStub(ch)
        print("ready", flush=True)
        end = time.monotonic() + a.wait
        while time.monotonic() < end:
            try:
                with open(a.progress) as f:
                    if a.pattern in f.read():
                        break
            except FileNotFoundError:
                pass
            time.sleep(0.0005)
        else:
            print("the progress never showed %s" % a.pattern, file=sys.stderr)
            return 2
        try:
            first = next(stub.Rebalance(pb.RebalanceRequest(), timeout=30))
        except grpc.RpcError as e:
            print("%s: %s" % (e.code().name, e.details()), file=sys.stderr)
            return 1
        print("accepted: %s" % first, file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
