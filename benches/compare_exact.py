"""Exact top-k inner-product search, side by side in one run: fot_mem (each storage dtype, and its
faiss backend) against faiss.knn, faiss IndexFlatIP and numpy matmul + argpartition, on the same
keys and queries, plus the machine's own sgemm rate on the same shape.

    python benches/compare_exact.py [--keys 65536,262144,1048576] [--dim 128] [--batch 2048]
                                    [--k 32] [--set clustered] [--repeats 3] [--json out.json]

Prints a table of medians (queries/s, GFLOP/s as 2*N*d per query, ratio to faiss.knn) and writes
JSON. Threads: 2 unless --threads says otherwise (faiss via OpenMP, fot_mem via rayon).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered(rng: np.random.Generator, n: int, d: int, seed_mix: int = 0) -> np.ndarray:
    """The `clustered` key set of docs/benchmarks.md: a 64-component Gaussian mixture."""
    mix = np.random.default_rng(seed_mix)
    centres = mix.standard_normal((64, d), dtype=np.float32)
    scales = mix.uniform(0.5, 1.5, 64).astype(np.float32)
    weights = mix.dirichlet(np.ones(64))
    j = rng.choice(64, size=n, p=weights)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 1 << 16):
        jj = j[s : s + (1 << 16)]
        noise = rng.standard_normal((len(jj), d), dtype=np.float32)
        out[s : s + len(jj)] = scales[jj, None] * (centres[jj] + 0.5 * noise)
    return out


def key_set(name: str, n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name == "normal":
        return rng.standard_normal((n, d), dtype=np.float32)
    if name == "clustered":
        return clustered(rng, n, d)
    raise SystemExit(f"unknown key set {name!r} (normal, clustered)")


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def numpy_topk(keys: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ keys.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    ps = np.take_along_axis(scores, part, 1)
    order = np.argsort(-ps, axis=1, kind="stable")
    return np.take_along_axis(ps, order, 1), np.take_along_axis(part, order, 1)


def sgemm_pass(keys: np.ndarray, queries: np.ndarray) -> None:
    """The matrix product alone, in blocks of keys so the scores stay in cache-sized bites."""
    out = np.empty((queries.shape[0], 8192), np.float32)
    for s in range(0, len(keys), 8192):
        blk = keys[s : s + 8192]
        np.matmul(queries, blk.T, out=out[:, : len(blk)])


def recall(ids: np.ndarray, ref: np.ndarray) -> float:
    k = ref.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids.tolist(), ref.tolist())]))


def fot_store(root: Path, keys: np.ndarray, dtype: str):
    import fot_mem

    path = root / f"store-{dtype}-{len(keys)}-{keys.shape[1]}"
    store = fot_mem.MemoryStore.create(
        path, layers=[0], kv_heads=1, head_dim=keys.shape[1], dtype=dtype, chunk_tokens=65536
    )
    doc = store.document("bench")
    for s in range(0, len(keys), 65536):
        blk = keys[s : s + 65536, None, :]
        doc.append(0, blk, blk[:, :, :1].repeat(keys.shape[1], axis=2))
    return store, doc


def bench_size(n: int, queries: np.ndarray, args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Every method on `n` keys; prints and returns one row per method."""
    import faiss
    import fot_mem

    d, nq, k = args.dim, args.batch, args.k
    keys = key_set(args.set, n, d, seed=2)
    flops = 2.0 * n * d * nq
    rows: list[dict] = []

    def row(method: str, seconds: float, rec: float | None, base: float | None) -> None:
        r = {
            "keys": n,
            "dim": d,
            "batch": nq,
            "k": k,
            "set": args.set,
            "method": method,
            "seconds": seconds,
            "queries_per_s": nq / seconds,
            "gflops": flops / seconds / 1e9,
            "ratio_to_faiss_knn": (base / seconds) if base else None,
            "recall": rec,
        }
        rows.append(r)
        ratio = f"{r['ratio_to_faiss_knn']:.2f}" if base else "-"
        rc = f"{rec:.4f}" if rec is not None else "-"
        print(
            f"{n:>9} {method:<31} {seconds:>9.4f} {r['queries_per_s']:>10.0f} "
            f"{r['gflops']:>8.1f} {ratio:>11} {rc:>7}",
            flush=True,
        )

    ip = faiss.METRIC_INNER_PRODUCT
    t_knn, (_, ref) = timed(lambda: faiss.knn(queries, keys, k, metric=ip), args.repeats)
    row("faiss.knn (float32)", t_knn, 1.0, t_knn)
    index = faiss.IndexFlatIP(d)
    index.add(keys)
    t, (_, ids) = timed(lambda: index.search(queries, k), args.repeats)
    row("faiss IndexFlatIP (float32)", t, recall(ids, ref), t_knn)
    index.reset()
    t, _ = timed(lambda: sgemm_pass(keys, queries), args.repeats)
    row("numpy sgemm alone (no top-k)", t, None, t_knn)
    if n <= args.numpy_max:
        t, (_, ids) = timed(lambda: numpy_topk(keys, queries, k), 1)
        row("numpy matmul + argpartition", t, recall(ids, ref), t_knn)
    q3 = queries[:, None, :]
    for dtype in args.dtypes.split(","):
        store, doc = fot_store(tmp, keys, dtype)
        t, (_, ids) = timed(lambda doc=doc: doc.search(0, q3, k=k), args.repeats)
        row(f"fot_mem exact ({dtype})", t, recall(ids[:, 0], ref), t_knn)
        if not args.no_fot_faiss and dtype == "float32":
            t, (_, ids) = timed(
                lambda doc=doc: doc.search(0, q3, k=k, backend="faiss"), args.repeats
            )
            row(f"fot_mem faiss backend ({dtype})", t, recall(ids[:, 0], ref), t_knn)
        store.close()
    info = fot_mem._core.exact_kernel_info()
    print(f"# kernel {info['kernel']}, fallback rows so far {info['fallback_rows']}/{info['rows']}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", default="65536,262144,1048576")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--set", default="clustered", choices=["clustered", "normal"])
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--numpy-max",
        type=int,
        default=262144,
        help="skip numpy matmul + argpartition above this many keys (~40 s at 1M)",
    )
    ap.add_argument("--no-fot-faiss", action="store_true", help="skip fot_mem's faiss backend")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import faiss
    import fot_mem

    faiss.omp_set_num_threads(args.threads)
    rows: list[dict] = []
    d, nq, k = args.dim, args.batch, args.k
    queries = key_set(args.set, nq, d, seed=1)
    print(
        f"# exact top-{k} inner product, d={d}, {nq} queries, {args.set} keys, "
        f"{args.threads} threads, medians of {args.repeats}; fot_mem {fot_mem.__version__}, "
        f"faiss {faiss.__version__}, numpy {np.__version__}"
    )
    header = (
        f"{'keys':>9} {'method':<31} {'seconds':>9} {'queries/s':>10} {'GFLOP/s':>8} "
        f"{'x faiss.knn':>11} {'recall':>7}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.keys.split(",")]:
            rows += bench_size(n, queries, args, Path(tmp))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": {
                        "cpu": platform.processor() or platform.machine(),
                        "threads": args.threads,
                        "python": sys.version.split()[0],
                    },
                    "rows": rows,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
