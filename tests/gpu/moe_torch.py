# SPDX-License-Identifier: Apache-2.0
"""The expert layer bench/gpu times (128 experts, top-12, 4096 hidden, 1408 wide, bf16
weights), written the usual PyTorch way (per expert: index the tokens, gate/up, SwiGLU, down,
index_add the weighted result), timed with CUDA events on the same GPU: the reference that
tests/gpu/run-on-device.sh sets our layer against. Prints "torch layer N ms X"."""
import statistics

import torch

HIDDEN, INTER, EXPERTS, TOP_K = 4096, 1408, 128, 12


def layer(x, idx, w, gate, up, down):
    out = torch.zeros_like(x, dtype=torch.float32)
    for e in range(EXPERTS):
        tok, which = (idx == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        h = x[tok]
        a = torch.nn.functional.silu(h @ gate[e].T) * (h @ up[e].T)
        out.index_add_(0, tok, (a @ down[e].T).float() * w[tok, which, None])
    return out


def main():
    torch.manual_seed(0)
    dev = "cuda"
    gate = (torch.rand(EXPERTS, INTER, HIDDEN, device=dev) * 0.1 - 0.05).bfloat16()
    up = (torch.rand(EXPERTS, INTER, HIDDEN, device=dev) * 0.1 - 0.05).bfloat16()
    down = (torch.rand(EXPERTS, HIDDEN, INTER, device=dev) * 0.1 - 0.05).bfloat16()
    for n in (1, 32, 256):
        x = (torch.rand(n, HIDDEN, device=dev) * 2 - 1).bfloat16()
        idx = torch.rand(n, EXPERTS, device=dev).topk(TOP_K, dim=1).indices
        w = torch.full((n, TOP_K), 1.0 / TOP_K, device=dev)
        for _ in range(3):
            layer(x, idx, w, gate, up, down)
        times = []
        for _ in range(20):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            layer(x, idx, w, gate, up, down)
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        print(f"torch layer {n} ms {statistics.median(times):.4f}", flush=True)


if __name__ == "__main__":
    main()
