"""Opening a `DeviceMirror` (what `fot-mem dictionary answer` does before its first query)
against the way it loaded before: token-major float32 reads (`Document.read`, 2^18 tokens at a
time) transposed and cast into the device copy. Fills a bfloat16 store shaped like the
dictionary's (one memory layer, 2 kv heads, head dim 64) with `--tokens` tokens, then times both
loads in turn, `--rounds` times, onto `--device` (cuda when there is one, else cpu). Prints the
CPU model and the exact kernel, GB/s of store bytes, medians and the old/new ratio.

    python benches/measure/mirror_open.py [--tokens 4194304] [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import fot_mem
import numpy as np
import torch
from fot_mem.torch.retrieval import DeviceMirror


def fill(doc: fot_mem.Document, tokens: int, heads: int, dim: int) -> None:
    step = 1 << 18
    rng = np.random.default_rng(0)
    k = torch.from_numpy(rng.standard_normal((step, heads, dim), dtype=np.float32)).bfloat16()
    for start in range(0, tokens, step):
        n = min(step, tokens - start)
        doc.append(0, k[:n], k[:n])


def old_load(doc: fot_mem.Document, device: torch.device, heads: int, dim: int) -> None:
    """The loader before the zero-copy views (DeviceMirror of 2026-12-07)."""
    n = doc.length(0)
    keys = torch.empty(heads, n, dim, dtype=torch.bfloat16, device=device)
    values = torch.empty(heads, n, dim, dtype=torch.bfloat16, device=device)
    step = 1 << 18
    for start in range(0, n, step):
        k, v = doc.read(0, start, min(n, start + step))
        stop = start + k.shape[0]
        keys[:, start:stop] = torch.from_numpy(k).transpose(0, 1).to(device, torch.bfloat16)
        values[:, start:stop] = torch.from_numpy(v).transpose(0, 1).to(device, torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def new_load(doc: fot_mem.Document, device: torch.device) -> None:
    DeviceMirror(doc, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1 << 22)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dir", default=None, help="where the store goes (default: a temp folder)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    heads, dim = 2, 64
    device = torch.device(args.device)
    gb = args.tokens * heads * dim * 2 * 2 / 1e9  # keys and values, bfloat16
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = fot_mem.MemoryStore.create(
            Path(tmp) / "store", layers=[0], kv_heads=heads, head_dim=dim, dtype="bfloat16",
            chunk_tokens=1 << 20,
        )  # fmt: skip
        doc = store.document("d")
        fill(doc, args.tokens, heads, dim)
        times: dict[str, list[float]] = {"old": [], "new": []}
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for name in order:
                started = time.perf_counter()
                if name == "old":
                    old_load(doc, device, heads, dim)
                else:
                    new_load(doc, device)
                times[name].append(time.perf_counter() - started)
        store.close()
    info = fot_mem.exact_kernel_info()
    cpu, kernel = info["cpu"], info["kernel"]
    print(f"cpu: {cpu} (exact kernel {kernel}); device {device}")
    print(f"{args.tokens:,} tokens, {gb:.2f} GB of bf16 keys and values, {args.rounds} rounds")
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in med.items():
        print(f"{name} load: median {t:.3f} s, {gb / t:.2f} GB/s  (all: {times[name]})")
    print(f"old / new: {med['old'] / med['new']:.2f}x")
    if args.json:
        found = {
            "cpu": cpu,
            "device": str(device),
            "tokens": args.tokens,
            "times": times,
        }
        Path(args.json).write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
