#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A standard gRPC client (grpcio) against a coordinator over TLS: which credentials get
through and which are refused.

Usage: tls_client.py --proto DIR --addr HOST:PORT --pki DIR --case NAME
  mtls     the client certificate of ca.pem gets through (Health, a short Generate);
           refused (UNAVAILABLE): plaintext, no client certificate, an expired one, one
           of another CA, a client trusting another CA
  tls      trusting ca.pem gets through without a client certificate (Health, Generate);
           refused: plaintext, a client trusting another CA; Internal is not served
           there (the coordinator has a [cluster] listen of its own): UNIMPLEMENTED
  expired  the server's certificate has expired: trusting ca.pem is refused
The PKI is tests/rpc/gen-certs.sh's. Exit 0 pass, 1 fail, 77 skipped (no grpcio).
"""

import argparse
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "py"))
import ferrytest  # noqa: E402

ferrytest.require_grpc()
import grpc  # noqa: E402


def read(pki, name):
    with open(os.path.join(pki, name), "rb") as f:
        return f.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto", required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--pki", required=True)
    ap.add_argument("--case", required=True, choices=["mtls", "tls", "expired"])
    a = ap.parse_args()
    pb, pb_grpc = ferrytest.gen_stubs(a.proto)
    p = lambda n: read(a.pki, n)  # noqa: E731
    fails = 0

    def creds(root="ca.pem", cert=None):
        if cert is None:
            return grpc.ssl_channel_credentials(root_certificates=p(root))
        return grpc.ssl_channel_credentials(root_certificates=p(root),
                                            private_key=p(cert + ".key"),
                                            certificate_chain=p(cert + ".pem"))

    def channel(c):
        return grpc.secure_channel(a.addr, c) if c is not None else grpc.insecure_channel(a.addr)

    def expect_ok(what, c, generate=True):
        nonlocal fails
        try:
            with channel(c) as ch:
                stub = pb_grpc.InferenceStub(ch)
                h = stub.Health(pb.HealthRequest(), timeout=10)
                n = 0
                if generate:
                    for m in stub.Generate(pb.GenerateRequest(prompt_tokens=[1, 2, 3],
                                                              max_tokens=3), timeout=60):
                        n += len(m.tokens)
                print("ok   %s: Health %s, %d generated tokens" % (what, h.status, n))
        except grpc.RpcError as e:
            print("FAIL %s: %s: %s" % (what, e.code(), e.details()))
            fails += 1

    def expect_refused(what, c):
        nonlocal fails
        try:
            with channel(c) as ch:
                pb_grpc.InferenceStub(ch).Health(pb.HealthRequest(), timeout=10)
            print("FAIL %s: the call succeeded" % what)
            fails += 1
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                print("FAIL %s: want UNAVAILABLE, got %s: %s" % (what, e.code(), e.details()))
                fails += 1
            else:
                print("ok   %s refused: %s" % (what, e.details()))

    if a.case == "mtls":
        expect_ok("mTLS client certificate", creds(cert="client"))
        expect_refused("plaintext client", None)
        expect_refused("no client certificate", creds())
        expect_refused("expired client certificate", creds(cert="client-expired"))
        expect_refused("client certificate of another CA", creds(cert="other-client"))
        expect_refused("client trusting another CA", creds(root="other-ca.pem", cert="client"))
    elif a.case == "tls":
        expect_ok("TLS, no client certificate", creds())
        expect_refused("plaintext client", None)
        expect_refused("client trusting another CA", creds(root="other-ca.pem"))
        try:
            with channel(creds()) as ch:
                ch.unary_unary("/ferry.v1.Internal/Join")(b"", timeout=10)
            print("FAIL Internal.Join on the public listener: served")
            fails += 1
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                print("FAIL Internal.Join on the public listener: want UNIMPLEMENTED, got "
                      "%s: %s" % (e.code(), e.details()))
                fails += 1
            else:
                print("ok   Internal.Join on the public listener: UNIMPLEMENTED")
    else:
        expect_refused("expired server certificate", creds())
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
