"""The `faiss` backend: exact top-k with FAISS's brute-force inner-product kernel over zero-copy
numpy views of the memory-mapped chunks (float16 and bfloat16 chunks widened to float32)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from ..exceptions import BackendUnavailableError
from .widen import as_f32


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise BackendUnavailableError(
            'backend="faiss" needs the faiss package: pip install faiss-cpu'
        ) from e
    return faiss


def search(
    core: _core.Store, doc: str, layer: int, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of `queries [q, heads, head_dim]` (float32) in one document-layer."""
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
            d, i = faiss.knn(rows, as_f32(view), kk, metric=faiss.METRIC_INNER_PRODUCT)
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
