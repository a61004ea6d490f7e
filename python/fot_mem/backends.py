"""Search backends that run in Python over the store's memory-mapped chunks: `faiss` (exact, the
FAISS brute-force kernel over zero-copy numpy views of float32 chunks; float16 and bfloat16 chunks
are widened to float32 first) and `hnswlib` (approximate: HNSW graphs per sealed span of tokens,
saved beside the chunks; see `fot_mem.hnswlib_backend`). Both packages are optional dependencies
(`pip install fot_mem[bench]`, or `faiss-cpu` / `hnswlib`); asking for a backend without its
package installed raises `BackendUnavailableError`.

Results follow the native backend's conventions: `[q, heads, k]` scores (float32) and ids (int64,
token positions), best first, ties to the lower id, -1 / -inf padding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from .exceptions import BackendUnavailableError, InvalidValueError

PYTHON_BACKENDS = ("faiss", "hnswlib")
BACKENDS = ("exact", "hnsw", *PYTHON_BACKENDS)


def check(backend: object) -> str:
    """The backend name, or `InvalidValueError` naming the ones there are."""
    if backend not in BACKENDS:
        raise InvalidValueError(
            f"unknown search backend {backend!r}; expected one of {', '.join(BACKENDS)}"
        )
    return str(backend)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise BackendUnavailableError(
            'backend="faiss" needs the faiss package: pip install faiss-cpu'
        ) from e
    return faiss


def _as_f32(view: np.ndarray) -> np.ndarray:
    if view.dtype == np.float32:
        return view  # zero-copy: faiss reads the mapped chunk directly
    if view.dtype == np.uint16:  # bfloat16 bits
        return (view.astype(np.uint32) << 16).view(np.float32)
    return view.astype(np.float32)


def search(
    core: _core.Store,
    doc: str,
    layer: int,
    queries: np.ndarray,
    k: int,
    backend: str,
    ef: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of `queries [q, heads, head_dim]` (float32) in one document-layer with `backend`.
    `ef`: search breadth of the approximate backends (None: the store's default); exact ones
    ignore it."""
    if check(backend) == "hnswlib":
        from . import hnswlib_backend

        return hnswlib_backend.search(core, doc, layer, queries, k, ef)
    return _faiss_search(core, doc, layer, queries, k)


def _faiss_search(
    core: _core.Store, doc: str, layer: int, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    q, heads, dim = queries.shape
    kv_heads = int(core.config["kv_heads"])
    group = heads // kv_heads
    scores = np.full((q, heads, k), -np.inf, np.float32)
    ids = np.full((q, heads, k), -1, np.int64)
    for g in range(kv_heads):
        rows = np.ascontiguousarray(queries[:, g * group : (g + 1) * group].reshape(-1, dim))
        found_s, found_i = [], []
        for first, view in core.key_views(doc, layer, g):
            kk = min(k, view.shape[0])
            d, i = faiss.knn(rows, _as_f32(view), kk, metric=faiss.METRIC_INNER_PRODUCT)
            found_s.append(d.astype(np.float32, copy=False))
            found_i.append(i + first)
        if not found_s:
            continue
        s = np.concatenate(found_s, axis=1)
        i = np.concatenate(found_i, axis=1)
        # Best first, ties to the lower id, as the native backend orders them.
        order = np.lexsort((i, -s), axis=1)[:, :k]
        n = order.shape[1]
        s = np.take_along_axis(s, order, 1).reshape(q, group, n)
        i = np.take_along_axis(i, order, 1).reshape(q, group, n)
        scores[:, g * group : (g + 1) * group, :n] = s
        ids[:, g * group : (g + 1) * group, :n] = i
    return scores, ids
