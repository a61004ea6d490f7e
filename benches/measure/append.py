"""Append throughput of the store against the disk: fills a store shaped like `fill_document`'s
(one memory layer, 2 kv heads, head dim 64, bfloat16, chunks of 2^20 tokens) with `--tokens`
tokens in appends of `--batch`, and in the same run writes the same bytes to a plain file in the
same folder, one write + fdatasync per batch (the durability each append gives). Prints the CPU
model, tokens/s and MB/s of both, and the append's time over the raw write's (medians over
`--rounds`; the two alternate within a round, in turn first).

    python benches/measure/append.py [--dir /fast/disk] [--tokens 8388608] [--batch 131072]

Works with whatever `fot_mem` is importable, so old and new builds compare by PYTHONPATH:

    PYTHONPATH=old/python python benches/measure/append.py
    PYTHONPATH=new/python python benches/measure/append.py

The input is torch bfloat16 tensors `[batch, kv_heads, head_dim]` (what the fill hands the store)
when torch is importable, else numpy float32. `FOT_MEM_APPEND_THREADS` (builds that have it) sets
the append's writer threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import fot_mem
import numpy as np


def batch_arrays(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """One batch of keys and values, reused by every append (the store copies them)."""
    shape = (args.batch, args.kv_heads, args.head_dim)
    rng = np.random.default_rng(0)
    k = rng.standard_normal(shape, dtype=np.float32)
    v = rng.standard_normal(shape, dtype=np.float32)
    try:
        import torch
    except ImportError:
        return k, v, "numpy float32"
    return torch.from_numpy(k).bfloat16(), torch.from_numpy(v).bfloat16(), "torch bfloat16"


def time_append(folder: Path, args: argparse.Namespace, keys: Any, values: Any) -> float:
    path = folder / "store"
    store = fot_mem.MemoryStore.create(
        path,
        layers=[args.layer],
        kv_heads=args.kv_heads,
        head_dim=args.head_dim,
        dtype=args.dtype,
        chunk_tokens=args.chunk_tokens,
    )
    doc = store.document("doc")
    started = time.perf_counter()
    for _ in range(args.tokens // args.batch):
        doc.append(args.layer, keys, values)
    seconds = time.perf_counter() - started
    assert doc.length(args.layer) == args.tokens // args.batch * args.batch
    store.close()
    shutil.rmtree(path)
    return seconds


def time_raw(folder: Path, args: argparse.Namespace, batch_bytes: int) -> float:
    path = folder / "raw.bin"
    data = np.random.default_rng(1).integers(0, 256, batch_bytes, dtype=np.uint8).tobytes()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        started = time.perf_counter()
        for _ in range(args.tokens // args.batch):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    path.unlink()
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="folder to write in (default: a new temporary folder)")
    ap.add_argument("--tokens", type=int, default=8 << 20, help="tokens per round (default 8M)")
    ap.add_argument("--batch", type=int, default=131072, help="tokens per append")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--chunk-tokens", type=int, default=1 << 20)
    ap.add_argument("--layer", type=int, default=0, help="the memory layer's index")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if args.batch < 1 or args.tokens < args.batch or args.rounds < 1:
        ap.error("need --batch >= 1, --tokens >= --batch and --rounds >= 1")

    keys, values, input_kind = batch_arrays(args)
    item = {"float32": 4, "float16": 2, "bfloat16": 2}[args.dtype]
    tokens = args.tokens // args.batch * args.batch
    token_bytes = 2 * args.kv_heads * args.head_dim * item
    total = tokens * token_bytes
    threads = os.environ.get("FOT_MEM_APPEND_THREADS", "auto")
    cpu = fot_mem.exact_kernel_info()["cpu"]
    print(f"cpu: {cpu} ({os.cpu_count()} logical cores)")
    print(f"fot_mem: {Path(fot_mem.__file__).parent} (append threads: {threads})")
    print(
        f"{tokens} tokens x {token_bytes} B ({total / 1e6:.0f} MB) per round, appends of "
        f"{args.batch} tokens, input {input_kind}, {args.rounds} rounds"
    )

    base = Path(args.dir) if args.dir else None
    append_s, raw_s = [], []
    with tempfile.TemporaryDirectory(dir=base, prefix="fot-append-") as tmp:
        folder = Path(tmp)
        for r in range(args.rounds):
            if r % 2 == 0:
                append_s.append(time_append(folder, args, keys, values))
                raw_s.append(time_raw(folder, args, args.batch * token_bytes))
            else:
                raw_s.append(time_raw(folder, args, args.batch * token_bytes))
                append_s.append(time_append(folder, args, keys, values))
            print(
                f"round {r}: append {tokens / append_s[-1] / 1e6:.2f} M tokens/s, raw write + "
                f"fdatasync {tokens / raw_s[-1] / 1e6:.2f} M tokens/s"
            )

    a, w = statistics.median(append_s), statistics.median(raw_s)
    print(
        f"append:           {tokens / a / 1e6:6.2f} M tokens/s  {total / a / 1e6:7.0f} MB/s  "
        f"(median {a:.3f} s)"
    )
    print(
        f"write+fdatasync:  {tokens / w / 1e6:6.2f} M tokens/s  {total / w / 1e6:7.0f} MB/s  "
        f"(median {w:.3f} s)"
    )
    print(f"append time / raw time: {a / w:.2f}")
    if args.json:
        out = {
            "cpu": cpu,
            "fot_mem": str(Path(fot_mem.__file__).parent),
            "threads": threads,
            "tokens": tokens,
            "batch": args.batch,
            "bytes": total,
            "input": input_kind,
            "append_s": append_s,
            "raw_s": raw_s,
            "append_tokens_per_s": tokens / a,
            "raw_tokens_per_s": tokens / w,
            "ratio": a / w,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
