"""The store on its own (no model): build a persistent memory of a few hundred thousand tokens,
reopen it in a new process, search it, and compare with numpy (matmul + argpartition) on the
same keys.

    fot-mem store-demo [--path demo-store] [--tokens 262144] [--queries 128] [--fresh]

The keys follow the project's `clustered` workload (a 64-component Gaussian mixture) in SmolLM2's
attention shape (9 query heads, 3 kv heads, head_dim 64, bfloat16). A few "needle" tokens are
planted at known positions, each aligned with one query, so the search has a right answer to find.
A second run reuses the store written by the first: that is the point of a persistent memory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .store import MemoryStore

DOC, LAYER, KV_HEADS, HEADS, DIM, WINDOW, NEEDLES = "book-1", 12, 3, 9, 64, 2048, 8


def clustered(
    rng: np.random.Generator, n: int, centres: np.ndarray, scales: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """n draws of the clustered mixture: key = s_j * (c_j + 0.5 * N(0, I))."""
    j = rng.choice(len(weights), size=n, p=weights)
    noise = rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    return (scales[j, None] * (centres[j] + 0.5 * noise)).astype(np.float32)


def mixture(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, DIM)).astype(np.float32)
    scales = rng.uniform(0.5, 1.5, 64).astype(np.float32)
    weights = rng.dirichlet(np.ones(64))
    return centres, scales, weights


def needle_positions(tokens: int) -> np.ndarray:
    return np.linspace(tokens // 10, tokens - 1, NEEDLES).astype(np.int64)


def queries_for(n: int) -> np.ndarray:
    """Queries [n, heads, dim]; query i < NEEDLES, head 0, points at needle i."""
    rng = np.random.default_rng(2)
    q = clustered(rng, n * HEADS, *mixture(0)).reshape(n, HEADS, DIM)
    q[:NEEDLES, 0] = needle_vectors()
    return q


def needle_vectors() -> np.ndarray:
    v = np.random.default_rng(3).standard_normal((NEEDLES, DIM)).astype(np.float32)
    return 6.0 * v / np.linalg.norm(v, axis=1, keepdims=True) * np.sqrt(DIM) / 4


def write(path: Path, tokens: int) -> None:
    if path.exists():
        shutil.rmtree(path)
    store = MemoryStore.create(
        path, layers=[6, LAYER, 18], kv_heads=KV_HEADS, head_dim=DIM, dtype="bfloat16"
    )
    rng = np.random.default_rng(1)
    mix = mixture(0)
    needles = dict(zip(needle_positions(tokens).tolist(), needle_vectors()))
    doc = store.document(DOC)
    elapsed = 0.0
    for t0 in range(0, tokens, WINDOW):
        n = min(WINDOW, tokens - t0)
        keys = clustered(rng, n * KV_HEADS, *mix).reshape(n, KV_HEADS, DIM)
        for pos, vec in needles.items():
            if t0 <= pos < t0 + n:
                keys[pos - t0, 0] = vec
        values = np.zeros((n, KV_HEADS, DIM), dtype=np.float32)
        pos = np.arange(t0, t0 + n)[:, None]  # values name their token, in digits bf16 holds
        values[:, :, :3] = np.stack([pos % 256, pos // 256 % 256, pos // 65536], axis=-1)
        start = time.perf_counter()
        doc.append(LAYER, keys, values)
        elapsed += time.perf_counter() - start
    nbytes = store.nbytes
    store.close()
    print(
        f"wrote {tokens:,} tokens of layer {LAYER} ({nbytes / 2**20:.0f} MiB bfloat16) to {path} "
        f"in {elapsed:.2f} s of appends: {tokens / elapsed:,.0f} tokens/s, "
        f"{nbytes / elapsed / 1e9:.2f} GB/s"
    )


def numpy_topk(keys: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The numpy baseline: per head, matmul then argpartition, then sort the k."""
    q, heads, _ = queries.shape
    group = heads // keys.shape[1]
    scores = np.empty((q, heads, k), np.float32)
    ids = np.empty((q, heads, k), np.int64)
    for h in range(heads):
        s = queries[:, h] @ keys[:, h // group].T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, 1)
        order = np.argsort(-ps, axis=1, kind="stable")
        ids[:, h] = np.take_along_axis(part, order, 1)
        scores[:, h] = np.take_along_axis(ps, order, 1)
    return scores, ids


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def search(path: Path, nq: int, k: int) -> None:
    t = time.perf_counter()
    store = MemoryStore.open(path, readonly=True)
    doc = store.document(DOC)
    n = doc.length(LAYER)
    print(
        f"[new process] opened {path} read-only in {1e3 * (time.perf_counter() - t):.1f} ms: "
        f"{store.documents()} with {n:,} tokens in layer {LAYER}, "
        f"{store.nbytes / 2**20:.0f} MiB in chunks of {store.chunk_tokens} tokens"
    )
    queries = queries_for(nq)
    doc.search(LAYER, queries[:4], k=k)  # warm the page cache
    t_native = median_time(lambda: doc.search(LAYER, queries, k=k), 3)
    scores, ids = doc.search(LAYER, queries, k=k)

    found = [int(ids[i, 0, 0]) for i in range(NEEDLES)]
    hits = sum(f == p for f, p in zip(found, needle_positions(n).tolist()))
    _, values = doc.gather(LAYER, ids[:NEEDLES])
    print(
        f"needles: {hits}/{NEEDLES} planted tokens found at rank 1 "
        f"(positions {found}; their stored values name tokens "
        f"{[int(v @ [1, 256, 65536]) for v in values[:, 0, 0, :3]]})"
    )

    keys, _ = doc.read(LAYER)  # bfloat16 widened to float32, as numpy needs
    t_numpy = median_time(lambda: numpy_topk(keys, queries, k), 1)
    np_scores, np_ids = numpy_topk(keys, queries, k)
    agree = np.mean(
        [
            len(set(a) & set(b)) / k
            for a, b in zip(ids.reshape(-1, k).tolist(), np_ids.reshape(-1, k).tolist())
        ]
    )
    err = float(np.max(np.abs(np_scores - scores)))
    flops = 2.0 * nq * HEADS * n * DIM
    print(f"search {nq} queries x {HEADS} heads, k={k}, over {n:,} keys per head:")
    print(
        f"  fot_mem exact (bfloat16 store): {t_native:.3f} s median of 3, "
        f"{nq / t_native:,.0f} queries/s, {flops / t_native / 1e9:.1f} GFLOP/s"
    )
    print(f"  numpy matmul + argpartition:    {t_numpy:.3f} s, {flops / t_numpy / 1e9:.1f} GFLOP/s")
    print(
        f"  speedup {t_numpy / t_native:.1f}x; top-{k} agreement with numpy {agree:.4f}, "
        f"max score difference {err:.2e}"
    )
    store.close()
    if hits != NEEDLES or agree < 0.99:
        sys.exit("demo FAILED: the search did not find what numpy finds")


def run(
    path: Path = Path("demo-store"),
    tokens: int = 262_144,
    queries: int = 128,
    k: int = 32,
    fresh: bool = False,
    search_only: bool = False,
) -> None:
    """The demo: a store of `tokens` tokens at `path` (reused unless `fresh`), then searched
    with `queries` queries in a new process (`search_only`: that process's part)."""
    if search_only:
        search(path, queries, k)
        return
    existing = 0
    if path.exists() and not fresh:
        try:
            with MemoryStore.open(path, readonly=True) as s:
                existing = s.document(DOC).length(LAYER)
        except Exception as e:  # an unusable old store is rewritten
            print(f"{path} is not a usable demo store ({e}); rewriting it")
    if existing == tokens:
        print(
            f"{path} already holds {existing:,} tokens from an earlier run: reusing it "
            "(--fresh rewrites it)"
        )
    else:
        write(path, tokens)
    cmd = [
        sys.executable,
        "-m",
        "fot_mem",
        "store-demo",
        "--search-only",
        "--path",
        str(path),
        "--queries",
        str(queries),
        "-k",
        str(k),
    ]
    sys.exit(subprocess.call(cmd))
