"""The search backends, one closed list chosen here whichever language implements each:

- `exact`: the Rust core's brute-force scan (SIMD kernels chosen by CPU features);
- `hnsw`: the Rust core's HNSW graphs per sealed span, exact scan of the rest;
- `faiss`: FAISS's brute-force kernel over zero-copy views of the chunks (`faiss_flat`);
- `hnswlib`: hnswlib graphs per sealed span, saved and sealed beside the chunks (`hnswlib_graphs`).

faiss and hnswlib are optional dependencies (`pip install fot_mem[bench]`, or `faiss-cpu` /
`hnswlib`); asking for a backend without its package raises `BackendUnavailableError`. Every
backend answers with the same conventions: `[q, heads, k]` scores (float32) and ids (int64, token
positions), best first, ties to the lower id, -1 / -inf padding.
"""

from __future__ import annotations

import numpy as np

from .. import _core, checks
from ..exceptions import InvalidValueError, ShapeError

NATIVE_BACKENDS = ("exact", "hnsw")
PYTHON_BACKENDS = ("faiss", "hnswlib")
BACKENDS = (*NATIVE_BACKENDS, *PYTHON_BACKENDS)


def check(backend: object) -> str:
    """The backend name, or `InvalidValueError` naming the ones there are."""
    if backend not in BACKENDS:
        raise InvalidValueError(
            f"unknown search backend {backend!r}; expected one of {', '.join(BACKENDS)}"
        )
    return str(backend)


def search(
    core: _core.Store,
    doc: str,
    layer: int,
    queries: np.ndarray,
    k: int,
    backend: str,
    ef: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of checked `queries [q, heads, head_dim]` (float32) in one document-layer with a
    Python `backend`. `ef`: search breadth of hnswlib (None: the store's default)."""
    if check(backend) == "hnswlib":
        from . import hnswlib_graphs  # hnswlib is imported only when asked for

        return hnswlib_graphs.search(core, doc, layer, queries, k, ef)
    if backend == "faiss":
        from . import faiss_flat

        return faiss_flat.search(core, doc, layer, queries, k)
    raise InvalidValueError(f"backend {backend!r} runs in the core, not through search()")


def search_document(
    core: _core.Store,
    doc: str,
    layer: object,
    queries: np.ndarray,
    k: object,
    backend: str,
    ef: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """`Document.search`: `queries [q, heads, head_dim]` (a checked float array) -> `[q, heads,
    k]`, whichever backend. `layer` and `k` are checked here, after the backend."""
    if check(backend) in NATIVE_BACKENDS:
        scores, ids = core.search(
            [doc], checks.layer(layer), queries[None], checks.integer(k, "k"), backend, ef
        )
        return scores[0], ids[0]
    # The native path validates layer, shapes and k (an empty batch scans nothing).
    k = checks.integer(k, "k")
    core.search([], checks.layer(layer), queries[None][:0], k, "exact")
    if not np.isfinite(queries).all():
        raise InvalidValueError("queries contain NaN or infinite values")
    # As the native search weighs its output and top-k lists: 24 bytes per entry.
    n = queries.shape[0] * queries.shape[1] * int(k)
    _core.check_allocation(
        n * 24 if n * 24 < 2**64 else None,
        f"a {backend} search of [{queries.shape[0]} queries x {queries.shape[1]} heads] "
        f"with k = {k}",
    )
    return search(
        core, doc, checks.layer(layer), np.asarray(queries, np.float32), k, backend, ef=ef
    )


def search_documents(
    core: _core.Store,
    names: list[str],
    layer: object,
    queries: np.ndarray,
    k: object,
    backend: str,
    ef: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """`MemoryStore.search`: `queries [B, q, heads, head_dim]`, one document per batch slot ->
    `[B, q, heads, k]`. The core searches the batch at once; Python backends slot by slot."""
    if check(backend) in NATIVE_BACKENDS:
        return core.search(names, checks.layer(layer), queries, checks.integer(k, "k"), backend, ef)
    if queries.ndim != 4 or queries.shape[0] != len(names):
        raise ShapeError(
            f"queries must be [B={len(names)}, q, heads, head_dim], got {tuple(queries.shape)}"
        )
    if not names:
        shape = (0, *queries.shape[1:3], checks.integer(k, "k"))
        return np.zeros(shape, np.float32), np.zeros(shape, np.int64)
    results = [
        search_document(core, n, layer, queries[b], k, backend, ef) for b, n in enumerate(names)
    ]
    return np.stack([r[0] for r in results]), np.stack([r[1] for r in results])
