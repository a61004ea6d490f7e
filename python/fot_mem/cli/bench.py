"""`fot-mem bench`: retrieval on this machine, fot_mem against FAISS, hnswlib and numpy in one
run, on the same keys and queries (the `clustered` workload, SmolLM2's attention shape: 3 kv
heads x 64 dims, 9 query heads). Prints medians and ratios; absolute times on a shared machine
are noisy, ratios much less so. (The full suites: benches/compare/compare_exact.py and
compare_ann.py.)"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import exact_kernel_info
from ..exceptions import InvalidValueError
from ..store import MemoryStore

HEADS, KV, DIM = 9, 3, 64


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="retrieval speed here: fot_mem vs FAISS / hnswlib / numpy")
    p.add_argument("--tokens", type=int, default=65536, help="keys per kv head")
    p.add_argument("--queries", type=int, default=512, help="query tokens (x 9 heads)")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ef", type=int, default=128, help="hnsw / hnswlib search breadth")
    p.add_argument("--no-ann", action="store_true", help="exact search only")
    p.set_defaults(run=run)


def clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    mix = np.random.default_rng(0)
    centres = mix.standard_normal((64, DIM), dtype=np.float32)
    scales = mix.uniform(0.5, 1.5, 64).astype(np.float32)
    j = rng.choice(64, size=n, p=mix.dirichlet(np.ones(64)))
    return scales[j, None] * (centres[j] + 0.5 * rng.standard_normal((n, DIM), dtype=np.float32))


def median_s(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm: page cache, thread pools
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(args: argparse.Namespace) -> None:
    if min(args.tokens, args.queries, args.k, args.repeats, args.ef) < 1 or args.k > args.tokens:
        raise InvalidValueError("tokens, queries, k, repeats and ef must be >= 1, and k <= tokens")
    if not args.no_ann and args.tokens > 1 << 26:
        raise InvalidValueError("hnsw spans hold at most 2^26 tokens; give --no-ann or fewer")
    rng = np.random.default_rng(1)
    keys = clustered(rng, args.tokens * KV).reshape(args.tokens, KV, DIM)
    queries = clustered(rng, args.queries * HEADS).reshape(args.queries, HEADS, DIM)
    n_q = args.queries * HEADS
    info = exact_kernel_info()  # a CPU figure names its CPU and the kernel that ran
    print(f"CPU {info['cpu']}; exact kernel {info['kernel']} ({', '.join(info['features'])})")
    print(f"{args.tokens:,} keys x {KV} kv heads x {DIM}; {n_q:,} queries (9 heads); k {args.k}")
    rows: list[tuple[str, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        # One graph over all the keys, as hnswlib builds: the span is every token, and the
        # span must be whole chunks (4096 tokens, or one chunk of all when that does not divide)
        chunk = 4096 if args.tokens % 4096 == 0 else args.tokens
        hnsw = None if args.no_ann else {"span_tokens": args.tokens}
        store = MemoryStore.create(
            tmp + "/s",
            layers=[0],
            kv_heads=KV,
            head_dim=DIM,
            dtype="float32",
            chunk_tokens=chunk,
            hnsw=hnsw,
        )
        doc = store.document("bench")
        doc.append(0, keys, keys)
        t = time.perf_counter()  # the graphs' build, started by the append of a full span
        if hnsw is not None:
            store.wait_for_indexes()
            if doc.indexed_tokens(0) != args.tokens:
                raise InvalidValueError(
                    f"the hnsw index covers {doc.indexed_tokens(0)} of {args.tokens} keys"
                )
        build = time.perf_counter() - t
        truth = doc.search(0, queries, args.k)[1]
        rows.append(
            ("fot_mem exact", median_s(lambda: doc.search(0, queries, args.k), args.repeats), 1.0)
        )
        rows += _faiss_exact(keys, queries, args)
        rows.append(
            (
                "numpy matmul+argpartition",
                median_s(lambda: _numpy(keys, queries, args.k), args.repeats),
                None,
            )
        )
        if hnsw is not None:

            def ann() -> Any:
                return doc.search(0, queries, args.k, backend="hnsw", ef=args.ef)

            found = ann()[1]
            rows.append(
                (
                    f"fot_mem hnsw ef {args.ef} (build {build:.1f} s)",
                    median_s(ann, args.repeats),
                    _recall(found, truth),
                )
            )
            rows += _hnswlib(keys, queries, truth, args)
        store.close()
    base = rows[0][1]
    print(f"{'search':48s} {'median s':>9s} {'queries/s':>11s} {'vs exact':>9s} {'recall':>7s}")
    for name, seconds, rec in rows:
        recall = "" if rec is None else f"{rec:.3f}"
        print(
            f"{name:48s} {seconds:9.4f} {n_q / seconds:11,.0f} {base / seconds:8.2f}x {recall:>7s}"
        )


def _numpy(keys: np.ndarray, queries: np.ndarray, k: int) -> None:
    for h in range(KV):
        s = queries[:, 3 * h : 3 * h + 3].reshape(-1, DIM) @ keys[:, h].T
        np.argpartition(-s, k - 1, axis=1)[:, :k]


def _faiss_exact(keys: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> list[Any]:
    try:
        import faiss  # type: ignore[import-untyped]
    except ImportError:
        print("faiss is not installed (pip install faiss-cpu): skipped")
        return []
    indexes = []
    for h in range(KV):
        index = faiss.IndexFlatIP(DIM)
        index.add(np.ascontiguousarray(keys[:, h]))
        indexes.append(index)

    def search() -> None:
        for h, index in enumerate(indexes):
            index.search(
                np.ascontiguousarray(queries[:, 3 * h : 3 * h + 3].reshape(-1, DIM)), args.k
            )

    return [("faiss IndexFlatIP", median_s(search, args.repeats), None)]


def _hnswlib(
    keys: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> list[Any]:
    try:
        import hnswlib  # type: ignore[import-untyped]
    except ImportError:
        print("hnswlib is not installed (pip install hnswlib): skipped")
        return []
    t = time.perf_counter()
    graphs = []
    for h in range(KV):
        g = hnswlib.Index(space="ip", dim=DIM)
        g.init_index(max_elements=len(keys), ef_construction=100, M=16)
        g.add_items(keys[:, h])
        g.set_ef(max(args.ef, args.k))
        graphs.append(g)
    build = time.perf_counter() - t
    found = np.empty_like(truth)

    def search() -> None:
        for h, g in enumerate(graphs):
            ids, _ = g.knn_query(queries[:, 3 * h : 3 * h + 3].reshape(-1, DIM), k=args.k)
            found[:, 3 * h : 3 * h + 3] = ids.reshape(len(queries), 3, args.k)

    seconds = median_s(search, args.repeats)
    return [(f"hnswlib ip ef {args.ef} (build {build:.1f} s)", seconds, _recall(found, truth))]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(
        len(np.intersect1d(a, b))
        for a, b in zip(found.reshape(-1, truth.shape[-1]), truth.reshape(-1, truth.shape[-1]))
    )
    return hits / truth.size
