# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the Python tests: finding an interpreter with grpcio, generating the
stubs from proto/ferry/v1 with grpc_tools.protoc, and a local cluster under `ferryctl up`.

Exit codes follow the test suite: 0 pass, 1 fail, 77 skipped (reason printed)."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77


def skip(reason):
    print("SKIP: " + reason, flush=True)
    sys.exit(SKIP)


def require_grpc():
    """Imports grpc and grpc_tools, or re-runs the script under the system python3 (a
    pyenv or venv python first on PATH often lacks the Debian packages), or skips."""
    try:
        import grpc  # noqa: F401
        import grpc_tools.protoc  # noqa: F401
        return
    except ImportError as e:
        missing = str(e)
    for py in ("/usr/bin/python3",):
        if (os.path.exists(py) and os.path.realpath(py) != os.path.realpath(sys.executable)
                and not os.environ.get("FERRY_PY_REEXEC")):
            ok = subprocess.run([py, "-c", "import grpc, grpc_tools.protoc"],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL).returncode == 0
            if ok:
                os.environ["FERRY_PY_REEXEC"] = "1"
                os.execv(py, [py] + sys.argv)
    skip("python grpc modules missing (%s): apt-get install python3-grpcio "
         "python3-grpc-tools (scripts/install-deps.sh)" % missing)


def gen_stubs(proto_dir, out_dir=None, name="inference"):
    """Compiles NAME.proto into out_dir (None: a temporary directory removed at exit) and
    imports it: returns (pb2, pb2_grpc)."""
    from grpc_tools import protoc
    import importlib
    if out_dir is None:
        import atexit
        import shutil
        import tempfile
        out_dir = tempfile.mkdtemp(prefix="ferry-py-stubs-")
        atexit.register(shutil.rmtree, out_dir, True)
    args = ["grpc_tools.protoc", "-I" + proto_dir, "--python_out=" + out_dir,
            "--grpc_python_out=" + out_dir, os.path.join(proto_dir, name + ".proto")]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed on %s/%s.proto" % (proto_dir, name))
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    return importlib.import_module(name + "_pb2"), importlib.import_module(name + "_pb2_grpc")


def model_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def make_model(ferryctl, tmp, want_tokenizer=False, name="model"):
    """A tiny model: generated with `ferryctl model gen --preset tiny` (with the test
    tokenizer when asked and the generator supports it), else $FERRY_GOLDEN/tiny-a.
    Returns (dir, has_tokenizer)."""
    d = os.path.join(tmp, name)
    src = os.environ.get("FERRY_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
    tok = os.path.join(src, "tests", "data", "tokenizer", "tokenizer.json")
    cmd = [ferryctl, "model", "gen", "--preset", "tiny"]
    with_tok = False
    if want_tokenizer and os.path.exists(tok):
        helptext = subprocess.run([ferryctl, "model", "gen", "--help"], capture_output=True,
                                  text=True).stdout
        if "--tokenizer" in helptext:
            cmd += ["--tokenizer", tok]
            with_tok = True
    r = subprocess.run(cmd + [d], capture_output=True, text=True)
    if r.returncode == 0:
        return d, with_tok or os.path.exists(os.path.join(d, "tokenizer.json"))
    golden = os.path.join(os.environ.get("FERRY_GOLDEN", ""), "tiny-a")
    if os.path.exists(os.path.join(golden, "config.json")):
        return golden, os.path.exists(os.path.join(golden, "tokenizer.json"))
    raise RuntimeError("ferryctl model gen failed: %s" % r.stderr.strip())


class Cluster:
    """`ferryctl up --model DIR --workers N --listen 127.0.0.1:0` in its own process
    group; .addr is HOST:PORT once it serves. Stopped with SIGINT (drain), then SIGKILL."""

    def __init__(self, ferryctl, model, workers=2, timeout=120, extra=()):
        self.log = tempfile.NamedTemporaryFile(prefix="ferry-up-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [ferryctl, "up", "--model", model, "--workers", str(workers), "--listen",
             "127.0.0.1:0", "--timeout", str(timeout)] + list(extra),
            stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        self.addr = None
        end = time.monotonic() + timeout + 10
        buf = b""
        while time.monotonic() < end and self.addr is None:
            if self.proc.poll() is not None:
                break
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                m = re.search(rb"address: (\S+:\d+)\n", buf)
                if m:
                    self.addr = m.group(1).decode()
        if self.addr is None:
            self.stop()
            raise RuntimeError("ferryctl up did not serve (exit %s); its log:\n%s"
                               % (self.proc.returncode, self.log_tail()))

    def log_tail(self, n=40):
        try:
            with open(self.log.name, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def close(self):
        self.stop()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


class Checks:
    """Runs named checks, each a function raising AssertionError (or anything) on
    failure; prints ok/FAIL lines and a summary."""

    def __init__(self, only=None):
        self.only = set(only or [])
        self.failed = []
        self.passed = []

    def run(self, name, fn, *args):
        if self.only and name not in self.only:
            return
        t0 = time.monotonic()
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            if isinstance(e, AssertionError):
                detail = str(e)
            elif callable(getattr(e, "code", None)) and callable(getattr(e, "details", None)):
                detail = "gRPC status %s: %s" % (e.code(), e.details())  # a grpc.RpcError
            else:
                detail = "%s: %s" % (type(e).__name__, e)
            print("FAIL: %s: %s" % (name, detail), flush=True)
            self.failed.append(name)
            return
        print("ok: %s (%.2f s)" % (name, time.monotonic() - t0), flush=True)
        self.passed.append(name)

    def finish(self):
        print("%d passed, %d failed%s" % (len(self.passed), len(self.failed),
              (": " + ", ".join(self.failed)) if self.failed else ""), flush=True)
        return 1 if self.failed else 0
