#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Internal calls are authenticated: forged and replayed worker calls change nothing.

Against a real coordinator with one real worker (tiny golden model, shm):
  - each Internal call after Join (Heartbeat, GetAssignment, LoadExperts, UnloadExperts,
    ReportStats) forged without a signature, with a junk one, signed with the bare cluster
    secret (the old scheme) or for a worker index that does not exist: UNAUTHENTICATED,
    logged with the caller's address, and nothing changed (GetLoad shows no forged busy
    time, Health still SERVING, a Generate still gives the same tokens);
  - a Join built here with the secret and a fresh challenge passes authentication (the
    coordinator then refuses it on its checkpoint: FAILED_PRECONDITION, no fingerprint);
    the same Join again is refused
    (replayed nonce, used challenge); a Join whose challenge came from this coordinator is
    refused by the restarted coordinator on the same port ("unknown, used or expired
    challenge"), and so is the first one.

Usage: test_internal_auth.py COORDINATOR_BIN WORKER_BIN --proto DIR"""

import argparse
import hashlib
import hmac as hmaclib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferrytest  # noqa: E402

ferrytest.require_grpc()
import grpc  # noqa: E402


class Coordinator:
    def __init__(self, binary, tmp, model, secret, admin, port=0, name="co"):
        self.log = os.path.join(tmp, name + ".err")
        self.proc = subprocess.Popen(
            [binary, "-c", os.path.join(tmp, "empty.conf"), "-m", model,
             "-l", "127.0.0.1:%d" % port, "-w", "1", "--secret-file", secret,
             "-s", "server.admin_token_file=" + admin, "-s", "cluster.join_timeout=120s"],
            stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on port (\d+)", line)
        if not m:
            raise AssertionError("coordinator did not start: %r\n%s" % (line, self.log_text()))
        self.port = int(m.group(1))
        self.addr = "127.0.0.1:%d" % self.port

    def log_text(self):
        with open(self.log) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def expect_code(code, fn, detail=None):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, "status %s (%s), want %s" % (e.code(), e.details(), code)
        assert detail is None or detail in (e.details() or ""), \
            "details %r lack %r" % (e.details(), detail)
        return e.details()
    raise AssertionError("the call succeeded, want %s" % code)


def sign(msg, key):
    """nonce, timestamp and HMAC-SHA256 of msg serialized with hmac empty (rpc/auth.h)."""
    msg.nonce = random.getrandbits(64) or 1
    msg.timestamp_unix_ms = int(time.time() * 1000)
    msg.hmac = b""
    msg.hmac = hmaclib.new(key, msg.SerializeToString(), hashlib.sha256).digest()
    return msg


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("coordinator")
    ap.add_argument("worker")
    ap.add_argument("--proto", required=True)
    a = ap.parse_args()
    golden = os.path.join(os.environ["FERRY_GOLDEN"], "tiny-a")
    tmp = tempfile.mkdtemp(prefix="ferry-auth-")
    procs = []
    try:
        ipb, igrpc = ferrytest.gen_stubs(a.proto, tmp, "internal")
        pb, pbg = ferrytest.gen_stubs(a.proto, tmp, "inference")
        apb, agrpc = ferrytest.gen_stubs(a.proto, tmp, "admin")
        open(os.path.join(tmp, "empty.conf"), "w").close()
        secret_path = os.path.join(tmp, "secret")
        admin_path = os.path.join(tmp, "admin")
        secret = os.urandom(16).hex().encode()
        admin = os.urandom(16).hex().encode()
        for p, v in ((secret_path, secret), (admin_path, admin)):
            with open(p, "wb") as f:
                f.write(v)
            os.chmod(p, 0o600)

        co = Coordinator(a.coordinator, tmp, golden, secret_path, admin_path)
        procs.append(co)
        wlog = open(os.path.join(tmp, "w0.err"), "w")
        wk = subprocess.Popen([a.worker, "-c", os.path.join(tmp, "empty.conf"), "-C", co.addr,
                               "-n", "w0", "-m", golden, "--secret-file", secret_path],
                              stdout=subprocess.DEVNULL, stderr=wlog)
        ch = grpc.insecure_channel(co.addr)
        inf = pbg.InferenceStub(ch)
        internal = igrpc.InternalStub(ch)
        adm = agrpc.AdminStub(ch)
        md = (("authorization", "Bearer " + admin.decode()),)
        end = time.time() + 60
        while True:
            h = inf.Health(pb.HealthRequest(), timeout=10)
            if h.status == pb.HealthResponse.STATUS_SERVING:
                break
            assert time.time() < end, "cluster not serving after 60 s:\n" + co.log_text()
            time.sleep(0.1)
        epoch = h.epoch

        def generate():
            return [t for m in inf.Generate(pb.GenerateRequest(
                prompt_tokens=[1, 2, 3], max_tokens=8, ignore_eos=True), timeout=60)
                for t in m.tokens]
        before = generate()
        n_refused = co.log_text().count("refused ")

        U = grpc.StatusCode.UNAUTHENTICATED
        layers = [ipb.LayerStats(layer=0, tokens=1, busy_ns=10 ** 18)]
        slot = ipb.SlotAssignment(layer=0, slot=0, expert=0)
        forged = {
            "Heartbeat": (internal.Heartbeat, ipb.HeartbeatRequest(worker_index=0, epoch=epoch)),
            "GetAssignment": (internal.GetAssignment, ipb.GetAssignmentRequest(worker_index=0)),
            "LoadExperts": (internal.LoadExperts, ipb.LoadExpertsRequest(
                worker_index=0, epoch=epoch, slots=[slot])),
            "UnloadExperts": (internal.UnloadExperts, ipb.UnloadExpertsRequest(
                worker_index=0, epoch=epoch, slots=[slot])),
            "ReportStats": (internal.ReportStats, ipb.ReportStatsRequest(
                worker_index=0, epoch=epoch, window_ns=10 ** 9, layers=layers)),
        }
        tries = 0
        for name, (call, req) in forged.items():
            variants = []
            r = type(req)()
            r.CopyFrom(req)
            variants.append(("unsigned", r))
            r = type(req)()
            r.CopyFrom(req)
            r.nonce, r.timestamp_unix_ms, r.hmac = 5, int(time.time() * 1000), os.urandom(32)
            variants.append(("junk HMAC", r))
            r = type(req)()
            r.CopyFrom(req)
            variants.append(("signed with the bare secret", sign(r, secret)))
            r = type(req)()
            r.CopyFrom(req)
            r.worker_index = 7
            variants.append(("for worker 7", sign(r, secret)))
            for what, r in variants:
                d = expect_code(U, lambda: call(r, timeout=10))
                tries += 1
                print("ok: forged %s (%s): UNAUTHENTICATED: %s" % (name, what, d), flush=True)
        log = co.log_text()
        refused = log.count("refused ") - n_refused
        assert refused == tries, "%d refusals logged for %d forged calls:\n%s" % (
            refused, tries, log)
        assert re.search(r"refused ReportStats for worker 0 from ipv4:127\.0\.0\.1:\d+: bad HMAC",
                         log), "no refusal naming the caller in the log:\n" + log
        load = adm.GetLoad(apb.GetLoadRequest(), metadata=md, timeout=10)
        busiest = max((l.busy_ns for l in load.loads), default=0)
        assert busiest < 10 ** 15, "forged busy time was recorded: %d ns" % busiest
        h = inf.Health(pb.HealthRequest(), timeout=10)
        assert h.status == pb.HealthResponse.STATUS_SERVING and h.workers == 1, str(h)
        assert generate() == before, "tokens changed after the forged calls"
        print("ok: %d forged calls refused and logged; load, health and tokens unchanged "
              "(busiest %.1f ms)" % (tries, busiest / 1e6), flush=True)

        # A Join signed here: authentication passes, once.
        def make_join(coord_stub):
            c = coord_stub.Challenge(ipb.ChallengeRequest(), timeout=10)
            assert len(c.challenge) == 32 and c.ttl_ms > 0, str(c)
            j = ipb.JoinRequest(worker_name="w9", slot_capacity=16, ring_slots=4,
                                ring_tokens=512, hidden_size=128, n_routed_experts=16,
                                transport_addresses=[ipb.TransportAddress(backend="shm",
                                                                          blob=b"junk")],
                                challenge=c.challenge)
            return sign(j, secret), c.boot_id
        j1, boot1 = make_join(internal)
        # (a serving cluster takes new workers: this one is refused after authentication,
        # on its checkpoint, which it does not describe)
        d = expect_code(grpc.StatusCode.FAILED_PRECONDITION,
                        lambda: internal.Join(j1, timeout=10), "fingerprint")
        print("ok: a Join signed with the secret passes authentication: " + d, flush=True)
        d = expect_code(U, lambda: internal.Join(j1, timeout=10), "replayed nonce")
        print("ok: the same Join again: " + d, flush=True)
        j2, _ = make_join(internal)   # captured, never delivered
        ch.close()
        wk.send_signal(signal.SIGKILL)
        wk.wait()
        co.stop()

        co2 = Coordinator(a.coordinator, tmp, golden, secret_path, admin_path, port=co.port,
                          name="co2")
        procs.append(co2)
        ch2 = grpc.insecure_channel(co2.addr)
        internal2 = igrpc.InternalStub(ch2)
        boot2 = internal2.Challenge(ipb.ChallengeRequest(), timeout=10).boot_id
        assert boot2 != boot1, "the restarted coordinator kept its boot id"
        for what, j in (("captured Join", j2), ("used Join", j1)):
            d = expect_code(U, lambda: internal2.Join(j, timeout=10),
                            "unknown, used or expired challenge")
            print("ok: %s replayed against the restarted coordinator: %s" % (what, d), flush=True)
        log2 = co2.log_text()
        assert log2.count("refused join of worker 'w9' from ipv4:127.0.0.1") == 2, log2
        h = pbg.InferenceStub(ch2).Health(pb.HealthRequest(), timeout=10)
        assert h.workers == 0, "a replayed Join was counted: %s" % h
        ch2.close()
        print("2 passed, 0 failed")
        return 0
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
