"""The training loss over SmolLM2's vocabulary (49,152) with the whole float32 logits against
`chunked_cross_entropy` (`TrainConfig.loss_chunk`), forward and backward, in the same run:
medians over `--rounds` (alternating), and on a GPU the peak memory of each.

    python benches/measure/lm_head_loss.py [--tokens 4096] [--chunk 1024] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import fot_mem
import torch
import torch.nn.functional as F
from fot_mem.train.loss import chunked_cross_entropy


def step(hidden, weight, targets, chunk: int) -> None:
    h = hidden.detach().requires_grad_(True)
    if chunk:
        loss, _ = chunked_cross_entropy(h, weight, targets, -100, chunk)
    else:
        logits = F.linear(h, weight).float()
        loss = F.cross_entropy(logits, targets, ignore_index=-100)
    loss.backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=g).to(device, dtype)
    weight = torch.randn(args.vocab, args.hidden, generator=g).div(24).to(device, dtype)
    weight.requires_grad_(True)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=g).to(device)
    times: dict[str, list[float]] = {"whole": [], "chunked": []}
    peak: dict[str, int] = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name in ("whole", "chunked") if r % 2 else ("chunked", "whole"):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            started = time.perf_counter()
            step(hidden, weight, targets, args.chunk if name == "chunked" else 0)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak[name] = torch.cuda.max_memory_allocated(device)
            if r:
                times[name].append(time.perf_counter() - started)
            weight.grad = None
    info = fot_mem.exact_kernel_info()
    kernel = info["kernel"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else info["cpu"]
    print(f"{where} (exact kernel {kernel}); {dtype}, {torch.get_num_threads()} threads")
    print(f"{args.tokens} tokens x vocab {args.vocab} x hidden {args.hidden}, chunk {args.chunk}")
    med = {n: statistics.median(t) for n, t in times.items()}
    for name, t in med.items():
        mem = f", peak {peak[name] / 2**20:.0f} MiB" if name in peak else ""
        print(f"{name}: median {t * 1e3:.1f} ms{mem}")
    print(f"chunked / whole time: {med['chunked'] / med['whole']:.2f}x")


if __name__ == "__main__":
    main()
