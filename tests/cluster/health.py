#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Health of a coordinator through the standard gRPC client (grpcio), checked against what a
test expects: the status and how many workers serve out of those configured.

Usage: health.py --proto DIR --addr HOST:PORT --status SERVING|NOT_SERVING
                 --serving N --configured N
Prints what Health said. Exit 0 when it matches, 1 when not, 77 skipped (no grpcio).
"""

import argparse
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "py"))
import ferrytest  # noqa: E402

ferrytest.require_grpc()
import grpc  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto", required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--status", required=True, choices=["SERVING", "NOT_SERVING"])
    ap.add_argument("--serving", type=int, required=True)
    ap.add_argument("--configured", type=int, required=True)
    a = ap.parse_args()
    pb, pb_grpc = ferrytest.gen_stubs(a.proto)
    with grpc.insecure_channel(a.addr) as ch:
        h = pb_grpc.InferenceStub(ch).Health(pb.HealthRequest(), timeout=10)
    status = pb.HealthResponse.Status.Name(h.status).replace("STATUS_", "")
    print("Health: %s, %d of %d workers serving, epoch %d" % (status, h.workers_serving,
                                                              h.workers_configured, h.epoch))
    ok = (status == a.status and h.workers_serving == a.serving and
          h.workers_configured == a.configured)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
