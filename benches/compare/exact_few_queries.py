"""Few queries against many keys (generation over a long memory, issue 20): a bfloat16 store of
`--keys` keys x `--dim` (default 8M x 64, 1 GiB), `--batch` queries (256), k 32, searched by
fot_mem's exact kernel and by faiss.knn on the same keys (float32, widened from bfloat16) in one
run, round robin, so a busy machine slows both alike. No torch needed.

    python benches/compare/exact_few_queries.py [--keys 8388608] [--dim 64] [--batch 256]
        [--k 32] [--set normal|ties] [--repeats 3] [--threads 2] [--no-faiss] [--packed]

Prints the CPU (`fot_mem.exact_kernel_info()['cpu']`), the kernel and the features it uses, then
per method the median seconds, GFLOP/s (2 N d per query), the keys' bytes streamed per second,
the ratio to faiss.knn, recall counting ties (a key scoring at least faiss's k-th counts) and, for
fot_mem, the float32-fallback rows per run. `--packed` also times the AMX kernel on packed keys
(`FOT_MEM_EXACT_AMX_PACKED=1`; without AMX the same kernel twice), in the same rounds.
`--set ties`: 30% of the keys are exact copies of 20 vectors and every 64th key one of 3
attention sinks of 50x the usual norm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 (nearest even) and widened back."""
    bits = x.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def piece(i: int, m: int, d: int, first: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    keys = rng.standard_normal((m, d), dtype=np.float32)
    if kind == "ties":
        fixed = np.random.default_rng(7)
        originals = 1.5 * fixed.standard_normal((20, d), dtype=np.float32)
        sinks = 50.0 * fixed.standard_normal((3, d), dtype=np.float32)
        pick = rng.random(m) < 0.3
        keys[pick] = originals[rng.integers(0, 20, int(pick.sum()))]
        pos = np.arange(first, first + m)
        at = pos % 64 == 0
        keys[at] = sinks[(pos[at] // 64) % 3]
    return bf16_round(keys)


def packed(doc, q3: np.ndarray, k: int):
    """`doc.search` with the AMX kernel on packed keys (a knob read at every search)."""
    os.environ["FOT_MEM_EXACT_AMX_PACKED"] = "1"
    try:
        return doc.search(0, q3, k=k)
    finally:
        del os.environ["FOT_MEM_EXACT_AMX_PACKED"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=8 << 20)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--set", default="normal", choices=["normal", "ties"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-faiss", action="store_true", help="time fot_mem alone")
    ap.add_argument("--packed", action="store_true", help="also time the packed AMX path")
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import fot_mem

    n, d, nq, k = args.keys, args.dim, args.batch, args.k
    info = fot_mem.exact_kernel_info()
    print(f"# CPU {info['cpu']}; fot_mem kernel {info['kernel']} ({' '.join(info['features'])})")
    print(
        f"# exact top-{k}, {nq} queries x {n} bfloat16 keys x {d} ({args.set}), "
        f"{args.threads} threads, medians of {args.repeats}"
    )
    queries = np.random.default_rng(1).standard_normal((nq, d), dtype=np.float32)
    keep = not args.no_faiss
    held = np.empty((n, d), np.float32) if keep else None
    with tempfile.TemporaryDirectory() as tmp:
        store = fot_mem.MemoryStore.create(
            Path(tmp) / "s", layers=[0], kv_heads=1, head_dim=d, dtype="bfloat16",
            chunk_tokens=1 << 20,
        )  # fmt: skip
        doc = store.document("bench")
        t = time.perf_counter()
        step = 1 << 20
        for i, s in enumerate(range(0, n, step)):
            m = min(step, n - s)
            keys = piece(i, m, d, s, args.set)
            if held is not None:
                held[s : s + m] = keys
            doc.append(0, keys[:, None, :], keys[:, None, :1].repeat(d, axis=2))
        print(f"# store of {n} keys built in {time.perf_counter() - t:.1f} s")
        q3 = queries[:, None, :]
        methods = [("fot_mem exact (bfloat16)", lambda: doc.search(0, q3, k=k))]
        if args.packed:
            methods.append(("fot_mem packed (bfloat16)", lambda: packed(doc, q3, k)))
        if held is not None:
            import faiss

            faiss.omp_set_num_threads(args.threads)
            ip = faiss.METRIC_INNER_PRODUCT
            methods.insert(
                0, ("faiss.knn (float32)", lambda: faiss.knn(queries, held, k, metric=ip))
            )
        secs: dict[str, list[float]] = {name: [] for name, _ in methods}
        outs: dict[str, object] = {name: fn() for name, fn in methods}  # warm-up
        fb = {name: [0, 0] for name, _ in methods}
        for _ in range(args.repeats):
            for name, fn in methods:
                before = fot_mem.exact_kernel_info()
                t = time.perf_counter()
                outs[name] = fn()
                secs[name].append(time.perf_counter() - t)
                after = fot_mem.exact_kernel_info()
                if name.startswith("fot_mem"):
                    fb[name][0] += after["fallback_rows"] - before["fallback_rows"]
                    fb[name][1] += after["rows"] - before["rows"]
        store.close()
    kth = None
    if held is not None:
        kth = outs["faiss.knn (float32)"][0][:, -1]
    base = statistics.median(secs["faiss.knn (float32)"]) if held is not None else None
    print(
        f"{'method':<26} {'seconds':>8} {'GFLOP/s':>8} {'key GB/s':>8} {'x faiss':>8} "
        f"{'r(ties)':>8} {'fallback':>9}"
    )
    for name, _ in methods:
        sec = statistics.median(secs[name])
        gflops = 2.0 * n * d * nq / sec / 1e9
        gbs = n * d * 2 / sec / 1e9
        ratio = f"{base / sec:.2f}" if base else "-"
        rec = "-"
        if kth is not None and held is not None:
            ids = np.asarray(outs[name][1]).reshape(nq, k)
            got = np.einsum("qd,qkd->qk", queries, held[ids])
            rec = f"{np.mean(got >= kth[:, None] - 1e-5 * np.abs(kth[:, None])):.4f}"
        f, r = fb[name]
        fbs = f"{f // args.repeats}/{r // args.repeats}" if name.startswith("fot") else "-"
        print(f"{name:<26} {sec:>8.3f} {gflops:>8.1f} {gbs:>8.2f} {ratio:>8} {rec:>8} {fbs:>9}")


if __name__ == "__main__":
    main()
