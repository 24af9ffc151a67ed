#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""ferryctl's Inference clients (generate, score, eval, bench-serve) against a fake
coordinator: a Python gRPC server from the same inference.proto whose answers are known in
advance, so output formats, exit codes, Ctrl-C and deadlines are checked exactly and
without a model.

Usage: test_ctl_clients.py FERRYCTL [--proto DIR] [--check NAME]... [--serve]
(--serve: only run the fake server and print its address, for trying the commands by hand)
Exit 0 all passed, 1 some failed, 77 skipped (python3-grpcio / python3-grpc-tools missing).
"""

import argparse
import concurrent.futures
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferrytest  # noqa: E402

ferrytest.require_grpc()
import grpc  # noqa: E402

VOCAB = 1000
MAX_CTX = 512
N_ROUTED = 16
TOP_K = 4
SLOW_SEED = 999          # Generate with this seed sleeps 50 ms per token


def fake_loss(mask_top, routed_top_k, no_shared):
    """The fake's loss per predicted token for a routing variant."""
    k = routed_top_k or TOP_K
    return 2.0 + 0.25 * mask_top + 0.5 * (TOP_K - k) / TOP_K + (0.75 if no_shared else 0.0)


def make_servicer(pb, pbg):
    class Fake(pbg.InferenceServicer):
        def __init__(self):
            self.lock = threading.Lock()
            self.cancelled = 0
            self.generate_calls = 0
            self.score_calls = 0
            self.last_generate = None

        def Generate(self, req, ctx):
            with self.lock:
                self.generate_calls += 1
                self.last_generate = req
            toks = list(req.prompt_tokens)
            if req.prompt:
                toks = list(req.prompt.encode())
            if not toks:
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty prompt")
            for i, t in enumerate(toks):
                if not 0 <= t < VOCAB:
                    ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "prompt_tokens[%d] = %d is not a token id (vocab_size %d)"
                              % (i, t, VOCAB))
            if not (0 <= req.top_p <= 1):
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "top_p must be in (0, 1]")
            n = req.max_tokens or 16
            if len(toks) + n > MAX_CTX:
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt (%d) + max_tokens (%d) "
                          "exceed the context of %d" % (len(toks), n, MAX_CTX))
            # A cancellation is counted when the call ends before its last message went
            # out. gRPC may end a cancelled stream without resuming this generator, so
            # checking ctx.is_active() between messages alone misses some.
            ended = {"complete": False}

            def on_end():
                if not ended["complete"]:
                    with self.lock:
                        self.cancelled += 1
            if not ctx.add_callback(on_end):
                on_end()
                return
            t0 = time.monotonic()
            first = None
            for i in range(n):
                if req.seed == SLOW_SEED:
                    time.sleep(0.05)
                if not ctx.is_active():
                    return
                m = pb.GenerateResponse(tokens=[(toks[0] + i) % VOCAB], offset=i)
                if i == 0:
                    m.prompt_tokens = len(toks)
                    first = time.monotonic()
                if req.return_text:
                    m.text = "t%d " % i
                if i == n - 1:
                    m.finish_reason = pb.FINISH_REASON_LENGTH
                    m.usage.prompt_tokens = len(toks)
                    m.usage.completion_tokens = n
                    total = (time.monotonic() - t0) * 1e3
                    m.timing.queue_ms = 0.5
                    m.timing.time_to_first_token_ms = (first - t0) * 1e3 + 1.0
                    m.timing.mean_inter_token_ms = 2.0 if n > 1 else 0.0
                    m.timing.total_ms = total + 1.0
                    ended["complete"] = True
                yield m

        def Score(self, req, ctx):
            with self.lock:
                self.score_calls += 1
            toks = list(req.tokens) if req.tokens else list(req.text.encode())
            if len(toks) < 2:
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "score needs at least 2 tokens")
            if any(not 0 <= t < VOCAB for t in toks):
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "token id out of range")
            k = req.routed_top_k or TOP_K
            if k + req.mask_top > N_ROUTED:
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "routed_top_k %d plus mask_top %d "
                          "exceed the %d routed experts" % (k, req.mask_top, N_ROUTED))
            loss = fake_loss(req.mask_top, req.routed_top_k, req.no_shared_experts)
            # The per-token values vary; their mean is the loss.
            lps = [-(loss + (0.1 if i % 2 else -0.1)) for i in range(len(toks) - 1)]
            if len(lps) % 2:
                lps[-1] = -loss
            return pb.ScoreResponse(tokens=toks, logprobs=lps, mean_loss=-sum(lps) / len(lps))

        def ModelInfo(self, req, ctx):
            return pb.ModelInfoResponse(vocab_size=VOCAB, max_context=MAX_CTX,
                                        n_routed_experts=N_ROUTED, num_experts_per_tok=TOP_K,
                                        n_shared_experts=2, has_tokenizer=True, preset="tiny",
                                        presets=["tiny", "2b", "16b", "145b"])

        def Health(self, req, ctx):
            return pb.HealthResponse(status=pb.HealthResponse.STATUS_SERVING, version="0.1.0",
                                     workers=2, epoch=1)
    return Fake()


class T:
    def __init__(self, ferryctl, addr, fake, tmp):
        self.ferryctl = ferryctl
        self.addr = addr
        self.fake = fake
        self.tmp = tmp

    def ctl(self, *args, stdin=None, timeout=60):
        r = subprocess.run([self.ferryctl] + list(args[:1]) + ["--cluster", self.addr]
                           + list(args[1:]), input=stdin, capture_output=True, text=True,
                           timeout=timeout)
        return r.returncode, r.stdout, r.stderr

    def file(self, name, text):
        p = os.path.join(self.tmp, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    # ---- generate -----------------------------------------------------------------------

    def generate_ids(self):
        rc, out, err = self.ctl("generate", "--tokens", "1 2 3", "-n", "5", "--ids")
        assert rc == 0, "exit %d: %s" % (rc, err)
        assert out == "1 2 3 4 5\n", "stdout %r" % out
        assert "5 tokens (prompt 3)" in err and "TTFT" in err and "inter-token" in err \
            and "finish length" in err, "summary %r" % err
        req = self.fake.last_generate
        assert list(req.prompt_tokens) == [1, 2, 3] and req.max_tokens == 5
        assert not req.return_text

    def generate_text(self):
        rc, out, err = self.ctl("generate", "hello", "-n", "3", "--temperature", "0.7",
                                "--top-p", "0.9", "--top-k", "40", "--seed", "7", "--stop",
                                "END", "--stop", "\n\n", "--stop-id", "2",
                                "--repetition-penalty", "1.1", "--top-k-experts", "3",
                                "--mask-top", "1", "--no-shared", "--priority", "5",
                                "--ignore-eos", "--add-bos", "--request-id", "abc")
        assert rc == 0, "exit %d: %s" % (rc, err)
        assert out == "t0 t1 t2 \n", "stdout %r" % out
        r = self.fake.last_generate
        want = dict(prompt="hello", max_tokens=3, top_k=40, seed=7, stop=["END", "\n\n"],
                    stop_tokens=[2], routed_top_k=3, mask_top=1, no_shared_experts=True,
                    priority=5, ignore_eos=True, add_bos=True, request_id="abc",
                    return_text=True)
        for k, v in want.items():
            got = getattr(r, k)
            got = list(got) if not isinstance(got, (str, int, bool)) else got
            assert got == v, "request %s = %r, want %r" % (k, got, v)
        assert abs(r.temperature - 0.7) < 1e-6 and abs(r.top_p - 0.9) < 1e-6 \
            and abs(r.repetition_penalty - 1.1) < 1e-6

    def generate_tokens_text(self):
        # Ids in, and the model has a tokenizer (ModelInfo): text out.
        rc, out, err = self.ctl("generate", "--tokens", "5,6", "-n", "2", "-q")
        assert rc == 0 and out == "t0 t1 \n" and err == "", (rc, out, err)

    def generate_stdin(self):
        rc, out, err = self.ctl("generate", "-", "-n", "2", "-q", stdin="from stdin\n")
        assert rc == 0, err
        assert self.fake.last_generate.prompt == "from stdin\n"

    def generate_json(self):
        rc, out, err = self.ctl("generate", "--tokens", "10", "-n", "3", "--json")
        assert rc == 0, err
        lines = [json.loads(x) for x in out.splitlines()]
        assert [x["tokens"] for x in lines] == [[10], [11], [12]], lines
        assert [x["offset"] for x in lines] == [0, 1, 2]
        assert lines[0]["prompt_tokens"] == 1
        assert lines[-1]["finish_reason"] == "length" and "finish_reason" not in lines[0]
        assert lines[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 3}
        assert lines[-1]["timing"]["total_ms"] > 0
        assert lines[0]["text"] == "t0 "

    def generate_errors(self):
        rc, out, err = self.ctl("generate", "--tokens", "1 999999", "-n", "2")
        assert rc == 1 and "INVALID_ARGUMENT" in err and "999999" in err, (rc, err)
        rc, out, err = self.ctl("generate", "--tokens", "1", "-n", "600")
        assert rc == 1 and "exceed the context" in err, (rc, err)
        for args, pat in [
            (["--tokens", "1", "--top-p", "2"], "--top-p: '2' is not in (0, 1]"),
            (["--tokens", "1", "--temperature", "-1"], "--temperature"),
            (["--tokens", "1", "--priority", "10"], "--priority: '10'"),
            (["--tokens", "1", "--repetition-penalty", "0"], "--repetition-penalty"),
            (["--tokens", "1", "--timeout", "0"], "--timeout"),
            (["--tokens", "1 x"], "bad token id 'x'"),
            (["--tokens", " "], "the prompt is empty"),
            (["--tokens", "1", "--bogus"], "unknown option --bogus"),
            (["--tokens", "1", "-n"], "needs a value"),
            (["--tokens", "1", "--stop", ""], "--stop"),
            (["--tokens", "1", "--add-bos"], "--add-bos applies to a text PROMPT"),
            (["--tokens", "1", "hello"], "exactly one of a PROMPT and --tokens"),
        ]:
            rc, out, err = self.ctl("generate", *args)
            assert rc == 2 and pat in err, "%s -> %d %r" % (args, rc, err)
        rc, out, err = self.ctl("generate", "a", "b")
        assert rc == 2 and "unexpected argument 'b'" in err, err
        rc, out, err = self.ctl("generate")
        assert rc == 2 and "exactly one of a PROMPT and --tokens" in err, err
        r = subprocess.run([self.ferryctl, "generate", "--cluster", "127.0.0.1:1", "--tokens",
                            "1"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "UNAVAILABLE" in r.stderr, (r.returncode, r.stderr)

    def generate_ctrl_c(self):
        before = self.fake.cancelled
        p = subprocess.Popen([self.ferryctl, "generate", "--cluster", self.addr, "--tokens", "1",
                              "-n", "400", "--seed", str(SLOW_SEED), "--ids"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
        took = time.monotonic() - t0
        assert p.returncode == 130, "exit %d: %s" % (p.returncode, err)
        assert took < 2, "took %.2f s to stop" % took
        assert "interrupted: stream cancelled after" in err, err
        assert out.endswith("\n") and len(out.split()) >= 2, "stdout %r" % out
        end = time.monotonic() + 3
        while self.fake.cancelled == before and time.monotonic() < end:
            time.sleep(0.05)
        assert self.fake.cancelled > before, "the server never saw the cancellation"

    def generate_timeout(self):
        rc, out, err = self.ctl("generate", "--tokens", "1", "-n", "400", "--seed",
                                str(SLOW_SEED), "--timeout", "0.3", "--ids")
        assert rc == 1 and "DEADLINE_EXCEEDED" in err, (rc, err)

    # ---- score / eval -------------------------------------------------------------------

    def score_text(self):
        p = self.file("s.txt", "hello world\n\nab\r\nthird line here\n")
        rc, out, err = self.ctl("score", p)
        assert rc == 0, err
        rows = out.splitlines()
        assert rows[0].split() == ["line", "tokens", "loss", "perplexity"], rows
        r1 = rows[1].split()
        assert r1[0] == "1" and r1[1] == "11" and abs(float(r1[2]) - 2.0) < 1e-3, rows[1]
        assert rows[2].split()[0] == "3", "blank line 2 not skipped: %s" % rows
        assert rows[-1].startswith("3 lines, 28 tokens (25 predicted): mean loss 2.0000"), rows[-1]
        rc, out, err = self.ctl("score", "--json", "--mask-top", "2", "--no-shared", p)
        assert rc == 0, err
        j = json.loads(out)
        assert j["n_lines"] == 3 and j["tokens"] == 28 and j["predicted"] == 25
        want = fake_loss(2, 0, True)
        assert abs(j["mean_loss"] - want) < 1e-4 and abs(j["perplexity"] - math.exp(want)) < 1e-2
        assert [x["line"] for x in j["lines"]] == [1, 3, 4]

    def score_tokens(self):
        p = self.file("t.txt", "1 2 3 4\n5,6\n")
        rc, out, err = self.ctl("score", "--tokens", "-q", "-j", "2", p)
        assert rc == 0 and out.startswith("2 lines, 6 tokens (4 predicted)"), (rc, out, err)
        rc, out, err = self.ctl("score", "--tokens", "-", stdin="1 2\n3 x\n")
        assert rc == 1 and "stdin:2" in err and "bad token id 'x'" in err, (rc, err)
        rc, out, err = self.ctl("score", "--tokens", "-", stdin="1 2\n3\n")
        assert rc == 1 and "line 2:" in err and "INVALID_ARGUMENT" in err, (rc, err)
        rc, out, err = self.ctl("score", "--tokens", "--add-bos", p)
        assert rc == 2 and "--add-bos" in err, err
        rc, out, err = self.ctl("score")
        assert rc == 2 and "FILE is required" in err, err
        rc, out, err = self.ctl("score", os.path.join(self.tmp, "missing"))
        assert rc == 1 and "missing" in err, err

    def eval_table(self):
        lines = "".join("%d %d %d\n" % (i, i + 1, i + 2) for i in range(20))
        p = self.file("e.txt", lines)
        rc, out, err = self.ctl("eval", "--tokens", "--mask-top", "0,1,2", "--k", "2,4",
                                "--shared", "both", "--json", p)
        assert rc == 0, err
        j = json.loads(out)
        rows = j["rows"]
        # Baseline (0, 4, shared) coincides with a combination: 1 + 3 * 2 * 2 - 1.
        assert len(rows) == 12, "%d rows" % len(rows)
        assert rows[0]["baseline"] and rows[0]["mask_top"] == 0 and rows[0]["k"] == TOP_K
        seen = set()
        for r in rows:
            want = fake_loss(r["mask_top"], r["k"], not r["shared"])
            assert abs(r["loss"] - want) < 1e-4, r
            assert abs(r["delta"] - (want - fake_loss(0, 0, False))) < 1e-4, r
            seen.add((r["mask_top"], r["k"], r["shared"]))
        assert len(seen) == 12
        rc, out, err = self.ctl("eval", "--tokens", "-r", "0,1", "-k", "4", p)
        assert rc == 0, err
        t = out.splitlines()
        assert t[1].split() == ["mask_top", "k", "shared", "loss", "perplexity", "delta"], t
        assert t[2].split()[-1] == "baseline" and len(t) == 4, t
        rc, out, err = self.ctl("eval", "--tokens", "-r", "13", "-k", "4", p)
        assert rc == 1 and "exceed the model's 16 routed experts" in err, (rc, err)
        rc, out, err = self.ctl("eval", "--tokens", "--shared", "maybe", p)
        assert rc == 2 and "--shared: 'maybe'" in err, err
        rc, out, err = self.ctl("eval", "--tokens", "-k", "2,,x", p)
        assert rc == 2 and "--k: 'x'" in err, err

    # ---- bench-serve --------------------------------------------------------------------

    def bench(self):
        rc, out, err = self.ctl("bench-serve", "-C", "1 4", "-n", "8", "--prompt-len",
                                "uniform:4:16", "--output-len", "fixed:5", "--json",
                                timeout=120)
        assert rc == 0, err
        j = json.loads(out)
        assert j["vocab"] == VOCAB and j["ignore_eos"] is True
        assert [lv["concurrency"] for lv in j["levels"]] == [1, 4]
        for lv in j["levels"]:
            assert lv["ok"] == 8 and lv["errors"] == 0, lv
            assert lv["output_tokens"] == 40, lv
            assert lv["requests_per_s"] > 0 and lv["output_tokens_per_s"] > 0
            # decode-only: concurrency streams at the mean inter-token gap; it leaves out
            # the prefills and the wait for the first token, so it is not below the total
            assert lv["decode_tokens_per_s"] >= lv["output_tokens_per_s"] * 0.5, lv
            assert 0 < lv["ttft_ms"]["p50"] <= lv["ttft_ms"]["p99"], lv
            assert 0 < lv["itl_ms"]["p50"] <= lv["itl_ms"]["p99"], lv
        # --rounds: a row a round, then the medians of each level's rounds
        rc, out, err = self.ctl("bench-serve", "-C", "1 2", "-n", "4", "--rounds", "3",
                                "--prompt-len", "fixed:4", "--output-len", "fixed:2", "--json",
                                timeout=120)
        assert rc == 0, err
        j = json.loads(out)
        assert [(lv["concurrency"], lv["round"]) for lv in j["levels"]] == \
            [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)], j["levels"]
        assert all(lv["ok"] == 4 for lv in j["levels"]), j["levels"]
        assert [(s["concurrency"], s["rounds"]) for s in j["summary"]] == [(1, 3), (2, 3)]
        for s, c in zip(j["summary"], [1, 2]):
            tps = sorted(lv["output_tokens_per_s"] for lv in j["levels"]
                         if lv["concurrency"] == c)
            assert abs(s["output_tokens_per_s"] - tps[1]) < 1e-3, (s, tps)
            assert "served_over_engine" not in s, s  # this server has no Admin.BenchEngine
        rc, out, err = self.ctl("bench-serve", "-C", "2", "-n", "2", "--rounds", "2",
                                "--output-len", "fixed:1", "--no-engine", timeout=60)
        assert rc == 0, err
        rows = out.splitlines()
        assert rows[1].split()[-1] == "round", rows
        assert [r.split()[-1] for r in rows[2:4]] == ["1", "2"], rows
        assert rows[4].strip().startswith("conc 2, median of 2 rounds: out_tok/s"), rows
        rc, out, err = self.ctl("bench-serve", "--rounds", "0")
        assert rc == 2 and "--rounds" in err, err
        rc, out, err = self.ctl("bench-serve", "-C", "2", "-d", "0.5", "--output-len",
                                "uniform:1:3", timeout=60)
        assert rc == 0, err
        rows = out.splitlines()
        assert rows[1].split()[:3] == ["conc", "ok", "errors"] and rows[2].split()[0] == "2", rows
        rc, out, err = self.ctl("bench-serve", "--prompt-len", "500", "--output-len", "100")
        assert rc == 1 and "exceed the server's context of 512" in err, (rc, err)
        rc, out, err = self.ctl("bench-serve", "--prompt-len", "uniform:9:3")
        assert rc == 2 and "--prompt-len" in err, err
        rc, out, err = self.ctl("bench-serve", "-n", "5", "-d", "1")
        assert rc == 2 and "at most one of --requests and --duration" in err, err
        # the single-process baseline: its options need --model, and the model must be the
        # served one (run-cluster.sh runs it for real)
        rc, out, err = self.ctl("bench-serve", "--precision", "fast")
        assert rc == 2 and "give --model DIR" in err, err
        rc, out, err = self.ctl("bench-serve", "--model", "/nonexistent", "--precision", "bf8")
        assert rc == 2 and "--precision 'bf8'" in err, err
        rc, out, err = self.ctl("bench-serve", "-n", "1", "--model", "/nonexistent")
        assert rc == 1 and "--model: /nonexistent" in err, err
        golden = os.environ.get("FERRY_GOLDEN")
        if golden:
            rc, out, err = self.ctl("bench-serve", "-n", "1", "--model",
                                    os.path.join(golden, "tiny-a"))
            assert rc == 1 and "vocabulary of 512, the cluster serves %d" % VOCAB in err, err

    def help(self):
        for cmd in ["generate", "score", "eval", "bench-serve"]:
            r = subprocess.run([self.ferryctl, cmd, "--help"], capture_output=True, text=True)
            assert r.returncode == 0 and r.stdout.startswith("Usage: ferryctl " + cmd), cmd
            assert "Exit status" in r.stdout and "--cluster" in r.stdout, cmd
        r = subprocess.run([self.ferryctl, "--help"], capture_output=True, text=True)
        for cmd in ["generate", "score", "eval", "bench-serve"]:
            assert "\n  %s " % cmd in r.stdout, "ferryctl --help lacks %s" % cmd

    def env_cluster(self):
        env = dict(os.environ, FERRY_CLUSTER=self.addr)
        r = subprocess.run([self.ferryctl, "generate", "--tokens", "1", "-n", "1", "-q", "--ids"],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0 and r.stdout == "1\n", (r.returncode, r.stdout, r.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ferryctl")
    ap.add_argument("--proto", default=os.path.join(
        os.environ.get("FERRY_SRC", os.path.join(os.path.dirname(__file__), "..", "..")),
        "proto", "ferry", "v1"))
    ap.add_argument("--check", action="append")
    ap.add_argument("--serve", action="store_true",
                    help="only run the fake server, print its address, serve until killed")
    a = ap.parse_args()
    r = subprocess.run([a.ferryctl, "--help"], capture_output=True, text=True)
    if "\n  generate " not in r.stdout:
        ferrytest.skip("ferryctl built without gRPC: no generate command")

    tmp = tempfile.mkdtemp(prefix="ferry-py-")
    server = None
    try:
        pb, pbg = ferrytest.gen_stubs(a.proto, tmp)
        fake = make_servicer(pb, pbg)
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=32))
        pbg.add_InferenceServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        if a.serve:
            print("address: 127.0.0.1:%d" % port, flush=True)
            server.wait_for_termination()
            return 0
        t = T(a.ferryctl, "127.0.0.1:%d" % port, fake, tmp)
        c = ferrytest.Checks(a.check)
        for name in ["help", "generate_ids", "generate_text", "generate_tokens_text",
                     "generate_stdin", "generate_json", "generate_errors", "generate_ctrl_c",
                     "generate_timeout", "score_text", "score_tokens", "eval_table", "bench",
                     "env_cluster"]:
            c.run(name, getattr(t, name))
        return c.finish()
    finally:
        if server is not None:
            server.stop(0)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
