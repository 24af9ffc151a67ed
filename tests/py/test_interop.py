#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A standard gRPC client (grpcio, stubs generated from proto/ferry/v1/inference.proto
with grpc_tools.protoc) against a local cluster started with `ferryctl up`: the public
API as other languages see it.

Usage: test_interop.py FERRYCTL [--proto DIR] [--model DIR | --cluster ADDR] [--check NAME]...

Checks: health, model_info, generate_stream, generate_deterministic, cancel, deadline,
malformed_top_p, malformed_empty, malformed_token_range, malformed_too_long,
malformed_other, score, text (with a tokenizer) or no_tokenizer (without), still_serving.
Exit 0 all passed, 1 some failed, 77 skipped (python3-grpcio / python3-grpc-tools missing).
"""

import argparse
import math
import os
import sys
import tempfile
import time
import shutil

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferrytest  # noqa: E402

ferrytest.require_grpc()
import grpc  # noqa: E402

SC = grpc.StatusCode


def expect_status(fn, code, detail=None):
    """fn() must raise grpc.RpcError with code (and detail in its details())."""
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, "want %s, got %s: %r" % (code, e.code(), e.details())
        if detail is not None:
            assert detail in (e.details() or ""), \
                "status %s details %r do not contain %r" % (code, e.details(), detail)
        return e
    raise AssertionError("want %s, the call succeeded" % code)


class Interop:
    def __init__(self, pb, stub, cfg, has_tokenizer, workers):
        self.pb = pb
        self.stub = stub
        self.cfg = cfg
        self.vocab = int(cfg["vocab_size"])
        self.max_pos = int(cfg.get("max_position_embeddings", 2048))
        self.has_tokenizer = has_tokenizer
        self.workers = workers
        self.max_context = None     # ModelInfo's, when served

    def gen(self, timeout=60, **kw):
        """Runs one Generate to the end: (messages, arrival times)."""
        msgs, times = [], []
        for m in self.stub.Generate(self.pb.GenerateRequest(**kw), timeout=timeout):
            msgs.append(m)
            times.append(time.monotonic())
        return msgs, times

    def context(self):
        return self.max_context or self.max_pos

    # ---- checks -------------------------------------------------------------------------

    def wait_idle(self, what, timeout=5.0):
        """After cancellations or deadlines: the scheduler must drop the requests and free
        their KV-cache blocks at once (Health's running/queued/kv_blocks_*; servers that do
        not report them pass)."""
        end = time.monotonic() + timeout
        while True:
            h = self.stub.Health(self.pb.HealthRequest(), timeout=10)
            if h.kv_blocks_total == 0:
                return
            if h.running == 0 and h.queued == 0 and h.kv_blocks_free == h.kv_blocks_total:
                return
            if time.monotonic() > end:
                raise AssertionError("%s: %.0f s later Health says running %d, queued %d, KV "
                                     "blocks free %d of %d" % (what, timeout, h.running,
                                     h.queued, h.kv_blocks_free, h.kv_blocks_total))
            time.sleep(0.05)

    def health(self):
        h = self.stub.Health(self.pb.HealthRequest(), timeout=10)
        assert h.status == self.pb.HealthResponse.STATUS_SERVING, "status %s" % h.status
        assert h.version, "no version"
        assert h.workers == self.workers, "workers %d, want %d" % (h.workers, self.workers)
        assert h.workers_serving == h.workers_configured == self.workers, \
            "workers serving %d of %d configured, want %d" % (h.workers_serving,
                                                              h.workers_configured, self.workers)
        assert h.epoch >= 1, "epoch %d" % h.epoch

    def model_info(self):
        mi = self.stub.ModelInfo(self.pb.ModelInfoRequest(), timeout=10)
        c = self.cfg
        assert mi.vocab_size == c["vocab_size"], "vocab_size %d" % mi.vocab_size
        assert mi.hidden_size == c["hidden_size"], "hidden_size %d" % mi.hidden_size
        assert mi.num_hidden_layers == c["num_hidden_layers"]
        assert mi.n_routed_experts == c["n_routed_experts"]
        assert mi.num_experts_per_tok == c["num_experts_per_tok"]
        assert mi.n_shared_experts == c["n_shared_experts"]
        assert 0 < mi.max_context <= self.max_pos, "max_context %d" % mi.max_context
        assert mi.has_tokenizer == self.has_tokenizer, "has_tokenizer %s" % mi.has_tokenizer
        assert "tiny" in mi.presets, "presets %s" % list(mi.presets)
        assert mi.config_json.lstrip().startswith("{"), "config_json %r" % mi.config_json[:40]
        assert mi.placement.workers == self.workers, "placement.workers %d" % mi.placement.workers
        assert len(mi.placement.worker_slots) == self.workers
        self.max_context = mi.max_context

    def logits_shapes(self):
        """The return_logits shapes that once crashed the coordinator (the handler sent rows
        the scheduler had reallocated): every row arrives, for fast and slow readers."""
        for n, m in ((128, 2), (120, 10), (127, 20), (100, 40), (10, 200)):
            if n + m > self.context():
                continue
            for slow in (False, True):
                rows, toks = 0, 0
                for msg in self.stub.Generate(self.pb.GenerateRequest(
                        prompt_tokens=[5] * n, max_tokens=m, return_logits=True,
                        ignore_eos=True), timeout=120):
                    assert len(msg.logits) == msg.logits_rows * self.vocab, \
                        "%d logits for %d rows" % (len(msg.logits), msg.logits_rows)
                    rows += msg.logits_rows
                    toks += len(msg.tokens)
                    if slow:
                        time.sleep(0.02)
                assert toks == m and rows == n + m - 1, \
                    "%d/%d: %d tokens, %d rows (want %d, %d)" % (n, m, toks, rows, m, n + m - 1)
        self.health()

    def generate_stream(self):
        n_prompt, n_new = 4, 8
        msgs, times = self.gen(prompt_tokens=[5, 6, 7, 8][:n_prompt], max_tokens=n_new,
                               ignore_eos=True)
        assert len(msgs) >= 2, "%d message(s): the tokens were not streamed" % len(msgs)
        toks, offset = [], 0
        for i, m in enumerate(msgs):
            # offset places tokens[0]: only messages with tokens have one.
            assert not m.tokens or m.offset == offset, \
                "message %d offset %d, want %d" % (i, m.offset, offset)
            offset += len(m.tokens)
            toks += list(m.tokens)
            last = i == len(msgs) - 1
            assert (m.finish_reason != 0) == last, \
                "message %d finish_reason %d (only the last one has it)" % (i, m.finish_reason)
            assert last or not (m.HasField("usage") or m.HasField("timing")), \
                "usage or timing on message %d of %d (the last one only)" % (i, len(msgs))
        assert len(toks) == n_new, "%d tokens, want %d" % (len(toks), n_new)
        assert all(0 <= t < self.vocab for t in toks), "token out of range: %s" % toks
        assert msgs[0].prompt_tokens == n_prompt, "first prompt_tokens %d" % msgs[0].prompt_tokens
        f = msgs[-1]
        assert f.finish_reason == self.pb.FINISH_REASON_LENGTH, "finish %d" % f.finish_reason
        assert f.HasField("usage"), "the last message has no usage"
        assert f.usage.prompt_tokens == n_prompt and f.usage.completion_tokens == n_new, \
            "usage %s" % str(f.usage).replace("\n", " ")
        assert f.HasField("timing"), "the last message has no timing"
        t = f.timing
        assert 0 < t.time_to_first_token_ms <= t.total_ms, "timing %s" % str(t).replace("\n", " ")
        assert t.queue_ms >= 0 and t.mean_inter_token_ms >= 0
        assert times[0] < times[-1], "every message arrived at once"

    def generate_deterministic(self):
        kw = dict(prompt_tokens=[3, 1, 4, 1, 5], max_tokens=6, ignore_eos=True,
                  temperature=0.8, top_p=0.9, top_k=50, seed=1234)
        a = [t for m in self.gen(**kw)[0] for t in m.tokens]
        b = [t for m in self.gen(**kw)[0] for t in m.tokens]
        assert a == b, "same seed, different tokens: %s vs %s" % (a, b)

    def _long_request(self):
        # As many tokens as the context allows: far longer than any check waits.
        room = self.context() - 4
        return self.pb.GenerateRequest(prompt_tokens=[9, 8, 7, 6], max_tokens=room,
                                       ignore_eos=True)

    def cancel(self):
        # Cancel after 2 messages, a few times over (more than a small max_seqs would
        # hold if cancelled requests kept their sequence or KV cache), and once at once.
        for i in range(20):
            call = self.stub.Generate(self._long_request(), timeout=60)
            if i % 5 != 4:
                it = iter(call)
                next(it)
                next(it)
            call.cancel()
            e = expect_status(lambda: [None for _ in call], SC.CANCELLED)
            assert e is not None
        self.wait_idle("after 20 cancelled streams")
        # The server keeps serving later requests.
        msgs, _ = self.gen(prompt_tokens=[1, 2, 3], max_tokens=4, ignore_eos=True)
        assert sum(len(m.tokens) for m in msgs) == 4, "after cancellations: %d tokens" % \
            sum(len(m.tokens) for m in msgs)
        self.health()

    def deadline(self):
        # A deadline that passes before anything can happen...
        expect_status(lambda: self.gen(timeout=0.001, prompt_tokens=[1, 2], max_tokens=4),
                      SC.DEADLINE_EXCEEDED)
        # ...and one that passes mid-stream, on the server's side.
        got = []

        def run():
            for m in self.stub.Generate(self._long_request(), timeout=0.3):
                got.extend(m.tokens)
        expect_status(run, SC.DEADLINE_EXCEEDED)
        self.wait_idle("after a deadline mid-stream")
        msgs, _ = self.gen(prompt_tokens=[1, 2, 3], max_tokens=2, ignore_eos=True)
        assert sum(len(m.tokens) for m in msgs) == 2
        self.health()

    def malformed_top_p(self):
        expect_status(lambda: self.gen(prompt_tokens=[1, 2], max_tokens=2, top_p=2.0),
                      SC.INVALID_ARGUMENT, "top_p must be in (0, 1]")

    def malformed_empty(self):
        expect_status(lambda: self.gen(max_tokens=2), SC.INVALID_ARGUMENT)
        expect_status(lambda: self.gen(prompt_tokens=[], prompt="", max_tokens=2),
                      SC.INVALID_ARGUMENT)

    def malformed_token_range(self):
        e = expect_status(lambda: self.gen(prompt_tokens=[1, self.vocab], max_tokens=2),
                          SC.INVALID_ARGUMENT)
        assert str(self.vocab) in e.details(), "details %r do not name the id" % e.details()
        expect_status(lambda: self.gen(prompt_tokens=[-1, 2], max_tokens=2), SC.INVALID_ARGUMENT)
        expect_status(lambda: self.gen(prompt_tokens=[1], stop_tokens=[self.vocab + 5],
                                       max_tokens=2), SC.INVALID_ARGUMENT)

    def malformed_too_long(self):
        n = self.max_pos + 1
        expect_status(lambda: self.gen(prompt_tokens=[(i * 7) % self.vocab for i in range(n)],
                                       max_tokens=1), SC.INVALID_ARGUMENT)
        # Fits alone, but not with max_tokens.
        expect_status(lambda: self.gen(prompt_tokens=[1, 2, 3], max_tokens=self.context()),
                      SC.INVALID_ARGUMENT)

    def malformed_other(self):
        ok = [1, 2, 3]
        for kw, what in [
            (dict(temperature=-1.0), "temperature -1"),
            (dict(temperature=float("nan")), "temperature NaN"),
            (dict(top_p=-0.5), "top_p -0.5"),
            (dict(repetition_penalty=11.0), "repetition_penalty 11"),
            (dict(repetition_penalty=-1.0), "repetition_penalty -1"),
            (dict(priority=10), "priority 10"),
            (dict(request_id="x" * 65), "request_id of 65 bytes"),
            (dict(routed_top_k=self.cfg["n_routed_experts"] + 1), "routed_top_k > experts"),
            (dict(mask_top=self.cfg["n_routed_experts"]), "mask_top = experts"),
            (dict(prompt="hello"), "both prompt and prompt_tokens"),
        ]:
            try:
                expect_status(lambda: self.gen(prompt_tokens=ok, max_tokens=2, **kw),
                              SC.INVALID_ARGUMENT)
            except AssertionError as e:
                raise AssertionError("%s: %s" % (what, e))
        expect_status(lambda: self.stub.Score(self.pb.ScoreRequest(tokens=[5]), timeout=10),
                      SC.INVALID_ARGUMENT)
        expect_status(lambda: self.stub.Score(self.pb.ScoreRequest(tokens=[5, self.vocab]),
                                              timeout=10), SC.INVALID_ARGUMENT)

    def score(self):
        toks = [(i * 37 + 11) % self.vocab for i in range(24)]
        r = self.stub.Score(self.pb.ScoreRequest(tokens=toks), timeout=30)
        assert list(r.tokens) == toks, "tokens %s" % list(r.tokens)
        assert len(r.logprobs) == len(toks) - 1, "%d logprobs" % len(r.logprobs)
        assert all(lp <= 1e-6 and math.isfinite(lp) for lp in r.logprobs), "logprobs %s" % \
            list(r.logprobs)
        want = -sum(r.logprobs) / len(r.logprobs)
        assert abs(r.mean_loss - want) < 1e-4 * max(1, abs(want)), \
            "mean_loss %f, -mean(logprobs) %f" % (r.mean_loss, want)
        # The routing knobs change the loss (the paper's masking experiment).
        m = self.stub.Score(self.pb.ScoreRequest(tokens=toks, mask_top=2), timeout=30)
        assert m.mean_loss != r.mean_loss, "mask_top=2 left the loss unchanged"
        # Greedy agreement: Generate's first greedy token is the argmax Score rewards most.
        g = [t for m2 in self.gen(prompt_tokens=toks[:8], max_tokens=1, ignore_eos=True)[0]
             for t in m2.tokens]
        s = self.stub.Score(self.pb.ScoreRequest(tokens=toks[:8] + g), timeout=30)
        for alt in range(min(self.vocab, 16)):
            if alt == g[0]:
                continue
            o = self.stub.Score(self.pb.ScoreRequest(tokens=toks[:8] + [alt]), timeout=30)
            assert o.logprobs[-1] <= s.logprobs[-1] + 1e-4, \
                "token %d scores above the greedy token %d" % (alt, g[0])

    def no_tokenizer(self):
        expect_status(lambda: self.gen(prompt="hello", max_tokens=2), SC.FAILED_PRECONDITION)
        expect_status(lambda: self.stub.Tokenize(self.pb.TokenizeRequest(text="hi"), timeout=10),
                      SC.FAILED_PRECONDITION)
        expect_status(lambda: self.stub.Detokenize(self.pb.DetokenizeRequest(tokens=[1, 2]),
                                                   timeout=10), SC.FAILED_PRECONDITION)
        expect_status(lambda: self.stub.Score(self.pb.ScoreRequest(text="hello world"),
                                              timeout=10), SC.FAILED_PRECONDITION)

    def text(self):
        s = "Hello, world! Ferry ferries tokens. Ünïcödé ✓"
        t = self.stub.Tokenize(self.pb.TokenizeRequest(text=s), timeout=10)
        assert len(t.tokens) > 0
        d = self.stub.Detokenize(self.pb.DetokenizeRequest(tokens=t.tokens), timeout=10)
        assert d.text == s, "round trip %r -> %r" % (s, d.text)
        msgs, _ = self.gen(prompt="Once upon a time", max_tokens=12, ignore_eos=True)
        text = "".join(m.text for m in msgs)
        ids = [x for m in msgs for x in m.tokens]
        d2 = self.stub.Detokenize(self.pb.DetokenizeRequest(tokens=ids), timeout=10)
        assert text == d2.text, "streamed text %r != detokenized %r" % (text, d2.text)
        sc = self.stub.Score(self.pb.ScoreRequest(text="Once upon a time there was"), timeout=30)
        assert len(sc.logprobs) == len(sc.tokens) - 1 and math.isfinite(sc.mean_loss)
        # A stop string ends the generation and is not part of the streamed text.
        if len(text) >= 4:
            stop = text[2:4]
            msgs, _ = self.gen(prompt="Once upon a time", max_tokens=12, ignore_eos=True,
                               stop=[stop])
            got = "".join(m.text for m in msgs)
            assert stop not in got, "stop string %r in %r" % (stop, got)
            assert msgs[-1].finish_reason == self.pb.FINISH_REASON_STOP, \
                "finish %d" % msgs[-1].finish_reason


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ferryctl")
    ap.add_argument("--proto", default=os.path.join(
        os.environ.get("FERRY_SRC", os.path.join(os.path.dirname(__file__), "..", "..")),
        "proto", "ferry", "v1"))
    ap.add_argument("--model", help="model directory (default: generate a tiny one)")
    ap.add_argument("--cluster", help="use this running cluster (with --model for its config)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="kernel threads per process (default 1: three processes share the "
                    "CPUs without spinning against each other)")
    ap.add_argument("--check", action="append", help="run only this check (repeatable)")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="ferry-py-")
    cluster = None
    try:
        pb, pbg = ferrytest.gen_stubs(a.proto, tmp)
        if a.model:
            model = a.model
            has_tok = os.path.exists(os.path.join(model, "tokenizer.json"))
        else:
            model, has_tok = ferrytest.make_model(a.ferryctl, tmp, want_tokenizer=True)
        cfg = ferrytest.model_config(model)
        if a.cluster:
            addr = a.cluster
        else:
            cluster = ferrytest.Cluster(a.ferryctl, model, workers=a.workers,
                                        extra=["--threads", str(a.threads)])
            addr = cluster.addr
        print("cluster %s, model %s (vocab %d, tokenizer %s)" % (addr, model, cfg["vocab_size"],
              "yes" if has_tok else "no"), flush=True)
        channel = grpc.insecure_channel(addr)
        t = Interop(pb, pbg.InferenceStub(channel), cfg, has_tok, a.workers)
        c = ferrytest.Checks(a.check)
        c.run("health", t.health)
        c.run("model_info", t.model_info)
        c.run("generate_stream", t.generate_stream)
        c.run("logits_shapes", t.logits_shapes)
        c.run("generate_deterministic", t.generate_deterministic)
        c.run("cancel", t.cancel)
        c.run("deadline", t.deadline)
        c.run("malformed_top_p", t.malformed_top_p)
        c.run("malformed_empty", t.malformed_empty)
        c.run("malformed_token_range", t.malformed_token_range)
        c.run("malformed_too_long", t.malformed_too_long)
        c.run("malformed_other", t.malformed_other)
        c.run("score", t.score)
        if has_tok:
            c.run("text", t.text)
        else:
            c.run("no_tokenizer", t.no_tokenizer)

        def still_serving():
            t.health()
            assert cluster is None or cluster.alive(), "ferryctl up exited"
        c.run("still_serving", still_serving)
        channel.close()
        if cluster is not None:
            rc = cluster.stop()
            if rc != 0:
                print("FAIL: ferryctl up exited %s after SIGINT" % rc, flush=True)
                c.failed.append("clean_stop")
        if has_tok and not a.model and not a.cluster and (not a.check or "no_tokenizer" in a.check):
            # The refusals of text without a tokenizer, on a second cluster.
            def no_tokenizer():
                m2, tok2 = ferrytest.make_model(a.ferryctl, tmp, name="model-ids")
                assert not tok2, "the generator wrote a tokenizer.json unasked"
                cl2 = ferrytest.Cluster(a.ferryctl, m2, workers=1,
                                        extra=["--threads", str(a.threads)])
                try:
                    with grpc.insecure_channel(cl2.addr) as ch2:
                        t2 = Interop(pb, pbg.InferenceStub(ch2), ferrytest.model_config(m2),
                                     False, 1)
                        t2.no_tokenizer()
                        t2.health()
                finally:
                    cl2.close()
            c.run("no_tokenizer", no_tokenizer)
        rc = c.finish()
        if rc and cluster is not None:
            print("---- ferryctl up log (tail):\n" + cluster.log_tail(), flush=True)
        return rc
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
